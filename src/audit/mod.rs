//! The append-only, hash-chained audit log (DESIGN §5).
//!
//! `audit.jsonl` holds one JSON record per line. Each record carries the
//! MAC of the one before it (`prev`) and its own
//! `mac = HMAC-SHA256(audit.key, prev || canonical)`, where `prev` is the
//! previous record's MAC as 64 lowercase hex digits (64 zeros for the first
//! record) and `canonical` is the line up to the `mac` field, closed with
//! `}` (the record serialised without `mac`). Fields appear in the fixed
//! order of [`Record`], absent ones omitted, so a line is
//! `{"seq":N,...,"prev":"<hex>","mac":"<hex>"}`.
//!
//! Every writer (CLI and daemon) takes an exclusive `flock` on the log,
//! appends with one `O_APPEND` write and `fdatasync`s before returning, so
//! the chain stays linear across processes and a record returned as written
//! is on disk. A torn last line (a crash mid-write) is cut back by the next
//! writer, which first appends an `audit.recovered` record.
//!
//! The files: `log.rs` the writer (append, lock, recover), `chain.rs`
//! how a record is sealed and one line checked, `read.rs` `verify`, `list`
//! and `prove` (the answer to the relay's audit witness), `tail.rs` reading
//! back from the newest record.
//!
//! What this does not catch: someone holding `audit.key` (any process of
//! the owner's user) can rewrite the whole chain, and cutting records off
//! the end leaves a shorter chain that still verifies locally. The relay
//! witnesses the head off the machine and [`prove`] answers it (SECURITY.md,
//! "The audit witness").

mod chain;
mod log;
mod read;
mod tail;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::paths::FileError;
pub use log::AuditLog;
pub use read::{Listed, Listing, Prover, Verified, first, list, prove, verify};
pub use tail::newest_first;

/// `prev` of the first record: 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The longest record a reader accepts, in bytes (writers stay far below).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// The most one `append_batch` writes at once, in bytes; a torn batch is
/// at most this long, so recovery never has to look further back.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// `,"mac":"` + 64 hex + `"}`.
const MAC_SUFFIX: usize = 74;
/// `,"prev":"` + 64 hex + `"`.
const PREV_SUFFIX: usize = 74;
/// What readers hold in memory at once: well above two records.
const READ_CHUNK: usize = 4 << 20;

