//! Routing between the relays of a cluster over core NATS, and presence
//! in a key-value bucket whose entries expire.
//!
//! Each relay has a random id (`r-` and 16 hex digits) and two subjects:
//!
//! - `support.relay.<relay>.device.<device id>`: requests for a device this
//!   relay holds ([`Envelope`]: a `run`, a session's `input` or `resize`,
//!   or a `cancel` from an operator connection on another relay); the answer is a [`Delivered`].
//! - `support.relay.<relay>.operator.<conn>`: the frames for operator
//!   connection `conn` of this relay, each the text of one `FromRelay`
//!   frame exactly as the device's relay would have sent it on its own
//!   WebSocket, passed on unchanged (the device's signatures are untouched).
//!
//! [`PRESENCE_BUCKET`] holds, by `device.<device id>`, which relay holds the
//! device's newest connection and what its last heartbeat said ([`Held`]).
//! It is written when the device connects and at each heartbeat, and
//! expires after [`PRESENCE_TTL`], so the devices of a relay that died go
//! offline by themselves. A relay that sees another relay take a device
//! with a newer connection ends its own: the newest connection wins,
//! cluster-wide.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::super::hub::Hub;
use super::super::registry::RegistryError;
use crate::lock;
use crate::protocol::{DeviceEntry, RelayCode, Run, SessionInput};

/// The bucket of who holds which device.
pub const PRESENCE_BUCKET: &str = "support_presence";
/// The presence bucket's description.
const PRESENCE_ABOUT: &str = "support relays: which relay holds each device (expires)";
/// How long a device stays present without a heartbeat: three heartbeats.
pub const PRESENCE_TTL: Duration = Duration::from_secs(90);
/// How long a request to another relay may take before it is refused.
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest frame passed between relays (bytes): a WebSocket frame's cap.
const MAX_ROUTED_BYTES: usize = 1 << 20;

/// Who holds a device now, as [`PRESENCE_BUCKET`] says.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Held {
    /// The relay's id.
    pub(crate) relay: String,
    /// When that connection was authenticated (ns since the Unix epoch):
    /// of two connections, the later wins.
    pub(crate) since_ns: i64,
    /// What the device's last heartbeat said (as `devices` lists it).
    pub(crate) entry: DeviceEntry,
    /// The operator key fingerprints its owner trusts, per that heartbeat.
    pub(crate) trusted: Vec<String>,
}

/// A request for a device, from an operator connection on another relay.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum Envelope {
    /// An operator's signed `run`, checked by its relay (shape, key, admission).
    Run {
        /// The operator connection's subject, where the answers go.
        reply: String,
        /// The frame, as the operator signed it.
        run: Run,
    },
    /// An operator's `input` or `resize` for its own running session.
    Session {
        /// As in `Run`: only the connection that asked may send them.
        reply: String,
        /// The key that connection proved.
        operator_key: String,
        /// The frame, as the operator signed it.
        input: SessionInput,
    },
    /// An operator's `cancel` of its own request.
    Cancel {
        /// As in `Run`: only the connection that asked may cancel.
        reply: String,
        /// The key that connection proved.
        operator_key: String,
        /// The device.
        device_id: String,
        /// The request.
        request_id: String,
    },
}

/// The device's relay's answer to an [`Envelope`]: passed on to the
/// device, or the error the operator gets.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Delivered {
    /// `None`: on its way to the device.
    pub(crate) error: Option<(RelayCode, String)>,
}

/// This relay's side of the cluster's routing.
pub(crate) struct Route {
    /// This relay's id.
    pub(crate) relay: String,
    client: async_nats::Client,
    presence: kv::Store,
    /// Devices held by other relays, with when we heard it.
    remote: Mutex<HashMap<String, (Held, Instant)>>,
}

/// `support.relay.<relay>.device.<device id>`.
pub(crate) fn device_subject(relay: &str, device_id: &str) -> String {
    format!("support.relay.{relay}.device.{device_id}")
}

/// `support.relay.<relay>.operator.<conn>`.
pub(crate) fn operator_subject(relay: &str, conn: u64) -> String {
    format!("support.relay.{relay}.operator.{conn}")
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}

impl Route {
    /// Opens the presence bucket on `client` (made if missing) under a fresh relay id.
    ///
    /// # Errors
    /// [`RegistryError::Cluster`] when JetStream does not answer.
    pub(crate) async fn open(client: async_nats::Client, url: &str) -> Result<Route, RegistryError> {
        let js = async_nats::jetstream::new(client.clone());
        let presence = super::bucket(&js, PRESENCE_BUCKET, PRESENCE_ABOUT, PRESENCE_TTL, 64 << 10)
            .await
            .map_err(|what| RegistryError::Cluster { what, url: url.into() })?;
        let relay = format!("r-{}", crate::random_hex(8));
        Ok(Route { relay, client, presence, remote: Mutex::default() })
    }

