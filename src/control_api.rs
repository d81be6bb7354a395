//! The loopback control API's messages (DESIGN §6): what the daemon
//! serialises and the owner's CLI deserialises. Both sides import these
//! types, so neither builds or reads the JSON by hand and a change to one
//! side is a compile error on the other.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/status` | [`StatusView`] |
//! | `GET /v1/tasks` | [`TaskList`] |
//! | `GET /v1/tasks/{id}` | [`TaskDetail`] (404 [`ApiError`] when unknown) |
//! | `POST /v1/tasks/{id}/stop` | [`Stopped`] |
//! | `POST /v1/tasks/stop` | [`StoppedAll`] |
//! | `POST /v1/consent/changed` | [`ConsentChanged`] |
//! | `GET /v1/events` | NDJSON, one [`WatchEvent`] a line |
//! | `POST /v1/console/login` | [`ConsoleLogin`] (403 from inside a task's tree) |
//!
//! Every POST takes an empty body (at most 64 KiB are read and dropped).
//! Any status other than 2xx carries an [`ApiError`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::audit::Record;
use crate::protocol::TaskResult;
use crate::transcript::Line;

/// A running task as the owner sees it (`support tasks`), and as
/// `tasks.json` keeps it for the next start after a crash.
///
/// Unknown fields are ignored, not refused: a CLI and a daemon of two
/// versions (an upgrade while the daemon runs), and a `tasks.json` left by
/// another version, still read each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// `t-` and 16 hex digits.
    pub task_id: String,
    /// The operator's id for the command (one safe segment).
    pub request_id: String,
    /// The catalogue action's name.
    pub action: String,
    /// The action's tier, 1 to 4.
    pub tier: u8,
    /// Drives the owner's agent (an action of kind `agent`): one at a time.
    #[serde(default)]
    pub agent: bool,
    /// An interactive shell session (the `shell` action without `cmd`):
    /// its pty's output comes as `terminal` events.
    #[serde(default)]
    pub interactive: bool,
    /// The command's parameters as the operator signed them.
    pub params: BTreeMap<String, String>,
    /// The owner's name for the operator.
    pub operator: String,
    /// The grant it runs under.
    pub grant_id: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// The current command's process (and process group) id.
    pub pid: Option<i32>,
    /// Its start time, clock ticks since boot (proc(5)).
    pub start_ticks: Option<u64>,
    /// The task's own cgroup directory, when one is delegated to the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// `/proc/sys/kernel/random/boot_id` when it started: after a reboot,
    /// its pids and process group mean nothing.
    #[serde(default)]
    pub boot_id: String,
}

/// The link as `support status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LinkStatus {
    /// The relay URL, or `None` when no relay is configured.
    pub relay: Option<String>,
    /// Whether the relay accepted our hello and the session is up.
    pub connected: bool,
    /// Since when connected (or, when not, since when disconnected); RFC 3339 UTC.
    pub since: Option<String>,
    /// The last failure, kept after a reconnect.
    pub last_error: Option<String>,
    /// Connection attempts since the daemon started.
    pub attempts: u64,
    /// When the next attempt is due (RFC 3339 UTC), while disconnected.
    pub next_attempt_at: Option<String>,
    /// The seq of this device's audit head as the relay last said it
    /// witnessed it (`hello_ack`, then a `witnessed` frame after each heartbeat).
    #[serde(default)]
    pub witnessed_seq: Option<u64>,
    /// The audit alert the relay says stands against this device, if any.
    #[serde(default)]
    pub audit_alert: Option<crate::protocol::AuditAlert>,
}

