//! One TCP connection: the TLS handshake (with a timeout), HTTP/1.1 with
//! hyper (`/healthz`, `/metrics`), and the WebSocket upgrade of
//! `/v1/device` and `/v1/operator` into a [`session`](super::session).
//!
//! Each connection runs in a span `conn{peer, role, id}`: the role is set
//! at the upgrade and the id once the peer is authenticated, so no event
//! repeats the address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument as _;

use super::HANDSHAKE_TIMEOUT;
use super::hub::Hub;
use super::session::{role_name, session};
use crate::protocol::Role;

/// Why a TLS handshake failed, as `/metrics` counts it.
fn tls_reason(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(rustls::Error::InvalidMessage(_)) => "not_tls",
        Some(rustls::Error::AlertReceived(_)) => "alert",
        Some(_) => "tls",
        None => "io",
    }
}

/// The connection's place among those not yet past `hello`: the
/// WebSocket session takes it and gives it back once its hello is decided;
/// a plain HTTP connection (`/metrics`) holds it until it closes.
type Unauthenticated = Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>;

/// Serves one accepted TCP connection until it closes; `permit` is held
/// until its WebSocket session (if any) ends too, `unauthenticated` until
/// its peer's hello is decided.
pub(crate) async fn serve_connection(
    hub: Arc<Hub>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    permit: OwnedSemaphorePermit,
    unauthenticated: OwnedSemaphorePermit,
) {
    let span = tracing::info_span!("conn", peer = %addr, role = tracing::field::Empty, id = tracing::field::Empty);
    let unauthenticated = Arc::new(std::sync::Mutex::new(Some(unauthenticated)));
    serve_tls(hub, acceptor, tcp, Arc::new(permit), unauthenticated, span.clone()).instrument(span).await;
}

async fn serve_tls(
    hub: Arc<Hub>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    permit: Arc<OwnedSemaphorePermit>,
    unauthenticated: Unauthenticated,
    span: tracing::Span,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            hub.metrics.handshake_failed(tls_reason(&e));
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            hub.metrics.handshake_failed("timeout");
            tracing::debug!("TLS handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req| {
        let (hub, permit, span) = (hub.clone(), permit.clone(), span.clone());
        let unauthenticated = unauthenticated.clone();
        async move { Ok::<_, Infallible>(route(hub, req, permit, unauthenticated, span)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).expect("static"));
    r
}

/// Answers one HTTP request; a valid upgrade spawns the session in `span`.
fn route(
    hub: Arc<Hub>,
    mut req: Request<Incoming>,
    permit: Arc<OwnedSemaphorePermit>,
    unauthenticated: Unauthenticated,
    span: tracing::Span,
) -> Response<Full<Bytes>> {
    let role = match req.uri().path() {
        "/healthz" if req.method() == Method::GET => {
            // A relay cut off from its cluster still serves its own peers: degraded, not down.
            let degraded = hub.cluster.as_ref().is_some_and(|r| !r.connected());
            let status = if degraded { "degraded" } else { "ok" };
            let body = serde_json::json!({"status": status, "version": env!("CARGO_PKG_VERSION")}).to_string();
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
    span.record("role", role_name(role));
    // Peers are programs holding keys, never browsers: a page's WebSocket
    // always carries Origin, so refusing it stops cross-site hijacking.
    if req.headers().contains_key(header::ORIGIN) {
        hub.metrics.handshake_failed("origin");
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
        hub.metrics.handshake_failed("not_websocket");
        return reply(StatusCode::BAD_REQUEST, "text/plain", "a WebSocket upgrade (RFC 6455) is required\n");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let unauthenticated = crate::lock(&unauthenticated).take();
    tokio::spawn(
        async move {
            let _permit = permit;
            match on_upgrade.await {
                Ok(upgraded) => session(hub, TokioIo::new(upgraded), role, unauthenticated).await,
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        }
        .instrument(span),
    );
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    h.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_str(&accept).expect("base64 is a valid header"));
    r
}
