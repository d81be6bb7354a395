//! Presence: what `devices` reports.
//!
//! The relay keeps one [`DeviceEntry`] per device it has heard from (the
//! type operators receive in `devices`, so presence and listing cannot
//! drift apart) and joins it with the registry, which alone says which
//! devices exist and their names. The running relay answers
//! `support relay devices` over its admin socket ([`super::admin`]); it also
//! writes `live.json` at most once a second, which `devices` reads only
//! when the socket does not answer, saying how old it is.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::registry::{Registry, RegistryError};
use super::{admin, state};
use crate::lock;
use crate::paths::RelayPaths;
use crate::paths::{self, FileError};
use crate::protocol::{DeviceEntry, Heartbeat};

/// The largest `live.json` read (bytes).
const MAX_SNAPSHOT_BYTES: u64 = 256 << 20;

/// `live.json`: every device the running relay has heard from.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveFile {
    /// When the relay wrote it (RFC 3339 UTC).
    pub written_at: String,
    /// Sorted by device id; a `name` here is not authoritative (the registry's is).
    pub devices: Vec<DeviceEntry>,
}

/// Where a listing's `online` and heartbeat fields came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The running relay answered just now.
    Relay,
    /// The running relay did not answer; its `live.json`, written at this time.
    Snapshot(Option<DateTime<Utc>>),
    /// No relay holds the state directory: every device shows offline.
    NotRunning,
    /// No relay holds the state directory; the cluster's presence bucket
    /// says which devices a relay of the cluster holds now (`--cluster`).
    Cluster,
}

/// Every enrolled device, and where its presence came from.
#[derive(Clone, Debug)]
pub struct Listing {
    /// One per device in the registry, by device id.
    pub devices: Vec<DeviceEntry>,
    /// How fresh `devices` is.
    pub source: Source,
}

/// Every device in the registry of `dir`, as the running relay sees it now
/// (asked over its admin socket), else as its last `live.json` showed it,
/// else all offline when no relay runs.
///
/// # Errors
/// As [`Registry::load`].
pub fn devices(dir: &Path) -> Result<Listing, RegistryError> {
    let (registry, _) = Registry::load(dir)?;
    Ok(devices_in(dir, registry))
}

/// As [`devices`], with the devices of `registry` (the cluster's, with
/// `--cluster`); a `live.json` that cannot be read counts as empty.
pub fn devices_in(dir: &Path, registry: Registry) -> Listing {
    if !state::is_running(dir) {
        return Listing { devices: join(&registry, &HashMap::new()), source: Source::NotRunning };
    }
    if let Some(devices) = admin::query(dir) {
        return Listing { devices, source: Source::Relay };
    }
    let live: LiveFile = paths::read_capped(&RelayPaths::new(dir).live(), MAX_SNAPSHOT_BYTES)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let written_at = crate::time::parse_rfc3339(&live.written_at);
    let known = live.devices.into_iter().map(|d| (d.device_id.clone(), d)).collect();
    Listing { devices: join(&registry, &known), source: Source::Snapshot(written_at) }
}

/// One entry per registry device: what is `known` of it, named as the registry names it.
fn join(registry: &Registry, known: &HashMap<String, DeviceEntry>) -> Vec<DeviceEntry> {
    registry
        .devices
        .iter()
        .map(|(id, record)| {
            let mut entry = known.get(id).cloned().unwrap_or_else(|| offline(id));
            entry.name.clone_from(&record.name);
            // The registry's witness outlives connections and restarts.
            entry.audit_alert = registry.witness.get(id).and_then(|w| w.alert.clone());
            entry.public_key = Some(record.public_key.clone());
            entry
        })
        .collect()
}

fn offline(device_id: &str) -> DeviceEntry {
    DeviceEntry {
        device_id: device_id.to_string(),
        name: String::new(),
        online: false,
        last_heartbeat: None,
        tier: None,
        expires_at: None,
        running_tasks: None,
        audit_head: None,
        version: None,
        scope: None,
        audit_alert: None,
        public_key: None,
    }
}

/// Leaves only a device's id, name, presence and key: what an operator its
/// owner does not trust may see (the key lets any operator check the
/// device's signed answers).
fn mask(entry: &mut DeviceEntry) {
    *entry = DeviceEntry {
        name: std::mem::take(&mut entry.name),
        online: entry.online,
        public_key: entry.public_key.take(),
        ..offline(&entry.device_id)
    };
}

