//! The `support` binary: parse, set up tracing, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use support::cli::Cli;
use support::{Error, PolicyError, TrustError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SUPPORT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match support::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            let mut message = format!("support: {err}");
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                let text = s.to_string();
                if !message.contains(&text) {
                    message.push_str(&format!(": {text}"));
                }
                source = s.source();
            }
            eprintln!("{message}");
            ExitCode::from(exit_code(&err))
        }
    }
}

/// DESIGN §4: 1 error, 2 usage or invalid input, 3 daemon unreachable, 4 refused.
fn exit_code(err: &Error) -> u8 {
    match err {
        Error::Usage(_) => 2,
        Error::Policy(PolicyError::File(_)) => 1,
        Error::Policy(_) => 2,
        Error::Trust(
            TrustError::BadName(_) | TrustError::BadKey(_) | TrustError::Duplicate(_) | TrustError::NotFound(_),
        ) => 2,
        Error::DaemonUnreachable(_) => 3,
        Error::Refused(_) => 4,
        _ => 1,
    }
}
