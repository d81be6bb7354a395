//! The hub's side of interactive sessions: an operator's `input` and
//! `resize` frames go to the device running its session (on this relay,
//! or on the relay of the cluster that holds the device), in the order
//! sent, and only for the connection that opened the session; and a
//! session ends when that connection does.
//!
//! The hub checks no signature: the device does ([`crate::protocol::session`]),
//! and refuses a frame the relay altered, replayed, reordered or made up.

use super::{Hub, Peer};
use crate::lock;
use crate::protocol::{self, FromRelay, RelayCode, SessionInput};
use crate::relay::cluster::route::{Delivered, Envelope, operator_subject};
use crate::relay::hello::Who;

impl Hub {
    /// Routes an operator's `input` or `resize` for its own session;
    /// returns the error to send back, if any. Across relays it is
    /// published (no reply awaited), so frames keep their order.
    pub(crate) async fn route_session(&self, from: &Who, input: SessionInput) -> Option<FromRelay> {
        let key = (input.device_id().to_string(), input.request_id().to_string());
        let (mine, conn, held_by) = {
            let inflight = lock(&self.inflight);
            let found = inflight.get(&key).filter(|i| i.operator_key == from.key && i.orphaned_at.is_none());
            (found.is_some_and(|i| i.session), found.map(|i| i.operator_conn), found.and_then(|i| i.held_by.clone()))
        };
        let error = |code, message: &str| {
            Some(FromRelay::Error { code, message: message.into(), request_id: Some(key.1.clone()) })
        };
        if !mine {
            self.metrics.rejected("bad_input");
            return error(RelayCode::BadFrame, "no session of yours with that id is in flight on that device");
        }
        if let Some(tx) = lock(&self.devices).get(&key.0).map(|p| p.tx.clone()) {
            if tx.try_send(protocol::encode(&FromRelay::Session(input))).is_err() {
                return error(RelayCode::Busy, "the device's queue is full; the keystrokes were not sent");
            }
            return None;
        }
        let (Some(relay), Some(route)) = (held_by, &self.cluster) else {
            return error(RelayCode::DeviceOffline, "the device is not connected to the relay");
        };
        let reply = operator_subject(&route.relay, conn.unwrap_or_default());
        let envelope = Envelope::Session { reply, operator_key: from.key.clone(), input };
        route.publish(&relay, &key.0, &envelope).await;
        None
    }

    /// A session frame from an operator connection on another relay, for a
    /// device this relay holds: passed on if that connection opened the session.
    pub(super) fn relayed_session(&self, reply: &str, operator_key: &str, input: SessionInput) -> Delivered {
        let refuse = |code, message: &str| Delivered { error: Some((code, message.into())) };
        let key = (input.device_id().to_string(), input.request_id().to_string());
        let mine = lock(&self.inflight).get(&key).is_some_and(|i| {
            i.reply.as_deref() == Some(reply) && i.operator_key == operator_key && i.orphaned_at.is_none()
        });
        if !mine {
            self.metrics.rejected("bad_input");
            return refuse(RelayCode::BadFrame, "no session of yours with that id is in flight on that device");
        }
        let Some(tx) = lock(&self.devices).get(&key.0).map(|p| p.tx.clone()) else {
            return refuse(RelayCode::DeviceOffline, "the device is not connected to the relay");
        };
        if tx.try_send(protocol::encode(&FromRelay::Session(input))).is_err() {
            return refuse(RelayCode::Busy, "the device's queue is full; the keystrokes were not sent");
        }
        Delivered::default()
    }

    /// The operator connection `peer` ended: its sessions (`(device, request)`) are cancelled on their devices.
    pub(super) fn end_sessions(&self, peer: &Peer, sessions: &[(String, String)]) {
        for (device_id, request_id) in sessions {
            if let Some(d) = lock(&self.devices).get(device_id) {
                let _ = d.tx.try_send(protocol::encode(&FromRelay::Cancel { request_id: request_id.clone() }));
            } else if let Some(route) = &self.cluster {
                self.cancel_elsewhere(route, peer, device_id, request_id);
            }
        }
        if !sessions.is_empty() {
            tracing::info!(conn = peer.conn, sessions = sessions.len(), "an operator left; its sessions are cancelled");
        }
    }
}
