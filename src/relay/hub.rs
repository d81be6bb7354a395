//! The hub: who is connected, and routing between them.
//!
//! An operator's `run` goes to the device it names (or `DEVICE_OFFLINE`);
//! the device's answers go only to the connection that sent that request;
//! `cancel` is forwarded only for the operator's own requests. When that
//! connection ends first, its requests stay on record (orphaned) until the
//! device ends them, so no one else can claim their `(device, request_id)`
//! and receive the rest of their answers. The hub
//! never signs, changes or runs a command: the device checks the
//! operator's signature against keys its owner trusts.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::fmt::Write as _;

use tokio::sync::{Semaphore, oneshot, watch};

use super::cluster::route::Route;
use super::hello::Who;
use super::metrics::Metrics;
use super::presence::Presence;
use super::registry::{Registry, Stamp};
use super::store::Store;
use super::{MAX_INFLIGHT_PER_OPERATOR, MAX_UNAUTHENTICATED, PEER_QUEUE, RUNS_PER_SECOND, SEND_TIMEOUT};
use crate::lock;
use crate::protocol::{self, DeviceEntry, DeviceFrame, FromRelay, Heartbeat, RelayCode, Role, Run};

/// A connected, authenticated peer, as the hub reaches it.
struct Peer {
    conn: u64,
    tx: queue::Sender,
    /// Dropping it ends that session (a device's newer connection replaced
    /// it); sending on it ends it with that reason (the admin removed the peer).
    kill: oneshot::Sender<Removed>,
    /// The key it proved (`ed25519:…`).
    key: String,
    /// When it was authenticated (ns since the Unix epoch): of a device's
    /// connections on the relays of a cluster, the newest wins.
    since_ns: i64,
}

/// Why the relay's admin ended a session: told to the peer in an `error`
/// frame (`UNAUTHORIZED`) before the close.
#[derive(Debug)]
pub(crate) struct Removed(pub(crate) String);
/// How long a request whose operator left is held before its id may be
/// used again: past the longest action timeout (a day, `policy`).
const ORPHAN_TTL: Duration = Duration::from_secs(25 * 3600);
/// Orphaned requests held at most; past this the oldest are forgotten.
const MAX_ORPHANS: usize = 4096;

/// A `run` the hub delivered and whose answer it still expects.
struct Inflight {
    /// The connection that sent it: its answers go there, and nowhere else.
    operator_conn: u64,
    operator_key: String,
    /// When that connection ended, if it did: the answers then go nowhere.
    orphaned_at: Option<Instant>,
    /// On the device's relay, for an operator connection on another relay
    /// of the cluster: that connection's subject, where the answers go.
    reply: Option<String>,
    /// On the operator's relay, for a device another relay holds: that relay's id.
    held_by: Option<String>,
    /// An interactive session ([`Run::is_session`]): it ends when its operator's connection does.
    session: bool,
}

/// What a session holds once the hub knows it.
pub(crate) struct Joined {
    /// This connection's number, unique while the relay runs.
    pub(crate) conn: u64,
    /// Frames (already encoded) the hub routes to this peer.
    pub(crate) rx: queue::Receiver,
    /// Resolves when a newer connection of the same device replaced this
    /// one (an error), or the admin removed the peer (its reason).
    pub(crate) kill: oneshot::Receiver<Removed>,
}

/// Everything the relay's sessions share.
pub(crate) struct Hub {
    pub(crate) dir: PathBuf,
    /// Where the registry lives: `registry.json`, or the cluster's NATS.
    pub(crate) store: Arc<dyn Store>,
    devices: Mutex<HashMap<String, Peer>>,
    operators: Mutex<HashMap<u64, Peer>>,
    /// By (device id, request id).
    inflight: Arc<Mutex<HashMap<(String, String), Inflight>>>,
    pub(crate) presence: Arc<Presence>,
    pub(crate) metrics: Metrics,
    /// Audit witness records not yet written to the registry.
    pub(crate) witness: super::witness::Pending,
    next_conn: AtomicU64,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Places for connections not yet past `hello` ([`super::MAX_UNAUTHENTICATED`] unless set).
    pub(crate) unauthenticated: Arc<Semaphore>,
    unauthenticated_max: usize,
    /// `run` frames a second per operator connection ([`super::RUNS_PER_SECOND`] unless set).
    pub(crate) runs_per_second: u32,
    /// The cluster's routing and presence (`--cluster`), if any.
    pub(crate) cluster: Option<Arc<Route>>,
}

