//! Consent enforcement: the grant as the daemon enforces it, re-read on
//! every change (inotify, `POST /v1/consent/changed`, a poll as a safety
//! net) and at its expiry, which it measures on two clocks; a task the
//! grant no longer covers is stopped. So is a task whose operator the
//! owner no longer trusts (`trusted_operators.toml`, re-read on the same
//! changes and watched too): `by: trust_removed`.
//!
//! The watcher is supervised ([`Daemon::enforce_consent`]): if it ends or
//! panics while the daemon runs, nothing would stop a task at its grant's
//! end, so every running task is stopped at once (fail closed), the event is
//! audited (`consent.watcher_restarted`) and the watcher starts again,
//! re-reading the grant.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

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
        let clock = &self.inner.options.clock;
        let now = clock.wall();
        let read = consent::read(&self.inner.paths, now);
        if let Consent::Live(g) = &read {
            self.count_used(g);
        }
        let trusted = crate::trust::list(&self.inner.paths);
        if let Err(e) = &trusted {
            tracing::error!(error = %crate::ErrorChain(e), "the trusted operators cannot be read; no task may run");
        }
        let mut records = Vec::new();
        let mut state = self.state();
        let (effective, by_when_off) = match read {
            Consent::Live(g) => {
                let left = (g.expires_at - now).to_std().unwrap_or_default();
                let key = (g.grant_id.clone(), g.expires_at);
                let deadline = *state.consent.deadlines.entry(key).or_insert_with(|| clock.mono() + left);
                if clock.mono() >= deadline {
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
        let changed = state.consent.effective != effective;
        for task in state.tasks.values() {
            // A task runs only while the grant covers it: its tier, and its
            // operator and action when the grant names them (a new grant
            // may narrow the scope of the one the task started under).
            let by = match effective.live() {
                None => by_when_off,
                Some(g) if g.tier.get() < task.info.tier => StoppedBy::TierLowered,
                Some(g) if !g.allows_operator(&task.info.operator) || !g.allows_action(&task.info.action) => {
                    StoppedBy::Revoke
                }
                // And only while the owner trusts the key that signed its command.
                Some(_) if !crate::trust::still_trusts(&trusted, &task.operator_key) => StoppedBy::TrustRemoved,
                Some(_) => continue,
            };
            if task.stop(by) {
                tracing::info!(task = %task.info.task_id, by = by.as_str(), "stopping a task the grant no longer covers");
            }
        }
        state.consent.effective = effective;
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
        let clock = &self.inner.options.clock;
        let left_mono = mono.saturating_duration_since(clock.mono());
        let left_wall = (g.expires_at - clock.wall()).to_std().unwrap_or_default();
        Some(tokio::time::Instant::now() + left_mono.min(left_wall))
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
                    kill::reap_strays(|| self.leaders());
                    continue;
                }
            }
            self.consent_changed().await;
        }
        drop(watcher);
    }
}

/// The first wait before a watcher that died is started again; it doubles
/// with each death in a row, up to [`WATCHER_RESTART_MAX`].
pub const WATCHER_RESTART: Duration = Duration::from_millis(50);
/// The longest wait before a watcher that keeps dying is started again.
pub const WATCHER_RESTART_MAX: Duration = Duration::from_secs(2);
/// A watcher that ran this long without dying resets the restart wait.
const WATCHER_HEALTHY: Duration = Duration::from_secs(60);

impl Daemon {
    /// Runs the consent watcher ([`Daemon::watch_consent`]) until `stop`
    /// turns true, and supervises it: see [`Daemon::supervise_watcher`].
    pub async fn enforce_consent(&self, stop: watch::Receiver<bool>) {
        self.supervise_watcher(stop, |d, mut stop| async move {
            d.watch_consent(async move { crate::stopped(&mut stop).await }).await
        })
        .await;
    }

