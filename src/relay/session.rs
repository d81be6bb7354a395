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
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::hello::{self, Refusal, Who};
use super::hub::{Hub, Joined};
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

/// Serves one peer on the `role` endpoint: challenge, hello, then its
/// frames until it leaves, goes idle, is replaced, or the relay stops.
pub(crate) async fn session<S>(hub: Arc<Hub>, ws: WebSocketStream<S>, role: Role)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut peer = Ws { ws };
    let Some(who) = greet(&hub, &mut peer, role).await else { return };
    tracing::Span::current().record("id", who.id.as_str());
    // Reachable before hello_ack, so whoever sees the ack sees the peer online.
    let joined = hub.join(role, &who);
    let conn = joined.conn;
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
            tracing::info!(reason = "frame over 1 MiB", "hello refused");
            peer.close(CloseCode::Size, "frame over 1 MiB").await;
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
                let Some(answer) = answer(hub, role, who, conn, &text).await else { continue };
                if !peer.send(&answer).await {
                    return;
                }
            }
            out = rx.recv() => match out {
                Some(text) => if !peer.send_text(text).await { return },
                // The hub dropped this peer: a newer connection replaced it.
                None => return peer.close(CloseCode::Policy, "replaced by a newer connection").await,
            },
            _ = &mut kill => return peer.close(CloseCode::Policy, "replaced by a newer connection").await,
            _ = crate::stopped(&mut shutdown) => return peer.close(CloseCode::Away, "relay shutting down").await,
        }
    }
}

/// Handles one text frame from an authenticated peer; returns what to answer, if anything.
async fn answer(hub: &Hub, role: Role, who: &Who, conn: u64, text: &str) -> Option<FromRelay> {
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
        (Role::Operator, ToRelay::Run(run)) => hub.route_run(who, conn, run),
        (Role::Operator, ToRelay::Cancel { device_id, request_id }) => {
            Some(hub.route_cancel(who, device_id, request_id))
        }
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
