//! A relay that misbehaves on purpose: a man in the middle between the
//! real `support operator` and the real relay. It ends the operator's TLS
//! WebSocket with a certificate of its own (the operator pins it), dials
//! the relay as the operator would, and hands each frame, either way, to
//! a [`Tamper`] of the test's, which says what goes on instead. The
//! challenge and hello pass unchanged unless the tamperer changes them
//! (the hello is signed over the relay's nonce).
//!
//! Used as `#[path = "common/mitm.rs"] mod mitm;` beside `mod common;`.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use support::tls::Identity;
use tokio_tungstenite::tungstenite::Message;

use crate::common::bin;
use crate::common::net::{Relay, raw_ws};

/// Where frames go once the tamperer has seen one.
#[derive(Default)]
pub struct Sends {
    /// To the relay.
    pub up: Vec<Value>,
    /// To the operator.
    pub down: Vec<Value>,
}

impl Sends {
    /// `v` to the relay.
    pub fn up(v: Value) -> Sends {
        Sends { up: vec![v], down: vec![] }
    }

    /// `v` to the operator.
    pub fn down(v: Value) -> Sends {
        Sends { up: vec![], down: vec![v] }
    }

    /// Nothing: the frame is dropped.
    pub fn none() -> Sends {
        Sends::default()
    }
}

/// What the man in the middle does to the frames of one operator connection.
pub trait Tamper: Send + 'static {
    /// A frame from the operator, on its way to the relay.
    fn on_operator(&mut self, v: Value) -> Sends {
        Sends::up(v)
    }

    /// A frame from the relay, on its way to the operator.
    fn on_relay(&mut self, v: Value) -> Sends {
        Sends::down(v)
    }
}

/// The man in the middle, listening on an ephemeral loopback port.
pub struct Mitm {
    pub addr: String,
    pub fingerprint: String,
    _dir: tempfile::TempDir,
}

impl Mitm {
    /// Starts it in front of `relay`; each operator connection gets a
    /// tamperer of `tamper`'s making and a connection of its own to the relay.
    pub async fn start<F>(relay: Arc<Relay>, tamper: F) -> Mitm
    where
        F: Fn() -> Box<dyn Tamper> + Send + Sync + 'static,
    {
        let dir = tempfile::tempdir().unwrap();
        let (identity, _) = Identity::self_signed(&dir.path().join("mitm"), &[]).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config().unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let tamper = Arc::new(tamper);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, relay, tamper) = (acceptor.clone(), relay.clone(), tamper.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let Ok(down) = tokio_tungstenite::accept_async(tls).await else { return };
                    let up = raw_ws(&relay, "/v1/operator").await;
                    pump(down, up, tamper()).await;
                });
            }
        });
        Mitm { addr, fingerprint: identity.fingerprint(), _dir: dir }
    }

    /// `support operator ARGS` through the man in the middle (not run yet).
    pub fn operator_cli(&self, key: &Path, args: &[&str]) -> Command {
        let url = format!("wss://{}", self.addr);
        let mut cmd = Command::new(bin());
        cmd.args(["operator", "--relay", &url, "--relay-fingerprint", &self.fingerprint, "--key"])
            .arg(key)
            .args(args)
            .env("NO_COLOR", "1");
        cmd
    }
}

/// The next text frame, parsed; `None` at the end (a close, an error).
/// Pings and pongs are answered by the WebSocket itself and not passed on.
fn parse(m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) -> Option<Option<Value>> {
    match m {
        Some(Ok(Message::Text(text))) => Some(Some(serde_json::from_str(&text).unwrap())),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Some(None),
        _ => None,
    }
}

/// Carries frames both ways through `tamper` until either side ends;
/// then both connections are dropped (the relay sees the operator leave).
async fn pump<D, U>(mut down: D, mut up: U, mut tamper: Box<dyn Tamper>)
where
    D: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures_util::Sink<Message>
        + Unpin,
    U: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures_util::Sink<Message>
        + Unpin,
{
    loop {
        let sends = tokio::select! {
            m = down.next() => match parse(m) {
                Some(Some(v)) => tamper.on_operator(v),
                Some(None) => continue,
                None => return,
            },
            m = up.next() => match parse(m) {
                Some(Some(v)) => tamper.on_relay(v),
                Some(None) => continue,
                None => return,
            },
        };
        for v in sends.up {
            if up.send(Message::text(v.to_string())).await.is_err() {
                return;
            }
        }
        for v in sends.down {
            if down.send(Message::text(v.to_string())).await.is_err() {
                return;
            }
        }
    }
}