    /// Whether the client is connected to NATS now.
    pub(crate) fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The relay holding `device_id`, if another one does (and said so within [`PRESENCE_TTL`]).
    pub(crate) fn holder(&self, device_id: &str) -> Option<Held> {
        lock(&self.remote).get(device_id).filter(|(_, at)| at.elapsed() < PRESENCE_TTL).map(|(h, _)| h.clone())
    }

    /// Records (in the background) that this relay holds `device_id` since `since_ns`.
    pub(crate) fn hold(&self, device_id: &str, since_ns: i64, entry: DeviceEntry, trusted: Vec<String>) {
        lock(&self.remote).remove(device_id);
        let held = Held { relay: self.relay.clone(), since_ns, entry, trusted };
        let (kv, key) = (self.presence.clone(), format!("device.{device_id}"));
        let value = Bytes::from(serde_json::to_vec(&held).unwrap_or_default());
        tokio::spawn(async move {
            if let Err(e) = kv.put(&key, value).await {
                tracing::debug!(error = %e, "cannot record presence in the cluster");
            }
        });
    }

    /// Forgets (in the background) that this relay holds `device_id` since `since_ns`,
    /// unless a newer connection holds it now.
    pub(crate) fn release(&self, device_id: &str, since_ns: i64) {
        let (kv, key, relay) = (self.presence.clone(), format!("device.{device_id}"), self.relay.clone());
        tokio::spawn(async move {
            let Ok(Some(e)) = kv.entry(&key).await else { return };
            let ours =
                serde_json::from_slice::<Held>(&e.value).is_ok_and(|h| h.relay == relay && h.since_ns == since_ns);
            if ours && e.operation == Operation::Put {
                let _ = kv.delete_expect_revision(&key, Some(e.revision)).await;
            }
        });
    }

    /// Sends `envelope` to the relay `relay`, for `device_id`; the error for the operator, if any.
    pub(crate) async fn deliver(
        &self,
        relay: &str,
        device_id: &str,
        envelope: &Envelope,
    ) -> Option<(RelayCode, String)> {
        let payload = Bytes::from(serde_json::to_vec(envelope).unwrap_or_default());
        let asked = self.client.request(device_subject(relay, device_id), payload);
        match tokio::time::timeout(ROUTE_TIMEOUT, asked).await {
            Ok(Ok(reply)) => match serde_json::from_slice::<Delivered>(&reply.payload) {
                Ok(d) => d.error,
                Err(_) => Some((RelayCode::ClusterUnavailable, "the device's relay answered nonsense".into())),
            },
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                Some((RelayCode::DeviceOffline, format!("device {device_id} is not connected to any relay")))
            }
            _ => Some((
                RelayCode::ClusterUnavailable,
                format!("the relay holding device {device_id} did not answer within {} s", ROUTE_TIMEOUT.as_secs()),
            )),
        }
    }

    /// Publishes `envelope` to the relay `relay`, for `device_id`, awaiting
    /// no answer: frames published one after another arrive in that order.
    pub(crate) async fn publish(&self, relay: &str, device_id: &str, envelope: &Envelope) {
        let payload = Bytes::from(serde_json::to_vec(envelope).unwrap_or_default());
        if let Err(e) = self.client.publish(device_subject(relay, device_id), payload).await {
            tracing::debug!(error = %e, "cannot pass a session frame to the device's relay");
        }
    }

    /// Passes `text` (one encoded `FromRelay` frame) to the operator connection at `reply`.
    pub(crate) async fn answer(&self, reply: &str, text: String) {
        if let Err(e) = self.client.publish(reply.to_string(), Bytes::from(text)).await {
            tracing::debug!(error = %e, "cannot pass an answer to the operator's relay");
        }
    }
}

/// Who holds each device now, as the presence bucket on `client` says
/// (for `support relay devices` with no relay running here).
///
/// # Errors
/// [`RegistryError::Cluster`] when the bucket cannot be read.
pub(crate) async fn present(client: async_nats::Client, url: &str) -> Result<HashMap<String, Held>, RegistryError> {
    let failed = |what: String| RegistryError::Cluster { what, url: url.into() };
    let js = async_nats::jetstream::new(client);
    let kv = super::bucket(&js, PRESENCE_BUCKET, PRESENCE_ABOUT, PRESENCE_TTL, 64 << 10).await.map_err(failed)?;
    let mut held = HashMap::new();
    super::read_bucket(&js, &kv, PRESENCE_BUCKET, |e| {
        let Some(id) = e.key.strip_prefix("device.") else { return };
        match super::kv::entry_value(e).and_then(|v| serde_json::from_slice::<Held>(v).ok()) {
            Some(h) => held.insert(id.to_string(), h),
            None => held.remove(id),
        };
    })
    .await
    .map_err(failed)?;
    Ok(held)
}

