//! Denials of senders the daemon cannot hold to account, counted rather
//! than each written: a command refused before its signature was verified
//! against a key the owner trusts (`UNTRUSTED_OPERATOR`, `BAD_SIGNATURE`,
//! `BAD_FRAME`) costs its sender nothing, so one record (and one fsync)
//! each would let anyone who can reach the relay fill the owner's log and
//! disk and bury its history. A command refused as a replay or as stale
//! (`REPLAY`, `STALE_COMMAND`) is counted too, although a trusted key
//! signed it: the relay, or anyone on the path, can resend a captured
//! command at no cost, and its first delivery is on record already.
//!
//! In each [`DENIAL_WINDOW`], opened by the first such denial, the first
//! denial of each code is recorded in full (`action.denied`); every one,
//! those included, is counted, and when the window closes (its timer, or
//! the daemon's shutdown) one `action.denied.aggregated` record holds the
//! count, the count per code and the senders (at most [`RECORDED_SENDERS`]
//! named). A window with nothing left out writes no summary. Other denials
//! of commands a trusted key signed (no consent, tier, scope, …) are not
//! counted here: each stays a record of its own. The sender still gets
//! its `denied` frame every time.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Daemon;
use crate::audit::{Event, Record};
use crate::protocol::DenyCode;

/// How long a window of counted denials lasts, from its first denial.
pub const DENIAL_WINDOW: Duration = Duration::from_secs(10);
/// The most distinct senders a summary names; the rest are counted.
pub const RECORDED_SENDERS: usize = 16;

/// Whether a denial with `code` is one of an unverified sender (see the module docs).
pub(super) fn unverified(code: DenyCode) -> bool {
    matches!(
        code,
        DenyCode::UntrustedOperator
            | DenyCode::BadSignature
            | DenyCode::BadFrame
            | DenyCode::Replay
            | DenyCode::StaleCommand
    )
}

/// The open window's counts.
#[derive(Debug, Default)]
pub(super) struct DenialWindow {
    /// When its first denial came; `None` when no window is open.
    opened: Option<DateTime<Utc>>,
    /// When its last denial came.
    last: Option<DateTime<Utc>>,
    count: u64,
    codes: BTreeMap<&'static str, u64>,
    senders: BTreeSet<String>,
    /// Senders past [`RECORDED_SENDERS`], not told apart (a count of denials).
    unnamed: u64,
}

impl DenialWindow {
    /// Counts a denial of `code` from `sender` (a trusted name or a key's
    /// fingerprint; `None` when its key did not parse) at `now`. Returns
    /// whether it goes on record in full (the window's first of its code)
    /// and whether it opened the window (then the caller closes it after
    /// [`DENIAL_WINDOW`]).
    pub(super) fn count(&mut self, code: DenyCode, sender: Option<&str>, now: DateTime<Utc>) -> (bool, bool) {
        let opened = self.opened.is_none();
        self.opened.get_or_insert(now);
        self.last = Some(now);
        self.count += 1;
        let of_code = self.codes.entry(code.as_str()).or_default();
        *of_code += 1;
        // Names come from the owner's trust file and fingerprints are ours: no sender's own text.
        let sender = sender.map_or_else(|| "an unparsable key".to_string(), str::to_string);
        if !self.senders.contains(&sender) {
            if self.senders.len() < RECORDED_SENDERS {
                self.senders.insert(sender);
            } else {
                self.unnamed += 1;
            }
        }
        (*of_code == 1, opened)
    }

    /// Closes the window: its `action.denied.aggregated` record, or `None`
    /// when every denial in it is on record in full (or none came).
    pub(super) fn close(&mut self) -> Option<Record> {
        let window = std::mem::take(self);
        let (opened, last) = (window.opened?, window.last?);
        if window.count <= window.codes.len() as u64 {
            return None;
        }
        let per_code: Vec<String> = window.codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        let mut senders: Vec<String> = window.senders.into_iter().collect();
        if window.unnamed > 0 {
            senders.push(format!("… ({} denials from senders not named)", window.unnamed));
        }
        let mut r = Record::new(Event::ActionDeniedAggregated);
        r.code = Some(window.codes.keys().copied().collect::<Vec<_>>().join(","));
        r.reason = Some("commands not signed by a key the owner trusts, counted, not each recorded".into());
        r.detail = Some(format!(
            "{} denied from {} to {}: {}; the first of each code is on record in full; senders: {}",
            window.count,
            crate::time::rfc3339(opened),
            crate::time::rfc3339(last),
            per_code.join(", "),
            senders.join(", "),
        ));
        Some(r)
    }
}

