//! The relay (`support relay serve`): the meeting point where devices and
//! operators dial in over TLS 1.3 WebSockets (DESIGN §7).
//!
//! Each TCP connection gets its own task, which does the TLS handshake
//! (with a timeout), serves HTTP/1.1 with hyper (`/healthz`, `/metrics`)
//! and upgrades `/v1/device` and `/v1/operator` to a WebSocket. Every
//! WebSocket starts with `challenge`; the peer must answer `hello` within
//! 5 s, signed by its key. Devices must be enrolled (a one-time token pins
//! device id → key); operators must be registered by the relay's admin.
//!
//! Routing: an operator's `run` goes to the device it names (or
//! `DEVICE_OFFLINE`); the device's answers go only to the connection that
//! sent that request; `cancel` is forwarded only for the operator's own
//! requests. The relay never signs, changes or runs a command: the device
//! checks the operator's signature against keys its owner trusts.

pub mod registry;

use crate::lock;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use chrono::Utc;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::identity::PublicKey;
use crate::paths;
use crate::protocol::{self, DeviceEntry, DeviceFrame, FromRelay, Heartbeat, RelayCode, Role, Run, ToRelay};
use registry::{Enroll, Registry, RegistryError, Stamp};

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer has to answer `challenge` with `hello` (DESIGN §7).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer may stay silent (no frame, no ping) before it is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a write to a peer may wait before the peer is dropped as stuck.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests one operator connection may have in flight.
pub const MAX_INFLIGHT_PER_OPERATOR: usize = 256;
/// Frames queued for one peer.
const PEER_QUEUE: usize = 64;

/// What can stop the relay from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    File(#[from] paths::FileError),
    /// Another relay holds this state directory.
    #[error("another relay is running with the state directory {0}")]
    AlreadyRunning(PathBuf),
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
}

/// Limits of a running relay.
///
/// # Defaults
/// 100 000 connections at once.
#[derive(Clone, Debug)]
pub struct Options {
    /// Connections (TLS + WebSocket) at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options { max_connections: 100_000 }
    }
}

/// `relay.lock` in the state directory, held by the running relay.
pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("relay.lock")
}

/// `live.json`: what the running relay knows of each device now.
pub fn live_path(dir: &Path) -> PathBuf {
    dir.join("live.json")
}

/// What the relay last heard from a device, as written to `live.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Live {
    pub online: bool,
    pub last_heartbeat: Option<String>,
    pub tier: Option<u8>,
    pub expires_at: Option<String>,
    /// The rest of the last heartbeat (running tasks, audit head, uptime, version).
    #[serde(default)]
    pub heartbeat: Option<Heartbeat>,
}

/// `live.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LiveFile {
    pub written_at: String,
    pub devices: BTreeMap<String, Live>,
}

/// Whether a relay holds the lock on `dir` now.
pub fn is_running(dir: &Path) -> bool {
    let Ok(Some(file)) = paths::open_read(&lock_path(dir)) else { return false };
    match file.try_lock_shared() {
        Ok(()) => false,
        Err(_) => true,
    }
}

/// Every device in the registry of `dir`, with what the running relay last
/// wrote of it (all offline when no relay runs).
///
/// # Errors
/// As [`Registry::load`].
pub fn devices(dir: &Path) -> Result<Vec<DeviceEntry>, RegistryError> {
    let (registry, _) = Registry::load(dir)?;
    let live: LiveFile = if is_running(dir) {
        paths::read_capped(&live_path(dir), 256 << 20)?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    } else {
        LiveFile::default()
    };
    Ok(entries(&registry, |id| live.devices.get(id).cloned().unwrap_or_default()))
}

fn entries(registry: &Registry, live: impl Fn(&str) -> Live) -> Vec<DeviceEntry> {
    registry
        .devices
        .iter()
        .map(|(id, d)| {
            let l = live(id);
            DeviceEntry {
                device_id: id.clone(),
                name: d.name.clone(),
                online: l.online,
                last_heartbeat: l.last_heartbeat,
                tier: l.tier,
                expires_at: l.expires_at,
                running_tasks: l.heartbeat.as_ref().map(|h| h.running_tasks),
                audit_head: l.heartbeat.as_ref().and_then(|h| h.audit_head.clone()),
                version: l.heartbeat.map(|h| h.version),
            }
        })
        .collect()
}

