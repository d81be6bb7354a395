//! The client side of a relay connection, shared by the daemon's link and
//! the operator client: TCP, TLS 1.3 with the relay pinned
//! ([`crate::tls::RelayTrust`]), the WebSocket upgrade, then `challenge` →
//! signed `hello` → `hello_ack`.

use crate::secret::Secret;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::identity::KeyPair;
use crate::protocol::{self, FromRelay, RelayCode, Role, ToRelay};
use crate::tls::{self, TlsError};

/// How long connecting (TCP, TLS, upgrade) may take, and each step of `hello`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A relay address: `wss://HOST[:PORT]` (port 443 if not given). The role's
/// path (`/v1/device`, `/v1/operator`) is added when dialling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayUrl {
    /// As given, without a trailing slash.
    pub url: String,
    /// The host name or address to connect to and check the certificate for.
    pub host: String,
    /// The port (443 when the URL names none).
    pub port: u16,
}

/// Why a connection to the relay failed; the message says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The relay URL is not `wss://HOST[:PORT]`.
    #[error("relay address {0}")]
    Url(String),
    /// The TLS configuration (CA file, fingerprint) cannot be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TCP connection failed.
    #[error("cannot connect to {addr}")]
    Connect {
        /// `HOST:PORT`.
        addr: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The relay's certificate is not one this client trusts: `why` says
    /// what was presented and what to do ([`tls::explain_handshake`]).
    #[error("the relay at {addr} is not the one you trust: {why}")]
    Untrusted {
        /// `HOST:PORT`.
        addr: String,
        /// What failed and the fix.
        why: String,
    },
    /// The TLS handshake failed (old TLS, not TLS, ...).
    #[error("TLS handshake with {addr} failed")]
    Handshake {
        /// `HOST:PORT`.
        addr: String,
        /// What rustls said.
        source: std::io::Error,
    },
    /// The WebSocket upgrade or a frame failed.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// The relay refused us with an `error` frame.
    #[error("the relay refused: {code}: {message}")]
    Refused {
        /// The relay's code.
        code: RelayCode,
        /// Its reason.
        message: String,
    },
    /// The relay sent a frame out of turn or malformed.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Waiting for what is named took too long.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// An answer, or the device key the relay handed over, failed a check
    /// of the device's signature: the relay (or something on the way)
    /// altered, dropped, reordered, replayed or forged it.
    #[error("refused to trust what the relay passed on: {0}")]
    Unverified(#[from] crate::protocol::answer::AnswerError),
}

impl std::str::FromStr for RelayUrl {
    type Err = DialError;

    /// Parses `wss://HOST[:PORT][/]`. `ws://` and anything else is refused:
    /// the link is never in plain text.
    fn from_str(s: &str) -> Result<RelayUrl, DialError> {
        let uri: hyper::Uri = s.parse().map_err(|e| DialError::Url(format!("{s:?} is not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("wss") => {}
            Some("ws") => {
                return Err(DialError::Url(format!(
                    "{s:?}: plain ws:// is refused; the relay link is always TLS (wss://)"
                )));
            }
            _ => return Err(DialError::Url(format!("{s:?} must start with wss://"))),
        }
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| DialError::Url(format!("{s:?} has no host")))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(DialError::Url(format!("{s:?}: give only wss://HOST:PORT; the path is chosen by role")));
        }
        Ok(RelayUrl {
            url: s.trim_end_matches('/').to_string(),
            host: host.to_string(),
            port: uri.port_u16().unwrap_or(443),
        })
    }
}

impl std::fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// An authenticated WebSocket to the relay.
pub type Ws = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// What `hello_ack` said.
#[derive(Clone, Debug)]
pub struct Welcome {
    /// Our id, as the relay accepted it.
    pub id: String,
    /// Our registered name.
    pub name: String,
    /// To a device: the audit seq the relay witnessed last, which its next
    /// heartbeat proves (see [`crate::protocol::WitnessProof`]).
    pub witnessed_seq: Option<u64>,
}

/// What a device adds to its `hello`.
#[derive(Clone, Debug, Default)]
pub struct DeviceHello {
    /// A one-time enrolment token, until the relay has pinned the device.
    pub enroll_token: Option<Secret>,
    /// The name to enrol under (the host name).
    pub name: Option<String>,
}

/// Connects to `url` as `role`, proving `key`.
///
/// # Errors
/// [`DialError`]: each step says what failed; [`DialError::Refused`] when
/// the relay answered `hello` with an error frame.
pub async fn connect(
    url: &RelayUrl,
    tls: Arc<rustls::ClientConfig>,
    role: Role,
    key: &KeyPair,
    device: DeviceHello,
) -> Result<(Ws, Welcome), DialError> {
    let addr = format!("{}:{}", url.host.trim_start_matches('[').trim_end_matches(']'), url.port);
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr))
        .await
        .map_err(|_| DialError::Timeout("connecting"))?
        .map_err(|source| DialError::Connect { addr: addr.clone(), source })?;
    connect_over(tcp, url, tls, role, key, device).await
}

