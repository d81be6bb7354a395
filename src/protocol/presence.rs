//! What a device reports in its heartbeat ([`Heartbeat`]: its grant and
//! scope, tasks, audit head and the proof for the witness) and how the
//! relay lists a device to an operator ([`DeviceEntry`]).

use serde::{Deserialize, Serialize};

use super::witness::{AuditAlert, WitnessProof};

/// Where the device's audit chain stood when it sent a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditHead {
    /// The last record's `seq` written by the daemon.
    pub seq: u64,
    /// That record's `mac` (hex).
    pub mac: String,
}

/// A live grant's scope (`support allow --operator/--only/--max-actions`),
/// as the device reports it; `None` in a field: that part is unscoped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantScope {
    /// Only these operators (the owner's names for them) may act under it.
    #[serde(default)]
    pub operators: Option<Vec<String>>,
    /// Only these catalogue actions may run under it.
    #[serde(default)]
    pub only: Option<Vec<String>>,
    /// At most this many actions start under it.
    #[serde(default)]
    pub max_actions: Option<u32>,
    /// Actions started under it so far; `None` when they cannot be counted.
    #[serde(default)]
    pub actions_used: Option<u32>,
}

/// What a device reports every 30 s; the relay keeps the last one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The live grant's tier, or `None` when consent is off.
    pub tier: Option<u8>,
    /// The live grant's end, RFC 3339 UTC, or `None`.
    pub expires_at: Option<String>,
    /// Tasks running now.
    pub running_tasks: u32,
    /// The audit chain's head as the daemon last wrote it, if any.
    pub audit_head: Option<AuditHead>,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// The daemon's version.
    pub version: String,
    /// The live grant's scope, when it has one (absent: unscoped or off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<GrantScope>,
    /// The device's proof that its chain extends the head the relay
    /// witnessed (absent when the relay has witnessed none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<WitnessProof>,
    /// Fingerprints (`SHA256:…`) of the operator keys the owner trusts: the
    /// relay shows this device's grant, tasks and audit state only to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_operators: Vec<String>,
}

/// One device as `list_devices` (and `support relay devices --json`) shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    /// The device's id (from its key).
    pub device_id: String,
    /// The name the device gave when it enrolled (its host name), printable.
    pub name: String,
    /// Whether it holds an authenticated connection now.
    pub online: bool,
    /// When its last heartbeat arrived (RFC 3339 UTC), if ever since the relay started.
    pub last_heartbeat: Option<String>,
    /// The grant it last reported: tier, or `None` for no consent.
    pub tier: Option<u8>,
    /// The grant it last reported: end (RFC 3339 UTC).
    pub expires_at: Option<String>,
    /// Tasks running at its last heartbeat.
    #[serde(default)]
    pub running_tasks: Option<u32>,
    /// Its audit chain's head at its last heartbeat: a later head with a
    /// lower seq means the log was cut back.
    #[serde(default)]
    pub audit_head: Option<AuditHead>,
    /// Its daemon's version.
    #[serde(default)]
    pub version: Option<String>,
    /// The scope of the grant it last reported, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<GrantScope>,
    /// What the relay found wrong with its audit chain, standing until the
    /// relay's admin clears it; `None` (null) when all is well.
    #[serde(default)]
    pub audit_alert: Option<AuditAlert>,
    /// The device's public key as the relay pinned it at enrolment
    /// (`ed25519:<base64url>`). The operator checks that it derives
    /// `device_id` before trusting an answer signed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}