/// `local`, the listing of a device this relay does not hold, as the relay
/// of the cluster that holds it reported it (`held`), named, keyed and
/// alerted as the registry says; masked (see [`mask`]) unless `trusted`.
pub(crate) fn held_elsewhere(local: &DeviceEntry, held: &DeviceEntry, trusted: bool) -> DeviceEntry {
    let mut entry = DeviceEntry {
        device_id: local.device_id.clone(),
        name: local.name.clone(),
        public_key: local.public_key.clone(),
        audit_alert: local.audit_alert.clone(),
        online: true,
        ..held.clone()
    };
    if !trusted {
        mask(&mut entry);
    }
    entry
}

/// What the running relay knows of each device it has heard from since it started.
#[derive(Default)]
pub(crate) struct Presence {
    entries: Mutex<HashMap<String, DeviceEntry>>,
    /// Per device, the operator key fingerprints its owner trusts, as its last heartbeat said.
    trusted: Mutex<HashMap<String, Vec<String>>>,
    changed: Notify,
}

impl Presence {
    /// The device holds an authenticated connection now.
    pub(crate) fn online(&self, device_id: &str) {
        self.change(device_id, |e| e.online = true);
    }

    /// The device's connection ended (and no newer one replaced it).
    pub(crate) fn offline(&self, device_id: &str) {
        self.change(device_id, |e| e.online = false);
    }

    /// The device sent `hb` just now.
    pub(crate) fn heard(&self, device_id: &str, hb: Heartbeat) {
        lock(&self.trusted).insert(device_id.to_string(), hb.trusted_operators);
        let now = crate::time::rfc3339(Utc::now());
        self.change(device_id, |e| {
            e.last_heartbeat = Some(now);
            e.tier = hb.tier;
            e.expires_at = hb.expires_at;
            e.running_tasks = Some(hb.running_tasks);
            e.audit_head = hb.audit_head;
            e.version = Some(hb.version);
            e.scope = hb.scope;
        });
    }

    fn change(&self, device_id: &str, f: impl FnOnce(&mut DeviceEntry)) {
        f(lock(&self.entries).entry(device_id.to_string()).or_insert_with(|| offline(device_id)));
        self.changed.notify_one();
    }

    /// Every enrolled device with what the relay knows of it now.
    pub(crate) fn listing(&self, registry: &Registry) -> Vec<DeviceEntry> {
        join(registry, &lock(&self.entries))
    }

    /// The listing an operator gets: a device whose owner does not trust
    /// `fingerprint` (as its last heartbeat since the relay started said)
    /// shows only its id, name and whether it is online.
    pub(crate) fn listing_for(&self, registry: &Registry, fingerprint: &str) -> Vec<DeviceEntry> {
        let trusted = lock(&self.trusted);
        let mut all = self.listing(registry);
        for entry in &mut all {
            if !trusted.get(&entry.device_id).is_some_and(|t| t.iter().any(|f| f == fingerprint)) {
                mask(entry);
            }
        }
        all
    }

    /// What this relay last heard of `device_id`, and whom its owner trusts.
    pub(crate) fn entry(&self, device_id: &str) -> (DeviceEntry, Vec<String>) {
        let entry = lock(&self.entries).get(device_id).cloned().unwrap_or_else(|| offline(device_id));
        (entry, lock(&self.trusted).get(device_id).cloned().unwrap_or_default())
    }

    fn snapshot(&self) -> Vec<DeviceEntry> {
        let mut all: Vec<DeviceEntry> = lock(&self.entries).values().cloned().collect();
        all.sort_by(|a, b| a.device_id.cmp(&b.device_id));
        all
    }
}

/// Writes `live.json` in `dir` with `devices`, stamped now.
///
/// # Errors
/// As [`paths::write_atomic`].
pub(crate) fn write_snapshot(dir: &Path, devices: Vec<DeviceEntry>) -> Result<(), FileError> {
    let snapshot = LiveFile { written_at: crate::time::rfc3339(Utc::now()), devices };
    paths::write_atomic(&RelayPaths::new(dir).live(), &serde_json::to_vec(&snapshot).unwrap_or_default())
}

