//! The frames of the audit witness: what a device proves about its audit
//! chain, and what the relay found (docs/PROTOCOL.md, "The audit witness").
//!
//! The relay keeps, per device, the last audit head it was sent. On each
//! `hello_ack` it names that head's seq; in its next `heartbeat` the device
//! answers with a [`WitnessProof`]: the mac its log holds at that seq, after
//! verifying the chain from seq 1. The relay compares the mac with the one
//! it witnessed; any difference stands as an [`AuditAlert`].

use serde::{Deserialize, Serialize};

/// How far the device's own check of its audit log got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainState {
    /// Every record verifies, from seq 1 to the end of the file.
    Verified,
    /// The chain breaks at `verified_seq + 1` (an edit, a deletion, a reorder, a torn line).
    Broken,
    /// There is no log (`audit.jsonl` missing or empty).
    NoLog,
    /// The log cannot be verified: `audit.key` is missing or malformed.
    NoKey,
    /// The log or its key cannot be read (permissions, an unsafe file, I/O).
    Unreadable,
}

/// A device's answer to the head the relay witnessed, sent in `heartbeat.witness`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessProof {
    /// The witnessed seq this answers: `hello_ack.witnessed_seq` in the
    /// first heartbeat of a connection, then the seq of the head the
    /// previous heartbeat reported.
    pub seq: u64,
    /// The `mac` (64 hex digits) of the record at `seq`, only if records
    /// 1 to `seq` all verify under `audit.key`; `None` otherwise.
    pub mac: Option<String>,
    /// Records 1 to `verified_seq` verify (0: none).
    pub verified_seq: u64,
    /// What the device's check of the whole file found.
    pub chain: ChainState,
}

/// What the relay found wrong with a device's chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlertKind {
    /// The chain ends before the witnessed seq: records were cut off, or
    /// a fresh, shorter chain replaced the log.
    Truncated,
    /// The record at the witnessed seq has another mac, or the chain breaks
    /// at or before it: records were edited, deleted, reordered, or a
    /// different chain replaced the log.
    Rewritten,
    /// The log or `audit.key` is gone or unreadable: nothing can be checked.
    Missing,
    /// The heartbeat carried no proof for the witnessed seq.
    Unproven,
}

impl AlertKind {
    /// The wire name, e.g. `truncated`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Truncated => "truncated",
            AlertKind::Rewritten => "rewritten",
            AlertKind::Missing => "missing",
            AlertKind::Unproven => "unproven",
        }
    }
}

/// A standing audit alert: kept in the relay's registry from the first
/// detection until the relay's admin clears it
/// (`support relay clear-alert DEVICE`); later findings do not replace it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditAlert {
    /// What was found.
    pub kind: AlertKind,
    /// The seq the relay had witnessed.
    pub witnessed_seq: u64,
    /// Where the device's chain stood: the last seq that verifies, or the
    /// head it reported when it sent no usable proof.
    pub reported_seq: u64,
    /// When the relay found it, RFC 3339 UTC.
    pub detected_at: String,
    /// What was found, in words.
    pub detail: String,
}