/// An audit event name, as written in the `event` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Event {
    /// The owner granted a tier (`support allow`).
    #[serde(rename = "consent.granted")]
    ConsentGranted,
    /// The owner withdrew the grant (`support revoke`).
    #[serde(rename = "consent.revoked")]
    ConsentRevoked,
    /// A grant ran out (written once per grant, by the daemon).
    #[serde(rename = "consent.expired")]
    ConsentExpired,
    /// A command was refused; `code` says why.
    #[serde(rename = "action.denied")]
    ActionDenied,
    /// A command passed the gate; written (fsynced) before it runs.
    #[serde(rename = "action.started")]
    ActionStarted,
    /// A task ended: status, exit code, duration, output size and digest.
    #[serde(rename = "action.finished")]
    ActionFinished,
    /// A running task was stopped; `by` says who or what.
    #[serde(rename = "task.stopped")]
    TaskStopped,
    /// A task a crashed daemon left was cleaned up at the next start.
    #[serde(rename = "task.aborted")]
    TaskAborted,
    /// A torn last record (a crash mid-write) was cut back; `detail` says how many bytes.
    #[serde(rename = "audit.recovered")]
    AuditRecovered,
    /// The first record of a chain begun while `audit.key` already existed:
    /// an earlier log was removed or moved aside.
    #[serde(rename = "audit.restarted")]
    AuditRestarted,
    /// The daemon started.
    #[serde(rename = "daemon.started")]
    DaemonStarted,
    /// The daemon stopped, after stopping its tasks.
    #[serde(rename = "daemon.stopped")]
    DaemonStopped,
    /// Requests to the control API without the secret (one record per window, with a count).
    #[serde(rename = "control.unauthorized")]
    ControlUnauthorized,
    /// The owner trusted an operator key (`support trust add`).
    #[serde(rename = "trust.added")]
    TrustAdded,
    /// The owner stopped trusting an operator (`support trust remove`).
    #[serde(rename = "trust.removed")]
    TrustRemoved,
    /// `support allow` refused because it ran inside a task's process tree.
    #[serde(rename = "consent.refused")]
    ConsentRefused,
    /// `support trust add` refused because it ran inside a task's process tree.
    #[serde(rename = "trust.refused")]
    TrustRefused,
    /// The daemon's consent watcher ended or panicked: every running task
    /// was stopped (`by: revoke`) and the watcher started again; `detail` says how it ended.
    #[serde(rename = "consent.watcher_restarted")]
    ConsentWatcherRestarted,
    /// Denials of unverified senders (`UNTRUSTED_OPERATOR`, `BAD_SIGNATURE`,
    /// `BAD_FRAME`) in one window, counted: `detail` holds the count, the
    /// codes and the senders (capped); the window's first is also on record in full.
    #[serde(rename = "action.denied.aggregated")]
    ActionDeniedAggregated,
    /// The first record of a chain begun while both `audit.jsonl` and
    /// `audit.key` were missing although the home shows an earlier chain
    /// (`device.key` exists, or this process had written records): the
    /// whole log and its key were removed. `detail` says what showed it.
    #[serde(rename = "audit.reset")]
    AuditReset,
    /// The owner's console (`support console`) refused a request: a bad
    /// login link, or a state change without the session cookie, the
    /// console's own `Origin` or the session's CSRF token; or a login asked
    /// for from inside a task's tree. At most one record per window, the
    /// next counting those left out (as `control.unauthorized`).
    #[serde(rename = "console.refused")]
    ConsoleRefused,
    /// A login link of the owner's console was used: a browser session began.
    #[serde(rename = "console.login")]
    ConsoleLogin,
}

impl Event {
    /// The wire name, e.g. `consent.granted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::ConsentGranted => "consent.granted",
            Event::ConsentRevoked => "consent.revoked",
            Event::ConsentExpired => "consent.expired",
            Event::ActionDenied => "action.denied",
            Event::ActionStarted => "action.started",
            Event::ActionFinished => "action.finished",
            Event::TaskStopped => "task.stopped",
            Event::TaskAborted => "task.aborted",
            Event::AuditRecovered => "audit.recovered",
            Event::AuditRestarted => "audit.restarted",
            Event::DaemonStarted => "daemon.started",
            Event::DaemonStopped => "daemon.stopped",
            Event::ControlUnauthorized => "control.unauthorized",
            Event::TrustAdded => "trust.added",
            Event::TrustRemoved => "trust.removed",
            Event::ConsentRefused => "consent.refused",
            Event::TrustRefused => "trust.refused",
            Event::ConsentWatcherRestarted => "consent.watcher_restarted",
            Event::ActionDeniedAggregated => "action.denied.aggregated",
            Event::AuditReset => "audit.reset",
            Event::ConsoleRefused => "console.refused",
            Event::ConsoleLogin => "console.login",
        }
    }
}

/// One audit record. `seq`, `ts`, `prev` and `mac` are set by
/// [`AuditLog::append`]; callers fill the event and what applies.
/// The field order is part of the format (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// 1, 2, ... with no gap.
    pub seq: u64,
    /// RFC 3339 UTC, microseconds.
    pub ts: String,
    /// What happened.
    pub event: Event,
    /// The grant in force (`g-` and hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// A grant's or an action's tier, 1 to 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<u8>,
    /// The catalogue action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The command's parameters (long values as head, length and SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<BTreeMap<String, String>>,
    /// The operator's request id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The task (`t-` and 16 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// The owner's name for the operator, or an untrusted key's fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// A denial code (DESIGN §7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// A task's end: ok, failed, timeout, cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The last command's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Milliseconds from the start to the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Bytes of output delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    /// SHA-256 of the delivered output, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_sha256: Option<String>,
    /// An agent task's transcript: SHA-256 over its lines, 64 hex digits
    /// (see `crate::transcript`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_sha256: Option<String>,
    /// An interactive session's recording (`STATE/recordings/<task_id>.cast`):
    /// SHA-256 of the whole file, 64 hex digits (`action.finished`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_sha256: Option<String>,
    /// Who stopped a task: owner, operator, revoke, expiry, tier_lowered, shutdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Why, in words (a grant's reason, a denial's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Anything else worth keeping, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Through what the owner made the change, when not the CLI:
    /// `console` (the owner's console in the browser). Absent: the CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The command's nonce (`action.started`, and `action.denied` once the
    /// command's signature held), so that a restarted daemon still knows
    /// it was used (see `daemon::replay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The command's `issued_at` as signed (RFC 3339 UTC), beside `nonce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    /// The previous record's `mac`, 64 hex digits.
    pub prev: String,
    /// HMAC-SHA256 as 64 hex digits; empty until sealed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
}

