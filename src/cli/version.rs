//! `support version [--json]`: the release, the commit it was built from
//! (`build.rs`), the relay protocol's version and the platform.

use std::process::ExitCode;

use super::out::outln;
use crate::Error;
use crate::protocol::PROTOCOL_VERSION;

/// Show the version, the commit and the protocol version.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object: `version`, `commit`, `protocol`, `os`, `arch`.
    #[arg(long)]
    json: bool,
}

/// The commit the binary was built from: 12 hex digits, or `unknown`.
pub const COMMIT: &str = env!("SUPPORT_COMMIT");

/// The version as one JSON object.
pub fn json() -> serde_json::Value {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": COMMIT,
        "protocol": PROTOCOL_VERSION,
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
    })
}

pub(crate) fn run(args: Args) -> Result<ExitCode, Error> {
    if args.json {
        super::print_json(&json())?;
    } else {
        outln!(
            "support {} (commit {COMMIT}, protocol v{PROTOCOL_VERSION}, {} {})",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
