//! The wire frames between operator, relay and device (DESIGN §7).
//!
//! This file holds every frame, both directions: the operator's signed
//! [`Run`] command, what the device answers about it ([`DeviceFrame`]:
//! `accepted`, `output`, `result` or `denied`), and what a peer sends the
//! relay ([`ToRelay`]) and hears from it ([`FromRelay`]). Each frame is one
//! JSON object with a `type` tag; unknown types and unknown fields are rejected.
//!
//! The exact bytes an operator and a peer sign are in [`signed`]; the
//! device's answers (made, signed and checked) in [`answer`]; the link's
//! limits and timings in [`limits`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub mod answer;
pub mod limits;
pub mod presence;
pub mod session;
pub mod signed;
pub mod witness;

pub use limits::{
    DEAD_AFTER, FRESHNESS_S, MAX_FRAME_BYTES, MAX_HELLO_BYTES, PING_EVERY, SEND_TIMEOUT, hello_ws_config,
    relay_ws_config, ws_config,
};
pub use presence::{AuditHead, DeviceEntry, GrantScope, Heartbeat};
pub use session::{Keys, SessionInput};
pub use signed::{RUN_CONTEXT, hello_bytes};
pub use witness::{AlertKind, AuditAlert, ChainState, WitnessProof};

/// The relay protocol's version (docs/PROTOCOL.md's title): the `v1` of the
/// WebSocket paths ([`Role::path`]) and of the signed context strings
/// ([`RUN_CONTEXT`], [`answer::ANSWER_CONTEXT`], [`session::INPUT_CONTEXT`]).
pub const PROTOCOL_VERSION: u32 = 1;

/// A new request id: `r-` and 16 random hex digits.
pub fn new_request_id() -> String {
    format!("r-{}", crate::random_hex(8))
}

/// The operator's command to run one catalogued action on one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// Chosen by the operator; 1 to 64 of `[A-Za-z0-9_-]`.
    pub request_id: String,
    /// The device it is for (see [`crate::PublicKey::device_id`]).
    pub device_id: String,
    /// A catalogue action name.
    pub action: String,
    /// Parameter values by name.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// When the operator signed it: RFC 3339 UTC (milliseconds when made here).
    pub issued_at: String,
    /// 16 to 64 of `[A-Za-z0-9_-]`, random, never reused.
    pub nonce: String,
    /// The operator's public key, `ed25519:<base64url>`.
    pub operator: String,
    /// Ed25519 signature over [`Run::signed_bytes`], base64url (64 bytes).
    pub sig: String,
}

impl Run {
    /// Checks the shape of the ids: `request_id`, `device_id` and `nonce`
    /// are each one safe segment of bounded length.
    ///
    /// # Errors
    /// A message naming the field.
    pub fn check_shape(&self) -> Result<(), String> {
        let segment = |name: &str, v: &str, min: usize, max: usize| {
            if (min..=max).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                Ok(())
            } else {
                Err(format!("{name} must be {min} to {max} of [A-Za-z0-9_-]"))
            }
        };
        segment("request_id", &self.request_id, 1, 64)?;
        segment("device_id", &self.device_id, 1, 64)?;
        segment("nonce", &self.nonce, 16, 64)?;
        if self.action.len() > 64 {
            return Err("action is longer than 64 bytes".into());
        }
        Ok(())
    }
}

