//! The hub's side of a cluster (`--cluster`): runs and cancels for devices
//! another relay holds, the same for this relay's devices from operators
//! on other relays, and who holds which device (see `cluster::route`).
//!
//! The relay that holds the device keeps the request's routing entry, as
//! it does for its own operators: the answers go only to the operator
//! connection that asked (its subject), an orphan's to no one. The
//! operator's relay keeps one too, so its limits, its `cancel` check and
//! its removals work as for a local device.

use std::sync::Arc;

use super::{Hub, Inflight, Peer};
use crate::lock;
use crate::protocol::{self, DeviceEntry, DeviceFrame, FromRelay, RelayCode, Run};
use crate::relay::cluster::route::{Delivered, Envelope, Route, operator_subject};
use crate::relay::presence;

/// Why a device is not reachable through the cluster.
type Unreachable = (RelayCode, String);

impl Hub {
    /// Records in the cluster that this relay holds `device_id`'s connection of `since_ns`.
    pub(super) fn hold(&self, device_id: &str, since_ns: i64) {
        if let Some(route) = &self.cluster {
            let (entry, trusted) = self.presence.entry(device_id);
            route.hold(device_id, since_ns, entry, trusted);
        }
    }

    /// The relay that holds `device_id`, which this relay does not.
    pub(super) fn held_elsewhere_by(&self, route: &Route, device_id: &str) -> Result<String, Unreachable> {
        if !route.connected() {
            self.metrics.rejected("cluster_unavailable");
            let why = format!(
                "device {device_id} is not connected to this relay, and the relay cannot reach its cluster now; try again, or another relay"
            );
            return Err((RelayCode::ClusterUnavailable, why));
        }
        match route.holder(device_id) {
            Some(held) => Ok(held.relay),
            None => Err((RelayCode::DeviceOffline, format!("device {device_id} is not connected to any relay"))),
        }
    }

    /// Sends `run` (routed already, from connection `conn`) to `relay`; what
    /// fails comes back to the connection as an error for its request.
    pub(super) fn relay_run(&self, conn: u64, relay: String, run: Run) {
        let Some(route) = self.cluster.clone() else { return };
        let Some(tx) = lock(&self.operators).get(&conn).map(|p| p.tx.clone()) else { return };
        let key = (run.device_id.clone(), run.request_id.clone());
        let inflight = Arc::downgrade(&self.inflight);
        let reply = operator_subject(&route.relay, conn);
        self.metrics.routed();
        tokio::spawn(async move {
            let device_id = run.device_id.clone();
            let request_id = run.request_id.clone();
            let Some((code, message)) = route.deliver(&relay, &device_id, &Envelope::Run { reply, run }).await else {
                return;
            };
            if let Some(inflight) = inflight.upgrade() {
                lock(&inflight).remove(&key);
            }
            let _ = tx.send(protocol::encode(&FromRelay::Error { code, message, request_id: Some(request_id) })).await;
        });
    }

    /// Forwards `from`'s cancel of its own request to the relay that holds the device.
    pub(super) fn relay_cancel(
        &self,
        from: &super::Who,
        relay: String,
        device_id: String,
        request_id: String,
    ) -> FromRelay {
        let Some(route) = self.cluster.clone() else {
            return FromRelay::Error {
                code: RelayCode::DeviceOffline,
                message: "not in a cluster".into(),
                request_id: Some(request_id),
            };
        };
        let conn = lock(&self.inflight).get(&(device_id.clone(), request_id.clone())).map(|i| i.operator_conn);
        let reply = operator_subject(&route.relay, conn.unwrap_or_default());
        let tx = conn.and_then(|c| lock(&self.operators).get(&c).map(|p| p.tx.clone()));
        let envelope = Envelope::Cancel {
            reply,
            operator_key: from.key.clone(),
            device_id: device_id.clone(),
            request_id: request_id.clone(),
        };
        let id = request_id.clone();
        tokio::spawn(async move {
            if let (Some((code, message)), Some(tx)) = (route.deliver(&relay, &device_id, &envelope).await, tx) {
                let _ = tx.send(protocol::encode(&FromRelay::Error { code, message, request_id: Some(id) })).await;
            }
        });
        FromRelay::Forwarded { request_id }
    }

    /// Cancels, on the relay that holds the device, a request of the removed operator `peer`.
    pub(super) fn cancel_elsewhere(&self, route: &Arc<Route>, peer: &Peer, device_id: &str, request_id: &str) {
        let Some(relay) =
            lock(&self.inflight).get(&(device_id.to_string(), request_id.to_string())).and_then(|i| i.held_by.clone())
        else {
            return;
        };
        let envelope = Envelope::Cancel {
            reply: operator_subject(&route.relay, peer.conn),
            operator_key: peer.key.clone(),
            device_id: device_id.to_string(),
            request_id: request_id.to_string(),
        };
        let (route, device_id) = (route.clone(), device_id.to_string());
        tokio::spawn(async move { route.deliver(&relay, &device_id, &envelope).await });
    }

