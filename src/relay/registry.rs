//! The relay's registry: enrolled devices (device id → public key),
//! operators (name → public key) and one-time enrollment tokens.
//!
//! It lives in `registry.json` in the relay's state directory, 0600,
//! written atomically under an exclusive lock on `registry.lock`, so the
//! admin subcommands (`enroll-token`, `add-operator`) and a running relay
//! can both change it. The relay re-reads it whenever the file changed
//! (inode, size, mtime), so admin changes take effect without a restart.
//! Tokens are stored as SHA-256 hashes: the file never holds a usable token.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::identity::PublicKey;
use crate::paths::{self, FileError};
use crate::protocol::{AuditAlert, AuditHead};

/// The largest registry file read (bytes): room for a few hundred thousand devices.
const MAX_REGISTRY_BYTES: u64 = 256 << 20;

/// A registry failure; the message names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry or its directory is unsafe or unreadable.
    #[error(transparent)]
    File(#[from] FileError),
    /// `registry.json` does not parse.
    #[error("{path}: not a valid registry ({why}); fix or move it aside")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// `registry.lock` cannot be locked.
    #[error("cannot lock {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// An admin change that conflicts with what is there.
    #[error("{0}")]
    Conflict(String),
    /// The cluster's registry (JetStream key-value, `--cluster`) cannot be
    /// reached or read; `what` says what was being done.
    #[error("{what} (the cluster's NATS at {url})")]
    Cluster {
        /// What was being done, and what NATS said.
        what: String,
        /// The cluster's NATS URL.
        url: String,
    },
}

/// An enrolled device.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRecord {
    /// `ed25519:<base64url>`, pinned at enrollment.
    pub public_key: String,
    /// The name it gave at enrollment (printable, ≤ 64 chars).
    pub name: String,
    /// RFC 3339 UTC.
    pub enrolled_at: String,
}

/// An operator the relay admits.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorRecord {
    /// `ed25519:<base64url>`.
    pub public_key: String,
    /// RFC 3339 UTC.
    pub added_at: String,
}

/// A one-time enrollment token, by hash. Kept until it expires, used or
/// not, so `support relay tokens` can say which were used.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// RFC 3339 UTC; the token is refused from then on.
    pub expires_at: DateTime<Utc>,
    /// RFC 3339 UTC; `None` in registries written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    /// When a device enrolled with it (RFC 3339 UTC); a used token is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<DateTime<Utc>>,
    /// The device id that enrolled with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by: Option<String>,
}

/// How many hex digits of a token's hash name it (`support relay tokens`,
/// `revoke-token ID`): 48 bits, so ids of live tokens do not collide, and
/// a prefix of a hash says nothing about the token itself.
pub const TOKEN_ID_HEX: usize = 12;

impl TokenRecord {
    /// The token's id: the first [`TOKEN_ID_HEX`] hex digits of its hash.
    pub fn id(&self) -> &str {
        crate::text::head(&self.sha256, TOKEN_ID_HEX)
    }

    /// Whether a device may still enroll with it at `now`: unused, unexpired.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.used_at.is_none() && self.expires_at > now
    }
}

/// The whole registry file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Enrolled devices by id, each pinned to its key.
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceRecord>,
    /// Admitted operators by name.
    #[serde(default)]
    pub operators: BTreeMap<String, OperatorRecord>,
    /// Enrolment tokens until they expire, used or not.
    #[serde(default)]
    pub tokens: Vec<TokenRecord>,
    /// What the relay witnessed of each device's audit chain, by device id
    /// (the audit witness: `src/relay/witness.rs`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub witness: BTreeMap<String, WitnessRecord>,
}

/// The audit head the relay last witnessed for one device, and the alert
/// that stands against it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessRecord {
    /// The head of the device's last heartbeat (`None`: it reported none).
    pub head: Option<AuditHead>,
    /// The first problem found since the admin last cleared one; later
    /// findings do not replace it.
    #[serde(default)]
    pub alert: Option<AuditAlert>,
}

