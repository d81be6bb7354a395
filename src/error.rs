//! The error every CLI command returns. `main` alone maps it to an exit
//! code (DESIGN §4): 0 ok, 1 error, 2 usage or invalid input, 3 daemon
//! unreachable, 4 refused.
//!
//! An error either says its cause in its own text or returns it as
//! [`std::error::Error::source`], never both (the Rust API guidelines,
//! C-GOOD-ERR), so [`ErrorChain`] can print the whole chain with nothing twice.

use std::fmt;

use crate::audit::AuditError;
use crate::daemon::DaemonError;
use crate::paths::FileError;
use crate::policy::PolicyError;
use crate::trust::TrustError;

/// A command's failure; the message says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad flags or values (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Refused by consent, policy or trust (exit 4).
    #[error("{0}")]
    Refused(String),
    /// No daemon answers on the control API (exit 3).
    #[error("{0}")]
    DaemonUnreachable(String),
    /// A step failed; the message says which (exit 1).
    #[error("{0}")]
    Failed(String),
    /// Writing to stdout failed. When the reader went away (`BrokenPipe`,
    /// as with `support audit | head -1`) `main` exits 0 quietly; any
    /// other cause (a full disk) is an error (exit 1).
    #[error("cannot write to stdout")]
    Stdout(#[source] std::io::Error),
    /// A file could not be used safely (exit 1).
    #[error(transparent)]
    File(#[from] FileError),
    /// The catalogue or an action's parameters (exit 2; 1 for its files).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The audit log could not be read, written or verified (exit 1).
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The trusted operators (exit 2 for bad names and keys, else 1).
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The daemon could not start or run (exit 1).
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

impl Error {
    /// Whether this is stdout's reader having gone away (`EPIPE`): not a
    /// failure of the command, as for ripgrep and xsv.
    pub fn is_closed_stdout(&self) -> bool {
        matches!(self, Error::Stdout(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Displays an error and each of its sources once, joined by `: `.
///
/// ```
/// let io = std::io::Error::other("disk full");
/// let err = support::Error::Stdout(io);
/// assert_eq!(support::ErrorChain(&err).to_string(), "cannot write to stdout: disk full");
/// ```
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_says_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let err = Error::from(FileError::Io { op: "open", path: "/x/consent.json".into(), source: io });
        assert_eq!(ErrorChain(&err).to_string(), "cannot open /x/consent.json: denied");
        let audit = AuditError::Write { path: "/x/audit.jsonl".into(), source: std::io::Error::other("disk full") };
        let text = ErrorChain(&Error::from(audit)).to_string();
        assert_eq!(text.matches("disk full").count(), 1, "{text}");
        assert!(text.starts_with("cannot write the audit log /x/audit.jsonl"), "{text}");
    }

    #[test]
    fn only_a_broken_pipe_is_a_closed_stdout() {
        assert!(Error::Stdout(std::io::ErrorKind::BrokenPipe.into()).is_closed_stdout());
        assert!(!Error::Stdout(std::io::Error::other("disk full")).is_closed_stdout());
        assert!(!Error::Failed("x".into()).is_closed_stdout());
    }
}
