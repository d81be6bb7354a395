//! The loopback control API (DESIGN §6): HTTP/1.1 on 127.0.0.1 for the
//! owner's own commands (`support status`, `tasks`, `stop`, `watch`,
//! `allow`, `revoke`).
//!
//! Every request is checked in this order, and the first failure answers:
//!
//! 1. exactly one `Host` header, and an absolute-form target
//!    (`GET http://HOST/v1/status`) only with `http` and the `Host`'s own
//!    authority, else 400 (RFC 9112 §3.2, §3.2.2); the `Host` is exactly
//!    `127.0.0.1:PORT`, `localhost:PORT` or `[::1]:PORT`, else 403 (DNS rebinding);
//! 2. no `Origin` header at all, else 403 (a web page calling localhost);
//!    no CORS header is ever sent;
//! 3. `Authorization: Bearer <secret>`, compared in constant time, else
//!    401, audited as `control.unauthorized` (at most one record per
//!    [`UNAUTHORIZED_WINDOW`], the next counting those left out);
//! 4. the route: 404 for an unknown path, 405 for a known path with
//!    another method (state changes only on POST);
//! 5. a body over [`MAX_BODY`](super::http::MAX_BODY) bytes: 413.
//!
//! `POST /v1/console/login` (a login link to the owner's console) is
//! refused (403, audited) when the process that asks runs inside one of
//! the daemon's tasks: its pid from `SO_PEERCRED`, or for the TCP port
//! from the kernel's socket table (`guard::tcp_peer_pid`).
//!
//! Connections are not kept alive; a connection's headers must all arrive
//! within [`HEADER_TIMEOUT`](super::http::HEADER_TIMEOUT) of its start (one deadline, however they
//! trickle) and a body within [`BODY_TIMEOUT`](super::http::BODY_TIMEOUT); at most [`MAX_CONNECTIONS`]
//! are served at once.
//!
//! The same API, with the same checks, is served on `control.sock`
//! ([`crate::paths::Paths::control_socket`]): a Unix socket, 0600 in the
//! 0700 state directory, answering only a peer of the daemon's own uid
//! (`SO_PEERCRED`), with [`SOCKET_CONNECTIONS`] slots of its own. The owner's
//! CLI prefers it, so other local users crowding the TCP port's slots
//! (slowloris) cannot hide the daemon from its owner or stop `support stop`.
//!
//! # Endpoints
//! The requests and their answers are the types of [`crate::control_api`],
//! which the CLI deserialises: its module docs list them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, ORIGIN};
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::Daemon;
use super::http::{Body, RateLimit, StreamBody, error, respond};
use crate::audit::{Event, Record};
use crate::control_api::{ConsentChanged, Stopped, StoppedAll, TaskList, WatchEvent};
use crate::protocol::StoppedBy;
use crate::secret::Secret;

/// Connections served at once on the TCP port; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// Connections served at once on `control.sock` (the owner's own), apart
/// from the TCP port's.
pub const SOCKET_CONNECTIONS: usize = 16;
/// At most one `control.unauthorized` record per window.
pub const UNAUTHORIZED_WINDOW: Duration = Duration::from_secs(10);
/// How often an idle `/v1/events` stream gets a `ping` line.
const EVENTS_PING: Duration = Duration::from_secs(15);

struct Shared {
    daemon: Daemon,
    port: u16,
    /// Compared in constant time ([`Secret::eq_bytes`]).
    secret: Secret,
    unauthorized: Mutex<RateLimit>,
    stop: watch::Receiver<bool>,
}

/// Who is on the other end of a control connection.
#[derive(Clone, Copy, Debug)]
enum Peer {
    /// The TCP port: any local user.
    Tcp(SocketAddr),
    /// `control.sock`: a process of this uid, and its pid (`SO_PEERCRED`).
    Socket(u32, Option<i32>),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Tcp(addr) => write!(f, "{addr}"),
            Peer::Socket(uid, _) => write!(f, "control.sock (uid {uid})"),
        }
    }
}