/// Why a command was refused (DESIGN §7); the wire form is the
/// SCREAMING_SNAKE_CASE name, e.g. `NO_CONSENT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum DenyCode {
    /// The operator key is not in `trusted_operators.toml`.
    UntrustedOperator,
    /// The signature does not verify, or it was made for another device.
    BadSignature,
    /// `issued_at` is more than 120 s from the device's clock.
    StaleCommand,
    /// The nonce was seen before.
    Replay,
    /// No such action in the catalogue (or it is switched off).
    UnknownAction,
    /// A parameter is unknown, missing or fails its type.
    InvalidParams,
    /// No live grant.
    NoConsent,
    /// The grant's tier is below the action's.
    TierInsufficient,
    /// The device is at its limit of running tasks or recent commands.
    Busy,
    /// The `action.started` record could not be written durably.
    AuditUnavailable,
    /// The frame's ids are malformed.
    BadFrame,
    /// The owner's agent cannot be started: its program is not installed,
    /// or its agent host's secret file cannot be read. The message names
    /// the program or file and the `[agent]` setting to change.
    AgentUnavailable,
    /// The owner's grant names operators (`support allow --operator`), and
    /// not this one.
    OperatorNotGranted,
    /// The owner's grant names actions (`support allow --only`), and not
    /// this one.
    ActionNotGranted,
    /// The owner's grant allows so many actions (`support allow
    /// --max-actions`), and that many have started under it.
    BudgetExhausted,
}

impl DenyCode {
    /// The wire name, e.g. `NO_CONSENT`.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyCode::UntrustedOperator => "UNTRUSTED_OPERATOR",
            DenyCode::BadSignature => "BAD_SIGNATURE",
            DenyCode::StaleCommand => "STALE_COMMAND",
            DenyCode::Replay => "REPLAY",
            DenyCode::UnknownAction => "UNKNOWN_ACTION",
            DenyCode::InvalidParams => "INVALID_PARAMS",
            DenyCode::NoConsent => "NO_CONSENT",
            DenyCode::TierInsufficient => "TIER_INSUFFICIENT",
            DenyCode::Busy => "BUSY",
            DenyCode::AuditUnavailable => "AUDIT_UNAVAILABLE",
            DenyCode::BadFrame => "BAD_FRAME",
            DenyCode::AgentUnavailable => "AGENT_UNAVAILABLE",
            DenyCode::OperatorNotGranted => "OPERATOR_NOT_GRANTED",
            DenyCode::ActionNotGranted => "ACTION_NOT_GRANTED",
            DenyCode::BudgetExhausted => "BUDGET_EXHAUSTED",
        }
    }
}

impl fmt::Display for DenyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Every command exited 0.
    Ok,
    /// A command exited non-zero, was killed by a signal, or could not start.
    Failed,
    /// It ran past the action's `timeout_s`.
    Timeout,
    /// It was stopped; `cancelled_by` says by whom.
    Cancelled,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Who or what stopped a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoppedBy {
    /// `support stop`.
    Owner,
    /// The operator's `cancel`.
    Operator,
    /// The grant was withdrawn (or became unsound).
    Revoke,
    /// The grant ran out.
    Expiry,
    /// A new grant at a lower tier.
    TierLowered,
    /// The daemon is shutting down.
    Shutdown,
    /// The owner no longer trusts the operator whose command started it
    /// (`support trust remove`, or an edit of `trusted_operators.toml`).
    TrustRemoved,
    /// An interactive session whose device lost its link to the relay.
    LinkLost,
}

impl StoppedBy {
    /// The wire name, e.g. `tier_lowered`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoppedBy::Owner => "owner",
            StoppedBy::Operator => "operator",
            StoppedBy::Revoke => "revoke",
            StoppedBy::Expiry => "expiry",
            StoppedBy::TierLowered => "tier_lowered",
            StoppedBy::Shutdown => "shutdown",
            StoppedBy::TrustRemoved => "trust_removed",
            StoppedBy::LinkLost => "link_lost",
        }
    }
}

/// Which pipe a chunk of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// The process's standard output.
    Stdout,
    /// Its standard error.
    Stderr,
}

