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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::hello::Who;
use super::metrics::Metrics;
use super::presence::Presence;
use super::registry::{self, Registry, Stamp};
use super::{MAX_INFLIGHT_PER_OPERATOR, PEER_QUEUE, SEND_TIMEOUT};
use crate::lock;
use crate::protocol::{self, DeviceEntry, DeviceFrame, FromRelay, Heartbeat, RelayCode, Role, Run};

/// A connected, authenticated peer, as the hub reaches it.
struct Peer {
    conn: u64,
    tx: mpsc::Sender<String>,
    /// Dropping it ends that session (a device's newer connection replaced it).
    _kill: oneshot::Sender<()>,
}

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
}

/// What a session holds once the hub knows it.
pub(crate) struct Joined {
    /// This connection's number, unique while the relay runs.
    pub(crate) conn: u64,
    /// Frames (already encoded) the hub routes to this peer.
    pub(crate) rx: mpsc::Receiver<String>,
    /// Resolves when a newer connection of the same device replaced this one.
    pub(crate) kill: oneshot::Receiver<()>,
}

/// Everything the relay's sessions share.
pub(crate) struct Hub {
    pub(crate) dir: PathBuf,
    registry: Mutex<(Registry, Stamp)>,
    devices: Mutex<HashMap<String, Peer>>,
    operators: Mutex<HashMap<u64, Peer>>,
    /// By (device id, request id).
    inflight: Mutex<HashMap<(String, String), Inflight>>,
    pub(crate) presence: Arc<Presence>,
    pub(crate) metrics: Metrics,
    next_conn: AtomicU64,
    pub(crate) shutdown: watch::Receiver<bool>,
}

impl Hub {
    /// A hub with no peers, over the registry of `dir` as last read.
    pub(crate) fn new(dir: PathBuf, registry: (Registry, Stamp), shutdown: watch::Receiver<bool>) -> Hub {
        Hub {
            dir,
            registry: Mutex::new(registry),
            devices: Mutex::default(),
            operators: Mutex::default(),
            inflight: Mutex::default(),
            presence: Arc::default(),
            metrics: Metrics::default(),
            next_conn: AtomicU64::new(1),
            shutdown,
        }
    }

    /// The registry, re-read first if the file changed since.
    pub(crate) fn registry(&self) -> MutexGuard<'_, (Registry, Stamp)> {
        let mut cached = lock(&self.registry);
        if registry::stamp(&self.dir) != cached.1 {
            match Registry::load(&self.dir) {
                Ok(fresh) => *cached = fresh,
                Err(e) => {
                    tracing::error!(error = %crate::ErrorChain(&e), "cannot re-read the registry; keeping the last good copy")
                }
            }
        }
        cached
    }

    /// Replaces the cached registry with one just written.
    pub(crate) fn set_registry(&self, fresh: (Registry, Stamp)) {
        *lock(&self.registry) = fresh;
    }

    /// Makes an authenticated peer reachable; a device's older connection
    /// is told to end.
    pub(crate) fn join(&self, role: Role, who: &Who) -> Joined {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let (kill_tx, kill) = oneshot::channel();
        let peer = Peer { conn, tx, _kill: kill_tx };
        match role {
            Role::Device => {
                if lock(&self.devices).insert(who.id.clone(), peer).is_some() {
                    tracing::info!("a newer connection replaces the device's old one");
                }
                self.presence.online(&who.id);
            }
            Role::Operator => {
                lock(&self.operators).insert(conn, peer);
            }
        }
        Joined { conn, rx, kill }
    }

    /// Forgets connection `conn`: a device goes offline unless a newer
    /// connection replaced it; an operator's requests are forgotten.
    pub(crate) fn leave(&self, role: Role, who: &Who, conn: u64) {
        match role {
            Role::Device => {
                let mut devices = lock(&self.devices);
                if devices.get(&who.id).is_some_and(|p| p.conn == conn) {
                    devices.remove(&who.id);
                    drop(devices);
                    self.presence.offline(&who.id);
                }
            }
            Role::Operator => {
                lock(&self.operators).remove(&conn);
                // Held until the device ends them (or a day passes): a
                // request id the device still answers is never free to claim.
                let mut inflight = lock(&self.inflight);
                let now = Instant::now();
                for i in inflight.values_mut().filter(|i| i.operator_conn == conn) {
                    i.orphaned_at = Some(now);
                }
                forget_old_orphans(&mut inflight, now);
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
        let Some(tx) = lock(&self.devices).get(&run.device_id).map(|p| p.tx.clone()) else {
            return error(RelayCode::DeviceOffline, format!("device {} is not connected to the relay", run.device_id));
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
            if inflight.values().filter(|i| i.operator_conn == conn).count() >= MAX_INFLIGHT_PER_OPERATOR {
                return error(RelayCode::Busy, format!("at most {MAX_INFLIGHT_PER_OPERATOR} requests in flight"));
            }
            let entry = Inflight { operator_conn: conn, operator_key: from.key.clone(), orphaned_at: None };
            inflight.insert(key.clone(), entry);
        }
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
        let conn = {
            let mut inflight = lock(&self.inflight);
            let conn = inflight.get(&key).filter(|i| i.orphaned_at.is_none()).map(|i| i.operator_conn);
            if done {
                inflight.remove(&key);
            }
            conn
        };
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
    }

    /// Every enrolled device with what the relay knows of it now.
    pub(crate) fn list(&self) -> Vec<DeviceEntry> {
        let registry = self.registry();
        self.presence.listing(&registry.0)
    }

    /// `GET /metrics`.
    pub(crate) fn metrics_text(&self) -> String {
        let devices = lock(&self.devices).len();
        let operators = lock(&self.operators).len();
        self.metrics.text(devices, operators)
    }
}

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
