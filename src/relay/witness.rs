//! The audit witness: the relay holds each device's last audit head, off
//! the device, and checks that every later chain extends it.
//!
//! On `hello_ack` the relay names the seq W it witnessed last; the
//! device's next `heartbeat` carries a [`WitnessProof`] for W: the mac its
//! log holds at W after verifying the chain from seq 1 with its key, and
//! its new head. [`judge`] compares that with the witnessed `(W, mac)`:
//! the same mac at W means the device's chain still holds every record the
//! relay saw the head of. Then the heartbeat's head becomes the witnessed
//! head, which the next heartbeat proves (the device knows it: it sent it).
//! A finding stands as an [`AuditAlert`] in the registry until the admin
//! clears it (`support relay clear-alert DEVICE`): a device that reconnects
//! with a fresh chain that looks consistent does not make it vanish.
//! SECURITY.md says what this detects and what it cannot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{Notify, watch};

use super::hub::Hub;
use super::registry::WitnessRecord;
use crate::lock;
use crate::protocol::{AlertKind, AuditAlert, AuditHead, ChainState, FromRelay, Heartbeat, WitnessProof};

/// What is wrong, if anything, when a device that had `witnessed` now
/// reports `reported` with `proof`: `(kind, reported_seq, detail)`.
/// Pure; `None` means the chain extends the witnessed head.
pub(crate) fn judge(
    witnessed: &AuditHead,
    reported: Option<&AuditHead>,
    proof: Option<&WitnessProof>,
) -> Option<(AlertKind, u64, String)> {
    let w = witnessed.seq;
    if w == 0 {
        // An empty chain's head holds no record to prove.
        return None;
    }
    let head_seq = reported.map_or(0, |h| h.seq);
    let Some(p) = proof.filter(|p| p.seq == w) else {
        let what = proof.map_or("no proof".to_string(), |p| format!("a proof for seq {} instead", p.seq));
        return Some((AlertKind::Unproven, head_seq, format!("the heartbeat carried {what} of witnessed seq {w}")));
    };
    match p.chain {
        ChainState::NoLog => {
            return Some((AlertKind::Missing, 0, "the device has no audit log (audit.jsonl missing or empty)".into()));
        }
        ChainState::NoKey => {
            let why = "audit.key is missing or malformed: the device cannot verify its chain";
            return Some((AlertKind::Missing, 0, why.into()));
        }
        ChainState::Unreadable => {
            return Some((AlertKind::Missing, 0, "the device cannot read its audit log or key".into()));
        }
        ChainState::Verified | ChainState::Broken => {}
    }
    match p.mac.as_deref() {
        Some(mac) if mac == witnessed.mac => match reported {
            Some(h) if h.seq >= w => None,
            _ => Some((
                AlertKind::Truncated,
                head_seq,
                format!("the reported head seq {head_seq} is before the witnessed seq {w}"),
            )),
        },
        Some(_) => Some((
            AlertKind::Rewritten,
            p.verified_seq,
            format!("record {w} has another mac than the one witnessed: the log holds a different chain"),
        )),
        None if p.chain == ChainState::Verified => Some((
            AlertKind::Truncated,
            p.verified_seq,
            format!("the chain ends at seq {} before the witnessed seq {w}", p.verified_seq),
        )),
        None => Some((
            AlertKind::Rewritten,
            p.verified_seq,
            format!("the chain breaks at seq {}, at or before the witnessed seq {w}", p.verified_seq + 1),
        )),
    }
}

/// Witness records decided but not yet in `registry.json`, newest per
/// device. A head that moves on is written within a second, in one
/// registry write for every device that moved ([`keep_flushed`]): a busy
/// fleet does not rewrite the registry once per heartbeat. An alert is
/// written before the device hears of it.
#[derive(Default)]
pub(crate) struct Pending {
    records: Mutex<BTreeMap<String, WitnessRecord>>,
    changed: Notify,
    /// One registry write at a time, so an older batch never lands after a newer one.
    flushing: tokio::sync::Mutex<()>,
}

