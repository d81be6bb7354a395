//! The relay (`support relay serve`): the meeting point where devices and
//! operators dial in over TLS 1.3 WebSockets (DESIGN §7).
//!
//! Each TCP connection gets its own task, which does the TLS handshake
//! (with a timeout), serves HTTP/1.1 with hyper (`/healthz`, `/metrics`)
//! and upgrades `/v1/device` and `/v1/operator` to a WebSocket. Every
//! WebSocket starts with `challenge`; the peer must answer `hello` within
//! 5 s, signed by its key. Devices must be enrolled (a one-time token pins
//! device id → key); operators must be registered by the relay's admin.
//! The relay never signs, changes or runs a command: the device checks the
//! operator's signature against keys its owner trusts.
//!
//! # Layout
//!
//! - `mod.rs`: the limits, [`run`] (the accept loop and shutdown).
//! - [`state`](State): the state directory, its lock and the checks before ready.
//! - `http`: one TCP connection: TLS, `/healthz`, `/metrics`, the WebSocket upgrade.
//! - `session`: one peer's WebSocket, generic over its byte stream (unit-tested over `duplex`):
//!   the pre-`hello` frame cap, the per-connection `run` rate.
//! - `hello`: the challenge, `hello`, enrolment.
//! - `hub`: who is connected; routing of `run`, `cancel` and answers; ending removed peers' sessions.
//!   `hub/queue`: each peer's bounded queue of frames, holding no buffer while empty.
//! - `presence`: what `devices` reports; `live.json`.
//! - `admin`: the admin socket: `support relay devices`, and admin changes taking effect at once.
//! - `metrics`: the counters behind `/metrics`.
//! - `witness`: the audit witness: each device's chain must extend the head the relay holds.
//! - [`registry`]: `registry.json`: devices, operators, enrolment tokens.
//! - `store`: the registry behind a trait: the file, or the cluster's NATS.
//! - [`cluster`]: relays sharing one registry over NATS (`--cluster`).

mod admin;
pub mod cluster;
mod hello;
mod http;
mod hub;
mod metrics;
mod presence;
pub mod registry;
mod session;
mod state;
pub(crate) mod store;
mod witness;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::paths;
pub use hello::{Proven, Refusal, prove_hello};
pub use presence::{Listing, LiveFile, Source, devices, devices_in};
use registry::RegistryError;
pub use state::{State, is_running, owner_to_run_as};

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a peer has to answer `challenge` with `hello` (DESIGN §7).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer may stay silent (no frame, no ping) before it is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);
pub use crate::protocol::SEND_TIMEOUT;
/// Requests one operator connection may have in flight.
pub const MAX_INFLIGHT_PER_OPERATOR: usize = 256;
/// `run` frames one operator connection may send a second, on average, by
/// default (`--max-runs-per-second`); twice as many at once.
pub const RUNS_PER_SECOND: u32 = 20;
/// Connections not yet past `hello` (TLS, HTTP, challenge) held at once;
/// past it the relay stops accepting and more wait in the kernel's backlog.
pub const MAX_UNAUTHENTICATED: usize = 1024;
/// Frames queued for one peer.
const PEER_QUEUE: usize = 64;

/// The accept backlog the relay asks `listen(2)` for; the kernel caps it
/// at `net.core.somaxconn` (4096 by default since Linux 5.4). Connections
/// past `--max-unauthenticated` wait there (see [`run`]), and when a relay
/// of a cluster dies its devices arrive at the others all at once: past a
/// full backlog the kernel drops their SYNs, which a client resends only
/// after 1 s, then 3 s more, and so on (issue 15's failover figure).
/// tokio's `TcpListener::bind` asks for 1024.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` (`HOST:PORT`: the first of its addresses that can be
/// bound), with `SO_REUSEADDR` as `TcpListener::bind` sets it, and a
/// backlog of [`LISTEN_BACKLOG`].
///
/// # Errors
/// The resolver's error, or the last address's `bind`/`listen` error.
pub async fn listen(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        if let Err(e) = socket.bind(a) {
            last = Some(e);
            continue;
        }
        match socket.listen(LISTEN_BACKLOG) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")))
}

/// What can stop the relay from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The registry is unsafe, unreadable or malformed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The state directory or a file in it is unsafe or cannot be written.
    #[error(transparent)]
    File(#[from] paths::FileError),
    /// Another relay holds this state directory.
    #[error("another relay is running with the state directory {0}")]
    AlreadyRunning(PathBuf),
    /// An operating-system error; `what` says what was being done.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Limits of a running relay.
///
/// # Defaults
/// 100 000 connections at once, [`MAX_UNAUTHENTICATED`] of them before
/// `hello`; [`RUNS_PER_SECOND`] runs a second per operator connection.
#[derive(Clone, Debug)]
pub struct Options {
    /// Connections (TLS + WebSocket) at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections not yet past `hello` at once; more wait in the kernel's backlog.
    pub max_unauthenticated: usize,
    /// `run` frames a second per operator connection (bursts of twice as
    /// many); past it the relay answers `BUSY` and does not forward the run.
    pub max_runs_per_second: u32,
    /// The cluster's registry (`--cluster`), opened; `None`: `registry.json`.
    pub cluster: Option<Arc<cluster::NatsRegistry>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_connections: 100_000,
            max_unauthenticated: MAX_UNAUTHENTICATED,
            max_runs_per_second: RUNS_PER_SECOND,
            cluster: None,
        }
    }
}