/// The end of a task, as sent to the operator and written to the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskResult {
    /// How it ended.
    pub status: Status,
    /// The last command's exit code; `None` if killed by a signal or never started.
    pub exit_code: Option<i32>,
    /// Milliseconds from spawn to the end.
    pub duration_ms: u64,
    /// Whether output was cut at the action's `max_output_bytes`.
    pub truncated: bool,
    /// Bytes of output delivered (at most `max_output_bytes`).
    pub output_bytes: u64,
    /// SHA-256 of the delivered output (stdout and stderr in the order read), hex.
    pub output_sha256: String,
    /// Set when `status` is `cancelled`.
    pub cancelled_by: Option<StoppedBy>,
    /// Why it failed or timed out, for people, when the exit code does not
    /// say it: `killed by signal 9`, `the agent host answered 403 …`,
    /// `no progress for 300 s`. Absent from the JSON when `None` (older
    /// peers and records have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A frame from the device about one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeviceFrame {
    /// The command passed the gate and `action.started` is on the record.
    Accepted {
        /// The request it answers.
        request_id: String,
        /// The device's id for the task (`t-` and 16 hex digits).
        task_id: String,
        /// This answer's place among the request's answers: 0, 1, ... (see [`answer`]).
        #[serde(default, skip_serializing_if = "answer::is_zero")]
        index: u64,
        /// Answers of this request the device left out since it signed the
        /// previous one (its offline queue was full), said under its signature.
        #[serde(default, skip_serializing_if = "answer::is_zero")]
        dropped: u64,
        /// The device key's Ed25519 signature over [`answer::answer_bytes`], base64url.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        sig: String,
    },
    /// A chunk of output; `seq` counts from 0 per request; `data` is UTF-8
    /// (invalid sequences replaced by U+FFFD).
    Output {
        /// The request it answers.
        request_id: String,
        /// 0, 1, ... per request.
        seq: u64,
        /// The pipe it came from.
        stream: Stream,
        /// The text, at most 16 KiB.
        data: String,
        /// This answer's place among the request's answers: 0, 1, ... (see [`answer`]).
        #[serde(default, skip_serializing_if = "answer::is_zero")]
        index: u64,
        /// Answers of this request the device left out since it signed the
        /// previous one (its offline queue was full), said under its signature.
        #[serde(default, skip_serializing_if = "answer::is_zero")]
        dropped: u64,
        /// The device key's Ed25519 signature over [`answer::answer_bytes`], base64url.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        sig: String,
    },
    /// Bytes an interactive session's pty wrote, as they were (see [`session`]).
    Terminal {
        /// The request it answers.
        request_id: String,
        /// 0, 1, ... per request.
        seq: u64,
        /// The bytes, base64 (standard, padded), at most 16 KiB decoded.
        data: String,
        /// This answer's place among the request's answers: 0, 1, ... (see [`answer`]).
        #[serde(default, skip_serializing_if = "answer::is_zero")]
        index: u64,
        /// As for `output`: answers left out since the previous one signed.
        #[serde(default, skip_serializing_if = "answer::is_zero")]
        dropped: u64,
        /// The device key's Ed25519 signature over [`answer::answer_bytes`], base64url.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        sig: String,
    },
    /// The task ended; the fields are those of [`TaskResult`].
    Result {
        /// The request it answers.
        request_id: String,
        /// [`TaskResult::status`].
        status: Status,
        /// [`TaskResult::exit_code`].
        exit_code: Option<i32>,
        /// [`TaskResult::duration_ms`].
        duration_ms: u64,
        /// [`TaskResult::truncated`].
        truncated: bool,
        /// [`TaskResult::output_sha256`].
        output_sha256: String,
        /// [`TaskResult::output_bytes`].
        output_bytes: u64,
        /// [`TaskResult::cancelled_by`].
        cancelled_by: Option<StoppedBy>,
        /// [`TaskResult::reason`]; absent when `None`, so older operators read the frame.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// This answer's place among the request's answers: 0, 1, ... (see [`answer`]).
        #[serde(default, skip_serializing_if = "answer::is_zero")]
        index: u64,
        /// Answers of this request the device left out since it signed the
        /// previous one (its offline queue was full), said under its signature.
        #[serde(default, skip_serializing_if = "answer::is_zero")]
        dropped: u64,
        /// The device key's Ed25519 signature over [`answer::answer_bytes`], base64url.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        sig: String,
    },
    /// The command was refused; nothing ran.
    Denied {
        /// The request it answers.
        request_id: String,
        /// Why (DESIGN §7).
        code: DenyCode,
        /// Why, for people.
        message: String,
        /// This answer's place among the request's answers: 0, 1, ... (see [`answer`]).
        #[serde(default, skip_serializing_if = "answer::is_zero")]
        index: u64,
        /// Answers of this request the device left out since it signed the
        /// previous one (its offline queue was full), said under its signature.
        #[serde(default, skip_serializing_if = "answer::is_zero")]
        dropped: u64,
        /// The device key's Ed25519 signature over [`answer::answer_bytes`], base64url.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        sig: String,
    },
}