impl Daemon {
    /// Counts a denial of an unverified sender (see the module docs);
    /// returns whether it is to be recorded in full. The first of a window
    /// starts the timer that closes it.
    pub(super) fn count_unverified(&self, code: DenyCode, sender: Option<&str>) -> bool {
        let (full, opened) = crate::lock(&self.inner.denials).count(code, sender, self.inner.options.clock.wall());
        if opened {
            // The timer does not keep the daemon (and its home's lock) alive.
            let me = std::sync::Arc::downgrade(&self.inner);
            tokio::spawn(async move {
                tokio::time::sleep(DENIAL_WINDOW).await;
                if let Some(inner) = me.upgrade() {
                    Daemon { inner }.close_denial_window().await;
                }
            });
        }
        full
    }

    /// Writes the open window's summary, if it has one (its timer, and shutdown).
    pub(super) async fn close_denial_window(&self) {
        let summary = crate::lock(&self.inner.denials).close();
        if let Some(r) = summary
            && let Err(e) = self.audit(vec![r]).await
        {
            tracing::error!(error = %crate::ErrorChain(&e), "could not record the counted denials");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_each_code_is_in_full_and_the_summary_counts_them_all() {
        let mut w = DenialWindow::default();
        assert_eq!(w.close(), None, "no window, no summary");
        let t = Utc::now();
        assert_eq!(w.count(DenyCode::UntrustedOperator, Some("SHA256:aa"), t), (true, true));
        assert_eq!(w.count(DenyCode::UntrustedOperator, Some("SHA256:bb"), t), (false, false));
        assert_eq!(w.count(DenyCode::BadSignature, Some("alice"), t), (true, false));
        for _ in 0..997 {
            assert_eq!(w.count(DenyCode::UntrustedOperator, None, t), (false, false));
        }
        let r = w.close().expect("a summary");
        assert_eq!(r.event, Event::ActionDeniedAggregated);
        assert_eq!(r.code.as_deref(), Some("BAD_SIGNATURE,UNTRUSTED_OPERATOR"));
        let detail = r.detail.unwrap();
        assert!(detail.starts_with("1000 denied from "), "{detail}");
        assert!(detail.contains("BAD_SIGNATURE 1, UNTRUSTED_OPERATOR 999"), "{detail}");
        assert!(detail.contains("SHA256:aa") && detail.contains("alice") && detail.contains("an unparsable key"));
        // Closed: the next denial opens a new window and is in full again.
        assert_eq!(w.count(DenyCode::UntrustedOperator, Some("SHA256:aa"), t), (true, true));
        assert_eq!(w.close(), None, "a window whose every denial is on record needs no summary");
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_closes_on_its_timer_with_its_summary() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::start(&crate::Paths::under(dir.path().join("home")), Default::default()).unwrap();
        let mut events = daemon.subscribe();
        let opened = tokio::time::Instant::now();
        assert!(daemon.count_unverified(DenyCode::UntrustedOperator, Some("SHA256:aa")), "the first in full");
        assert!(!daemon.count_unverified(DenyCode::UntrustedOperator, Some("SHA256:bb")), "the next counted");
        let summary = loop {
            let event = events.recv().await.unwrap();
            if event.contains("action.denied.aggregated") {
                break event;
            }
        };
        assert!(opened.elapsed() >= DENIAL_WINDOW, "closed after {:?}", opened.elapsed());
        assert!(summary.contains("2 denied from"), "{summary}");
        assert!(daemon.count_unverified(DenyCode::UntrustedOperator, Some("SHA256:bb")), "a new window, in full");
    }

    #[test]
    fn senders_are_capped() {
        let mut w = DenialWindow::default();
        for i in 0..100 {
            w.count(DenyCode::UntrustedOperator, Some(&format!("SHA256:{i:03}")), Utc::now());
        }
        let detail = w.close().unwrap().detail.unwrap();
        assert!(detail.contains("SHA256:015") && !detail.contains("SHA256:016"), "{detail}");
        assert!(detail.contains("(84 denials from senders not named)"), "{detail}");
    }

    #[test]
    fn only_denials_anyone_on_the_path_can_cause_are_counted() {
        for code in [
            DenyCode::UntrustedOperator,
            DenyCode::BadSignature,
            DenyCode::BadFrame,
            DenyCode::Replay,
            DenyCode::StaleCommand,
        ] {
            assert!(unverified(code), "{code:?}");
        }
        for code in
            [DenyCode::NoConsent, DenyCode::TierInsufficient, DenyCode::OperatorNotGranted, DenyCode::BudgetExhausted]
        {
            assert!(!unverified(code), "{code:?}");
        }
    }
}
