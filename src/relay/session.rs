//! One peer's WebSocket session, from `challenge` to its close.
//!
//! Generic over the byte stream under the WebSocket, so the same code
//! serves TLS connections and the unit tests' `tokio::io::duplex` pipes.
//! Log events land in the caller's span (the connection's: peer address,
//! role); the session adds the peer's `id` once it is authenticated.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::hello::{self, Refusal, Who};
use super::hub::{Hub, Joined, Removed};
use super::{HELLO_TIMEOUT, IDLE_TIMEOUT, SEND_TIMEOUT};
use crate::protocol::{self, FromRelay, RelayCode, Role, ToRelay};

/// How reading a text frame failed.
enum ReadError {
    /// Closed, reset or timed out: nothing to answer.
    Gone,
    /// Over 1 MiB: close with 1009.
    TooLarge,
    /// A binary frame: refuse it and go on.
    Binary,
}

/// A WebSocket to one peer, over any byte stream.
struct Ws<S> {
    ws: WebSocketStream<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Ws<S> {
    /// The next text frame, or `None` for a ping or pong (tungstenite
    /// answers pings itself); either way the peer was heard.
    async fn next_heard(&mut self) -> Result<Option<String>, ReadError> {
        use tokio_tungstenite::tungstenite::Error;
        use tokio_tungstenite::tungstenite::error::CapacityError;
        loop {
            match self.ws.next().await {
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
    async fn next_text(&mut self) -> Result<String, ReadError> {
        loop {
            if let Some(text) = self.next_heard().await? {
                return Ok(text);
            }
        }
    }

    async fn send(&mut self, frame: &FromRelay) -> bool {
        self.send_text(protocol::encode(frame)).await
    }

    async fn send_text(&mut self, text: String) -> bool {
        matches!(tokio::time::timeout(SEND_TIMEOUT, self.ws.send(Message::text(text))).await, Ok(Ok(())))
    }

    async fn close(&mut self, code: CloseCode, reason: &str) {
        let frame = CloseFrame { code, reason: reason.to_string().into() };
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(Some(frame))).await;
    }

    /// Sends an `error` frame without a request id, then closes with `code`.
    async fn refuse(&mut self, error: RelayCode, message: &str, code: CloseCode, reason: &str) {
        self.send(&refusal(error, message)).await;
        self.close(code, reason).await;
    }
}

/// `device` or `operator`, as logs and messages name the role.
pub(crate) fn role_name(role: Role) -> &'static str {
    match role {
        Role::Device => "device",
        Role::Operator => "operator",
    }
}

fn refusal(code: RelayCode, message: &str) -> FromRelay {
    FromRelay::Error { code, message: message.into(), request_id: None }
}

/// Serves one peer on the `role` endpoint over `io` (the upgraded
/// connection): challenge, hello, then its frames until it leaves, goes
/// idle, is replaced or removed, or the relay stops. `unauthenticated` is
/// the connection's place among those not yet past `hello`, given back
/// as soon as the hello is decided.
pub(crate) async fn session<S>(hub: Arc<Hub>, io: S, role: Role, unauthenticated: Option<OwnedSemaphorePermit>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // Before hello nothing larger than a hello is read or buffered: the
    // frame header's length is checked before any of its payload is kept.
    let ws = WebSocketStream::from_raw_socket(io, WsRole::Server, Some(protocol::hello_ws_config())).await;
    let mut greeting = Ws { ws };
    let who = greet(&hub, &mut greeting, role).await;
    drop(unauthenticated);
    let Some(who) = who else { return };
    // tokio-tungstenite 0.30 cannot change a live stream's limits, so the
    // stream is rebuilt with the full ones. Anything a peer sent between
    // its hello and hello_ack would be lost; peers send nothing then (PROTOCOL.md).
    let ws =
        WebSocketStream::from_raw_socket(greeting.ws.into_inner(), WsRole::Server, Some(protocol::ws_config())).await;
    let mut peer = Ws { ws };
    tracing::Span::current().record("id", who.id.as_str());
    // Reachable before hello_ack, so whoever sees the ack sees the peer online.
    let joined = hub.join(role, &who);
    let conn = joined.conn;
    if !hub.still_admitted(role, &who) {
        hub.leave(role, &who, conn);
        let why = "removed from the relay by its admin";
        return peer.refuse(RelayCode::Unauthorized, why, CloseCode::Policy, why).await;
    }
    let witnessed_seq = if role == Role::Device { super::witness::witnessed_seq(&hub, &who.id) } else { None };
    if peer.send(&FromRelay::HelloAck { id: who.id.clone(), name: who.name.clone(), witnessed_seq }).await {
        tracing::info!(name = %who.name, "peer authenticated");
        serve(&hub, &mut peer, role, &who, joined).await;
    }
    hub.leave(role, &who, conn);
    tracing::info!("peer left");
}

/// The challenge and hello; `None` when the peer was refused or left.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(hub: &Hub, peer: &mut Ws<S>, role: Role) -> Option<Who> {
    let (nonce, challenge) = hello::challenge();
    if !peer.send(&challenge).await {
        return None;
    }
    let text = match tokio::time::timeout(HELLO_TIMEOUT, peer.next_text()).await {
        Ok(Ok(text)) => text,
        Ok(Err(ReadError::TooLarge)) => {
            hub.metrics.handshake_failed("too_large");
            let why = format!("a frame before hello over {} bytes", protocol::MAX_HELLO_BYTES);
            tracing::info!(reason = %why, "hello refused");
            peer.close(CloseCode::Size, &why).await;
            return None;
        }
        Ok(Err(ReadError::Binary)) => {
            hub.metrics.handshake_failed("bad_hello");
            tracing::info!(reason = "binary frame", "hello refused");
            peer.refuse(RelayCode::BadFrame, "binary frames are refused", CloseCode::Policy, "bad hello").await;
            return None;
        }
        Ok(Err(ReadError::Gone)) => {
            hub.metrics.handshake_failed("closed");
            tracing::debug!("closed before hello");
            return None;
        }
        Err(_) => {
            hub.metrics.handshake_failed("hello_timeout");
            tracing::info!(reason = "no hello within 5 s", "hello refused");
            let why = "no hello within 5 s";
            peer.refuse(RelayCode::Unauthorized, why, CloseCode::Policy, why).await;
            return None;
        }
    };
    match hello::authenticate(hub, role, &nonce, &text).await {
        Ok(who) => Some(who),
        Err(Refusal(reason, code, message)) => {
            hub.metrics.handshake_failed(reason);
            tracing::info!(reason = %message, code = code.as_str(), "hello refused");
            peer.refuse(code, &message, CloseCode::Policy, code.as_str()).await;
            None
        }
    }
}

/// An authenticated peer's frames, and the frames the hub routes to it.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(hub: &Hub, peer: &mut Ws<S>, role: Role, who: &Who, joined: Joined) {
    let Joined { conn, mut rx, mut kill } = joined;
    let mut shutdown = hub.shutdown.clone();
    let mut runs = RunBucket::full(hub.runs_per_second, tokio::time::Instant::now());
    let mut deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
    loop {
        tokio::select! {
            read = tokio::time::timeout_at(deadline, peer.next_heard()) => {
                deadline = tokio::time::Instant::now() + IDLE_TIMEOUT;
                let text = match read {
                    Ok(Ok(None)) => continue,
                    Err(_) => {
                        tracing::info!("idle for {} s; closing", IDLE_TIMEOUT.as_secs());
                        return peer.close(CloseCode::Policy, "idle").await;
                    }
                    Ok(Err(ReadError::Gone)) => return,
                    Ok(Err(ReadError::TooLarge)) => {
                        hub.metrics.rejected("too_large");
                        return peer.close(CloseCode::Size, "frame over 1 MiB").await;
                    }
                    Ok(Err(ReadError::Binary)) => {
                        hub.metrics.rejected("binary");
                        if !peer.send(&refusal(RelayCode::BadFrame, "binary frames are refused")).await { return; }
                        continue;
                    }
                    Ok(Ok(Some(text))) => text,
                };
                let Some(answer) = answer(hub, role, who, conn, &mut runs, &text).await else { continue };
                if !peer.send(&answer).await {
                    return;
                }
            }
            out = rx.recv() => match out {
                Some(text) => if !peer.send_text(text).await { return },
                // The hub dropped this peer: replaced by a newer connection, or removed.
                None => return ended(peer, kill.try_recv().ok()).await,
            },
            removed = &mut kill => return ended(peer, removed.ok()).await,
            _ = crate::stopped(&mut shutdown) => return peer.close(CloseCode::Away, "relay shutting down").await,
        }
    }
}