/// Writes `live.json` at most once a second while devices come, go or
/// report, until `shutdown`; then removes it.
pub(crate) async fn keep_snapshot(
    dir: std::path::PathBuf,
    presence: Arc<Presence>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = presence.changed.notified() => {}
            _ = crate::stopped(&mut shutdown) => break,
        }
        let (dir, devices) = (dir.clone(), presence.snapshot());
        let wrote = tokio::task::spawn_blocking(move || write_snapshot(&dir, devices)).await;
        if let Ok(Err(e)) = wrote {
            tracing::warn!(error = %crate::ErrorChain(&e), "cannot write live.json");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
    let _ = paths::remove(&RelayPaths::new(&dir).live());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::registry::DeviceRecord;

    fn heartbeat(tier: Option<u8>) -> Heartbeat {
        Heartbeat {
            tier,
            expires_at: None,
            running_tasks: 2,
            audit_head: None,
            uptime_s: 9,
            version: "9.9.9".into(),
            scope: None,
            witness: None,
            trusted_operators: Vec::new(),
        }
    }

    #[test]
    fn the_listing_is_the_registry_joined_with_what_the_relay_heard() {
        let mut registry = Registry::default();
        for (id, name) in [("d-1", "laptop"), ("d-2", "desktop")] {
            let record = DeviceRecord { public_key: "k".into(), name: name.into(), enrolled_at: "t".into() };
            registry.devices.insert(id.into(), record);
        }
        let presence = Presence::default();
        presence.online("d-1");
        presence.heard("d-1", heartbeat(Some(2)));
        presence.online("d-9");
        presence.offline("d-1");
        let listed = presence.listing(&registry);
        assert_eq!(listed.len(), 2, "only enrolled devices: {listed:?}");
        let d1 = &listed[0];
        assert_eq!((d1.device_id.as_str(), d1.name.as_str(), d1.online), ("d-1", "laptop", false));
        assert_eq!((d1.tier, d1.running_tasks, d1.version.as_deref()), (Some(2), Some(2), Some("9.9.9")));
        assert!(d1.last_heartbeat.is_some(), "the last heartbeat outlives the connection");
        assert_eq!(listed[1], DeviceEntry { name: "desktop".into(), public_key: Some("k".into()), ..offline("d-2") });
    }

    #[test]
    fn the_reported_scope_is_listed_and_goes_with_a_grant_without_one() {
        let presence = Presence::default();
        let scope = crate::protocol::GrantScope { max_actions: Some(5), actions_used: Some(2), ..Default::default() };
        presence.heard("d-1", Heartbeat { scope: Some(scope.clone()), ..heartbeat(Some(1)) });
        assert_eq!(presence.snapshot()[0].scope, Some(scope));
        presence.heard("d-1", heartbeat(Some(1)));
        assert_eq!(presence.snapshot()[0].scope, None);
    }

    #[test]
    fn an_operator_the_owner_does_not_trust_sees_only_name_and_presence() {
        let mut registry = Registry::default();
        let record = DeviceRecord { public_key: "k".into(), name: "laptop".into(), enrolled_at: "t".into() };
        registry.devices.insert("d-1".into(), record);
        let presence = Presence::default();
        presence.online("d-1");
        presence.heard("d-1", Heartbeat { trusted_operators: vec!["SHA256:alice".into()], ..heartbeat(Some(4)) });
        let full = presence.listing_for(&registry, "SHA256:alice");
        assert_eq!(full, presence.listing(&registry));
        assert_eq!(full[0].tier, Some(4));
        let bare = presence.listing_for(&registry, "SHA256:mallory");
        let want = DeviceEntry { name: "laptop".into(), online: true, public_key: Some("k".into()), ..offline("d-1") };
        assert_eq!(bare, vec![want.clone()]);
        // Before a heartbeat since the relay started, nobody is trusted.
        let fresh = Presence::default();
        fresh.online("d-1");
        assert_eq!(fresh.listing_for(&registry, "SHA256:alice"), vec![want]);
    }

    #[test]
    fn a_snapshot_round_trips_and_keeps_the_wire_fields() {
        let dir = tempfile::tempdir().unwrap();
        let presence = Presence::default();
        presence.online("d-1");
        write_snapshot(dir.path(), presence.snapshot()).unwrap();
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(RelayPaths::new(dir.path()).live()).unwrap()).unwrap();
        let keys: Vec<&str> = raw["devices"][0].as_object().unwrap().keys().map(String::as_str).collect();
        let want = [
            "audit_alert",
            "audit_head",
            "device_id",
            "expires_at",
            "last_heartbeat",
            "name",
            "online",
            "running_tasks",
            "tier",
            "version",
        ];
        assert_eq!(keys, want);
    }
}
