//! Consent enforcement: the grant as the daemon enforces it, re-read on
//! every change (inotify, `POST /v1/consent/changed`, a poll as a safety
//! net) and at its expiry, which it measures on two clocks; a task the
//! grant no longer covers is stopped.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::{CONSENT_POLL, CONSENT_POLL_WATCHED, Daemon, kill};
use crate::audit::{Event, Record};
use crate::consent::{self, Consent, Off};
use crate::control_api::WatchEvent;
use crate::paths::Paths;
use crate::protocol::StoppedBy;

/// The consent as the daemon enforces it.
pub(super) struct ConsentState {
    /// As read, with the monotonic deadline applied.
    pub(super) effective: Consent,
    /// Per grant id and `expires_at`: the monotonic deadline fixed when
    /// that grant, with that end, was first read. Keyed by the end too, so
    /// that a grant edited under the same id is judged by its new end,
    /// exactly as `support status` reads the file, never by a stale one.
    deadlines: HashMap<(String, DateTime<Utc>), Instant>,
    /// Grants (id and end) whose `consent.expired` is on the record.
    expired_written: HashSet<(String, DateTime<Utc>)>,
    /// Per grant id: the actions started under it (its `action.started`
    /// records, counted from the audit log when the grant is first seen,
    /// then one more as each task registers). Absent: not countable (the
    /// log could not be read), so a budget is taken as spent.
    pub(super) used: HashMap<String, u32>,
}

impl ConsentState {
    /// No grant read yet.
    pub(super) fn new() -> ConsentState {
        ConsentState {
            effective: Consent::Off(Off::NoGrant),
            deadlines: HashMap::new(),
            expired_written: HashSet::new(),
            used: HashMap::new(),
        }
    }
}

impl Daemon {
    /// Re-reads the grant and stops every task above the live tier.
    /// Call when the consent file may have changed; cheap when it did not.
    /// It reads one small file on the runtime's thread (no thread is
    /// started for it, so the idle daemon keeps two threads); only a
    /// `consent.expired` record, once per grant, waits for an fsync here,
    /// and, once per grant id, the audit log is read back to its
    /// `consent.granted` record to count the actions started under it.
    pub async fn consent_changed(&self) {
        self.refresh_consent_sync();
    }

    /// Asks the watcher to re-read the grant now (`POST /v1/consent/changed`).
    pub fn nudge_consent(&self) {
        self.inner.consent_changed.notify_one();
    }

    /// [`Daemon::consent_changed`], from synchronous code.
    pub(super) fn refresh_consent_sync(&self) {
        let now = Utc::now();
        let read = consent::read(&self.inner.paths, now);
        if let Consent::Live(g) = &read {
            self.count_used(g);
        }
        let mut records = Vec::new();
        let mut state = self.state();
        let (effective, by_when_off) = match read {
            Consent::Live(g) => {
                let left = (g.expires_at - now).to_std().unwrap_or_default();
                let key = (g.grant_id.clone(), g.expires_at);
                let deadline = *state.consent.deadlines.entry(key).or_insert_with(|| Instant::now() + left);
                if Instant::now() >= deadline {
                    (Consent::Off(Off::Expired(g)), StoppedBy::Expiry)
                } else {
                    (Consent::Live(g), StoppedBy::Revoke)
                }
            }
            Consent::Off(Off::Expired(g)) => (Consent::Off(Off::Expired(g)), StoppedBy::Expiry),
            off => (off, StoppedBy::Revoke),
        };
        if let Consent::Off(Off::Expired(g)) = &effective
            && state.consent.expired_written.insert((g.grant_id.clone(), g.expires_at))
        {
            let mut r = Record::new(Event::ConsentExpired);
            r.grant_id = Some(g.grant_id.clone());
            r.tier = Some(g.tier.get());
            r.detail = Some(format!("expired at {}", crate::time::rfc3339(g.expires_at)));
            records.push(r);
        }
        let live_tier = effective.live().map(|g| g.tier.get()).unwrap_or(0);
        let by = if effective.live().is_some() { StoppedBy::TierLowered } else { by_when_off };
        let changed = state.consent.effective != effective;
        state.consent.effective = effective;
        for task in state.tasks.values().filter(|t| t.info.tier > live_tier) {
            if task.stop(by) {
                tracing::info!(task = %task.info.task_id, by = by.as_str(), "stopping a task the grant no longer covers");
            }
        }
        drop(state);
        if changed {
            self.publish(&WatchEvent::Status { status: Box::new(self.status_view()) });
        }
        if !records.is_empty()
            && let Err(e) = self.audit_sync(records)
        {
            tracing::error!(error = %crate::ErrorChain(&e), "could not record consent.expired");
        }
    }