/// Which side of the relay a peer is on; it picks the `hello` context.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A daemon on an owner's machine (`/v1/device`).
    Device,
    /// A support operator's client (`/v1/operator`).
    Operator,
}

impl Role {
    /// The WebSocket path this role dials.
    pub fn path(self) -> &'static str {
        match self {
            Role::Device => "/v1/device",
            Role::Operator => "/v1/operator",
        }
    }
}

/// Relay error codes (DESIGN §7), plus `BUSY` for the relay's own limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[non_exhaustive]
pub enum RelayCode {
    /// The `hello` failed: unknown, unpinned or mis-signed key, bad or used token.
    Unauthorized,
    /// The device has no connection to the relay now.
    DeviceOffline,
    /// The frame is not valid JSON, not a known type, has unknown fields,
    /// is binary, or breaks a rule of the protocol.
    BadFrame,
    /// The relay's limit for this peer is reached (in-flight requests, queue).
    Busy,
    /// The device is held by another relay of the cluster and this relay
    /// cannot reach the cluster's NATS now (`--cluster`; it reconnects by
    /// itself): devices and operators connected to this relay are still served.
    ClusterUnavailable,
}

impl RelayCode {
    /// The wire name, e.g. `DEVICE_OFFLINE`.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayCode::Unauthorized => "UNAUTHORIZED",
            RelayCode::DeviceOffline => "DEVICE_OFFLINE",
            RelayCode::BadFrame => "BAD_FRAME",
            RelayCode::Busy => "BUSY",
            RelayCode::ClusterUnavailable => "CLUSTER_UNAVAILABLE",
        }
    }
}

impl fmt::Display for RelayCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every frame a device or an operator sends to the relay.
///
/// A device sends `hello`, `heartbeat` and its answers (`accepted`,
/// `output`, `terminal`, `result`, `denied`); an operator sends `hello`, `run`,
/// `cancel`, `list_devices`, `input` and `resize`. The relay refuses a frame sent by the
/// wrong role with `BAD_FRAME`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToRelay {
    /// The answer to `challenge`: who this is, proved by a signature over
    /// [`hello_bytes`]. `id` is the device id (devices) or the key's
    /// fingerprint (operators); both derive from `public_key`.
    Hello {
        /// Which endpoint it dialled, said again.
        role: Role,
        /// The device id, or the operator key's fingerprint.
        id: String,
        /// `ed25519:<base64url>`.
        public_key: String,
        /// The peer's version (`CARGO_PKG_VERSION`).
        version: String,
        /// Ed25519 over [`hello_bytes`], base64url.
        sig: String,
        /// A device's one-time enrollment token, on its first connection.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        enroll_token: Option<String>,
        /// A device's host name, shown to operators.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// A device's state, every 30 s.
    Heartbeat(Heartbeat),
    /// An operator's signed command, for the device it names.
    Run(Run),
    /// An operator asks that its running request be stopped.
    Cancel {
        /// The device running it.
        device_id: String,
        /// The operator's request.
        request_id: String,
    },
    /// An operator asks for the device list.
    ListDevices {},
    /// An operator's `input` or `resize` for its running session (see [`session`]).
    #[serde(untagged)]
    Session(SessionInput),
    /// A device's answer about a command (routed to the operator that sent it).
    #[serde(untagged)]
    Answer(DeviceFrame),
}

