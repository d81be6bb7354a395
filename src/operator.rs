//! The operator client: list devices, run a catalogued action on one and
//! follow it to its end, or cancel a request, all through the relay.
//!
//! Commands are signed here with the operator's key ([`Run::signed`]);
//! the relay only carries them, and the device checks the signature
//! against the keys its owner trusts. The device's answers come back
//! signed by the device key, and are checked here before anyone sees
//! them ([`AnswerCheck`]): the key is the one the relay hands over in the
//! device list, taken only if it derives the device id asked for.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::SinkExt as _;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::dial::{self, DeviceHello, DialError, RelayUrl, Welcome, Ws};
use crate::identity::{KeyPair, PublicKey};
use crate::protocol::answer::{self, AnswerCheck, AnswerError};
use crate::protocol::{
    DEAD_AFTER, DenyCode, DeviceEntry, DeviceFrame, FromRelay, Keys, PING_EVERY, RelayCode, Role, Run, SessionInput,
    ToRelay,
};
use tokio::sync::mpsc;

/// An operator's connection to the relay, authenticated.
pub struct Session {
    ws: Ws,
    /// What the relay calls us.
    pub welcome: Welcome,
    key: KeyPair,
    /// Device keys from the relay's device list, each checked against its id.
    device_keys: HashMap<String, PublicKey>,
}

/// How a `run` ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The device ran it; the `result` frame.
    Finished(DeviceFrame),
    /// The device refused it; nothing ran.
    Denied {
        /// The denial code.
        code: DenyCode,
        /// The device's reason.
        message: String,
    },
    /// The relay could not deliver it.
    Relay {
        /// The relay's error code.
        code: RelayCode,
        /// The relay's reason.
        message: String,
    },
}

impl Session {
    /// Connects to `url` and proves `key`.
    ///
    /// # Errors
    /// As [`dial::connect`]; `Refused(UNAUTHORIZED)` when the relay does not know the key.
    pub async fn connect(url: &RelayUrl, tls: Arc<rustls::ClientConfig>, key: KeyPair) -> Result<Session, DialError> {
        let (ws, welcome) = dial::connect(url, tls, Role::Operator, &key, DeviceHello::default()).await?;
        Ok(Session { ws, welcome, key, device_keys: HashMap::new() })
    }

    /// Every device enrolled on the relay, each with its key checked
    /// against its id (and kept to check its answers with).
    ///
    /// # Errors
    /// As [`dial::recv`]; [`DialError::Refused`] for a relay error;
    /// [`DialError::Unverified`] when the relay lists a device with a key
    /// that is missing or derives another id.
    pub async fn devices(&mut self) -> Result<Vec<DeviceEntry>, DialError> {
        dial::send(&mut self.ws, &ToRelay::ListDevices {}).await?;
        let devices = loop {
            match dial::recv(&mut self.ws, dial::CONNECT_TIMEOUT).await? {
                FromRelay::Devices { devices } => break devices,
                FromRelay::Error { code, message, .. } => return Err(DialError::Refused { code, message }),
                _ => continue,
            }
        };
        for d in &devices {
            let key = answer::device_key(&d.device_id, d.public_key.as_deref())?;
            self.device_keys.insert(d.device_id.clone(), key);
        }
        Ok(devices)
    }

    /// The key of `device_id`, from the relay's device list (asked for
    /// once per session), checked to derive that id. `Ok(None)` when the
    /// relay lists no such device: a `run` then gets the relay's own
    /// answer (`DEVICE_OFFLINE`), and any answer "from" it fails.
    ///
    /// # Errors
    /// As [`Session::devices`].
    pub async fn device_key(&mut self, device_id: &str) -> Result<Option<PublicKey>, DialError> {
        if !self.device_keys.contains_key(device_id) {
            self.devices().await?;
        }
        Ok(self.device_keys.get(device_id).copied())
    }

    /// Signs a `run` of `action` with `params` for `device_id`, issued now.
    pub fn command(&self, device_id: &str, action: &str, params: BTreeMap<String, String>) -> Run {
        Run::signed(&self.key, &crate::protocol::new_request_id(), device_id, action, params, Utc::now())
    }

    /// Learns the device's key ([`Session::device_key`]), sends `run` and
    /// follows it to its end, calling `on_frame` for every answer
    /// (`accepted`, `output`…) once it has passed every check of
    /// [`AnswerCheck`]. When `cancel` resolves first, a `cancel` is sent
    /// once and the wait goes on for the device's result.
    ///
    /// # Errors
    /// As [`dial::recv`]; [`DialError::Timeout`] after 50 s without a word
    /// from the relay; [`DialError::Unverified`] for the first answer that
    /// fails a check (nothing of it reaches `on_frame`, and nothing more is read).
    pub async fn run(
        &mut self,
        run: &Run,
        mut on_frame: impl FnMut(&DeviceFrame),
        cancel: impl Future<Output = ()>,
    ) -> Result<Outcome, DialError> {
        self.device_key(&run.device_id).await?;
        self.send_raw(&crate::protocol::encode(&ToRelay::Run(run.clone()))).await?;
        self.follow(run, &mut on_frame, cancel).await
    }

    /// Sends a frame as given (tests use it to replay or alter frames).
    ///
    /// # Errors
    /// [`DialError::WebSocket`] if the connection is gone.
    pub async fn send_raw(&mut self, text: &str) -> Result<(), DialError> {
        self.ws.send(Message::text(text.to_string())).await.map_err(|e| DialError::WebSocket(e.to_string()))
    }

