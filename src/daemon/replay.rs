//! The replay cache: the nonces of recent commands, so that none runs
//! twice, across a daemon restart too.
//!
//! A nonce matters while a command carrying it is still fresh (issued
//! within ±120 s of the device's clock). In memory the cache holds each
//! nonce 240 s after its `issued_at`. It does not survive the daemon, but
//! the record does: the nonce and `issued_at` of every command whose
//! signature held go into its `action.started` or `action.denied` record,
//! fsynced before it runs, and each start reads them back from the
//! records of the last minutes ([`ReplayCache::load`]). A command issued
//! before the start is stale anyway (the gate's `not_before`), so what
//! the log gives back are the commands issued ahead of the device's clock
//! that a predecessor saw, which would otherwise run again.
//!
//! Forgetting a nonce is safe only while its command stays stale, and a
//! wall clock set back makes an old command fresh again. So the cache
//! keeps the newest `issued_at` it has forgotten ([`ReplayCache::forgot`]),
//! and the gate refuses a command issued no later than that as stale:
//! its nonce may be one the cache no longer holds.
//!
//! A verified command whose record could not be written (the audit store
//! failing: it was refused `AUDIT_UNAVAILABLE`) leaves its nonce nowhere
//! in the log. Its nonce and `issued_at` go instead into `run/lost-nonces`
//! ([`record_lost`], fsynced), which each start reads back too: without
//! it, a restart after the clock was set back let the same command run (a
//! counterexample of tests/decision_model.rs). The file is bounded: past
//! [`LOST_MAX`] entries it collapses into one floor, the newest
//! `issued_at` among them, below which every command is stale.

use std::collections::HashMap;
use std::ops::ControlFlow;

use chrono::{DateTime, TimeDelta, Utc};

use crate::paths::Paths;
use crate::protocol::FRESHNESS_S;

/// The nonces seen recently, bounded in entries and age.
///
/// A nonce need only be kept while a command carrying it could still be
/// fresh: until `issued_at + 120 s`. Entries are kept twice that long, in
/// case the clock steps, then pruned on insert.
#[derive(Debug)]
pub struct ReplayCache {
    seen: HashMap<String, DateTime<Utc>>,
    max_entries: usize,
    /// The newest `issued_at` of a nonce dropped (see the module docs).
    forgotten: Option<DateTime<Utc>>,
}

/// How long a nonce is kept after its `issued_at` (seconds).
pub(crate) const REPLAY_KEEP_S: i64 = 2 * FRESHNESS_S;

impl ReplayCache {
    /// An empty cache holding at most `max_entries` nonces.
    pub fn new(max_entries: usize) -> ReplayCache {
        ReplayCache { seen: HashMap::new(), max_entries, forgotten: None }
    }

    /// Whether `nonce` was seen.
    pub fn contains(&self, nonce: &str) -> bool {
        self.seen.contains_key(nonce)
    }

    /// Whether no further nonce fits (then commands are refused `BUSY`).
    pub fn is_full(&self) -> bool {
        self.seen.len() >= self.max_entries
    }

    /// Whether a command issued at `issued` may carry a nonce this cache
    /// has dropped (then it must not run: the gate calls it stale).
    pub fn forgot(&self, issued: DateTime<Utc>) -> bool {
        self.forgotten.is_some_and(|f| issued <= f)
    }

    /// Drops the nonces too old to matter at `now`, remembering the
    /// newest `issued_at` dropped.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        let horizon = now - TimeDelta::seconds(REPLAY_KEEP_S);
        let forgotten = &mut self.forgotten;
        self.seen.retain(|_, t| {
            let keep = *t >= horizon;
            if !keep {
                // The newest of the two (an Option orders None first).
                *forgotten = (*forgotten).max(Some(*t));
            }
            keep
        });
    }

    /// Remembers `nonce` issued at `issued_at` (RFC 3339), dropping nonces
    /// too old to matter at `now` first.
    pub fn insert(&mut self, nonce: &str, issued_at: &str, now: DateTime<Utc>) {
        let issued = crate::time::parse_rfc3339(issued_at).unwrap_or(now);
        if self.seen.len() >= self.max_entries / 2 {
            self.prune(now);
        }
        if self.seen.len() < self.max_entries {
            self.seen.insert(nonce.to_string(), issued);
        }
    }

    /// How many nonces are held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