    /// Counts the actions started under `grant` from the audit log, once
    /// per grant id: read without the daemon's lock, kept with the first
    /// count, so a task registered meanwhile is not lost.
    fn count_used(&self, grant: &consent::Grant) {
        if self.state().consent.used.contains_key(&grant.grant_id) {
            return;
        }
        match consent::actions_started(&self.inner.paths, grant) {
            Ok(n) => {
                self.state().consent.used.entry(grant.grant_id.clone()).or_insert(n);
            }
            Err(e) => tracing::error!(
                grant = %grant.grant_id,
                error = %crate::ErrorChain(&e),
                "cannot count the actions started under the grant; its budget counts as spent"
            ),
        }
    }

    /// When the live grant ends, by the earlier of its two clocks.
    fn next_expiry(&self) -> Option<tokio::time::Instant> {
        let state = self.state();
        let g = state.consent.effective.live()?;
        let mono = state.consent.deadlines.get(&(g.grant_id.clone(), g.expires_at)).copied()?;
        let wall = Instant::now() + (g.expires_at - Utc::now()).to_std().unwrap_or_default();
        Some(tokio::time::Instant::from_std(mono.min(wall)))
    }

    /// Watches the consent file (inotify, with a 10 s poll as a safety net,
    /// 1 s without inotify) and the grant's expiry until `shutdown` resolves.
    pub async fn watch_consent(&self, shutdown: impl Future<Output = ()>) {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let watcher = consent_watcher(&self.inner.paths, tx);
        tokio::pin!(shutdown);
        let mut poll = tokio::time::interval(if watcher.is_some() { CONSENT_POLL_WATCHED } else { CONSENT_POLL });
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        loop {
            let expiry = self.next_expiry();
            tokio::select! {
                _ = &mut shutdown => break,
                _ = rx.recv() => {}
                _ = self.inner.consent_changed.notified() => {}
                _ = poll.tick() => {}
                _ = async { tokio::time::sleep_until(expiry.unwrap_or_else(tokio::time::Instant::now)).await }, if expiry.is_some() => {}
                _ = async { sigchld.as_mut().expect("guarded").recv().await }, if sigchld.is_some() => {
                    kill::reap_strays(&self.leaders());
                    continue;
                }
            }
            self.consent_changed().await;
        }
        drop(watcher);
    }
}

/// Watches the state directory for changes to `consent.json`. `None` if
/// inotify is unavailable (the poll still runs).
fn consent_watcher(paths: &Paths, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let file = paths.consent();
    let name = file.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own reads of the file raise open/access events: only a change counts,
        // or each read would wake the watcher to read it again.
        // A lost or overflowed event queue (an error, or a rescan flag) means
        // anything may have changed: re-read then too.
        let changed = match &event {
            Ok(e) if e.kind.is_access() => false,
            Ok(e) => e.need_rescan() || e.paths.iter().any(|p| p.file_name() == name.as_deref()),
            Err(_) => true,
        };
        if changed {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "inotify unavailable; polling the grant every second"))
    .ok()?;
    let dir = file.parent()?;
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(error = %e, "cannot watch {}; polling", dir.display()))
        .ok()?;
    Some(watcher)
}
