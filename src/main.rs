//! The `support` binary: parse, set up tracing, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use support::cli::Cli;
use support::{Error, PolicyError, TrustError};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(
        matches!(&cli.command, support::cli::Command::Daemon(_))
            || matches!(&cli.command, support::cli::Command::Relay(a) if a.is_serve()),
    );
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

/// Logs go to stderr, filtered by `SUPPORT_LOG` (default `warn`, `info`
/// for the daemon and `relay serve`). Under systemd, when `JOURNAL_STREAM` names the device
/// and inode of our stderr (systemd.exec(5)), they go to journald natively,
/// with priorities and fields.
fn init_tracing(daemon: bool) {
    use tracing_subscriber::prelude::*;
    let default = if daemon { "info" } else { "warn" };
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("SUPPORT_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
    };
    if stderr_is_journal()
        && let Ok(journald) = tracing_journald::layer()
    {
        tracing_subscriber::registry().with(filter()).with(journald.with_syslog_identifier("support".into())).init();
        return;
    }
    tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr).init();
}

/// Whether stderr is the journal stream systemd set up (`JOURNAL_STREAM=DEV:INODE`).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
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
        Error::Daemon(support::DaemonError::AlreadyRunning { .. }) => 1,
        _ => 1,
    }
}