/// Ends a session the hub let go of: `removed` by the admin (the peer is
/// told why first), else replaced by a newer connection of the same device.
async fn ended<S: AsyncRead + AsyncWrite + Unpin>(peer: &mut Ws<S>, removed: Option<Removed>) {
    match removed {
        Some(Removed(why)) => {
            peer.refuse(RelayCode::Unauthorized, &why, CloseCode::Policy, "removed by the relay's admin").await
        }
        None => peer.close(CloseCode::Policy, "replaced by a newer connection").await,
    }
}

/// The `run` frames one operator connection may still send now: a token
/// bucket holding twice the rate, refilled at the rate (`--max-runs-per-second`,
/// [`super::RUNS_PER_SECOND`] by default), so one operator cannot flood a
/// device (and its owner's audit log) with commands.
struct RunBucket {
    per_second: u32,
    tokens: f64,
    at: tokio::time::Instant,
}

impl RunBucket {
    fn full(per_second: u32, now: tokio::time::Instant) -> RunBucket {
        RunBucket { per_second, tokens: f64::from(per_second) * 2.0, at: now }
    }

    /// Takes one run if there is one at `now`.
    fn take(&mut self, now: tokio::time::Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * f64::from(self.per_second);
        self.tokens = (self.tokens + refill).min(f64::from(self.per_second) * 2.0);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Handles one text frame from an authenticated peer; returns what to answer, if anything.
async fn answer(hub: &Hub, role: Role, who: &Who, conn: u64, runs: &mut RunBucket, text: &str) -> Option<FromRelay> {
    let frame = match protocol::decode::<ToRelay>(text) {
        Ok(f) => f,
        Err(e) => {
            hub.metrics.rejected("malformed");
            return Some(refusal(RelayCode::BadFrame, &e.to_string()));
        }
    };
    match (role, frame) {
        (Role::Device, ToRelay::Heartbeat(hb)) => {
            let witnessed = super::witness::heard(hub, &who.id, conn, &hb).await;
            hub.heard(&who.id, hb);
            Some(witnessed)
        }
        (Role::Device, ToRelay::Answer(frame)) => {
            hub.route_answer(&who.id, frame).await;
            None
        }
        (Role::Operator, ToRelay::Run(run)) if !runs.take(tokio::time::Instant::now()) => {
            hub.metrics.rejected("rate_limited");
            Some(FromRelay::Error {
                code: RelayCode::Busy,
                message: format!(
                    "at most {} runs a second (bursts of {}) per connection",
                    runs.per_second,
                    u64::from(runs.per_second) * 2
                ),
                request_id: Some(run.request_id),
            })
        }
        (Role::Operator, ToRelay::Run(run)) => hub.route_run(who, conn, run),
        (Role::Operator, ToRelay::Cancel { device_id, request_id }) => {
            Some(hub.route_cancel(who, device_id, request_id))
        }
        (Role::Operator, ToRelay::Session(input)) => hub.route_session(who, input).await,
        (Role::Operator, ToRelay::ListDevices {}) => Some(FromRelay::Devices { devices: hub.list_for(who) }),
        (_, other) => {
            hub.metrics.rejected("wrong_role");
            let who = role_name(role);
            Some(refusal(RelayCode::BadFrame, &format!("a {who} may not send {:?}", other.kind())))
        }
    }
}

#[cfg(test)]
mod tests;
