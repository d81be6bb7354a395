//! How a task's commands ended, one by one, and what that adds up to:
//! its status, exit code and, when the exit code does not say it, the
//! reason (`killed by signal 9 (SIGKILL)`, `no progress for 300 s`, the
//! agent host's failure).

use std::process::ExitStatus;
use std::time::Duration;

use crate::protocol::{Status, StoppedBy};

/// How one command ended.
pub(super) enum End {
    Exited(ExitStatus),
    /// An agent host's `end` chunk with this code (0 is success).
    Code(i32),
    Stopped(StoppedBy),
    TimedOut,
    /// It could not start, or the agent host failed: why, for people.
    Failed(String),
    /// No progress for this long ([`super::agent::Idle`]); the tree was killed.
    Idle(Duration),
}

/// How the commands so far ended.
pub(super) struct Tally {
    pub(super) first_failure: Option<i32>,
    pub(super) last_code: Option<i32>,
    pub(super) status: Status,
    pub(super) cancelled_by: Option<StoppedBy>,
    /// Why the first failure failed, when its exit code does not say.
    pub(super) reason: Option<String>,
}

impl Tally {
    /// Counts one command's end; false when no further command may run.
    pub(super) fn add(&mut self, end: End) -> bool {
        match end {
            End::Exited(st) => {
                use std::os::unix::process::ExitStatusExt as _;
                if !st.success() && self.first_failure.is_none() {
                    self.reason = st.signal().map(signal_reason);
                }
                self.code(st.code())
            }
            End::Code(code) => self.code(Some(code)),
            End::Failed(why) => {
                self.reason.get_or_insert(why);
                self.end(Status::Failed, None)
            }
            End::Idle(limit) => {
                self.reason.get_or_insert(format!("no progress for {} s", limit.as_secs()));
                self.end(Status::Failed, None)
            }
            End::TimedOut => self.end(Status::Timeout, None),
            End::Stopped(by) => self.end(Status::Cancelled, Some(by)),
        }
    }

    /// A command's exit code (`None`: killed by a signal).
    fn code(&mut self, code: Option<i32>) -> bool {
        self.last_code = code;
        if code != Some(0) && self.first_failure.is_none() {
            self.first_failure = Some(code.unwrap_or(-1));
            self.status = Status::Failed;
        }
        true
    }

    fn end(&mut self, status: Status, by: Option<StoppedBy>) -> bool {
        self.status = status;
        self.cancelled_by = by;
        self.last_code = None;
        false
    }
}

/// `killed by signal 9 (SIGKILL)`.
fn signal_reason(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(name) => format!("killed by signal {signal} ({name})"),
        Err(_) => format!("killed by signal {signal}"),
    }
}