impl ReplayCache {
    /// Remembers the nonces that the audit log's records of the last five
    /// minutes carry (see the module docs); returns how many. Every record
    /// is read: record times go back when the wall clock is set back, so a
    /// record older by seq than one of an hour ago can be of a minute ago,
    /// and stopping at the first old record would miss its nonce (a
    /// counterexample of tests/decision_model.rs). The cost is one read of
    /// the log per start, a chunk (1 MiB) at a time.
    ///
    /// # Errors
    /// As [`crate::audit::newest_first`]: then the daemon must not start,
    /// since it cannot know which commands already ran.
    pub fn load(&mut self, paths: &Paths, now: DateTime<Utc>) -> Result<usize, crate::AuditError> {
        // Received no earlier than issued_at - 120 s, so recorded no earlier than now - 240 s
        // by the same clock; a minute more for the time between the gate and the record.
        let horizon = now - TimeDelta::seconds(2 * FRESHNESS_S + 60);
        let mut loaded = 0;
        crate::audit::newest_first(paths, |r| {
            if crate::time::parse_rfc3339(&r.ts).is_some_and(|ts| ts < horizon) {
                return ControlFlow::Continue(());
            }
            if let (Some(nonce), Some(issued_at)) = (&r.nonce, &r.issued_at)
                && !self.contains(nonce)
            {
                self.insert(nonce, issued_at, now);
                loaded += 1;
            }
            ControlFlow::Continue(())
        })?;
        Ok(loaded + self.load_lost(paths, now)?)
    }

    /// Remembers the nonces of `run/lost-nonces` (see the module docs);
    /// returns how many.
    fn load_lost(&mut self, paths: &Paths, now: DateTime<Utc>) -> Result<usize, crate::AuditError> {
        let mut loaded = 0;
        for (issued_at, nonce) in read_lost(paths)? {
            match nonce {
                Some(nonce) if !self.contains(&nonce) => {
                    self.insert(&nonce, &issued_at, now);
                    loaded += 1;
                }
                Some(_) => {}
                None => {
                    let floor = crate::time::parse_rfc3339(&issued_at).unwrap_or(now);
                    self.forgotten = self.forgotten.max(Some(floor));
                }
            }
        }
        Ok(loaded)
    }
}

/// The most entries `run/lost-nonces` keeps before it collapses into a floor.
pub(crate) const LOST_MAX: usize = 1024;

fn lost_path(paths: &Paths) -> std::path::PathBuf {
    paths.run_dir().join("lost-nonces")
}

/// The entries of `run/lost-nonces`: `issued_at` and the nonce, or no
/// nonce for a floor. Read without following links and capped at
/// [`LOST_CAP`] bytes; a line that is not an entry is an error, never
/// skipped: the file is written whole (temp + rename), so such a line is
/// damage, and a skipped one would be a forgotten nonce.
fn read_lost(paths: &Paths) -> Result<Vec<(String, Option<String>)>, crate::AuditError> {
    let path = lost_path(paths);
    let Some(bytes) = crate::paths::read_capped(&path, LOST_CAP)? else { return Ok(Vec::new()) };
    let damaged = |n: usize| {
        let source = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("line {n} is not an entry of issued_at and nonce; move the file away to start without it"),
        );
        crate::AuditError::from(crate::paths::FileError::Io { op: "read", path: path.clone(), source })
    };
    let mut entries = Vec::new();
    for (i, line) in String::from_utf8_lossy(&bytes).lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|_| damaged(i + 1))?;
        let issued_at = v.get("issued_at").and_then(|t| t.as_str()).ok_or_else(|| damaged(i + 1))?;
        entries.push((issued_at.to_string(), v.get("nonce").and_then(|n| n.as_str()).map(str::to_string)));
    }
    Ok(entries)
}

/// The largest `run/lost-nonces` read (bytes): [`LOST_MAX`] entries of a
/// few hundred bytes each fit many times over.
const LOST_CAP: u64 = 1 << 20;