    /// Follows the answers to `run` (already sent) to its end; see
    /// [`Session::run`]. Answers are checked with the key this session
    /// learnt for the device (from [`Session::devices`] or an earlier run):
    /// with none, any answer fails.
    ///
    /// # Errors
    /// As [`Session::run`].
    pub async fn follow(
        &mut self,
        run: &Run,
        on_frame: &mut impl FnMut(&DeviceFrame),
        cancel: impl Future<Output = ()>,
    ) -> Result<Outcome, DialError> {
        self.follow_with(run, on_frame, cancel, None).await
    }

    /// Learns the device's key, sends the session `run` ([`Run::is_session`])
    /// and follows it as [`Session::run`] does; once the device has
    /// accepted it, each of `keys` goes to the device as the next signed
    /// `input` or `resize` frame ([`SessionInput::signed`]).
    ///
    /// # Errors
    /// As [`Session::run`].
    pub async fn interact(
        &mut self,
        run: &Run,
        mut on_frame: impl FnMut(&DeviceFrame),
        keys: &mut mpsc::Receiver<Keys>,
    ) -> Result<Outcome, DialError> {
        self.device_key(&run.device_id).await?;
        self.send_raw(&crate::protocol::encode(&ToRelay::Run(run.clone()))).await?;
        self.follow_with(run, &mut on_frame, std::future::pending(), Some(keys)).await
    }

    async fn follow_with(
        &mut self,
        run: &Run,
        on_frame: &mut impl FnMut(&DeviceFrame),
        cancel: impl Future<Output = ()>,
        mut keys: Option<&mut mpsc::Receiver<Keys>>,
    ) -> Result<Outcome, DialError> {
        tokio::pin!(cancel);
        let (mut accepted, mut seq) = (false, 0u64);
        let mut check = self.device_keys.get(&run.device_id).map(|key| AnswerCheck::new(*key, run));
        let mut cancel_sent = false;
        let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        let mut last_heard = Instant::now();
        loop {
            let frame = tokio::select! {
                f = dial::next_heard(&mut self.ws) => match f? {
                    Some(f) => f,
                    None => {
                        last_heard = Instant::now();
                        continue;
                    }
                },
                _ = ping.tick() => {
                    // A stalled socket must not hold off the dead-link timer.
                    tokio::time::timeout(DEAD_AFTER, self.ws.send(Message::Ping(Default::default())))
                        .await
                        .map_err(|_| DialError::Timeout("sending to the relay"))?
                        .map_err(|e| DialError::WebSocket(e.to_string()))?;
                    continue;
                }
                _ = tokio::time::sleep_until(last_heard + DEAD_AFTER) => return Err(DialError::Timeout("waiting for the relay (50 s without a word)")),
                k = async { keys.as_mut().expect("guarded").recv().await }, if accepted && keys.is_some() => {
                    let Some(k) = k else {
                        keys = None;
                        continue;
                    };
                    let frame = ToRelay::Session(SessionInput::signed(&self.key, run, seq, &k));
                    seq += 1;
                    dial::send(&mut self.ws, &frame).await?;
                    continue;
                }
                _ = &mut cancel, if !cancel_sent => {
                    cancel_sent = true;
                    let frame = ToRelay::Cancel { device_id: run.device_id.clone(), request_id: run.request_id.clone() };
                    dial::send(&mut self.ws, &frame).await?;
                    continue;
                }
            };
            last_heard = Instant::now();
            match frame {
                FromRelay::Answer(f) if f.request_id() == run.request_id => {
                    let Some(check) = check.as_mut() else {
                        return Err(
                            AnswerError::Key { device_id: run.device_id.clone(), why: "is missing".into() }.into()
                        );
                    };
                    check.check(&f)?;
                    accepted |= matches!(f, DeviceFrame::Accepted { .. });
                    on_frame(&f);
                    match f {
                        DeviceFrame::Result { .. } => return Ok(Outcome::Finished(f)),
                        DeviceFrame::Denied { code, message, .. } => return Ok(Outcome::Denied { code, message }),
                        _ => {}
                    }
                }
                // A refused cancel (the task already ended) is not the end.
                FromRelay::Error { code, message, request_id }
                    if request_id.as_deref() == Some(&run.request_id)
                        && (!cancel_sent || code != RelayCode::BadFrame) =>
                {
                    return Ok(Outcome::Relay { code, message });
                }
                FromRelay::Error { code, message, request_id: None } => {
                    return Err(DialError::Refused { code, message });
                }
                _ => {}
            }
        }
    }

    /// The next frame from the relay within `wait`, whatever it is.
    ///
    /// # Errors
    /// As [`dial::recv`].
    pub async fn recv(&mut self, wait: Duration) -> Result<FromRelay, DialError> {
        dial::recv(&mut self.ws, wait).await
    }

    /// Asks the device to stop `request_id` (one of this operator key's requests).
    ///
    /// # Errors
    /// [`DialError::Refused`] when the relay refuses (not ours, device offline).
    pub async fn cancel(&mut self, device_id: &str, request_id: &str) -> Result<(), DialError> {
        let frame = ToRelay::Cancel { device_id: device_id.into(), request_id: request_id.into() };
        dial::send(&mut self.ws, &frame).await?;
        loop {
            match dial::recv(&mut self.ws, dial::CONNECT_TIMEOUT).await? {
                FromRelay::Forwarded { request_id: r } if r == request_id => return Ok(()),
                FromRelay::Error { code, message, .. } => return Err(DialError::Refused { code, message }),
                _ => continue,
            }
        }
    }
}