#[derive(Default)]
struct Metrics {
    commands_routed: AtomicU64,
    frames_rejected: Mutex<BTreeMap<&'static str, u64>>,
    handshakes_failed: Mutex<BTreeMap<&'static str, u64>>,
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, reason: &'static str) {
    *lock(map).entry(reason).or_default() += 1;
}

struct Peer {
    conn: u64,
    tx: mpsc::Sender<String>,
    /// Dropping it ends that session (a device's newer connection replaced it).
    _kill: Option<oneshot::Sender<()>>,
}

struct Inflight {
    operator_conn: u64,
    operator_key: String,
}

struct Hub {
    dir: PathBuf,
    registry: Mutex<(Registry, Stamp)>,
    devices: Mutex<HashMap<String, Peer>>,
    operators: Mutex<HashMap<u64, Peer>>,
    inflight: Mutex<HashMap<(String, String), Inflight>>,
    live: Mutex<HashMap<String, Live>>,
    live_dirty: tokio::sync::Notify,
    metrics: Metrics,
    next_conn: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

/// Who passed `hello`.
struct Who {
    id: String,
    name: String,
    key: String,
}

/// A failed `hello`: the metric's reason, the code and message sent.
struct Refusal(&'static str, RelayCode, String);

impl Hub {
    /// The registry, re-read first if the file changed since.
    fn registry(&self) -> MutexGuard<'_, (Registry, Stamp)> {
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

    fn reject(&self, reason: &'static str) {
        bump(&self.metrics.frames_rejected, reason);
    }

    async fn authenticate(&self, role: Role, nonce: &str, text: &str) -> Result<Who, Refusal> {
        let bad = |m: String| Refusal("bad_hello", RelayCode::BadFrame, m);
        let unauthorized = |m: &str| Refusal("unauthorized", RelayCode::Unauthorized, m.to_string());
        let frame = protocol::decode::<ToRelay>(text).map_err(|e| bad(e.to_string()))?;
        let ToRelay::Hello { role: said, id, public_key, sig, enroll_token, name, .. } = frame else {
            return Err(bad("the first frame must be hello".into()));
        };
        if said != role {
            return Err(bad(format!("hello says {said:?} on the {} endpoint", role.path())));
        }
        let key: PublicKey = public_key.parse().map_err(|_| unauthorized("malformed public key"))?;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&sig)
            .map_err(|_| unauthorized("malformed signature"))?;
        key.verify(&protocol::hello_bytes(role, nonce, &id, &public_key), &sig)
            .map_err(|_| unauthorized("the hello signature does not verify"))?;
        let public_key = key.to_string();
        match role {
            Role::Operator => {
                if id != key.fingerprint() {
                    return Err(unauthorized("an operator's id is its key's fingerprint"));
                }
                let registry = self.registry();
                let name = registry.0.operator_named(&public_key).ok_or_else(|| {
                    unauthorized(
                        "this operator key is not registered on the relay (support relay add-operator NAME KEY)",
                    )
                })?;
                Ok(Who { id, name: name.to_string(), key: public_key })
            }
            Role::Device => {
                if id != key.device_id() {
                    return Err(unauthorized("the device id does not belong to this key"));
                }
                if let Some(d) = self.registry().0.devices.get(&id) {
                    return if d.public_key == public_key {
                        Ok(Who { id, name: d.name.clone(), key: public_key })
                    } else {
                        Err(unauthorized("this device id is pinned to another key"))
                    };
                }
                // Only a live token may touch the registry on disk: a stranger's
                // hello is refused from the cached copy (re-read when the file changes).
                let now = Utc::now();
                let live = enroll_token.as_deref().map(registry::token_hash).is_some_and(|hash| {
                    self.registry().0.tokens.iter().any(|t| t.sha256 == hash && t.expires_at > now)
                });
                if !live {
                    return Err(unauthorized(if enroll_token.is_none() {
                        "this device is not enrolled: start the daemon with --enroll TOKEN"
                    } else {
                        "the enrollment token is unknown, used or expired"
                    }));
                }
                let name = clean_name(name.as_deref());
                let dir = self.dir.clone();
                let (i, k, n, t) = (id.clone(), public_key.clone(), name.clone(), enroll_token.clone());
                let done = tokio::task::spawn_blocking(move || registry::enroll(&dir, &i, &k, &n, t.as_deref())).await;
                let (outcome, fresh, stamp) = match done {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        tracing::error!(error = %crate::ErrorChain(&e), "cannot enroll");
                        return Err(unauthorized("the relay cannot write its registry"));
                    }
                    Err(_) => return Err(unauthorized("the relay cannot write its registry")),
                };
                *lock(&self.registry) = (fresh, stamp);
                match outcome {
                    Enroll::Pinned => {
                        tracing::info!(device_id = %id, name = %name, "device enrolled");
                        Ok(Who { id, name, key: public_key })
                    }
                    Enroll::Known => Ok(Who { id, name, key: public_key }),
                    Enroll::OtherKey => Err(unauthorized("this device id is pinned to another key")),
                    Enroll::BadToken if enroll_token.is_none() => {
                        Err(unauthorized("this device is not enrolled: start the daemon with --enroll TOKEN"))
                    }
                    Enroll::BadToken => Err(unauthorized("the enrollment token is unknown, used or expired")),
                }
            }
        }
    }