/// `listing` (every device offline) with what `held` says of each device
/// a relay of the cluster holds now, unmasked (the admin's listing).
pub(crate) fn listed(mut listing: Vec<DeviceEntry>, held: &HashMap<String, Held>) -> Vec<DeviceEntry> {
    for entry in &mut listing {
        if let Some(h) = held.get(&entry.device_id) {
            *entry = super::super::presence::held_elsewhere(entry, &h.entry, true);
        }
    }
    listing
}

/// Serves the cluster's side of `hub` until `shutdown`: requests for its
/// devices, frames for its operator connections, and who holds which device.
pub(crate) async fn serve(hub: Arc<Hub>, route: Arc<Route>, mut shutdown: watch::Receiver<bool>) {
    let subscribed = async {
        let devices = route.client.subscribe(format!("support.relay.{}.device.*", route.relay)).await?;
        let operators = route.client.subscribe(format!("support.relay.{}.operator.*", route.relay)).await?;
        Ok::<_, async_nats::SubscribeError>((devices, operators))
    };
    let (mut devices, mut operators) = match subscribed.await {
        Ok(s) => s,
        Err(e) => {
            return tracing::error!(error = %e, "cannot subscribe to the cluster's subjects; cross-relay requests fail");
        }
    };
    // With history: a relay that starts after the others learns at once who holds what.
    let mut presence = route.presence.watch_with_history(">").await.ok();
    loop {
        tokio::select! {
            Some(m) = devices.next() => {
                // The cap before the parse: no parser runs over more than a frame's worth.
                let envelope = (m.payload.len() <= MAX_ROUTED_BYTES)
                    .then(|| serde_json::from_slice::<Envelope>(&m.payload).ok())
                    .flatten();
                let answer = match envelope {
                    Some(envelope) => hub.relayed_request(envelope),
                    None => Delivered { error: Some((RelayCode::BadFrame, "not a request envelope".into())) },
                };
                if let Some(reply) = m.reply {
                    let _ = route.client.publish(reply, Bytes::from(serde_json::to_vec(&answer).unwrap_or_default())).await;
                }
            }
            Some(m) = operators.next() => {
                let conn = m.subject.rsplit('.').next().and_then(|c| c.parse().ok());
                if m.payload.len() > MAX_ROUTED_BYTES {
                    tracing::warn!(bytes = m.payload.len(), "an answer routed over NATS is larger than a frame; dropped");
                } else if let (Some(conn), Ok(text)) = (conn, std::str::from_utf8(&m.payload)) {
                    hub.relayed_answer(conn, text).await;
                }
            }
            next = async { match presence.as_mut() { Some(w) => w.next().await, None => std::future::pending().await } } => match next {
                Some(Ok(e)) => heard_presence(&hub, &route, &e),
                _ => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = crate::stopped(&mut shutdown) => return,
                    }
                    presence = route.presence.watch_with_history(">").await.ok();
                }
            },
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

/// One change of [`PRESENCE_BUCKET`]: another relay took a device (a newer
/// connection than ours ends ours) or let it go.
fn heard_presence(hub: &Hub, route: &Route, e: &kv::Entry) {
    let Some(device_id) = e.key.strip_prefix("device.") else { return };
    if e.operation != Operation::Put {
        let mut remote = lock(&route.remote);
        remote.remove(device_id);
        return;
    }
    let Ok(held) = serde_json::from_slice::<Held>(&e.value) else { return };
    if held.relay == route.relay {
        return;
    }
    hub.held_elsewhere(device_id, held.since_ns);
    // Aged as the bucket ages it: from when it was written, not when we read it.
    let written_s = e.created.unix_timestamp();
    let age = u64::try_from(chrono::Utc::now().timestamp() - written_s).unwrap_or(0);
    let heard = Instant::now().checked_sub(Duration::from_secs(age)).unwrap_or_else(Instant::now);
    lock(&route.remote).insert(device_id.to_string(), (held, heard));
}

/// Now, as [`Held::since_ns`] counts.
pub(crate) fn since_now() -> i64 {
    now_ns()
}