/// What the relay holds for `device_id` now: pending, else as in the registry.
fn current(hub: &Hub, device_id: &str) -> WitnessRecord {
    if let Some(w) = lock(&hub.witness.records).get(device_id) {
        return w.clone();
    }
    hub.registry().0.witness.get(device_id).cloned().unwrap_or_default()
}

/// The seq `hello_ack` names for `device_id`: the head witnessed last, if any.
pub(crate) fn witnessed_seq(hub: &Hub, device_id: &str) -> Option<u64> {
    current(hub, device_id).head.map(|h| h.seq)
}

/// A device's heartbeat arrived on connection `conn`: checks it against
/// the witnessed head, records the new head (and any finding), and returns
/// the `witnessed` frame for the device. A heartbeat that comes late on a
/// connection a newer one replaced changes nothing: the newer connection's
/// `hello_ack` already named the head its device must prove.
pub(crate) async fn heard(hub: &Hub, device_id: &str, conn: u64, hb: &Heartbeat) -> FromRelay {
    let before = current(hub, device_id);
    let finding = before.head.as_ref().and_then(|w| judge(w, hb.audit_head.as_ref(), hb.witness.as_ref()));
    let alert = finding.map(|(kind, reported_seq, detail)| AuditAlert {
        kind,
        witnessed_seq: before.head.as_ref().map_or(0, |w| w.seq),
        reported_seq,
        detected_at: crate::time::rfc3339(Utc::now()),
        detail,
    });
    if let Some(a) = &alert {
        tracing::warn!(device_id, kind = a.kind.as_str(), witnessed_seq = a.witnessed_seq, reported_seq = a.reported_seq, detail = %a.detail, "audit alert");
    }
    let raised = before.alert.is_none() && alert.is_some();
    let after = WitnessRecord { head: hb.audit_head.clone(), alert: before.alert.clone().or(alert) };
    if after != before {
        {
            // Under the pending lock, which `hello_ack`'s read also takes.
            let mut records = lock(&hub.witness.records);
            if !hub.is_current(device_id, conn) {
                return FromRelay::Witnessed { seq: before.head.map(|h| h.seq), alert: before.alert };
            }
            records.insert(device_id.to_string(), after.clone());
        }
        if raised {
            if let Some(a) = &after.alert {
                hub.metrics.audit_alert(a.kind.as_str());
            }
            flush(hub).await;
        } else {
            hub.witness.changed.notify_one();
        }
    }
    FromRelay::Witnessed { seq: after.head.map(|h| h.seq), alert: after.alert }
}

/// Writes every pending record to the registry in one update, off the
/// runtime's thread; what fails to be written stays pending.
async fn flush(hub: &Hub) {
    let _one = hub.witness.flushing.lock().await;
    let batch = lock(&hub.witness.records).clone();
    if batch.is_empty() {
        return;
    }
    match hub.store.witness(batch.clone()).await {
        // Keep what changed again while we wrote.
        Ok(()) => lock(&hub.witness.records).retain(|id, w| batch.get(id) != Some(w)),
        Err(e) => {
            tracing::error!(error = %crate::ErrorChain(&e), "cannot record the witnessed audit heads; will retry");
            hub.metrics.witness_write_failed();
            // Retried by `keep_flushed` a second later, and each second after.
            hub.witness.changed.notify_one();
        }
    }
}