    /// Routes an operator's `run`; returns the error to send back, if any.
    fn route_run(&self, from: &Who, conn: u64, run: Run) -> Option<FromRelay> {
        let request_id = run.request_id.clone();
        let error =
            |code, message: String| Some(FromRelay::Error { code, message, request_id: Some(request_id.clone()) });
        if let Err(why) = run.check_shape() {
            self.reject("bad_run");
            return error(RelayCode::BadFrame, why);
        }
        if run.operator != from.key {
            self.reject("bad_run");
            return error(RelayCode::Unauthorized, "a run must be signed with the key this connection proved".into());
        }
        let Some(tx) = lock(&self.devices).get(&run.device_id).map(|p| p.tx.clone()) else {
            return error(RelayCode::DeviceOffline, format!("device {} is not connected to the relay", run.device_id));
        };
        let key = (run.device_id.clone(), run.request_id.clone());
        {
            let mut inflight = lock(&self.inflight);
            if inflight.contains_key(&key) {
                self.reject("bad_run");
                return error(RelayCode::BadFrame, "that request_id is already in flight for this device".into());
            }
            if inflight.values().filter(|i| i.operator_conn == conn).count() >= MAX_INFLIGHT_PER_OPERATOR {
                return error(RelayCode::Busy, format!("at most {MAX_INFLIGHT_PER_OPERATOR} requests in flight"));
            }
            inflight.insert(key.clone(), Inflight { operator_conn: conn, operator_key: from.key.clone() });
        }
        if tx.try_send(protocol::encode(&FromRelay::Run(run))).is_err() {
            lock(&self.inflight).remove(&key);
            return error(RelayCode::Busy, "the device's queue is full; try again".into());
        }
        self.metrics.commands_routed.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Forwards an operator's `cancel` for one of its own requests.
    fn route_cancel(&self, from: &Who, device_id: String, request_id: String) -> FromRelay {
        let mine = lock(&self.inflight)
            .get(&(device_id.clone(), request_id.clone()))
            .is_some_and(|i| i.operator_key == from.key);
        let tx = lock(&self.devices).get(&device_id).map(|p| p.tx.clone());
        let error = |code, message: &str| FromRelay::Error {
            code,
            message: message.into(),
            request_id: Some(request_id.clone()),
        };
        if !mine {
            self.reject("bad_cancel");
            return error(RelayCode::BadFrame, "no request of yours with that id is in flight on that device");
        }
        let Some(tx) = tx else { return error(RelayCode::DeviceOffline, "the device is not connected to the relay") };
        if tx.try_send(protocol::encode(&FromRelay::Cancel { request_id: request_id.clone() })).is_err() {
            return error(RelayCode::Busy, "the device's queue is full; try again");
        }
        FromRelay::Forwarded { request_id }
    }

    /// Sends a device's answer to the operator connection that asked.
    async fn route_answer(&self, device_id: &str, frame: DeviceFrame) {
        let key = (device_id.to_string(), frame.request_id().to_string());
        let done = matches!(frame, DeviceFrame::Result { .. } | DeviceFrame::Denied { .. });
        let conn = {
            let mut inflight = lock(&self.inflight);
            let conn = inflight.get(&key).map(|i| i.operator_conn);
            if done {
                inflight.remove(&key);
            }
            conn
        };
        let Some(tx) = conn.and_then(|c| lock(&self.operators).get(&c).map(|p| p.tx.clone())) else {
            // The operator left, the relay restarted, or the device made it up.
            self.reject("unknown_request");
            return;
        };
        let text = protocol::encode(&FromRelay::Answer(frame));
        if tokio::time::timeout(SEND_TIMEOUT, tx.send(text)).await.is_err() {
            self.reject("operator_stuck");
        }
    }

    /// What the relay knows of each device now, with `online` set. Takes
    /// one lock at a time, so it cannot deadlock with the sessions.
    fn live_now(&self) -> BTreeMap<String, Live> {
        let mut all: BTreeMap<String, Live> = lock(&self.live).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let online: Vec<String> = lock(&self.devices).keys().cloned().collect();
        for l in all.values_mut() {
            l.online = false;
        }
        for id in online {
            all.entry(id).or_default().online = true;
        }
        all
    }

    fn list(&self) -> Vec<DeviceEntry> {
        let live = self.live_now();
        entries(&self.registry().0, |id| live.get(id).cloned().unwrap_or_default())
    }

    fn heard(&self, device_id: &str, hb: Heartbeat) {
        let mut live = lock(&self.live);
        let l = live.entry(device_id.to_string()).or_default();
        l.last_heartbeat = Some(crate::time::rfc3339(Utc::now()));
        l.tier = hb.tier;
        l.expires_at = hb.expires_at.clone();
        l.heartbeat = Some(hb);
        drop(live);
        self.live_dirty.notify_one();
    }

    fn metrics_text(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(&mut out, "devices_connected", "Devices with an authenticated connection.", lock(&self.devices).len());
        gauge(&mut out, "operators_connected", "Operator connections.", lock(&self.operators).len());
        let routed = self.metrics.commands_routed.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP commands_routed_total Operator commands delivered to a device.\n# TYPE commands_routed_total counter\ncommands_routed_total {routed}"
        );
        for (name, help, map) in [
            ("frames_rejected_total", "Frames refused, by reason.", &self.metrics.frames_rejected),
            (
                "handshakes_failed_total",
                "TLS handshakes and hellos that failed, by reason.",
                &self.metrics.handshakes_failed,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (reason, n) in lock(map).iter() {
                let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
            }
        }
        out
    }
}

fn clean_name(name: Option<&str>) -> String {
    crate::text::display_name(name.unwrap_or(""), 64, "unnamed")
}

/// Runs the relay on `listener` until `shutdown` resolves, with `tls` and
/// the registry in `state_dir` (which it locks: one relay per directory).
///
/// # Errors
/// [`RelayError::AlreadyRunning`]; a registry or file error at start.
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state_dir: PathBuf,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    paths::ensure_dir(&state_dir)?;
    paths::create_new(&lock_path(&state_dir), b"")?;
    let lock_file =
        paths::open_read(&lock_path(&state_dir))?.ok_or_else(|| RelayError::AlreadyRunning(state_dir.clone()))?;
    if lock_file.try_lock().is_err() {
        return Err(RelayError::AlreadyRunning(state_dir));
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let hub = Arc::new(Hub {
        registry: Mutex::new(Registry::load(&state_dir)?),
        dir: state_dir,
        devices: Mutex::default(),
        operators: Mutex::default(),
        inflight: Mutex::default(),
        live: Mutex::default(),
        live_dirty: tokio::sync::Notify::new(),
        metrics: Metrics::default(),
        next_conn: AtomicU64::new(1),
        shutdown: shutdown_rx.clone(),
    });
    let writer = tokio::spawn(write_live(hub.clone()));
    hub.live_dirty.notify_one();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (tcp, addr) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (hub, acceptor) = (hub.clone(), acceptor.clone());
        connections.spawn(async move {
            serve_connection(hub, acceptor, tcp, addr, Arc::new(permit)).await;
        });
        while connections.try_join_next().is_some() {}
    }
    tracing::info!("relay shutting down");
    let _ = shutdown_tx.send(true);
    let _ =
        tokio::time::timeout(Duration::from_secs(5), async { while connections.join_next().await.is_some() {} }).await;
    connections.abort_all();
    let _ = writer.await;
    drop(lock_file);
    Ok(())
}