/// Binds `control.sock` and makes it 0600 (the state directory, 0700, keeps
/// everyone else out before that). A socket already there is a leftover:
/// the caller holds the home's lock. `None`, with a warning, when it cannot
/// be bound (e.g. a path over the 108 bytes of `sun_path`): the TCP port
/// still serves.
pub fn bind_socket(paths: &crate::paths::Paths) -> Option<UnixListener> {
    let path = paths.control_socket();
    let bound =
        crate::paths::bind_socket(&path).and_then(|l| l.set_nonblocking(true).and_then(|()| UnixListener::from_std(l)));
    match bound {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot bind control.sock; the owner's CLI will use the TCP port");
            None
        }
    }
}

/// Serves the control API on `listener` (TCP, loopback) and on `socket`
/// (`control.sock`, see [`bind_socket`]) until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    socket: Option<UnixListener>,
    daemon: Daemon,
    secret: Secret,
    stop: watch::Receiver<bool>,
) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let shared = Arc::new(Shared { daemon, port, secret, unauthorized: Mutex::default(), stop: stop.clone() });
    let on_socket = socket.map(|socket| tokio::spawn(serve_socket(socket, shared.clone(), stop.clone())));
    serve_tcp(listener, shared, stop).await;
    if let Some(task) = on_socket {
        let _ = task.await;
    }
}

async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    super::http::accept_loop(listener, MAX_CONNECTIONS, stop, "control API", |stream, peer, permit| {
        spawn_connection(stream, Peer::Tcp(peer), permit, shared.clone())
    })
    .await;
}

async fn serve_socket(listener: UnixListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(SOCKET_CONNECTIONS));
    let me = crate::paths::current_uid();
    loop {
        let permit = tokio::select! {
            _ = crate::stopped(&mut stop) => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let stream = tokio::select! {
            _ = crate::stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "control.sock accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let cred = stream.peer_cred().ok();
        let uid = cred.map(|c| c.uid());
        if uid != Some(me) {
            tracing::warn!(peer_uid = ?uid, "control.sock: refused a peer of another user");
            continue;
        }
        spawn_connection(stream, Peer::Socket(me, cred.and_then(|c| c.pid())), permit, shared.clone());
    }
}

/// Serves one connection in its own task, holding `permit` until it ends.
fn spawn_connection<S>(stream: S, peer: Peer, permit: OwnedSemaphorePermit, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stop = shared.stop.clone();
    let span = tracing::debug_span!("control", %peer);
    super::http::spawn_connection(stream, permit, stop, span, move |req| {
        let shared = shared.clone();
        async move { handle(&shared, req, peer).await }
    });
}

impl Shared {
    fn secret_ok(&self, req: &Request<Incoming>) -> bool {
        let Some(value) = req.headers().get(AUTHORIZATION) else { return false };
        let Some(token) = value.as_bytes().strip_prefix(b"Bearer ") else { return false };
        self.secret.eq_bytes(token)
    }

    /// Records a refused request, at most once per window.
    async fn record_unauthorized(&self, req: &Request<Incoming>, peer: Peer) {
        let Some(suppressed) = crate::lock(&self.unauthorized).admit(UNAUTHORIZED_WINDOW) else { return };
        let why = if req.headers().contains_key(AUTHORIZATION) { "wrong secret" } else { "no secret" };
        let path: String = req.uri().path().chars().take(128).filter(|c| c.is_ascii_graphic()).collect();
        let mut r = Record::new(Event::ControlUnauthorized);
        r.reason = Some(why.into());
        r.detail = Some(format!(
            "{} {path} from {peer}{}",
            req.method(),
            if suppressed > 0 { format!("; {suppressed} more refused since the last record") } else { String::new() }
        ));
        if let Err(e) = self.daemon.audit(vec![r]).await {
            tracing::error!(error = %crate::ErrorChain(&e), "could not record control.unauthorized");
        }
    }
}

/// The routes: path pattern → the one method it takes.
fn route(path: &str) -> Option<(Method, Route)> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        ["", "v1", "status"] => Some((Method::GET, Route::Status)),
        ["", "v1", "tasks"] => Some((Method::GET, Route::Tasks)),
        ["", "v1", "tasks", "stop"] => Some((Method::POST, Route::StopAll)),
        ["", "v1", "tasks", id, "stop"] => Some((Method::POST, Route::Stop(id.to_string()))),
        ["", "v1", "tasks", id] => Some((Method::GET, Route::Task(id.to_string()))),
        ["", "v1", "consent", "changed"] => Some((Method::POST, Route::ConsentChanged)),
        ["", "v1", "events"] => Some((Method::GET, Route::Events)),
        ["", "v1", "console", "login"] => Some((Method::POST, Route::ConsoleLogin)),
        _ => None,
    }
}