impl Hub {
    /// A hub with no peers, over the registry of `dir` as last read.
    #[cfg(test)]
    pub(crate) fn new(dir: PathBuf, registry: (Registry, Stamp), shutdown: watch::Receiver<bool>) -> Hub {
        let store = Arc::new(super::store::FileStore::new(&dir, registry));
        Hub::over(dir, store, shutdown)
    }

    /// A hub with no peers, with its state directory `dir` and its registry in `store`.
    pub(crate) fn over(dir: PathBuf, store: Arc<dyn Store>, shutdown: watch::Receiver<bool>) -> Hub {
        Hub {
            dir,
            store,
            devices: Mutex::default(),
            operators: Mutex::default(),
            inflight: Arc::default(),
            presence: Arc::default(),
            metrics: Metrics::default(),
            witness: Default::default(),
            next_conn: AtomicU64::new(1),
            shutdown,
            unauthenticated: Arc::new(Semaphore::new(MAX_UNAUTHENTICATED)),
            unauthenticated_max: MAX_UNAUTHENTICATED,
            runs_per_second: RUNS_PER_SECOND,
            cluster: None,
        }
    }

    /// The same hub routing to the other relays of a cluster through `route`.
    pub(crate) fn with_cluster(mut self, route: Option<Arc<Route>>) -> Hub {
        self.cluster = route;
        self
    }

    /// The same hub letting each operator connection send `per_second` runs a second.
    pub(crate) fn with_run_rate(mut self, per_second: u32) -> Hub {
        self.runs_per_second = per_second.max(1);
        self
    }

    /// The same hub with room for `max` connections not yet past `hello`.
    pub(crate) fn with_unauthenticated_limit(mut self, max: usize) -> Hub {
        self.unauthenticated = Arc::new(Semaphore::new(max));
        self.unauthenticated_max = max;
        self
    }