/// Writes `live.json` at most once a second while devices come, go or report.
async fn write_live(hub: Arc<Hub>) {
    let mut shutdown = hub.shutdown.clone();
    loop {
        tokio::select! {
            _ = hub.live_dirty.notified() => {}
            _ = crate::stopped(&mut shutdown) => break,
        }
        let snapshot = LiveFile { written_at: crate::time::rfc3339(Utc::now()), devices: hub.live_now() };
        let path = live_path(&hub.dir);
        let bytes = serde_json::to_vec(&snapshot).unwrap_or_default();
        let wrote = tokio::task::spawn_blocking(move || paths::write_atomic(&path, &bytes)).await;
        if let Ok(Err(e)) = wrote {
            tracing::warn!(error = %e, "cannot write live.json");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
    let _ = paths::remove(&live_path(&hub.dir));
}

fn tls_reason(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(rustls::Error::InvalidMessage(_)) => "not_tls",
        Some(rustls::Error::AlertReceived(_)) => "alert",
        Some(_) => "tls",
        None => "io",
    }
}

async fn serve_connection(
    hub: Arc<Hub>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            bump(&hub.metrics.handshakes_failed, tls_reason(&e));
            tracing::debug!(%addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            bump(&hub.metrics.handshakes_failed, "timeout");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req| {
        let (hub, permit) = (hub.clone(), permit.clone());
        async move { Ok::<_, Infallible>(route(hub, req, permit, addr)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%addr, error = %e, "HTTP connection ended with an error");
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).expect("static"));
    r
}

fn route(
    hub: Arc<Hub>,
    mut req: Request<Incoming>,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
    addr: SocketAddr,
) -> Response<Full<Bytes>> {
    let role = match req.uri().path() {
        "/healthz" if req.method() == Method::GET => {
            let body = serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}).to_string();
            return reply(StatusCode::OK, "application/json", body);
        }
        "/metrics" if req.method() == Method::GET => {
            return reply(StatusCode::OK, "text/plain; version=0.0.4", hub.metrics_text());
        }
        "/v1/device" => Role::Device,
        "/v1/operator" => Role::Operator,
        "/healthz" | "/metrics" => return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n"),
        _ => return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    };
    // Peers are programs holding keys, never browsers: a page's WebSocket
    // always carries Origin, so refusing it stops cross-site hijacking.
    if req.headers().contains_key(header::ORIGIN) {
        bump(&hub.metrics.handshakes_failed, "origin");
        return reply(StatusCode::FORBIDDEN, "text/plain", "Origin is refused\n");
    }
    let headers = req.headers();
    let has = |name: header::HeaderName, want: &str| {
        headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(want))))
    };
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let upgrade = req.method() == Method::GET
        && has(header::UPGRADE, "websocket")
        && has(header::CONNECTION, "upgrade")
        && has(header::SEC_WEBSOCKET_VERSION, "13");
    let Some(key) = key.filter(|_| upgrade) else {
        bump(&hub.metrics.handshakes_failed, "not_websocket");
        return reply(StatusCode::BAD_REQUEST, "text/plain", "a WebSocket upgrade (RFC 6455) is required\n");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _permit = permit;
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    WsRole::Server,
                    Some(protocol::ws_config()),
                )
                .await;
                session(hub, ws, role, addr).await;
            }
            Err(e) => tracing::debug!(%addr, error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    h.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64 is a valid header"));
    r
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// How reading a text frame failed.
enum ReadError {
    /// Closed, reset or timed out: nothing to answer.
    Gone,
    /// Over 1 MiB: close with 1009.
    TooLarge,
    /// A binary frame: refuse it and go on.
    Binary,
}

/// The next text frame, or `None` for a ping or pong (tungstenite answers
/// pings itself); either way the peer was heard.
async fn next_heard(ws: &mut Ws) -> Result<Option<String>, ReadError> {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::CapacityError;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(Some(t.to_string())),
            Some(Ok(Message::Binary(_))) => return Err(ReadError::Binary),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(None),
            Some(Ok(Message::Frame(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return Err(ReadError::Gone),
            Some(Err(Error::Capacity(CapacityError::MessageTooLong { .. }))) => return Err(ReadError::TooLarge),
            Some(Err(_)) => return Err(ReadError::Gone),
        }
    }
}

/// The next text frame, skipping pings and pongs.
async fn next_text(ws: &mut Ws) -> Result<String, ReadError> {
    loop {
        if let Some(text) = next_heard(ws).await? {
            return Ok(text);
        }
    }
}

async fn send(ws: &mut Ws, frame: &FromRelay) -> bool {
    send_text(ws, protocol::encode(frame)).await
}

async fn send_text(ws: &mut Ws, text: String) -> bool {
    matches!(tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::text(text))).await, Ok(Ok(())))
}