    /// A request from an operator connection on another relay for a device this relay holds.
    pub(crate) fn relayed_request(&self, envelope: Envelope) -> Delivered {
        let refuse = |code, message: String| Delivered { error: Some((code, message)) };
        match envelope {
            Envelope::Run { reply, run } => {
                if let Err(why) = run.check_shape() {
                    return refuse(RelayCode::BadFrame, why);
                }
                if self.registry().0.operator_named(&run.operator).is_none() {
                    return refuse(
                        RelayCode::Unauthorized,
                        "this operator was removed from the relay by its admin".into(),
                    );
                }
                let Some(tx) = lock(&self.devices).get(&run.device_id).map(|p| p.tx.clone()) else {
                    return refuse(
                        RelayCode::DeviceOffline,
                        format!("device {} is not connected to any relay", run.device_id),
                    );
                };
                let key = (run.device_id.clone(), run.request_id.clone());
                {
                    let mut inflight = lock(&self.inflight);
                    super::forget_old_orphans(&mut inflight, std::time::Instant::now());
                    if inflight.contains_key(&key) {
                        return refuse(
                            RelayCode::BadFrame,
                            "that request_id is already in flight for this device".into(),
                        );
                    }
                    let entry = Inflight {
                        operator_conn: 0,
                        operator_key: run.operator.clone(),
                        orphaned_at: None,
                        reply: Some(reply),
                        held_by: None,
                        session: false,
                    };
                    inflight.insert(key.clone(), entry);
                }
                if tx.try_send(protocol::encode(&FromRelay::Run(run))).is_err() {
                    lock(&self.inflight).remove(&key);
                    return refuse(RelayCode::Busy, "the device's queue is full; try again".into());
                }
                self.metrics.routed();
                Delivered::default()
            }
            Envelope::Session { reply, operator_key, input } => self.relayed_session(&reply, &operator_key, input),
            Envelope::Cancel { reply, operator_key, device_id, request_id } => {
                let key = (device_id.clone(), request_id.clone());
                let mine = lock(&self.inflight).get(&key).is_some_and(|i| {
                    i.reply.as_deref() == Some(reply.as_str())
                        && i.operator_key == operator_key
                        && i.orphaned_at.is_none()
                });
                if !mine {
                    return refuse(
                        RelayCode::BadFrame,
                        "no request of yours with that id is in flight on that device".into(),
                    );
                }
                let Some(tx) = lock(&self.devices).get(&device_id).map(|p| p.tx.clone()) else {
                    return refuse(RelayCode::DeviceOffline, "the device is not connected to the relay".into());
                };
                if tx.try_send(protocol::encode(&FromRelay::Cancel { request_id })).is_err() {
                    return refuse(RelayCode::Busy, "the device's queue is full; try again".into());
                }
                Delivered::default()
            }
        }
    }

    /// A frame for operator connection `conn` from the relay holding the
    /// device: sent on unchanged; a request's last frame ends its routing entry here.
    pub(crate) async fn relayed_answer(&self, conn: u64, text: &str) {
        let ended = match protocol::decode::<FromRelay>(text) {
            Ok(FromRelay::Answer(frame @ (DeviceFrame::Result { .. } | DeviceFrame::Denied { .. }))) => {
                Some(frame.request_id().to_string())
            }
            Ok(FromRelay::Answer(_)) => None,
            Ok(FromRelay::Error { request_id: Some(r), .. }) => Some(r),
            _ => {
                self.metrics.rejected("unknown_request");
                return;
            }
        };
        if let Some(request_id) = ended {
            lock(&self.inflight)
                .retain(|(_, r), i| !(i.operator_conn == conn && *r == request_id && i.held_by.is_some()));
        }
        let Some(tx) = lock(&self.operators).get(&conn).map(|p| p.tx.clone()) else {
            self.metrics.rejected("unknown_request");
            return;
        };
        if tokio::time::timeout(crate::protocol::SEND_TIMEOUT, tx.send(text.to_string())).await.is_err() {
            self.metrics.rejected("operator_stuck");
        }
    }

    /// Another relay holds `device_id` by a connection of `since_ns`: if
    /// that is newer than this relay's, this relay's ends (the newest wins).
    pub(crate) fn held_elsewhere(&self, device_id: &str, since_ns: i64) {
        let mut devices = lock(&self.devices);
        if devices.get(device_id).is_some_and(|p| p.since_ns < since_ns) {
            devices.remove(device_id);
            drop(devices);
            self.presence.offline(device_id);
            tracing::info!(device_id, "a newer connection on another relay replaces the device's connection here");
        }
    }

    /// `listing` with what the other relays of the cluster say of the devices this relay does not hold;
    /// masked unless `fingerprint` (an operator's) is trusted there (`None`: the admin's listing).
    pub(super) fn with_held_elsewhere(
        &self,
        mut listing: Vec<DeviceEntry>,
        fingerprint: Option<&str>,
    ) -> Vec<DeviceEntry> {
        let Some(route) = &self.cluster else { return listing };
        for entry in listing.iter_mut().filter(|e| !e.online) {
            if let Some(held) = route.holder(&entry.device_id) {
                let trusted = fingerprint.is_none_or(|f| held.trusted.iter().any(|t| t == f));
                *entry = presence::held_elsewhere(entry, &held.entry, trusted);
            }
        }
        listing
    }
}