/// Writes pending witness records at most once a second until
/// `shutdown`, then once more.
pub(crate) async fn keep_flushed(hub: Arc<Hub>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = hub.witness.changed.notified() => {}
            _ = crate::stopped(&mut shutdown) => break,
        }
        flush(&hub).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = crate::stopped(&mut shutdown) => break,
        }
    }
    flush(&hub).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::registry;

    const MAC_A: &str = "aa";
    const MAC_B: &str = "bb";

    fn head(seq: u64, mac: &str) -> AuditHead {
        AuditHead { seq, mac: mac.into() }
    }

    fn proof(seq: u64, mac: Option<&str>, verified_seq: u64, chain: ChainState) -> WitnessProof {
        WitnessProof { seq, mac: mac.map(Into::into), verified_seq, chain }
    }

    #[test]
    fn a_chain_that_extends_the_witnessed_head_passes() {
        let w = head(5, MAC_A);
        let ok = proof(5, Some(MAC_A), 9, ChainState::Verified);
        assert_eq!(judge(&w, Some(&head(9, "cc")), Some(&ok)), None);
        assert_eq!(judge(&w, Some(&head(5, MAC_A)), Some(&ok)), None, "no new record since");
        assert_eq!(judge(&head(0, MAC_A), Some(&head(3, "cc")), None), None, "nothing to prove at seq 0");
        let broken_later = proof(5, Some(MAC_A), 7, ChainState::Broken);
        assert_eq!(judge(&w, Some(&head(9, "cc")), Some(&broken_later)), None, "after W: checked once witnessed");
    }

    #[test]
    fn each_way_a_chain_fails_to_extend_the_head_has_its_kind() {
        let w = head(5, MAC_A);
        let now = Some(head(9, "cc"));
        let cases: [(Option<WitnessProof>, Option<AuditHead>, AlertKind, u64); 9] = [
            (Some(proof(5, None, 3, ChainState::Verified)), now.clone(), AlertKind::Truncated, 3),
            (Some(proof(5, None, 2, ChainState::Broken)), now.clone(), AlertKind::Rewritten, 2),
            (Some(proof(5, Some(MAC_B), 9, ChainState::Verified)), now.clone(), AlertKind::Rewritten, 9),
            (Some(proof(5, None, 0, ChainState::NoLog)), now.clone(), AlertKind::Missing, 0),
            (Some(proof(5, None, 0, ChainState::NoKey)), now.clone(), AlertKind::Missing, 0),
            (Some(proof(5, None, 0, ChainState::Unreadable)), now.clone(), AlertKind::Missing, 0),
            (None, now.clone(), AlertKind::Unproven, 9),
            (Some(proof(4, Some(MAC_A), 9, ChainState::Verified)), now.clone(), AlertKind::Unproven, 9),
            (Some(proof(5, Some(MAC_A), 9, ChainState::Verified)), Some(head(4, "dd")), AlertKind::Truncated, 4),
        ];
        for (p, reported, kind, reported_seq) in cases {
            let found = judge(&w, reported.as_ref(), p.as_ref());
            let (k, seq, detail) = found.unwrap_or_else(|| panic!("{p:?} with {reported:?} passed"));
            assert_eq!((k, seq), (kind, reported_seq), "{p:?}: {detail}");
            assert!(!detail.is_empty());
        }
    }

    #[tokio::test]
    async fn a_late_heartbeat_on_a_replaced_connection_changes_nothing() {
        use crate::protocol::Role;
        let dir = tempfile::tempdir().unwrap();
        let (_stop, stopped) = watch::channel(false);
        let hub = Hub::new(dir.path().to_path_buf(), registry::Registry::load(dir.path()).unwrap(), stopped);
        let who = super::super::hello::Who { id: "d-1".into(), name: "n".into(), key: "k".into() };
        let old = hub.join(Role::Device, &who);
        let new = hub.join(Role::Device, &who);
        let beat = |seq| Heartbeat {
            tier: None,
            expires_at: None,
            running_tasks: 0,
            audit_head: Some(head(seq, MAC_A)),
            uptime_s: 1,
            version: "x".into(),
            scope: None,
            witness: None,
            trusted_operators: Vec::new(),
        };
        let seq = |f: FromRelay| match f {
            FromRelay::Witnessed { seq, alert } => (seq, alert),
            other => panic!("{other:?}"),
        };
        assert_eq!(seq(heard(&hub, "d-1", old.conn, &beat(5)).await), (None, None));
        assert_eq!(witnessed_seq(&hub, "d-1"), None);
        assert_eq!(seq(heard(&hub, "d-1", new.conn, &beat(5)).await), (Some(5), None));
        assert_eq!(witnessed_seq(&hub, "d-1"), Some(5));
        // Written to the registry by a flush.
        flush(&hub).await;
        let (r, _) = registry::Registry::load(dir.path()).unwrap();
        assert_eq!(r.witness["d-1"].head, Some(head(5, MAC_A)));
    }
}