enum Route {
    Status,
    Tasks,
    Task(String),
    Stop(String),
    StopAll,
    ConsentChanged,
    Events,
    ConsoleLogin,
}

async fn handle(shared: &Shared, req: Request<Incoming>, peer: Peer) -> Response<Body> {
    if let Err((status, why)) = super::http::host_ok(&req, shared.port) {
        return error(status, why);
    }
    if req.headers().contains_key(ORIGIN) {
        return error(StatusCode::FORBIDDEN, "requests with an Origin header are refused");
    }
    if !shared.secret_ok(&req) {
        shared.record_unauthorized(&req, peer).await;
        return error(StatusCode::UNAUTHORIZED, "Authorization: Bearer <the secret file's contents> is required");
    }
    let Some((method, route)) = route(req.uri().path()) else {
        return error(StatusCode::NOT_FOUND, "no such endpoint");
    };
    if req.method() != method {
        return super::http::method_not_allowed(&method);
    }
    if method == Method::POST
        && let Err(refused) = super::http::read_body(req).await
    {
        return refused;
    }
    let daemon = &shared.daemon;
    match route {
        Route::Status => respond(StatusCode::OK, &daemon.status_view()),
        Route::Tasks => respond(StatusCode::OK, &TaskList { tasks: daemon.tasks() }),
        Route::Task(id) => match daemon.task_detail(&id) {
            Some(detail) => respond(StatusCode::OK, &detail),
            None => error(StatusCode::NOT_FOUND, "no such task, running or recently ended"),
        },
        Route::Stop(id) => {
            let known = daemon.tasks().iter().any(|t| t.task_id == id);
            if !known {
                return error(StatusCode::NOT_FOUND, "no such running task");
            }
            let result = daemon.stop_task(&id, StoppedBy::Owner).await;
            respond(StatusCode::OK, &Stopped { task_id: id, result })
        }
        Route::StopAll => {
            let stopped = daemon.stop_all(StoppedBy::Owner).await;
            let stopped = stopped.into_iter().map(|(task_id, result)| Stopped { task_id, result }).collect();
            respond(StatusCode::OK, &StoppedAll { stopped })
        }
        Route::ConsentChanged => {
            daemon.consent_changed().await;
            respond(StatusCode::OK, &ConsentChanged { status: daemon.status_view() })
        }
        Route::Events => events(daemon, shared.stop.clone()),
        Route::ConsoleLogin => {
            let pid = match peer {
                Peer::Socket(_, pid) => pid,
                Peer::Tcp(addr) => {
                    let local = SocketAddr::from(([127, 0, 0, 1], shared.port));
                    tokio::task::spawn_blocking(move || super::guard::tcp_peer_pid(addr, local)).await.ok().flatten()
                }
            };
            match daemon.console_login_for(pid).await {
                Ok(login) => respond(StatusCode::OK, &login),
                Err((status, why)) => error(status, &why),
            }
        }
    }
}

/// The `/v1/events` stream.
fn events(daemon: &Daemon, mut stop: watch::Receiver<bool>) -> Response<Body> {
    let (tx, body) = StreamBody::channel(64);
    let mut events = daemon.subscribe();
    let line = |e: &WatchEvent| Bytes::from(serde_json::to_string(e).unwrap_or_default() + "\n");
    let first = line(&WatchEvent::Status { status: Box::new(daemon.status_view()) });
    tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            return;
        }
        let mut ping = tokio::time::interval(EVENTS_PING);
        ping.tick().await;
        loop {
            let item = tokio::select! {
                _ = tx.closed() => return,
                _ = crate::stopped(&mut stop) => return,
                _ = ping.tick() => line(&WatchEvent::Ping),
                e = events.recv() => match e {
                    Ok(text) => Bytes::from(format!("{text}\n")),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => line(&WatchEvent::Lagged { missed }),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    body.respond("application/x-ndjson")
}