async fn close(ws: &mut Ws, code: CloseCode, reason: &str) {
    let frame = CloseFrame { code, reason: reason.to_string().into() };
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
}

fn refuse(code: RelayCode, message: &str) -> FromRelay {
    FromRelay::Error { code, message: message.into(), request_id: None }
}

async fn session(hub: Arc<Hub>, mut ws: Ws, role: Role, addr: SocketAddr) {
    let nonce = crate::random_hex(32);
    let challenge = FromRelay::Challenge { nonce: nonce.clone(), version: env!("CARGO_PKG_VERSION").into() };
    if !send(&mut ws, &challenge).await {
        return;
    }
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, next_text(&mut ws)).await {
        Ok(Ok(text)) => text,
        Ok(Err(ReadError::TooLarge)) => {
            bump(&hub.metrics.handshakes_failed, "too_large");
            return close(&mut ws, CloseCode::Size, "frame over 1 MiB").await;
        }
        Ok(Err(ReadError::Binary)) => {
            bump(&hub.metrics.handshakes_failed, "bad_hello");
            send(&mut ws, &refuse(RelayCode::BadFrame, "binary frames are refused")).await;
            return close(&mut ws, CloseCode::Policy, "bad hello").await;
        }
        Ok(Err(ReadError::Gone)) => return bump(&hub.metrics.handshakes_failed, "closed"),
        Err(_) => {
            bump(&hub.metrics.handshakes_failed, "hello_timeout");
            send(&mut ws, &refuse(RelayCode::Unauthorized, "no hello within 5 s")).await;
            return close(&mut ws, CloseCode::Policy, "no hello within 5 s").await;
        }
    };
    let who = match hub.authenticate(role, &nonce, &hello).await {
        Ok(who) => who,
        Err(Refusal(reason, code, message)) => {
            bump(&hub.metrics.handshakes_failed, reason);
            tracing::info!(%addr, ?role, reason = %message, "hello refused");
            send(&mut ws, &refuse(code, &message)).await;
            return close(&mut ws, CloseCode::Policy, code.as_str()).await;
        }
    };
    if !send(&mut ws, &FromRelay::HelloAck { id: who.id.clone(), name: who.name.clone() }).await {
        return;
    }
    let conn = hub.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(PEER_QUEUE);
    let (kill_tx, kill_rx) = oneshot::channel();
    match role {
        Role::Device => {
            let peer = Peer { conn, tx, _kill: Some(kill_tx) };
            if lock(&hub.devices).insert(who.id.clone(), peer).is_some() {
                tracing::info!(device_id = %who.id, "a newer connection replaces the device's old one");
            }
            hub.live_dirty.notify_one();
        }
        Role::Operator => {
            lock(&hub.operators).insert(conn, Peer { conn, tx, _kill: Some(kill_tx) });
        }
    }
    tracing::info!(%addr, ?role, id = %who.id, name = %who.name, "peer authenticated");
    serve_peer(&hub, &mut ws, role, &who, conn, rx, kill_rx).await;
    match role {
        Role::Device => {
            let mut devices = lock(&hub.devices);
            if devices.get(&who.id).is_some_and(|p| p.conn == conn) {
                devices.remove(&who.id);
            }
            drop(devices);
            hub.live_dirty.notify_one();
        }
        Role::Operator => {
            lock(&hub.operators).remove(&conn);
            lock(&hub.inflight).retain(|_, i| i.operator_conn != conn);
        }
    }
    tracing::info!(%addr, ?role, id = %who.id, "peer left");
}