/// Runs the relay on `listener` until `shutdown` resolves, with `tls` and
/// the locked state directory `state` (see [`State::open`], which the
/// caller runs before it says it is ready).
///
/// # Errors
/// [`RelayError::Registry`] when the relay is of a cluster and its
/// presence bucket cannot be opened.
pub async fn run(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut state: State,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let listen = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(%listen, state = %state.dir.display(), "relay running");
    let (store, route): (Arc<dyn store::Store>, _) = match options.cluster.clone() {
        Some(nats) => {
            let (client, url) = nats.client();
            let route = Arc::new(cluster::route::Route::open(client, url).await?);
            tracing::info!(relay = %route.relay, "relay of a cluster");
            (nats, Some(route))
        }
        None => (Arc::new(store::FileStore::new(&state.dir, state.registry.clone())), None),
    };
    let synced = tokio::spawn(store.clone().serve(shutdown_rx.clone()));
    let hub = Arc::new(
        hub::Hub::over(state.dir.clone(), store, shutdown_rx.clone())
            .with_unauthenticated_limit(options.max_unauthenticated)
            .with_run_rate(options.max_runs_per_second)
            .with_cluster(route.clone()),
    );
    let routed = route.map(|r| tokio::spawn(cluster::route::serve(hub.clone(), r, shutdown_rx.clone())));
    let writer = tokio::spawn(presence::keep_snapshot(state.dir.clone(), hub.presence.clone(), shutdown_rx.clone()));
    let witnessed = tokio::spawn(witness::keep_flushed(hub.clone(), shutdown_rx.clone()));
    let admin = state
        .admin
        .take()
        .and_then(admin_listener)
        .map(|l| tokio::spawn(admin::serve(l, hub.clone(), shutdown_rx.clone())));
    let watcher = tokio::spawn(admin::watch_registry(hub.clone(), shutdown_rx.clone()));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        // A place is waited for before accept, as `permit` is: past
        // --max-unauthenticated the relay stops accepting and further connections wait in the kernel's
        // accept backlog (past it the kernel drops their SYNs, which clients
        // resend) instead of being accepted and closed. A flood of strangers
        // still holds at most the cap in user space, the hello timeout still
        // frees places, and devices reconnecting in a crowd (a relay of a
        // cluster died) wait a moment instead of falling to a longer backoff.
        // Not held across accept, so the gauge counts connections only.
        if hub.unauthenticated.available_permits() == 0 {
            hub.metrics.accept_paused();
            tracing::debug!("accepting paused: too many connections not yet past hello");
            tokio::select! {
                _ = &mut shutdown => break,
                p = hub.unauthenticated.acquire() => drop(p.expect("the semaphore is never closed")),
            }
        }
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
        // Only this loop takes places, so the one seen free above is still free.
        let Ok(unauthenticated) = hub.unauthenticated.clone().try_acquire_owned() else {
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (hub, acceptor) = (hub.clone(), acceptor.clone());
        connections.spawn(http::serve_connection(hub, acceptor, tcp, addr, permit, unauthenticated));
        while connections.try_join_next().is_some() {}
    }
    tracing::info!("relay shutting down");
    let _ = shutdown_tx.send(true);
    let _ =
        tokio::time::timeout(Duration::from_secs(5), async { while connections.join_next().await.is_some() {} }).await;
    connections.abort_all();
    let _ = writer.await;
    let _ = watcher.await;
    let _ = synced.await;
    if let Some(routed) = routed {
        let _ = routed.await;
    }
    let _ = witnessed.await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    drop(state);
    Ok(())
}

/// Tells the relay running with the state directory `dir`, if any, that
/// its registry changed: it ends the sessions of removed devices and
/// operators before it answers. Returns how many it ended, or `None` when
/// no relay answered on `admin.sock` (it then acts within a second, when
/// it sees the file change).
pub fn reload(dir: &Path) -> Option<usize> {
    admin::reload(dir)
}

/// The state's admin socket as a tokio listener.
fn admin_listener(std: std::os::unix::net::UnixListener) -> Option<tokio::net::UnixListener> {
    let converted = std.set_nonblocking(true).and_then(|()| tokio::net::UnixListener::from_std(std));
    match converted {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "cannot serve the admin socket; `relay devices` will read live.json");
            None
        }
    }
}