impl ToRelay {
    /// The frame's `type`, e.g. `run`.
    pub fn kind(&self) -> &'static str {
        match self {
            ToRelay::Hello { .. } => "hello",
            ToRelay::Heartbeat(_) => "heartbeat",
            ToRelay::Run(_) => "run",
            ToRelay::Cancel { .. } => "cancel",
            ToRelay::ListDevices {} => "list_devices",
            ToRelay::Session(s) => s.kind(),
            ToRelay::Answer(DeviceFrame::Terminal { .. }) => "terminal",
            ToRelay::Answer(DeviceFrame::Accepted { .. }) => "accepted",
            ToRelay::Answer(DeviceFrame::Output { .. }) => "output",
            ToRelay::Answer(DeviceFrame::Result { .. }) => "result",
            ToRelay::Answer(DeviceFrame::Denied { .. }) => "denied",
        }
    }
}

/// Every frame the relay sends to a device or an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromRelay {
    /// The first frame on every connection: sign this nonce (32 random bytes, hex).
    Challenge {
        /// 32 random bytes, hex.
        nonce: String,
        /// The relay's version.
        version: String,
    },
    /// The `hello` passed; `name` is the device's or operator's registered name.
    HelloAck {
        /// The peer's id, as proved.
        id: String,
        /// Its registered name.
        name: String,
        /// To a device: the seq of the audit head the relay witnessed last,
        /// which its next `heartbeat` must prove; absent when none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        witnessed_seq: Option<u64>,
    },
    /// Something was refused. With a `request_id` it is about that request
    /// (e.g. `DEVICE_OFFLINE`); without one, about the connection, which
    /// the relay then closes if the peer is not yet authenticated.
    Error {
        /// What was refused.
        code: RelayCode,
        /// Why, for people.
        message: String,
        /// The request it is about, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// To a device: an operator's signed command, as the operator sent it.
    Run(Run),
    /// To a device: stop the task started by `request_id` (an operator's `cancel`).
    Cancel {
        /// The operator's request.
        request_id: String,
    },
    /// To an operator: its `cancel` reached the device.
    Forwarded {
        /// The request cancelled.
        request_id: String,
    },
    /// To an operator: the answer to `list_devices`.
    Devices {
        /// Every enrolled device.
        devices: Vec<DeviceEntry>,
    },
    /// To a device, after each heartbeat: the head the relay witnesses now,
    /// and the audit alert that stands against this device, if any.
    Witnessed {
        /// The seq now witnessed (the next heartbeat proves it), or `None`.
        seq: Option<u64>,
        /// The standing alert, if any.
        alert: Option<AuditAlert>,
    },
    /// To a device: an operator's `input` or `resize`, as the operator sent it.
    #[serde(untagged)]
    Session(SessionInput),
    /// To an operator: the device's answer about its request.
    #[serde(untagged)]
    Answer(DeviceFrame),
}

/// Why a text frame was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Over [`MAX_FRAME_BYTES`].
    #[error("frame of {0} bytes is over the 1 MiB limit")]
    TooLarge(usize),
    /// Not one JSON object of a known type with known fields.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Parses one text frame into `T` ([`ToRelay`] or [`FromRelay`]).
///
/// # Errors
/// [`FrameError::TooLarge`] over 1 MiB; [`FrameError::Malformed`] for
/// anything but one JSON object of a known `type` with known fields.
pub fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, FrameError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(text.len()));
    }
    serde_json::from_str(text).map_err(|e| {
        let mut why = e.to_string();
        // At a character boundary: a message may quote the peer's text.
        if let Some((cut, _)) = why.char_indices().nth(200) {
            why.truncate(cut);
        }
        FrameError::Malformed(why)
    })
}

/// Serializes a frame as one line of compact JSON.
pub fn encode<T: Serialize>(frame: &T) -> String {
    serde_json::to_string(frame).expect("frames are plain data and always serialize")
}

#[cfg(test)]
mod tests;
