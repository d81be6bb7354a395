//! Presence: what `devices` reports.
//!
//! The relay keeps a small record per device it has heard from (online or
//! not, its last heartbeat), turns it into the [`DeviceEntry`] operators
//! receive in `devices` in one place ([`Heard::entry`], naming every
//! field, so presence and listing cannot drift apart) and joins it with
//! the registry, which alone says which devices exist and their names. The running relay answers
//! `support relay devices` over its admin socket ([`super::admin`]); it also
//! writes `live.json` at most once a second, which `devices` reads only
//! when the socket does not answer, saying how old it is.

use std::collections::{BTreeMap, HashMap};
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
use crate::protocol::{AuditHead, DeviceEntry, GrantScope, Heartbeat};

/// The largest `live.json` read (bytes).
const MAX_SNAPSHOT_BYTES: u64 = 256 << 20;

/// `live.json`: every device the running relay has heard from. The relay
/// writes it with `devices` a [`Snapshot`], streamed straight into the
/// file, so a fleet's snapshot never sits whole in memory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveFile<D = Vec<DeviceEntry>> {
    /// When the relay wrote it (RFC 3339 UTC).
    pub written_at: String,
    /// Sorted by device id; a `name` here is not authoritative (the registry's is).
    pub devices: D,
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
        return Listing { devices: join(&registry, |_| None), source: Source::NotRunning };
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
    let known: HashMap<String, DeviceEntry> = live.devices.into_iter().map(|d| (d.device_id.clone(), d)).collect();
    Listing { devices: join(&registry, |id| known.get(id).cloned()), source: Source::Snapshot(written_at) }
}

/// One entry per registry device: what is `known` of it, named as the registry names it.
fn join(registry: &Registry, known: impl Fn(&str) -> Option<DeviceEntry>) -> Vec<DeviceEntry> {
    registry
        .devices
        .iter()
        .map(|(id, record)| {
            let mut entry = known(id).unwrap_or_else(|| offline(id));
            entry.name.clone_from(&record.name);
            // The registry's witness outlives connections and restarts.
            entry.audit_alert = registry.witness.get(id).and_then(|w| w.alert.clone());
            entry.public_key = Some(record.public_key.clone());
            entry
        })
        .collect()
}

/// A device the relay has not heard from since it started.
fn offline(device_id: &str) -> DeviceEntry {
    Heard::default().entry(device_id)
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
///
/// Kept small, as the relay holds one per device it ever heard from: an
/// idle device costs its id, whether it is online and no more. The name,
/// key and alert are the registry's ([`join`]); what a heartbeat said is
/// one shared allocation, replaced whole by the next heartbeat, so a
/// [`Snapshot`] takes it without copying.
#[derive(Default)]
pub(crate) struct Presence {
    /// By device id, sorted: a snapshot is written in this order.
    entries: Mutex<BTreeMap<Arc<str>, Heard>>,
    changed: Notify,
}

/// What the relay heard of one device.
#[derive(Clone, Default)]
pub(crate) struct Heard {
    online: bool,
    /// Its last heartbeat since the relay started, if any.
    last: Option<Arc<LastHeartbeat>>,
}

/// A device's last heartbeat, as the relay keeps it.
struct LastHeartbeat {
    /// When it arrived (RFC 3339 UTC).
    at: String,
    tier: Option<u8>,
    expires_at: Option<String>,
    running_tasks: u32,
    audit_head: Option<AuditHead>,
    version: String,
    scope: Option<GrantScope>,
    /// The operator key fingerprints the device's owner trusts.
    trusted: Vec<String>,
}

impl Heard {
    /// The listing entry of device `device_id`, not yet joined with the registry.
    fn entry(&self, device_id: &str) -> DeviceEntry {
        let last = self.last.as_deref();
        // Every field named, so a new one in `DeviceEntry` is decided here.
        DeviceEntry {
            device_id: device_id.to_string(),
            name: String::new(),
            online: self.online,
            last_heartbeat: last.map(|l| l.at.clone()),
            tier: last.and_then(|l| l.tier),
            expires_at: last.and_then(|l| l.expires_at.clone()),
            running_tasks: last.map(|l| l.running_tasks),
            audit_head: last.and_then(|l| l.audit_head.clone()),
            version: last.map(|l| l.version.clone()),
            scope: last.and_then(|l| l.scope.clone()),
            audit_alert: None,
            public_key: None,
        }
    }

    fn trusts(&self, fingerprint: &str) -> bool {
        self.last.as_ref().is_some_and(|l| l.trusted.iter().any(|f| f == fingerprint))
    }
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
        let last = Arc::new(LastHeartbeat {
            at: crate::time::rfc3339(Utc::now()),
            tier: hb.tier,
            expires_at: hb.expires_at,
            running_tasks: hb.running_tasks,
            audit_head: hb.audit_head,
            version: hb.version,
            scope: hb.scope,
            trusted: hb.trusted_operators,
        });
        self.change(device_id, |e| e.last = Some(last));
    }

    fn change(&self, device_id: &str, f: impl FnOnce(&mut Heard)) {
        let mut entries = lock(&self.entries);
        match entries.get_mut(device_id) {
            Some(heard) => f(heard),
            None => f(entries.entry(device_id.into()).or_default()),
        }
        drop(entries);
        self.changed.notify_one();
    }

    /// Every enrolled device with what the relay knows of it now.
    pub(crate) fn listing(&self, registry: &Registry) -> Vec<DeviceEntry> {
        let entries = lock(&self.entries);
        join(registry, |id| entries.get(id).map(|h| h.entry(id)))
    }

    /// The listing an operator gets: a device whose owner does not trust
    /// `fingerprint` (as its last heartbeat since the relay started said)
    /// shows only its id, name and whether it is online.
    pub(crate) fn listing_for(&self, registry: &Registry, fingerprint: &str) -> Vec<DeviceEntry> {
        let entries = lock(&self.entries);
        let mut all = join(registry, |id| entries.get(id).map(|h| h.entry(id)));
        for entry in &mut all {
            if !entries.get(entry.device_id.as_str()).is_some_and(|h| h.trusts(fingerprint)) {
                mask(entry);
            }
        }
        all
    }

    /// What this relay last heard of `device_id`, and whom its owner trusts.
    pub(crate) fn entry(&self, device_id: &str) -> (DeviceEntry, Vec<String>) {
        let entries = lock(&self.entries);
        match entries.get(device_id) {
            Some(h) => (h.entry(device_id), h.last.as_ref().map(|l| l.trusted.clone()).unwrap_or_default()),
            None => (offline(device_id), Vec::new()),
        }
    }

    /// Every device heard from, by id: a copy of the ids' and heartbeats'
    /// handles only, taken under the lock in one pass.
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot(lock(&self.entries).iter().map(|(id, h)| (id.clone(), h.clone())).collect())
    }
}