    /// Runs `watcher` (the consent watcher, or a stand-in in tests) in its
    /// own task until `stop` turns true. Each time it ends or panics before
    /// that, every running task is told to stop (`by: revoke`: consent can
    /// no longer be enforced for it), a `consent.watcher_restarted` record
    /// says how it ended, and after a short wait ([`WATCHER_RESTART`],
    /// doubling to [`WATCHER_RESTART_MAX`] while it keeps dying) it starts
    /// again, re-reading the grant first.
    pub(super) async fn supervise_watcher<F, Fut>(&self, mut stop: watch::Receiver<bool>, watcher: F)
    where
        F: Fn(Daemon, watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut wait = WATCHER_RESTART;
        loop {
            let began = Instant::now();
            let ended = tokio::spawn(watcher(self.clone(), stop.clone())).await;
            if *stop.borrow() {
                return;
            }
            let how = match ended {
                Err(e) if e.is_panic() => "panicked",
                Err(_) => "was cancelled",
                Ok(()) => "ended",
            };
            let stopped = self.stop_unenforced();
            tracing::error!(how, stopped, "the consent watcher {how}; every running task was stopped; restarting it");
            let mut r = Record::new(Event::ConsentWatcherRestarted);
            r.detail = Some(format!("the consent watcher {how}; {stopped} running task(s) stopped; restarted"));
            if let Err(e) = self.audit(vec![r]).await {
                tracing::error!(error = %crate::ErrorChain(&e), "could not record consent.watcher_restarted");
            }
            if began.elapsed() >= WATCHER_HEALTHY {
                wait = WATCHER_RESTART;
            }
            tokio::select! {
                _ = crate::stopped(&mut stop) => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(WATCHER_RESTART_MAX);
            self.refresh_consent_sync();
        }
    }

    /// Tells every running task to stop (`by: revoke`); returns how many were told.
    fn stop_unenforced(&self) -> usize {
        let state = self.state();
        state.tasks.values().filter(|t| t.stop(StoppedBy::Revoke)).count()
    }
}

/// Watches the state directory for changes to `consent.json`, and the
/// config directory for `trusted_operators.toml`. `None` if inotify is
/// unavailable or the state directory cannot be watched (the poll still
/// runs).
fn consent_watcher(paths: &Paths, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let (consent, trust) = (paths.consent(), paths.trusted_operators());
    let names: Vec<_> = [&consent, &trust].iter().filter_map(|f| f.file_name().map(|n| n.to_owned())).collect();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own reads of the file raise open/access events: only a change counts,
        // or each read would wake the watcher to read it again.
        // A lost or overflowed event queue (an error, or a rescan flag) means
        // anything may have changed: re-read then too.
        let changed = match &event {
            Ok(e) if e.kind.is_access() => false,
            Ok(e) => {
                e.need_rescan() || e.paths.iter().any(|p| p.file_name().is_some_and(|n| names.iter().any(|m| m == n)))
            }
            Err(_) => true,
        };
        if changed {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "inotify unavailable; polling the grant every second"))
    .ok()?;
    let dir = consent.parent()?;
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(error = %e, "cannot watch {}; polling", dir.display()))
        .ok()?;
    if let Some(config) = trust.parent().filter(|c| *c != dir)
        && let Err(e) = watcher.watch(config, notify::RecursiveMode::NonRecursive)
    {
        // The poll re-reads it then (every CONSENT_POLL_WATCHED).
        tracing::warn!(error = %e, "cannot watch {}; its trusted operators are re-read on the poll", config.display());
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::daemon::task::fake_task;

    #[tokio::test]
    async fn a_watcher_that_panics_stops_every_task_and_is_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().join("home"));
        let daemon = Daemon::start(&paths, Default::default()).unwrap();
        let mut stopped = fake_task(&daemon, "t-0000000000000001");
        let (stop_tx, stop_rx) = watch::channel(false);
        let starts = Arc::new(AtomicUsize::new(0));
        let (restarted_tx, mut restarted) = mpsc::channel::<()>(1);
        let supervisor = {
            let (d, starts) = (daemon.clone(), starts.clone());
            tokio::spawn(async move {
                d.supervise_watcher(stop_rx, move |_, mut stop| {
                    let n = starts.fetch_add(1, Ordering::SeqCst);
                    let restarted = restarted_tx.clone();
                    async move {
                        if n == 0 {
                            panic!("a watcher dies");
                        }
                        let _ = restarted.send(()).await;
                        crate::stopped(&mut stop).await;
                    }
                })
                .await
            })
        };
        let wait = Duration::from_secs(10);
        let by = tokio::time::timeout(wait, stopped.wait_for(Option::is_some)).await.unwrap().unwrap().unwrap();
        assert_eq!(by, StoppedBy::Revoke, "the task no watcher guards is stopped");
        tokio::time::timeout(wait, restarted.recv()).await.unwrap().unwrap();
        let listing = crate::audit::list(&paths, 0).unwrap();
        let record = listing
            .records
            .iter()
            .filter_map(|l| l.record.as_ref())
            .find(|r| r.event == Event::ConsentWatcherRestarted);
        let detail = record.and_then(|r| r.detail.clone()).unwrap_or_default();
        assert!(detail.contains("panicked") && detail.contains("1 running task(s) stopped"), "{detail}");
        // Asked to stop, it stops, and does not restart the watcher again.
        stop_tx.send(true).unwrap();
        tokio::time::timeout(wait, supervisor).await.unwrap().unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_watcher_that_returns_early_is_restarted_too() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::start(&Paths::under(dir.path().join("home")), Default::default()).unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let (third_tx, mut third) = mpsc::channel::<usize>(1);
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        let supervisor = tokio::spawn(async move {
            daemon
                .supervise_watcher(stop_rx, move |_, mut stop| {
                    let n = counted.fetch_add(1, Ordering::SeqCst);
                    let third = third_tx.clone();
                    async move {
                        // The first two return at once; the third stays until stopped.
                        if n >= 2 {
                            let _ = third.send(n).await;
                            crate::stopped(&mut stop).await;
                        }
                    }
                })
                .await
        });
        let wait = Duration::from_secs(10);
        assert_eq!(tokio::time::timeout(wait, third.recv()).await.unwrap(), Some(2));
        stop_tx.send(true).unwrap();
        tokio::time::timeout(wait, supervisor).await.unwrap().unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 3);
    }
}