/// As [`connect`], over a TCP connection already made (the load
/// generator binds its own source addresses).
///
/// # Errors
/// As [`connect`].
pub async fn connect_over(
    tcp: TcpStream,
    url: &RelayUrl,
    tls: Arc<rustls::ClientConfig>,
    role: Role,
    key: &KeyPair,
    device: DeviceHello,
) -> Result<(Ws, Welcome), DialError> {
    let addr = format!("{}:{}", url.host, url.port);
    let _ = tcp.set_nodelay(true);
    let name = tls::server_name(&url.host)?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio_rustls::TlsConnector::from(tls).connect(name, tcp))
        .await
        .map_err(|_| DialError::Timeout("in the TLS handshake"))?
        .map_err(|source| match tls::explain_handshake(&source, &url.host) {
            Some(why) => DialError::Untrusted { addr: addr.clone(), why },
            None => DialError::Handshake { addr: addr.clone(), source },
        })?;
    let request =
        format!("{}{}", url.url, role.path()).into_client_request().map_err(|e| DialError::WebSocket(e.to_string()))?;
    let (mut ws, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async_with_config(request, stream, Some(crate::protocol::ws_config())),
    )
    .await
    .map_err(|_| DialError::Timeout("in the WebSocket upgrade"))?
    .map_err(|e| DialError::WebSocket(e.to_string()))?;
    let nonce = match recv(&mut ws, CONNECT_TIMEOUT).await? {
        FromRelay::Challenge { nonce, .. } => nonce,
        other => return Err(unexpected(other)),
    };
    let public_key = key.public_key().to_string();
    let id = match role {
        Role::Device => key.public_key().device_id(),
        Role::Operator => key.public_key().fingerprint(),
    };
    let sig = key.sign(&protocol::hello_bytes(role, &nonce, &id, &public_key));
    let hello = ToRelay::Hello {
        role,
        id,
        public_key,
        version: env!("CARGO_PKG_VERSION").into(),
        sig: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig),
        enroll_token: device.enroll_token.map(|t| t.expose().to_string()),
        name: device.name,
    };
    send(&mut ws, &hello).await?;
    match recv(&mut ws, CONNECT_TIMEOUT).await? {
        FromRelay::HelloAck { id, name, witnessed_seq } => Ok((ws, Welcome { id, name, witnessed_seq })),
        other => Err(unexpected(other)),
    }
}

fn unexpected(frame: FromRelay) -> DialError {
    match frame {
        FromRelay::Error { code, message, .. } => DialError::Refused { code, message },
        other => DialError::Protocol(format!("unexpected frame: {}", protocol::encode(&other))),
    }
}

/// Sends one frame.
///
/// # Errors
/// [`DialError::WebSocket`] if the connection is gone.
pub async fn send(ws: &mut Ws, frame: &ToRelay) -> Result<(), DialError> {
    ws.send(Message::text(protocol::encode(frame))).await.map_err(|e| DialError::WebSocket(e.to_string()))
}

/// The next frame from the relay within `wait` (pings are answered and skipped).
///
/// # Errors
/// [`DialError::Timeout`]; [`DialError::WebSocket`] when closed (with the
/// close reason); [`DialError::Protocol`] for a frame that does not parse.
pub async fn recv(ws: &mut Ws, wait: Duration) -> Result<FromRelay, DialError> {
    tokio::time::timeout(wait, next(ws)).await.map_err(|_| DialError::Timeout("waiting for the relay"))?
}

/// The next frame from the relay (pings are answered and skipped).
///
/// # Errors
/// As [`recv`], without the timeout.
pub async fn next(ws: &mut Ws) -> Result<FromRelay, DialError> {
    loop {
        if let Some(frame) = next_heard(ws).await? {
            return Ok(frame);
        }
    }
}

/// The next frame, or `None` for a ping or pong: the relay was heard.
///
/// # Errors
/// As [`next`].
pub async fn next_heard(ws: &mut Ws) -> Result<Option<FromRelay>, DialError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return protocol::decode(&text).map(Some).map_err(|e| DialError::Protocol(e.to_string()));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(None),
            Some(Ok(Message::Close(frame))) => {
                let why = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                return Err(DialError::WebSocket(format!("the relay closed the connection {why}")));
            }
            Some(Ok(Message::Binary(_))) => return Err(DialError::Protocol("a binary frame".into())),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(DialError::WebSocket(e.to_string())),
            None => return Err(DialError::WebSocket("the relay closed the connection".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wss_urls_without_paths_are_taken() {
        let u: RelayUrl = "wss://relay.example:8443".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port), ("relay.example", 8443));
        assert_eq!("wss://relay.example/".parse::<RelayUrl>().unwrap().port, 443);
        assert_eq!("wss://[::1]:9".parse::<RelayUrl>().unwrap().host, "[::1]");
        for bad in ["ws://relay.example", "https://relay.example", "relay.example:1", "wss://h/x", "wss://h/?a=b"] {
            assert!(bad.parse::<RelayUrl>().is_err(), "{bad}");
        }
        let e = "ws://127.0.0.1:1".parse::<RelayUrl>().unwrap_err().to_string();
        assert!(e.contains("plain ws:// is refused"), "{e}");
    }
}