/// What [`Presence::snapshot`] took, sorted by device id; it serializes as
/// `live.json`'s `devices`, one [`DeviceEntry`] at a time.
#[derive(Default)]
pub(crate) struct Snapshot(Vec<(Arc<str>, Heard)>);

impl Serialize for Snapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(id, h)| h.entry(id)))
    }
}

/// Writes `live.json` in `dir` with `devices`, stamped now, serialized
/// straight into the temporary file that replaces it.
///
/// # Errors
/// As [`paths::write_atomic_with`].
pub(crate) fn write_snapshot(dir: &Path, devices: &Snapshot) -> Result<(), FileError> {
    let snapshot = LiveFile { written_at: crate::time::rfc3339(Utc::now()), devices };
    paths::write_atomic_with(&RelayPaths::new(dir).live(), |w| Ok(serde_json::to_writer(w, &snapshot)?))
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
        let wrote = tokio::task::spawn_blocking(move || write_snapshot(&dir, &devices)).await;
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
        assert_eq!(presence.entry("d-1").0.scope, Some(scope));
        presence.heard("d-1", heartbeat(Some(1)));
        assert_eq!(presence.entry("d-1").0.scope, None);
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
        write_snapshot(dir.path(), &presence.snapshot()).unwrap();
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

    #[test]
    fn a_streamed_snapshot_reads_back_as_the_listing_sorted_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::default();
        let presence = Presence::default();
        for (i, id) in ["d-3", "d-1", "d-2"].into_iter().enumerate() {
            let record = DeviceRecord { public_key: "k".into(), name: format!("host-{i}"), enrolled_at: "t".into() };
            registry.devices.insert(id.into(), record);
            presence.online(id);
        }
        let hb = Heartbeat {
            audit_head: Some(AuditHead { seq: 7, mac: "ab".into() }),
            expires_at: Some("2026-12-01T12:00:00Z".into()),
            trusted_operators: vec!["SHA256:alice".into()],
            ..heartbeat(Some(3))
        };
        presence.heard("d-2", hb);
        presence.offline("d-3");
        write_snapshot(dir.path(), &presence.snapshot()).unwrap();
        let raw = std::fs::read(RelayPaths::new(dir.path()).live()).unwrap();
        let live: LiveFile = serde_json::from_slice(&raw).unwrap();
        assert!(crate::time::parse_rfc3339(&live.written_at).is_some(), "{}", live.written_at);
        let ids: Vec<&str> = live.devices.iter().map(|d| d.device_id.as_str()).collect();
        assert_eq!(ids, ["d-1", "d-2", "d-3"]);
        let known: HashMap<String, DeviceEntry> = live.devices.into_iter().map(|d| (d.device_id.clone(), d)).collect();
        assert_eq!(join(&registry, |id| known.get(id).cloned()), presence.listing(&registry));
        assert_eq!(known["d-2"].audit_head.as_ref().map(|h| h.seq), Some(7));
        assert_eq!(presence.entry("d-2").1, ["SHA256:alice"], "whom the owner trusts is kept, not written");
        assert!(!String::from_utf8(raw).unwrap().contains("SHA256:alice"));
    }
}