/// What identifies one version of the file on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn registry_path(dir: &Path) -> PathBuf {
    crate::paths::RelayPaths::new(dir).registry()
}

/// The stamp of `registry.json` now (default if missing).
pub fn stamp(dir: &Path) -> Stamp {
    match std::fs::symlink_metadata(registry_path(dir)) {
        Ok(m) => Stamp {
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        },
        Err(_) => Stamp::default(),
    }
}

/// Hashes an enrollment token for storage and lookup.
pub fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()))
}

impl Registry {
    /// Reads `registry.json` in `dir` (an empty registry if missing) and its stamp.
    ///
    /// # Errors
    /// [`RegistryError::File`] for an unsafe or unreadable file;
    /// [`RegistryError::Malformed`] for bad JSON.
    pub fn load(dir: &Path) -> Result<(Registry, Stamp), RegistryError> {
        let path = registry_path(dir);
        let stamp = stamp(dir);
        let Some(bytes) = paths::read_secret(&path, MAX_REGISTRY_BYTES)? else {
            return Ok((Registry::default(), stamp));
        };
        let registry = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::Malformed { path: path.clone(), why: e.to_string() })?;
        Ok((registry, stamp))
    }

    /// Changes the registry under its lock: reads it, applies `change`, and
    /// writes it atomically if anything changed (expired tokens are dropped
    /// then too). Returns what `change` returned and the new state.
    ///
    /// # Errors
    /// As [`Registry::load`]; [`RegistryError::Lock`]; whatever `change`
    /// returns (nothing is written then).
    pub fn update<T>(
        dir: &Path,
        change: impl FnOnce(&mut Registry) -> Result<T, RegistryError>,
    ) -> Result<(T, Registry, Stamp), RegistryError> {
        paths::ensure_dir(dir)?;
        let lock_path = crate::paths::RelayPaths::new(dir).registry_lock();
        let lock = open_lock(&lock_path)?;
        lock.lock().map_err(|source| RegistryError::Lock { path: lock_path.clone(), source })?;
        let (mut registry, _) = Registry::load(dir)?;
        let before = serde_json::to_vec_pretty(&registry).expect("the registry always serializes");
        let out = change(&mut registry)?;
        let now = Utc::now();
        registry.tokens.retain(|t| t.expires_at > now);
        let bytes = serde_json::to_vec_pretty(&registry).expect("the registry always serializes");
        if bytes != before {
            paths::write_atomic(&registry_path(dir), &bytes)?;
        }
        let stamp = stamp(dir);
        drop(lock);
        Ok((out, registry, stamp))
    }

    /// The operator's name for `key`, if it is registered.
    pub fn operator_named(&self, key: &str) -> Option<&str> {
        self.operators.iter().find(|(_, o)| o.public_key == key).map(|(n, _)| n.as_str())
    }
}