/// Makes the nonce of a verified command whose record could not be
/// written durable in `run/lost-nonces`, for the next start (see the
/// module docs). Past [`LOST_MAX`] entries the file becomes one floor.
///
/// # Errors
/// When the file cannot be read or written: then only this daemon's
/// memory holds the nonce.
pub(crate) fn record_lost(paths: &Paths, nonce: &str, issued_at: &str) -> Result<(), crate::AuditError> {
    let mut entries = read_lost(paths)?;
    entries.push((issued_at.to_string(), Some(nonce.to_string())));
    if entries.len() > LOST_MAX {
        // The string as signed, not reformatted: its fraction of a second matters.
        let newest = entries
            .iter()
            .filter_map(|(t, _)| Some((crate::time::parse_rfc3339(t)?, t)))
            .max()
            .map_or_else(|| issued_at.to_string(), |(_, t)| t.clone());
        entries = vec![(newest, None)];
    }
    let mut text = String::new();
    for (issued_at, nonce) in &entries {
        let line = match nonce {
            Some(n) => serde_json::json!({ "issued_at": issued_at, "nonce": n }),
            None => serde_json::json!({ "issued_at": issued_at }),
        };
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let path = lost_path(paths);
    std::fs::create_dir_all(paths.run_dir()).map_err(|source| crate::paths::FileError::Io {
        op: "create",
        path: paths.run_dir(),
        source,
    })?;
    crate::paths::write_atomic(&path, text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_nonces_come_back_at_a_start_and_past_the_bound_become_a_floor() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().join("home"));
        let now = Utc::now();
        let at = |s: i64| crate::time::rfc3339_millis(now + TimeDelta::milliseconds(s));
        record_lost(&paths, "nonce-a", &at(0)).unwrap();
        let mut cache = ReplayCache::new(64);
        assert_eq!(cache.load_lost(&paths, now).unwrap(), 1);
        assert!(cache.contains("nonce-a"));
        assert!(!cache.forgot(now));
        // All but the last two entries written at once (1,022 fsynced rewrites
        // would take most of this module's test time), as record_lost writes them.
        let mut text = std::fs::read_to_string(lost_path(&paths)).unwrap();
        for i in 1..LOST_MAX - 1 {
            text +=
                &(serde_json::json!({ "issued_at": at(i as i64), "nonce": format!("nonce-{i}") }).to_string() + "\n");
        }
        crate::paths::write_atomic(&lost_path(&paths), text.as_bytes()).unwrap();
        record_lost(&paths, &format!("nonce-{}", LOST_MAX - 1), &at(LOST_MAX as i64 - 1)).unwrap();
        assert_eq!(read_lost(&paths).unwrap().len(), LOST_MAX, "at the bound, not past it");
        record_lost(&paths, &format!("nonce-{LOST_MAX}"), &at(LOST_MAX as i64)).unwrap();
        let mut cache = ReplayCache::new(64);
        assert_eq!(cache.load_lost(&paths, now).unwrap(), 0);
        let newest = crate::time::parse_rfc3339(&at(LOST_MAX as i64)).unwrap();
        assert!(cache.forgot(newest));
        assert!(!cache.forgot(newest + TimeDelta::milliseconds(1)));
    }

    #[test]
    fn a_damaged_or_linked_lost_nonces_file_is_refused_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().join("home"));
        let now = Utc::now();
        record_lost(&paths, "nonce-a", &crate::time::rfc3339_millis(now)).unwrap();
        let file = lost_path(&paths);
        let good = std::fs::read_to_string(&file).unwrap();
        for damage in ["{\"nonce\":\"nonce-b\"}\n", "not json\n"] {
            crate::paths::write_atomic(&file, format!("{good}{damage}").as_bytes()).unwrap();
            let err = ReplayCache::new(64).load_lost(&paths, now).unwrap_err();
            assert!(crate::ErrorChain(&err).to_string().contains("line 2"), "{}", crate::ErrorChain(&err));
        }
        std::fs::remove_file(&file).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, &good).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
        assert!(ReplayCache::new(64).load_lost(&paths, now).is_err(), "a link is not followed");
    }

    fn at(t: DateTime<Utc>) -> String {
        crate::time::rfc3339_millis(t)
    }

    #[test]
    fn a_nonce_is_held_240_s_after_its_issued_at_and_then_forgotten() {
        let issued = crate::time::parse_rfc3339(&at(Utc::now())).unwrap();
        let mut cache = ReplayCache::new(8);
        cache.insert("nonce-a", &at(issued), issued);
        assert!(!cache.is_empty());
        cache.prune(issued + TimeDelta::seconds(240));
        assert!(cache.contains("nonce-a"), "still fresh by a clock 120 s behind");
        assert!(!cache.forgot(issued), "a nonce held is not forgotten");
        cache.prune(issued + TimeDelta::seconds(240) + TimeDelta::milliseconds(1));
        assert!(!cache.contains("nonce-a"));
        assert!(cache.is_empty());
        assert!(cache.forgot(issued));
    }

    #[test]
    fn the_forgotten_floor_is_the_newest_nonce_dropped_not_one_kept() {
        let t0 = crate::time::parse_rfc3339(&at(Utc::now())).unwrap();
        let mut cache = ReplayCache::new(8);
        cache.insert("nonce-old", &at(t0), t0);
        cache.insert("nonce-new", &at(t0 + TimeDelta::seconds(10)), t0);
        cache.prune(t0 + TimeDelta::seconds(245));
        assert!(cache.contains("nonce-new"));
        assert!(cache.forgot(t0));
        assert!(!cache.forgot(t0 + TimeDelta::milliseconds(1)), "the kept nonce is no floor");
        cache.prune(t0 + TimeDelta::seconds(255));
        assert!(cache.forgot(t0 + TimeDelta::seconds(10)), "a later drop raises the floor");
        // An older one dropped afterwards does not lower it.
        cache.insert("nonce-older", &at(t0 - TimeDelta::seconds(5)), t0);
        cache.prune(t0 + TimeDelta::seconds(255));
        assert!(cache.forgot(t0 + TimeDelta::seconds(10)));
    }

    #[test]
    fn a_full_cache_takes_no_more_and_one_under_half_full_keeps_old_nonces() {
        let now = crate::time::parse_rfc3339(&at(Utc::now())).unwrap();
        let mut cache = ReplayCache::new(8);
        for i in 0..9 {
            cache.insert(&format!("nonce-{i}"), &at(now), now);
        }
        assert_eq!(cache.len(), 8);
        assert!(!cache.contains("nonce-8"));
        // Below half full nothing is pruned: an old nonce still reads as
        // seen (REPLAYED), and nothing is forgotten.
        let mut cache = ReplayCache::new(8);
        cache.insert("nonce-old", &at(now), now);
        let later = now + TimeDelta::seconds(REPLAY_KEEP_S + 60);
        cache.insert("nonce-new", &at(later), later);
        assert_eq!(cache.len(), 2);
        assert!(cache.contains("nonce-old"));
        assert!(!cache.forgot(now));
    }

    #[test]
    fn a_start_reads_back_the_nonces_of_the_last_five_minutes_and_the_lost_ones() {
        use crate::audit::{AuditLog, Event, Record};
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().join("home"));
        let clock = crate::Clock::stepped();
        let mut log = AuditLog::open(&paths).unwrap();
        log.set_clock(clock.clone());
        let record = |nonce: &str| {
            let mut r = Record::new(Event::ActionStarted);
            r.nonce = Some(nonce.into());
            r.issued_at = Some(at(clock.wall()));
            r
        };
        let first = log.append(record("nonce-a")).unwrap();
        clock.set_wall_by(TimeDelta::seconds(10));
        log.append(record("nonce-b")).unwrap();
        log.append(Record::new(Event::ConsentRevoked)).unwrap();
        record_lost(&paths, "nonce-c", &at(clock.wall())).unwrap();
        let ts = crate::time::parse_rfc3339(&first.ts).unwrap();
        // Horizon: now - 300 s; a record at it is read, one before it is not.
        let edge = ts + TimeDelta::seconds(300);
        let mut cache = ReplayCache::new(64);
        assert_eq!(cache.load(&paths, edge).unwrap(), 3);
        assert!(cache.contains("nonce-a") && cache.contains("nonce-b") && cache.contains("nonce-c"));
        let mut cache = ReplayCache::new(64);
        assert_eq!(cache.load(&paths, edge + TimeDelta::microseconds(1)).unwrap(), 2);
        assert!(!cache.contains("nonce-a") && cache.contains("nonce-b"));
        // Each nonce is counted once, however often it is read.
        assert_eq!(cache.load(&paths, edge).unwrap(), 1, "only nonce-a is new");
        assert_eq!(cache.load_lost(&paths, edge).unwrap(), 0);
    }

    #[test]
    fn a_lost_floor_raises_the_forgotten_one_never_lowers_it() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().join("home"));
        let t0 = crate::time::parse_rfc3339(&at(Utc::now())).unwrap();
        let floor = |cache: &mut ReplayCache, t: DateTime<Utc>| {
            std::fs::create_dir_all(paths.run_dir()).unwrap();
            let line = serde_json::json!({ "issued_at": at(t) }).to_string();
            crate::paths::write_atomic(&lost_path(&paths), format!("{line}\n").as_bytes()).unwrap();
            cache.load_lost(&paths, t0).unwrap()
        };
        let mut cache = ReplayCache::new(8);
        cache.insert("nonce-a", &at(t0), t0);
        cache.prune(t0 + TimeDelta::seconds(REPLAY_KEEP_S + 1));
        assert!(cache.forgot(t0) && !cache.forgot(t0 + TimeDelta::milliseconds(1)));
        assert_eq!(floor(&mut cache, t0 - TimeDelta::seconds(1)), 0);
        assert!(cache.forgot(t0), "an older floor leaves the newer one");
        floor(&mut cache, t0 + TimeDelta::seconds(1));
        assert!(cache.forgot(t0 + TimeDelta::seconds(1)), "a newer floor raises it");
    }

    #[test]
    fn a_lost_nonces_file_already_past_the_bound_collapses_at_the_next_loss() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().join("home"));
        let now = crate::time::parse_rfc3339(&at(Utc::now())).unwrap();
        let text: String = (0..LOST_MAX + 10)
            .map(|i| serde_json::json!({ "issued_at": at(now), "nonce": format!("nonce-{i}") }).to_string() + "\n")
            .collect();
        std::fs::create_dir_all(paths.run_dir()).unwrap();
        crate::paths::write_atomic(&lost_path(&paths), text.as_bytes()).unwrap();
        record_lost(&paths, "nonce-last", &at(now + TimeDelta::seconds(1))).unwrap();
        assert_eq!(read_lost(&paths).unwrap(), vec![(at(now + TimeDelta::seconds(1)), None)]);
    }
}
