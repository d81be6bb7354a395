//! The `support` binary: parse, set up tracing, run, map errors to exit codes.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser;
use support::ErrorChain;
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
            let code = exit_code(&err);
            if code != 0 {
                // A closed stderr leaves nowhere to say it; the exit code still does.
                let _ = writeln!(std::io::stderr(), "support: {}", ErrorChain(&err));
            }
            ExitCode::from(code)
        }
    }
}

/// Logs go to stderr, filtered by `SUPPORT_LOG` (default `warn`, `info`
/// for the daemon and `relay serve`), coloured only when stderr is a terminal and `NO_COLOR`
/// is unset or empty (no-color.org), so files and pipes get plain text.
/// Under systemd, when `JOURNAL_STREAM` names the device and inode of our
/// stderr (systemd.exec(5)), they go to journald natively, with priorities
/// and fields.
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
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(|| LossyStderr)
        .with_ansi(color_allowed(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR")))
        // On a failed write the layer would `eprintln!` the error, which
        // panics when stderr itself is what failed (a full disk, EIO).
        .log_internal_errors(false)
        .init();
}

/// Stderr for log lines, where a failed write (ENOSPC on a full disk, EIO,
/// a closed pipe) loses the line and nothing else: a log write never
/// panics, returns an error, or stops the daemon's enforcement.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Colour for a terminal, unless `NO_COLOR` is set to a non-empty value (no-color.org).
fn color_allowed(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Whether stderr is the journal stream systemd set up (`JOURNAL_STREAM=DEV:INODE`).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// DESIGN §4: 1 error, 2 usage or invalid input, 3 daemon unreachable, 4 refused;
/// 0, said nowhere, when stdout's reader went away (`| head -1` has what it wanted).
fn exit_code(err: &Error) -> u8 {
    match err {
        e if e.is_closed_stdout() => 0,
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

#[cfg(test)]
mod tests {
    use super::{LossyStderr, color_allowed};

    #[test]
    fn a_log_write_never_fails() {
        use std::io::Write as _;
        // Whatever stderr is (a terminal, /dev/full, closed), the line is taken whole.
        assert_eq!(LossyStderr.write(b"\n").unwrap(), 1);
        LossyStderr.flush().unwrap();
    }

    #[test]
    fn colour_only_for_a_terminal_without_no_color() {
        assert!(color_allowed(true, None));
        assert!(color_allowed(true, Some("".into())), "an empty NO_COLOR does not count (no-color.org)");
        assert!(!color_allowed(true, Some("1".into())));
        assert!(!color_allowed(false, None));
    }
}