impl Record {
    /// A record of `event` with every optional field empty.
    pub fn new(event: Event) -> Record {
        Record {
            seq: 0,
            ts: String::new(),
            event,
            grant_id: None,
            tier: None,
            action: None,
            params: None,
            request_id: None,
            task_id: None,
            operator: None,
            code: None,
            status: None,
            exit_code: None,
            duration_ms: None,
            output_bytes: None,
            output_sha256: None,
            transcript_sha256: None,
            recording_sha256: None,
            by: None,
            reason: None,
            detail: None,
            via: None,
            nonce: None,
            issued_at: None,
            prev: String::new(),
            mac: String::new(),
        }
    }
}

/// A failure of the audit log. While any of these stands, nothing runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The log, its key or its directory is unsafe or unreadable.
    #[error(transparent)]
    File(#[from] FileError),
    /// Writing or syncing failed (disk full, read-only, I/O error); `source` says which.
    #[error("cannot write the audit log {path} (nothing was done; check free space and permissions)", path = path.display())]
    Write {
        /// The log.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Another writer held the lock past the deadline set with
    /// [`AuditLog::set_lock_timeout`].
    #[error("the audit log {path} stayed locked by another writer for {waited_ms} ms; nothing was done", path = path.display())]
    LockTimeout {
        /// The log.
        path: PathBuf,
        /// How long it waited, milliseconds.
        waited_ms: u64,
    },
    /// The log has records but its key is gone.
    #[error("the audit key {path} is missing but the log has records; restore the key, or move the log aside to start a new one", path = path.display())]
    KeyMissing {
        /// The key file.
        path: PathBuf,
    },
    /// The key file is not 32 bytes of base64url.
    #[error("the audit key {path} is malformed; restore it from a backup, or move the log and key aside to start anew", path = path.display())]
    KeyMalformed {
        /// The key file.
        path: PathBuf,
    },
    /// The last record cannot be chained onto.
    #[error("the last record of {path} is not sound ({why}); run `support audit --verify`, then move the log aside to start a new one", path = path.display())]
    BadTail {
        /// The log.
        path: PathBuf,
        /// What is wrong with the last record.
        why: String,
    },
    /// A record, or a batch, larger than a reader accepts; nothing was written.
    #[error("audit record too large ({bytes} bytes, at most {limit}); nothing was written")]
    TooLarge {
        /// The record's or batch's size.
        bytes: usize,
        /// The most allowed.
        limit: usize,
    },
    /// Verification found the chain broken at `seq`.
    #[error(
        "audit chain broken at seq {seq}: {why}. Records from there on cannot be trusted; keep a copy of the log as evidence"
    )]
    Broken {
        /// Where the first bad record is (or should be).
        seq: u64,
        /// What is wrong there.
        why: String,
    },
}

/// The position the next record chains from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The last record's seq (0 for an empty log).
    pub seq: u64,
    /// The last record's mac ([`GENESIS_PREV`] for an empty log).
    pub mac: String,
}

impl Head {
    pub(crate) fn genesis() -> Head {
        Head { seq: 0, mac: GENESIS_PREV.into() }
    }
}

#[cfg(test)]
mod tests;