fn open_lock(path: &Path) -> Result<File, RegistryError> {
    paths::create_new(path, b"")?;
    Ok(paths::open_read(path)?.ok_or_else(|| FileError::Io {
        op: "open",
        path: path.into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?)
}

/// A fresh enrolment token: `et-` and 32 random bytes, base64url.
pub(crate) fn random_token() -> String {
    use base64::Engine as _;
    let mut raw = [0u8; 32];
    crate::fill_random(&mut raw);
    format!("et-{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// Why `t` cannot be revoked, if it was used: remove its device instead.
pub(crate) fn used_conflict(t: &TokenRecord) -> Option<RegistryError> {
    let (Some(at), by) = (t.used_at, &t.used_by) else { return None };
    let by = by.as_deref().unwrap_or("a device");
    Some(RegistryError::Conflict(format!(
        "token {} was used by {by} at {}; remove that device instead (support relay remove-device {by})",
        t.id(),
        crate::time::rfc3339(at)
    )))
}

/// Makes a one-time token valid for `ttl` and records its hash. Returns
/// the token (`et-` and 32 random bytes, base64url): shown once, never stored.
///
/// # Errors
/// As [`Registry::update`].
pub fn new_token(dir: &Path, ttl: chrono::Duration) -> Result<(String, DateTime<Utc>), RegistryError> {
    let token = random_token();
    let now = Utc::now();
    let expires_at = now + ttl;
    let sha256 = token_hash(&token);
    Registry::update(dir, |r| {
        r.tokens.push(TokenRecord { sha256, expires_at, created_at: Some(now), used_at: None, used_by: None });
        Ok(())
    })?;
    Ok((token, expires_at))
}

/// Adds (or re-keys nothing: a name already used for another key is a
/// conflict) an operator.
///
/// # Errors
/// [`RegistryError::Conflict`] when the name or key is taken; as
/// [`Registry::update`].
pub fn add_operator(dir: &Path, name: &str, key: &PublicKey) -> Result<bool, RegistryError> {
    let key = key.to_string();
    let ((added, _), _, _) = Registry::update(dir, |r| {
        if let Some(existing) = r.operators.get(name) {
            return if existing.public_key == key {
                Ok((false, ()))
            } else {
                Err(RegistryError::Conflict(format!("operator {name:?} already has another key")))
            };
        }
        if let Some(other) = r.operator_named(&key) {
            return Err(RegistryError::Conflict(format!("that key is already registered as {other:?}")));
        }
        r.operators.insert(
            name.into(),
            OperatorRecord { public_key: key.clone(), added_at: crate::time::rfc3339(Utc::now()) },
        );
        Ok((true, ()))
    })?;
    Ok(added)
}

/// Removes an operator by name. Returns whether it was there.
///
/// # Errors
/// As [`Registry::update`].
pub fn remove_operator(dir: &Path, name: &str) -> Result<bool, RegistryError> {
    let (removed, _, _) = Registry::update(dir, |r| Ok(r.operators.remove(name).is_some()))?;
    Ok(removed)
}

/// Forgets an enrolled device: its key is no longer pinned, so it can come
/// back only with a new enrolment token. Returns whether it was there.
///
/// # Errors
/// As [`Registry::update`].
pub fn remove_device(dir: &Path, device_id: &str) -> Result<bool, RegistryError> {
    let (removed, _, _) = Registry::update(dir, |r| Ok(r.devices.remove(device_id).is_some()))?;
    Ok(removed)
}

/// Renames an enrolled device (the caller checks the name is printable).
/// Returns whether the device was there.
///
/// # Errors
/// As [`Registry::update`].
pub fn rename_device(dir: &Path, device_id: &str, name: &str) -> Result<bool, RegistryError> {
    let (renamed, _, _) =
        Registry::update(dir, |r| Ok(r.devices.get_mut(device_id).map(|d| d.name = name.to_string()).is_some()))?;
    Ok(renamed)
}

/// Withdraws an unused enrolment token named by its id (a prefix of its
/// hash, see [`TokenRecord::id`]), its whole hash, or the token itself.
/// Returns the record withdrawn, or `None` when no token matches.
///
/// # Errors
/// [`RegistryError::Conflict`] when the token was used already (remove
/// the device instead) or the id names more than one token; as [`Registry::update`].
pub fn revoke_token(dir: &Path, given: &str) -> Result<Option<TokenRecord>, RegistryError> {
    let hash = token_hash(given);
    let (revoked, _, _) = Registry::update(dir, |r| {
        let matches = |t: &TokenRecord| t.sha256 == hash || t.sha256 == given || t.id() == given;
        let found: Vec<usize> = (0..r.tokens.len()).filter(|&i| matches(&r.tokens[i])).collect();
        let &[i] = found.as_slice() else {
            return if found.is_empty() {
                Ok(None)
            } else {
                Err(RegistryError::Conflict(format!("{given:?} names {} tokens; give the whole hash", found.len())))
            };
        };
        if let Some(conflict) = used_conflict(&r.tokens[i]) {
            return Err(conflict);
        }
        Ok(Some(r.tokens.remove(i)))
    })?;
    Ok(revoked)
}

/// Why an enrollment was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Enroll {
    /// Pinned now.
    Pinned,
    /// Already pinned to this key.
    Known,
    /// No valid token: unknown, used or expired.
    BadToken,
    /// The id is pinned to another key.
    OtherKey,
}

/// Pins `device_id` → `key` if `token` is valid (and consumes it); or
/// confirms an existing pin.
///
/// # Errors
/// As [`Registry::update`].
pub fn enroll(
    dir: &Path,
    device_id: &str,
    key: &str,
    name: &str,
    token: Option<&str>,
) -> Result<(Enroll, Registry, Stamp), RegistryError> {
    let now = Utc::now();
    Registry::update(dir, |r| {
        if let Some(d) = r.devices.get(device_id) {
            return Ok(if d.public_key == key { Enroll::Known } else { Enroll::OtherKey });
        }
        let Some(token) = token else { return Ok(Enroll::BadToken) };
        let hash = token_hash(token);
        let Some(used) = r.tokens.iter_mut().find(|t| t.sha256 == hash && t.is_live(now)) else {
            return Ok(Enroll::BadToken);
        };
        used.used_at = Some(now);
        used.used_by = Some(device_id.into());
        // A device enrolled anew starts a new witness: an old one is of a removed device.
        r.witness.remove(device_id);
        r.devices.insert(
            device_id.into(),
            DeviceRecord { public_key: key.into(), name: name.into(), enrolled_at: crate::time::rfc3339(now) },
        );
        Ok(Enroll::Pinned)
    })
}

/// Records what the relay witnessed, by device id: each record's head
/// becomes the witnessed head, and its alert, if any, is set only where
/// none stands (the first finding is the one kept). Returns the new state.
///
/// # Errors
/// As [`Registry::update`].
pub fn witness(dir: &Path, records: BTreeMap<String, WitnessRecord>) -> Result<(Registry, Stamp), RegistryError> {
    let ((), registry, stamp) = Registry::update(dir, |r| {
        for (id, record) in records {
            let w = r.witness.entry(id).or_default();
            w.head = record.head;
            if w.alert.is_none() {
                w.alert = record.alert;
            }
        }
        Ok(())
    })?;
    Ok((registry, stamp))
}

/// Clears the audit alert standing against `device_id`; the witnessed head
/// stays. Returns the alert that was cleared, if any.
///
/// # Errors
/// As [`Registry::update`].
pub fn clear_alert(dir: &Path, device_id: &str) -> Result<Option<AuditAlert>, RegistryError> {
    let (cleared, _, _) = Registry::update(dir, |r| Ok(r.witness.get_mut(device_id).and_then(|w| w.alert.take())))?;
    Ok(cleared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_enrolls_one_device_once_and_pins_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (token, _) = new_token(dir.path(), chrono::Duration::hours(1)).unwrap();
        let raw = std::fs::read_to_string(dir.path().join("registry.json")).unwrap();
        assert!(!raw.contains(&token), "the token itself is never stored");
        let (e, ..) = enroll(dir.path(), "d-1", "k1", "host", Some(&token)).unwrap();
        assert_eq!(e, Enroll::Pinned);
        assert_eq!(enroll(dir.path(), "d-2", "k2", "host", Some(&token)).unwrap().0, Enroll::BadToken);
        assert_eq!(enroll(dir.path(), "d-1", "k1", "host", None).unwrap().0, Enroll::Known);
        assert_eq!(enroll(dir.path(), "d-1", "k9", "host", None).unwrap().0, Enroll::OtherKey);
        let (expired, _) = new_token(dir.path(), chrono::Duration::seconds(-1)).unwrap();
        assert_eq!(enroll(dir.path(), "d-3", "k3", "host", Some(&expired)).unwrap().0, Enroll::BadToken);
    }

    #[test]
    fn a_used_token_stays_listed_as_used_and_only_an_unused_one_can_be_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let (used, _) = new_token(dir.path(), chrono::Duration::hours(1)).unwrap();
        let (spare, _) = new_token(dir.path(), chrono::Duration::hours(1)).unwrap();
        enroll(dir.path(), "d-1", "k1", "host", Some(&used)).unwrap();
        let (r, _) = Registry::load(dir.path()).unwrap();
        let record = r.tokens.iter().find(|t| t.sha256 == token_hash(&used)).unwrap();
        assert_eq!((record.used_by.as_deref(), record.used_at.is_some()), (Some("d-1"), true));
        assert!(record.created_at.is_some() && record.id().len() == TOKEN_ID_HEX);
        assert!(matches!(revoke_token(dir.path(), record.id()), Err(RegistryError::Conflict(_))));
        let spare_id = token_hash(&spare)[..TOKEN_ID_HEX].to_string();
        assert!(revoke_token(dir.path(), "000000000000").unwrap().is_none());
        assert_eq!(revoke_token(dir.path(), &spare_id).unwrap().unwrap().id(), spare_id);
        assert_eq!(enroll(dir.path(), "d-2", "k2", "host", Some(&spare)).unwrap().0, Enroll::BadToken);
    }

    #[test]
    fn a_registry_from_before_token_ids_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let old = r#"{"devices":{},"operators":{},"tokens":[{"sha256":"ab","expires_at":"2999-01-01T00:00:00Z"}]}"#;
        crate::paths::write_atomic(&registry_path(dir.path()), old.as_bytes()).unwrap();
        let (r, _) = Registry::load(dir.path()).unwrap();
        assert!(r.tokens[0].created_at.is_none() && r.tokens[0].is_live(Utc::now()));
    }

    #[test]
    fn the_witness_keeps_the_first_alert_until_it_is_cleared_and_the_head_through_it() {
        use crate::protocol::AlertKind;
        let dir = tempfile::tempdir().unwrap();
        let head = |seq| Some(AuditHead { seq, mac: format!("{seq:064x}") });
        let alert =
            |kind| AuditAlert { kind, witnessed_seq: 5, reported_seq: 2, detected_at: "t".into(), detail: "d".into() };
        let put = |seq, a: Option<AuditAlert>| {
            witness(dir.path(), BTreeMap::from([("d-1".to_string(), WitnessRecord { head: head(seq), alert: a })]))
                .unwrap()
        };
        put(5, None);
        put(2, Some(alert(AlertKind::Truncated)));
        let (r, _) = put(9, Some(alert(AlertKind::Rewritten)));
        let w = &r.witness["d-1"];
        assert_eq!((w.head.as_ref().unwrap().seq, w.alert.as_ref().unwrap().kind), (9, AlertKind::Truncated));
        assert_eq!(clear_alert(dir.path(), "d-1").unwrap().unwrap().kind, AlertKind::Truncated);
        assert_eq!(clear_alert(dir.path(), "d-1").unwrap(), None);
        let (r, _) = Registry::load(dir.path()).unwrap();
        assert_eq!(r.witness["d-1"], WitnessRecord { head: head(9), alert: None }, "the head stays");
    }

    #[test]
    fn operator_names_and_keys_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = crate::KeyPair::generate();
        let (b, _) = crate::KeyPair::generate();
        assert!(add_operator(dir.path(), "alice", &a.public_key()).unwrap());
        assert!(!add_operator(dir.path(), "alice", &a.public_key()).unwrap());
        assert!(add_operator(dir.path(), "alice", &b.public_key()).is_err());
        assert!(add_operator(dir.path(), "bob", &a.public_key()).is_err());
        let (r, _) = Registry::load(dir.path()).unwrap();
        assert_eq!(r.operator_named(&a.public_key().to_string()), Some("alice"));
        assert!(remove_operator(dir.path(), "alice").unwrap());
    }
}