    /// The registry as this relay knows it now (re-read first if the file changed since).
    pub(crate) fn registry(&self) -> MutexGuard<'_, (Registry, Stamp)> {
        self.store.cached()
    }

    /// Makes an authenticated peer reachable; a device's older connection
    /// is told to end.
    pub(crate) fn join(&self, role: Role, who: &Who) -> Joined {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = queue::queue(PEER_QUEUE);
        let (kill_tx, kill) = oneshot::channel();
        let since_ns = super::cluster::route::since_now();
        let peer = Peer { conn, tx, kill: kill_tx, key: who.key.clone(), since_ns };
        match role {
            Role::Device => {
                if lock(&self.devices).insert(who.id.clone(), peer).is_some() {
                    tracing::info!("a newer connection replaces the device's old one");
                }
                self.presence.online(&who.id);
                self.hold(&who.id, since_ns);
            }
            Role::Operator => {
                lock(&self.operators).insert(conn, peer);
            }
        }
        Joined { conn, rx, kill }
    }

    /// Whether `conn` is the device's newest connection (not one a newer replaced).
    pub(crate) fn is_current(&self, device_id: &str, conn: u64) -> bool {
        lock(&self.devices).get(device_id).is_some_and(|p| p.conn == conn)
    }

    /// Forgets connection `conn`: a device goes offline unless a newer
    /// connection replaced it; an operator's requests are forgotten.
    pub(crate) fn leave(&self, role: Role, who: &Who, conn: u64) {
        match role {
            Role::Device => {
                let mut devices = lock(&self.devices);
                if let Some(p) =
                    devices.get(&who.id).is_some_and(|p| p.conn == conn).then(|| devices.remove(&who.id)).flatten()
                {
                    drop(devices);
                    self.presence.offline(&who.id);
                    if let Some(route) = &self.cluster {
                        route.release(&who.id, p.since_ns);
                    }
                }
            }
            Role::Operator => {
                let peer = lock(&self.operators).remove(&conn);
                // Held until the device ends them (or a day passes): a
                // request id the device still answers is never free to claim.
                let mut inflight = lock(&self.inflight);
                let now = Instant::now();
                let mut sessions = Vec::new();
                for (k, i) in inflight.iter_mut().filter(|(_, i)| i.operator_conn == conn) {
                    i.orphaned_at = Some(now);
                    if i.session {
                        sessions.push(k.clone());
                    }
                }
                forget_old_orphans(&mut inflight, now);
                drop(inflight);
                if let Some(peer) = peer {
                    self.end_sessions(&peer, &sessions);
                }
            }
        }
    }

    /// Routes an operator's `run`; returns the error to send back, if any.
    pub(crate) fn route_run(&self, from: &Who, conn: u64, run: Run) -> Option<FromRelay> {
        let request_id = run.request_id.clone();
        let error =
            |code, message: String| Some(FromRelay::Error { code, message, request_id: Some(request_id.clone()) });
        if let Err(why) = run.check_shape() {
            self.metrics.rejected("bad_run");
            return error(RelayCode::BadFrame, why);
        }
        if run.operator != from.key {
            self.metrics.rejected("bad_run");
            return error(RelayCode::Unauthorized, "a run must be signed with the key this connection proved".into());
        }
        if !lock(&self.operators).contains_key(&conn) {
            // Removed by the admin; its session is ending.
            return error(RelayCode::Unauthorized, "this operator was removed from the relay by its admin".into());
        }
        let local = lock(&self.devices).get(&run.device_id).map(|p| p.tx.clone());
        let held_by = match (&local, &self.cluster) {
            (Some(_), _) => None,
            (None, Some(route)) => match self.held_elsewhere_by(route, &run.device_id) {
                Ok(relay) => Some(relay),
                Err((code, message)) => return error(code, message),
            },
            (None, None) => {
                return error(
                    RelayCode::DeviceOffline,
                    format!("device {} is not connected to the relay", run.device_id),
                );
            }
        };
        let key = (run.device_id.clone(), run.request_id.clone());
        {
            let mut inflight = lock(&self.inflight);
            forget_old_orphans(&mut inflight, Instant::now());
            if inflight.contains_key(&key) {
                self.metrics.rejected("bad_run");
                return error(
                    RelayCode::BadFrame,
                    "that request_id is already in flight for this device (or its operator left and the device has not ended it)"
                        .into(),
                );
            }
            // Again under this lock: `evict_removed` removes an operator under it too.
            if !lock(&self.operators).contains_key(&conn) {
                return error(RelayCode::Unauthorized, "this operator was removed from the relay by its admin".into());
            }
            if inflight.values().filter(|i| i.operator_conn == conn).count() >= MAX_INFLIGHT_PER_OPERATOR {
                return error(RelayCode::Busy, format!("at most {MAX_INFLIGHT_PER_OPERATOR} requests in flight"));
            }
            let entry = Inflight {
                operator_conn: conn,
                operator_key: from.key.clone(),
                orphaned_at: None,
                reply: None,
                held_by: held_by.clone(),
                session: run.is_session(),
            };
            inflight.insert(key.clone(), entry);
        }
        let (Some(tx), None) = (local, &held_by) else {
            self.relay_run(conn, held_by.unwrap_or_default(), run);
            return None;
        };
        if tx.try_send(protocol::encode(&FromRelay::Run(run))).is_err() {
            lock(&self.inflight).remove(&key);
            return error(RelayCode::Busy, "the device's queue is full; try again".into());
        }
        self.metrics.routed();
        None
    }

    /// Forwards an operator's `cancel` for one of its own requests.
    pub(crate) fn route_cancel(&self, from: &Who, device_id: String, request_id: String) -> FromRelay {
        let mine = lock(&self.inflight)
            .get(&(device_id.clone(), request_id.clone()))
            .is_some_and(|i| i.operator_key == from.key && i.orphaned_at.is_none());
        let held_by =
            lock(&self.inflight).get(&(device_id.clone(), request_id.clone())).and_then(|i| i.held_by.clone());
        let tx = lock(&self.devices).get(&device_id).map(|p| p.tx.clone());
        let error = |code, message: &str| FromRelay::Error {
            code,
            message: message.into(),
            request_id: Some(request_id.clone()),
        };
        if !mine {
            self.metrics.rejected("bad_cancel");
            return error(RelayCode::BadFrame, "no request of yours with that id is in flight on that device");
        }
        if let (None, Some(relay)) = (&tx, held_by) {
            return self.relay_cancel(from, relay, device_id, request_id);
        }
        let Some(tx) = tx else { return error(RelayCode::DeviceOffline, "the device is not connected to the relay") };
        if tx.try_send(protocol::encode(&FromRelay::Cancel { request_id: request_id.clone() })).is_err() {
            return error(RelayCode::Busy, "the device's queue is full; try again");
        }
        FromRelay::Forwarded { request_id }
    }

    /// Sends a device's answer to the operator connection that asked.
    pub(crate) async fn route_answer(&self, device_id: &str, frame: DeviceFrame) {
        let key = (device_id.to_string(), frame.request_id().to_string());
        let done = matches!(frame, DeviceFrame::Result { .. } | DeviceFrame::Denied { .. });
        let (conn, reply) = {
            let mut inflight = lock(&self.inflight);
            let found = inflight.get(&key).filter(|i| i.orphaned_at.is_none());
            let (conn, reply) = (found.map(|i| i.operator_conn), found.and_then(|i| i.reply.clone()));
            if done {
                inflight.remove(&key);
            }
            (conn, reply)
        };
        if let (Some(reply), Some(route)) = (reply, &self.cluster) {
            return route.answer(&reply, protocol::encode(&FromRelay::Answer(frame))).await;
        }
        let Some(tx) = conn.and_then(|c| lock(&self.operators).get(&c).map(|p| p.tx.clone())) else {
            // The operator left, the relay restarted, or the device made it up.
            // An orphan's answers go to no one: never to whoever asks next.
            self.metrics.rejected("unknown_request");
            return;
        };
        let text = protocol::encode(&FromRelay::Answer(frame));
        if tokio::time::timeout(SEND_TIMEOUT, tx.send(text)).await.is_err() {
            self.metrics.rejected("operator_stuck");
        }
    }

    /// A device's heartbeat arrived.
    pub(crate) fn heard(&self, device_id: &str, hb: Heartbeat) {
        self.presence.heard(device_id, hb);
        if let Some(since_ns) = lock(&self.devices).get(device_id).map(|p| p.since_ns) {
            self.hold(device_id, since_ns);
        }
    }

    /// Every enrolled device with what the relay knows of it now.
    pub(crate) fn list(&self) -> Vec<DeviceEntry> {
        let registry = self.registry();
        let listing = self.presence.listing(&registry.0);
        drop(registry);
        self.with_held_elsewhere(listing, None)
    }

    /// Whether `who` is still in the registry (re-read if the file
    /// changed): checked once it has joined, so a removal made while its
    /// `hello` was being checked is caught here or by [`Hub::evict_removed`].
    pub(crate) fn still_admitted(&self, role: Role, who: &Who) -> bool {
        let registry = self.registry();
        match role {
            Role::Device => registry.0.devices.get(&who.id).is_some_and(|d| d.public_key == who.key),
            Role::Operator => registry.0.operator_named(&who.key).is_some(),
        }
    }

    /// Re-reads the registry and ends every session whose peer is no
    /// longer in it (the admin's `remove-device`, `remove-operator`): a
    /// removed device's operators hear `DEVICE_OFFLINE` for their requests;
    /// a removed operator's requests are cancelled on their devices. Each
    /// peer is told why before its connection closes. Returns how many
    /// sessions it ended.
    pub(crate) fn evict_removed(&self) -> usize {
        let (devices_known, operators_known): (HashSet<String>, HashSet<String>) = {
            let registry = self.registry();
            let r = &registry.0;
            (r.devices.keys().cloned().collect(), r.operators.values().map(|o| o.public_key.clone()).collect())
        };
        let gone_devices: Vec<(String, Peer)> = {
            let mut devices = lock(&self.devices);
            let ids: Vec<String> = devices.keys().filter(|id| !devices_known.contains(*id)).cloned().collect();
            ids.into_iter().filter_map(|id| devices.remove(&id).map(|p| (id, p))).collect()
        };
        // Under the in-flight lock (taken before the operators', as in
        // `route_run`), so no run of a removed operator slips in between
        // its removal and the cancels of its requests; those are held as
        // orphans (see `leave`), so nobody can claim their ids and hear the rest.
        let gone_operators: Vec<(Peer, Vec<(String, String)>)> = {
            let mut inflight = lock(&self.inflight);
            let mut operators = lock(&self.operators);
            let conns: Vec<u64> =
                operators.iter().filter(|(_, p)| !operators_known.contains(&p.key)).map(|(c, _)| *c).collect();
            let now = Instant::now();
            let mut gone = Vec::new();
            for peer in conns.into_iter().filter_map(|c| operators.remove(&c)) {
                let mut cancelled = Vec::new();
                for (k, i) in
                    inflight.iter_mut().filter(|(_, i)| i.operator_conn == peer.conn && i.orphaned_at.is_none())
                {
                    i.orphaned_at = Some(now);
                    cancelled.push(k.clone());
                }
                gone.push((peer, cancelled));
            }
            forget_old_orphans(&mut inflight, now);
            gone
        };
        let ended = gone_devices.len() + gone_operators.len();
        for (id, peer) in gone_devices {
            self.presence.offline(&id);
            let orphaned: Vec<(String, u64, Option<String>)> = {
                let mut inflight = lock(&self.inflight);
                let keys: Vec<(String, String)> = inflight.keys().filter(|(d, _)| *d == id).cloned().collect();
                keys.into_iter().filter_map(|k| inflight.remove(&k).map(|i| (k.1, i.operator_conn, i.reply))).collect()
            };
            for (request_id, conn, reply) in orphaned {
                let error = FromRelay::Error {
                    code: RelayCode::DeviceOffline,
                    message: format!("device {id} was removed from the relay by its admin"),
                    request_id: Some(request_id),
                };
                if let (Some(reply), Some(route)) = (reply, self.cluster.clone()) {
                    let text = protocol::encode(&error);
                    tokio::spawn(async move { route.answer(&reply, text).await });
                } else if let Some(p) = lock(&self.operators).get(&conn) {
                    let _ = p.tx.try_send(protocol::encode(&error));
                }
            }
            tracing::info!(device_id = %id, "device removed by the admin; its connection ends");
            let _ = peer.kill.send(Removed(
                "this device was removed from the relay by its admin; it can come back only with a new enrolment token"
                    .into(),
            ));
        }
        for (peer, cancelled) in gone_operators {
            for (device_id, request_id) in &cancelled {
                if let Some(d) = lock(&self.devices).get(device_id) {
                    let _ = d.tx.try_send(protocol::encode(&FromRelay::Cancel { request_id: request_id.clone() }));
                } else if let Some(route) = &self.cluster {
                    self.cancel_elsewhere(route, &peer, device_id, request_id);
                }
            }
            tracing::info!(
                conn = peer.conn,
                cancelled = cancelled.len(),
                "operator removed by the admin; its connection ends"
            );
            let _ = peer.kill.send(Removed(format!(
                "this operator was removed from the relay by its admin; {} running request(s) were cancelled",
                cancelled.len()
            )));
        }
        ended
    }

    /// Every enrolled device, as operator `who` may see it (see [`Presence::listing_for`]).
    pub(crate) fn list_for(&self, who: &Who) -> Vec<DeviceEntry> {
        let registry = self.registry();
        let listing = self.presence.listing_for(&registry.0, &who.id);
        drop(registry);
        self.with_held_elsewhere(listing, Some(&who.id))
    }

    /// `GET /metrics`.
    pub(crate) fn metrics_text(&self) -> String {
        let devices = lock(&self.devices).len();
        let operators = lock(&self.operators).len();
        let alerted = {
            let registry = self.registry();
            registry
                .0
                .witness
                .iter()
                .filter(|(id, w)| w.alert.is_some() && registry.0.devices.contains_key(*id))
                .count()
        };
        let mut text = self.metrics.text(devices, operators, alerted);
        if let Some(route) = &self.cluster {
            let up = u8::from(route.connected());
            let _ = writeln!(
                text,
                "# HELP cluster_connected Whether the relay reaches its cluster's NATS (0: degraded, cross-relay requests are refused).\n# TYPE cluster_connected gauge\ncluster_connected {up}"
            );
        }
        let waiting = self.unauthenticated_max.saturating_sub(self.unauthenticated.available_permits());
        let _ = writeln!(
            text,
            "# HELP unauthenticated_connections Connections not yet past hello.\n# TYPE unauthenticated_connections gauge\nunauthenticated_connections {waiting}"
        );
        text
    }
}

mod queue;
mod relayed;
mod sessions;

/// Forgets orphaned requests older than [`ORPHAN_TTL`], and the oldest
/// past [`MAX_ORPHANS`].
fn forget_old_orphans(inflight: &mut HashMap<(String, String), Inflight>, now: Instant) {
    inflight.retain(|_, i| i.orphaned_at.is_none_or(|t| now.duration_since(t) < ORPHAN_TTL));
    let mut orphans: Vec<(Instant, (String, String))> =
        inflight.iter().filter_map(|(k, i)| i.orphaned_at.map(|t| (t, k.clone()))).collect();
    if orphans.len() > MAX_ORPHANS {
        orphans.sort();
        for (_, key) in &orphans[..orphans.len() - MAX_ORPHANS] {
            inflight.remove(key);
        }
    }
}