async fn serve_peer(
    hub: &Hub,
    ws: &mut Ws,
    role: Role,
    who: &Who,
    conn: u64,
    mut rx: mpsc::Receiver<String>,
    mut kill: oneshot::Receiver<()>,
) {
    let mut shutdown = hub.shutdown.clone();
    let mut deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
    loop {
        tokio::select! {
            read = tokio::time::timeout_at(deadline, next_heard(ws)) => {
                deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
                let text = match read {
                    Ok(Ok(None)) => continue,
                    Err(_) => return close(ws, CloseCode::Policy, "idle").await,
                    Ok(Err(ReadError::Gone)) => return,
                    Ok(Err(ReadError::TooLarge)) => {
                        hub.reject("too_large");
                        return close(ws, CloseCode::Size, "frame over 1 MiB").await;
                    }
                    Ok(Err(ReadError::Binary)) => {
                        hub.reject("binary");
                        if !send(ws, &refuse(RelayCode::BadFrame, "binary frames are refused")).await { return; }
                        continue;
                    }
                    Ok(Ok(Some(text))) => text,
                };
                let frame = match protocol::decode::<ToRelay>(&text) {
                    Ok(f) => f,
                    Err(e) => {
                        hub.reject("malformed");
                        if !send(ws, &refuse(RelayCode::BadFrame, &e.to_string())).await { return; }
                        continue;
                    }
                };
                let answer = match (role, frame) {
                    (Role::Device, ToRelay::Heartbeat(hb)) => { hub.heard(&who.id, hb); None }
                    (Role::Device, ToRelay::Answer(frame)) => { hub.route_answer(&who.id, frame).await; None }
                    (Role::Operator, ToRelay::Run(run)) => hub.route_run(who, conn, run),
                    (Role::Operator, ToRelay::Cancel { device_id, request_id }) => {
                        Some(hub.route_cancel(who, device_id, request_id))
                    }
                    (Role::Operator, ToRelay::ListDevices {}) => Some(FromRelay::Devices { devices: hub.list() }),
                    (_, other) => {
                        hub.reject("wrong_role");
                        let who = match role { Role::Device => "device", Role::Operator => "operator" };
                        Some(refuse(RelayCode::BadFrame, &format!("a {who} may not send {:?}", other.kind())))
                    }
                };
                if let Some(answer) = answer && !send(ws, &answer).await {
                    return;
                }
            }
            out = rx.recv() => match out {
                Some(text) => if !send_text(ws, text).await { return },
                // The hub dropped this peer: a newer connection replaced it.
                None => return close(ws, CloseCode::Policy, "replaced by a newer connection").await,
            },
            _ = &mut kill => return close(ws, CloseCode::Policy, "replaced by a newer connection").await,
            _ = crate::stopped(&mut shutdown) => return close(ws, CloseCode::Away, "relay shutting down").await,
        }
    }
}