/// The grant as the daemon enforces it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentView {
    /// Whether a grant is live.
    pub enabled: bool,
    /// The live grant's tier, 1 to 4.
    pub tier: Option<u8>,
    /// The live grant's id.
    pub grant_id: Option<String>,
    /// When the live grant ends, RFC 3339 UTC.
    pub expires_at: Option<String>,
    /// Why support is off (`None` while a grant is live).
    pub off_reason: Option<String>,
    /// The live grant's scope and the actions started under it (`None` while off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<crate::protocol::GrantScope>,
    /// When the live grant was made, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_at: Option<String>,
    /// The login name that made the live grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granted_by: Option<String>,
    /// The owner's reason for the live grant, as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/status`: the daemon, its link, its tasks and the grant it enforces.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    /// The daemon's process id.
    pub pid: u32,
    /// The daemon's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// This device's id (from its public key).
    pub device_id: String,
    /// When the daemon started, RFC 3339 UTC.
    pub started_at: String,
    /// Seconds since it started.
    pub uptime_seconds: u64,
    /// The control API's port on 127.0.0.1.
    pub control_port: Option<u16>,
    /// Whether the relay link is up.
    pub connected: bool,
    /// The relay URL, `None` when no relay is configured.
    pub relay: Option<String>,
    /// The relay link in detail.
    pub link: LinkStatus,
    /// How many tasks run.
    pub running_tasks: usize,
    /// The running tasks.
    pub tasks: Vec<TaskView>,
    /// The grant as enforced.
    pub consent: ConsentView,
}

/// `GET /v1/tasks`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskList {
    /// The running tasks.
    pub tasks: Vec<TaskView>,
}

/// A task's transcript as kept: the last lines of it, how many there were
/// in all, and the digest of all of them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TranscriptView {
    /// Lines in the whole transcript.
    pub total: u64,
    /// SHA-256 of the whole transcript (hex), as on the `action.finished` record.
    pub sha256: String,
    /// The last lines kept (at most 200).
    pub lines: Vec<Line>,
}

/// `GET /v1/tasks/{id}`: one task, running or among the last 8 ended.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskDetail {
    /// The task.
    pub task: TaskView,
    /// Whether it still runs.
    pub running: bool,
    /// How it ended, `None` while it runs.
    pub result: Option<TaskResult>,
    /// Its transcript.
    pub transcript: TranscriptView,
}

/// `POST /v1/tasks/{id}/stop`: the task stopped and how it ended (`None`
/// when its end was not recorded within 5 s).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stopped {
    /// The task stopped.
    pub task_id: String,
    /// How it ended.
    pub result: Option<TaskResult>,
}

/// `POST /v1/tasks/stop`: every task stopped.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoppedAll {
    /// One entry a task.
    pub stopped: Vec<Stopped>,
}

/// `POST /v1/consent/changed`: the status after the grant was re-read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConsentChanged {
    /// The daemon's status now.
    pub status: StatusView,
}

/// `POST /v1/console/login`: a one-time login link to the owner's console.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConsoleLogin {
    /// The token: 43 characters of base64url, usable once.
    pub token: String,
    /// `http://127.0.0.1:PORT/console/login?token=TOKEN`.
    pub url: String,
    /// When the token stops working (60 s after it was issued), RFC 3339 UTC.
    pub expires_at: String,
}

/// The body of every answer that is not 2xx.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    /// What is wrong, for people.
    pub error: String,
}

/// One line of `GET /v1/events`, tagged by `kind`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WatchEvent {
    /// The daemon's status: first on every stream, then on each change of the grant.
    Status {
        /// The status.
        status: Box<StatusView>,
    },
    /// An audit record, as written.
    Audit {
        /// The record.
        record: Box<Record>,
    },
    /// A line of a task's transcript.
    Transcript {
        /// The task.
        task_id: String,
        /// The line.
        line: Line,
    },
    /// Bytes an interactive session's pty wrote, as they came.
    Terminal {
        /// The task.
        task_id: String,
        /// The bytes, base64 (standard, padded).
        data: String,
    },
    /// An interactive session's window size: at its start and on every resize.
    TerminalSize {
        /// The task.
        task_id: String,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Sent every 15 s so that a reader can tell a quiet daemon from a hung one.
    Ping,
    /// This reader fell behind and missed events.
    Lagged {
        /// How many.
        missed: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_by_kind() {
        assert_eq!(serde_json::to_string(&WatchEvent::Ping).unwrap(), r#"{"kind":"ping"}"#);
        assert_eq!(
            serde_json::to_string(&WatchEvent::Lagged { missed: 3 }).unwrap(),
            r#"{"kind":"lagged","missed":3}"#
        );
        let back: WatchEvent = serde_json::from_str(r#"{"kind":"lagged","missed":3}"#).unwrap();
        assert!(matches!(back, WatchEvent::Lagged { missed: 3 }));
        assert!(serde_json::from_str::<WatchEvent>(r#"{"kind":"nonsense"}"#).is_err());
    }
}
