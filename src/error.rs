//! The error every CLI command returns. `main` alone maps it to an exit
//! code (DESIGN §4): 0 ok, 1 error, 2 usage or invalid input, 3 daemon
//! unreachable, 4 refused.

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
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}
