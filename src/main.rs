//! The `support` binary: parse, set up tracing, run, map errors to exit codes.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser;
use support::ErrorChain;
use support::cli::Cli;
use support::{Error, PolicyError, TrustError};

fn main() -> ExitCode {
    let json = wants_json(std::env::args_os().skip(1));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Help and version are not errors; the rest is a usage error (exit 2).
        Err(e) if json && e.use_stderr() => {
            // clap's first paragraph is the error; after a blank line come usage and tips.
            let text = e.render().to_string();
            let error: Vec<&str> = text.lines().take_while(|l| !l.trim().is_empty()).collect();
            let error = error.join("\n");
            print_json_error("usage", error.strip_prefix("error: ").unwrap_or(&error));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    init_tracing(
        matches!(&cli.command, support::cli::Command::Daemon(_))
            || matches!(&cli.command, support::cli::Command::Relay(a) if a.is_serve()),
    );
    match support::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            let code = exit_code(&err);
            if code != 0 && json {
                print_json_error(error_code(&err), &ErrorChain(&err).to_string());
            } else if code != 0 {
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

/// Whether the command line asks for JSON (`--json` before any `--`):
/// then an error is one JSON object on stderr, [`print_json_error`].
fn wants_json(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    args.take_while(|a| a != "--").any(|a| a == "--json")
}

/// `{"error": {"code": CODE, "message": MESSAGE}}` on one line of stderr.
fn print_json_error(code: &str, message: &str) {
    let line = serde_json::json!({ "error": { "code": code, "message": message } });
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The stable name of an error's kind, for scripts (`error.code` with
/// `--json`); the exit code ([`exit_code`]) is the same as without.
fn error_code(err: &Error) -> &'static str {
    match err {
        Error::Usage(_) => "usage",
        Error::Refused(_) => "refused",
        Error::DaemonUnreachable(_) => "daemon_unreachable",
        Error::Stdout(_) => "stdout",
        Error::File(_) => "file",
        Error::Policy(PolicyError::File(_)) => "policy_file",
        Error::Policy(_) => "policy",
        Error::Audit(_) => "audit",
        Error::Trust(_) => "trust",
        Error::Daemon(_) => "daemon",
        _ => "failed",
    }
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
    fn json_is_asked_for_by_a_flag_before_any_double_dash() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>().into_iter();
        assert!(super::wants_json(args(&["status", "--json"])));
        assert!(super::wants_json(args(&["relay", "devices", "--json"])));
        assert!(!super::wants_json(args(&["status"])));
        assert!(!super::wants_json(args(&["operator", "run", "d", "--", "tool", "--json"])));
        assert!(!super::wants_json(args(&["allow", "--reason", "--json=x"])));
    }

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
