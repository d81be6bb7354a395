//! The grant: the owner's time-boxed consent to a tier of actions.
//!
//! DESIGN §1 and §3. The grant lives in `consent.json`, written atomically.
//! Anything short of a sound, unexpired grant file owned by the owner is
//! no consent ([`Consent::Off`]), with the reason kept for `support status`.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::paths::{self, FileError, Paths};

/// The shortest grant: 1 second (short grants are never less safe).
pub const MIN_GRANT: Duration = Duration::from_secs(1);
/// The longest grant: 480 minutes (DESIGN §1).
pub const MAX_GRANT: Duration = Duration::from_secs(480 * 60);
/// How far in the future `granted_at` may lie before the grant is distrusted
/// (the clock was set back since it was written, or the file was edited).
/// Whatever it is, a grant never ends more than [`MAX_GRANT`] after the
/// moment it is read (see [`read`]).
pub const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// The most operators or actions a grant's scope names.
pub const MAX_SCOPE_NAMES: usize = 64;
/// `consent.json` is a few hundred bytes; anything larger was not written by us.
const MAX_CONSENT_BYTES: u64 = 64 * 1024;
/// `reason` is shown to operators and in the audit log; keep it to one short line.
pub const MAX_REASON_CHARS: usize = 200;

/// A consent tier, 1 to 4. Tiers are cumulative (DESIGN §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Tier(u8);

impl Tier {
    /// Tier 1: read-only diagnostics.
    pub const DIAGNOSTICS: Tier = Tier(1);
    /// Tier 2: curated fixes.
    pub const FIXES: Tier = Tier(2);
    /// Tier 3: operating the owner's AI agent.
    pub const AGENT: Tier = Tier(3);
    /// Tier 4: raw shell.
    pub const SHELL: Tier = Tier(4);
    /// Every tier, lowest first.
    pub const ALL: [Tier; 4] = [Tier(1), Tier(2), Tier(3), Tier(4)];

    /// `Some` for 1 to 4.
    pub fn new(n: u8) -> Option<Tier> {
        (1..=4).contains(&n).then_some(Tier(n))
    }
    /// The tier's number.
    pub fn get(self) -> u8 {
        self.0
    }
    /// Its one-word name: diagnostics, fixes, agent, shell.
    pub fn name(self) -> &'static str {
        ["diagnostics", "fixes", "agent", "shell"][usize::from(self.0 - 1)]
    }
    /// What a grant of this tier allows, cumulatively.
    pub fn allows(self) -> &'static str {
        [
            "read-only diagnostics and logs from the catalogue",
            "diagnostics, plus curated fixes from the catalogue",
            "diagnostics and fixes, plus operating your AI coding agent on a task",
            "everything, including raw shell commands that run as you",
        ][usize::from(self.0 - 1)]
    }
    /// Tiers 3 and 4 must be confirmed with `--yes`.
    pub fn needs_confirmation(self) -> bool {
        self.0 >= 3
    }
    /// A table of every tier, one per line, for error messages.
    pub fn table() -> String {
        Tier::ALL.iter().map(|t| format!("  {}  {:<11} {}", t.0, t.name(), t.allows())).collect::<Vec<_>>().join("\n")
    }
}

impl TryFrom<u8> for Tier {
    type Error = String;
    fn try_from(n: u8) -> Result<Tier, String> {
        Tier::new(n).ok_or_else(|| format!("tier must be 1 to 4, not {n}"))
    }
}

impl From<Tier> for u8 {
    fn from(t: Tier) -> u8 {
        t.0
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0, self.name())
    }
}

/// Who granted: the login name and uid that ran `support allow`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantedBy {
    /// The login name.
    pub user: String,
    /// The real user id.
    pub uid: u32,
}

/// The content of `consent.json`. Times are RFC 3339 UTC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// `g-` and 16 hex digits, random.
    pub grant_id: String,
    /// What it allows (cumulative tiers, DESIGN §1).
    pub tier: Tier,
    /// When it was granted.
    pub granted_at: DateTime<Utc>,
    /// When it ends: 1 s to 8 h after `granted_at`.
    pub expires_at: DateTime<Utc>,
    /// The owner's reason, if given (`--reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who granted it.
    pub granted_by: GrantedBy,
    /// Only these trusted operators (names in `trusted_operators.toml`)
    /// may act under it; absent: every trusted operator (`--operator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operators: Option<Vec<String>>,
    /// Only these catalogue actions may run under it; absent: every
    /// action of its tier (`--only`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<Vec<String>>,
    /// At most this many actions start under it (`action.started`
    /// records with its `grant_id`); absent: no limit (`--max-actions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_actions: Option<u32>,
}

impl Grant {
    /// A new grant of `tier` for `duration` from `now`, by the current user.
    ///
    /// # Errors
    /// A message when `duration` is outside 1 s..=8 h or `reason` is too
    /// long or holds control characters.
    pub fn new(tier: Tier, duration: Duration, reason: Option<String>, now: DateTime<Utc>) -> Result<Grant, String> {
        check_duration(duration)?;
        if let Some(r) = &reason {
            check_reason(r)?;
        }
        let delta = chrono::TimeDelta::from_std(duration).map_err(|e| e.to_string())?;
        Ok(Grant {
            grant_id: format!("g-{}", crate::random_hex(8)),
            tier,
            granted_at: now,
            expires_at: now + delta,
            reason,
            granted_by: GrantedBy { user: paths::current_user(), uid: paths::current_uid() },
            operators: None,
            only: None,
            max_actions: None,
        })
    }

    /// The grant narrowed to `operators`, `only` these actions and at most
    /// `max_actions` actions; `None` leaves that part unscoped.
    ///
    /// # Errors
    /// A message when a list is empty, longer than [`MAX_SCOPE_NAMES`],
    /// repeats a name or holds one that is not a valid name, or when
    /// `max_actions` is 0.
    pub fn scoped(
        mut self,
        operators: Option<Vec<String>>,
        only: Option<Vec<String>>,
        max_actions: Option<u32>,
    ) -> Result<Grant, String> {
        self.operators = operators;
        self.only = only;
        self.max_actions = max_actions;
        self.check_scope()?;
        Ok(self)
    }

    /// Whether the grant names a scope (operators, actions or a budget).
    pub fn is_scoped(&self) -> bool {
        self.operators.is_some() || self.only.is_some() || self.max_actions.is_some()
    }

    /// Whether the trusted operator the owner calls `name` may act under it.
    pub fn allows_operator(&self, name: &str) -> bool {
        self.operators.as_ref().is_none_or(|ops| ops.iter().any(|o| o == name))
    }

    /// Whether the catalogue action `name` may run under it (its tier aside).
    pub fn allows_action(&self, name: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|a| a == name))
    }

    /// The scope in words, e.g. `operators alice, bob; only disk-usage; at
    /// most 5 actions`; `None` when unscoped.
    pub fn scope_words(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(ops) = &self.operators {
            parts.push(format!("operators {}", ops.join(", ")));
        }
        if let Some(only) = &self.only {
            parts.push(format!("only {}", only.join(", ")));
        }
        if let Some(k) = self.max_actions {
            parts.push(format!("at most {k} action{}", if k == 1 { "" } else { "s" }));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    fn check_scope(&self) -> Result<(), String> {
        let lists = [
            ("operators", &self.operators, crate::trust::valid_name as fn(&str) -> bool),
            ("only", &self.only, crate::policy::valid_action_name),
        ];
        for (field, list, valid) in lists {
            let Some(list) = list else { continue };
            if list.is_empty() || list.len() > MAX_SCOPE_NAMES {
                return Err(format!("{field} must name 1 to {MAX_SCOPE_NAMES} names"));
            }
            let mut seen = std::collections::HashSet::new();
            for name in list {
                if !valid(name) {
                    return Err(format!("{field}: `{}` is not a valid name", crate::text::printable(name)));
                }
                if !seen.insert(name) {
                    return Err(format!("{field}: `{name}` is named twice"));
                }
            }
        }
        if self.max_actions == Some(0) {
            return Err("max_actions must be 1 or more".into());
        }
        Ok(())
    }

    /// Seconds left at `now`, never more than the 8 h ceiling.
    pub fn remaining(&self, now: DateTime<Utc>) -> Duration {
        let left = (self.expires_at - now).to_std().unwrap_or_default();
        left.min(MAX_GRANT)
    }

    fn validate(&self, now: DateTime<Utc>) -> Result<(), String> {
        let id_ok = self.grant_id.len() == 18
            && self.grant_id.starts_with("g-")
            && self.grant_id[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if !id_ok {
            return Err("grant_id is not of the form g-<16 hex digits>".into());
        }
        let span = self.expires_at - self.granted_at;
        if span < chrono::TimeDelta::seconds(1) || span > chrono::TimeDelta::seconds(MAX_GRANT.as_secs() as i64) {
            return Err("the grant does not last between 1 second and 8 hours".into());
        }
        if self.granted_at > now + CLOCK_SKEW {
            return Err(format!(
                "granted_at {} is in the future (was the clock set back?)",
                crate::time::rfc3339(self.granted_at)
            ));
        }
        // Whatever granted_at says, no grant runs longer than 8 h from any
        // moment it is read: a granted_at in the future cannot add time.
        if self.expires_at > now + chrono::TimeDelta::seconds(MAX_GRANT.as_secs() as i64) {
            return Err(format!(
                "expires_at {} is more than 8 hours from now (was the clock set back?)",
                crate::time::rfc3339(self.expires_at)
            ));
        }
        if let Some(r) = &self.reason {
            check_reason(r)?;
        }
        self.check_scope()
    }
}

/// Checks a grant's length: 1 s to 8 h.
///
/// # Errors
/// A message naming the range.
pub fn check_duration(d: Duration) -> Result<(), String> {
    if d < MIN_GRANT || d > MAX_GRANT {
        return Err(format!(
            "a grant lasts from 1 second to 8 hours (480 minutes), not {}",
            humantime::format_duration(d)
        ));
    }
    Ok(())
}

fn check_reason(r: &str) -> Result<(), String> {
    if r.chars().count() > MAX_REASON_CHARS {
        return Err(format!("the reason is longer than {MAX_REASON_CHARS} characters"));
    }
    if r.chars().any(char::is_control) {
        return Err("the reason holds control characters (newlines, escapes); use one plain line".into());
    }
    Ok(())
}

/// The consent in force at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Consent {
    /// A sound, unexpired grant.
    Live(Grant),
    /// No consent, and why.
    Off(Off),
}

/// Why there is no consent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Off {
    /// No `consent.json` (never granted, or revoked).
    NoGrant,
    /// The grant ran out.
    Expired(Grant),
    /// The file could not be parsed or failed a check.
    Malformed(String),
    /// The file is a link, foreign-owned, writable by others, or unreadable.
    Unsafe(String),
    /// The file reads as a live grant, but the running daemon, which
    /// enforces it, holds support off, and says why (its monotonic clock
    /// ended the grant, say, after the wall clock was set back).
    HeldOff(String),
}

impl Off {
    /// One line for `support status`.
    pub fn reason(&self) -> String {
        match self {
            Off::NoGrant => "no grant".into(),
            Off::Expired(g) => format!("expired at {}", crate::time::rfc3339(g.expires_at)),
            Off::Malformed(why) => format!("consent file malformed: {why}"),
            Off::Unsafe(why) => format!("consent file unsafe: {why}"),
            Off::HeldOff(why) => format!("the daemon holds support off: {why}"),
        }
    }
}

impl Consent {
    /// The live grant, if any.
    pub fn live(&self) -> Option<&Grant> {
        match self {
            Consent::Live(g) => Some(g),
            Consent::Off(_) => None,
        }
    }
}

/// Reads the consent in force at `now`. Never fails: every doubt is
/// [`Consent::Off`] with its reason.
pub fn read(paths: &Paths, now: DateTime<Utc>) -> Consent {
    // Whoever can write the directory can swap the file: check it too.
    if let Err(e) = paths::check_dir(&paths.state_dir) {
        return Consent::Off(Off::Unsafe(crate::ErrorChain(&e).to_string()));
    }
    let path = paths.consent();
    let bytes = match paths::read_capped(&path, MAX_CONSENT_BYTES) {
        Ok(Some(b)) => b,
        Ok(None) => return Consent::Off(Off::NoGrant),
        // Unsafe, oversized or unreadable: all mean no consent.
        Err(e) => return Consent::Off(Off::Unsafe(crate::ErrorChain(&e).to_string())),
    };
    decode(&bytes, now)
}

/// The consent that the bytes of a `consent.json` (read within its cap)
/// give at `now`: [`Consent::Live`] only for a grant that parses, passes
/// [`Grant`]'s checks and has not expired; every doubt is [`Consent::Off`].
pub fn decode(bytes: &[u8], now: DateTime<Utc>) -> Consent {
    let grant: Grant = match serde_json::from_slice(bytes) {
        Ok(g) => g,
        Err(e) => return Consent::Off(Off::Malformed(e.to_string())),
    };
    if let Err(why) = grant.validate(now) {
        return Consent::Off(Off::Malformed(why));
    }
    if now >= grant.expires_at {
        return Consent::Off(Off::Expired(grant));
    }
    Consent::Live(grant)
}

/// Writes `grant` as the grant in force, replacing any earlier one atomically.
///
/// # Errors
/// [`FileError`] when the state directory or the file cannot be written.
pub fn write(paths: &Paths, grant: &Grant) -> Result<(), FileError> {
    paths.ensure_dirs()?;
    let mut json = serde_json::to_vec_pretty(grant).expect("a grant always serialises");
    json.push(b'\n');
    paths::write_atomic(&paths.consent(), &json)
}

/// How many actions started under `grant`: the `action.started` records
/// with its `grant_id`, counted from the newest back to its
/// `consent.granted` record (or to records older than it could be). The
/// daemon counts so at its start and `support status` without a daemon,
/// so a budget (`max_actions`) survives a restart and both say the same.
///
/// # Errors
/// As [`crate::audit::newest_first`]: then nobody can say what is left of a budget.
pub fn actions_started(paths: &Paths, grant: &Grant) -> Result<u32, crate::AuditError> {
    use crate::audit::Event;
    // An action starts only while its grant is live, so no earlier than CLOCK_SKEW before
    // granted_at by the clock that stamps the record; a minute more for the gate-to-record delay.
    let horizon = grant.granted_at - CLOCK_SKEW - chrono::TimeDelta::seconds(60);
    let mut n = 0u32;
    crate::audit::newest_first(paths, |r| {
        let ours = r.grant_id.as_deref() == Some(grant.grant_id.as_str());
        match r.event {
            Event::ConsentGranted if ours => return std::ops::ControlFlow::Break(()),
            Event::ActionStarted if ours => n = n.saturating_add(1),
            _ => {}
        }
        match crate::time::parse_rfc3339(&r.ts) {
            Some(ts) if ts < horizon => std::ops::ControlFlow::Break(()),
            _ => std::ops::ControlFlow::Continue(()),
        }
    })?;
    Ok(n)
}

/// Removes the grant. Returns whether there was a file to remove.
///
/// # Errors
/// [`FileError::Io`] when it exists but cannot be removed.
pub fn remove(paths: &Paths) -> Result<bool, FileError> {
    paths::remove(&paths.consent())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn grant_lifecycle_and_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().join("home"));
        let t0 = at("2026-11-22T10:00:00Z");
        assert_eq!(read(&paths, t0), Consent::Off(Off::NoGrant));
        let g = Grant::new(Tier::FIXES, Duration::from_secs(60), Some("printer".into()), t0).unwrap();
        write(&paths, &g).unwrap();
        assert_eq!(read(&paths, t0 + chrono::TimeDelta::seconds(59)), Consent::Live(g.clone()));
        // Expiry is exclusive: at expires_at the grant is off.
        let off = read(&paths, t0 + chrono::TimeDelta::seconds(60));
        assert_eq!(off, Consent::Off(Off::Expired(g.clone())));
        assert!(matches!(off, Consent::Off(o) if o.reason().starts_with("expired at 2026-11-22T10:01:00Z")));
        // A clock set far back makes the grant suspect.
        assert!(matches!(read(&paths, t0 - chrono::TimeDelta::hours(1)), Consent::Off(Off::Malformed(_))));
        assert!(remove(&paths).unwrap());
        assert!(!remove(&paths).unwrap());
    }

    #[test]
    fn durations_and_reasons_are_checked() {
        let now = Utc::now();
        assert!(Grant::new(Tier::FIXES, Duration::ZERO, None, now).is_err());
        assert!(Grant::new(Tier::FIXES, MAX_GRANT + Duration::from_secs(1), None, now).is_err());
        assert!(Grant::new(Tier::FIXES, MAX_GRANT, None, now).is_ok());
        assert!(Grant::new(Tier::FIXES, MIN_GRANT, Some("a\nb".into()), now).is_err());
        assert!(Grant::new(Tier::FIXES, MIN_GRANT, Some("x".repeat(201)), now).is_err());
    }

    #[test]
    fn a_hand_edited_grant_longer_than_8h_is_off() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().to_path_buf());
        let now = at("2026-11-22T10:00:00Z");
        let mut g = Grant::new(Tier::SHELL, Duration::from_secs(60), None, now).unwrap();
        g.expires_at = now + chrono::TimeDelta::days(30);
        write(&paths, &g).unwrap();
        assert!(matches!(read(&paths, now), Consent::Off(Off::Malformed(_))));
    }

    #[test]
    fn a_grant_never_ends_more_than_8h_from_the_moment_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().to_path_buf());
        let now = at("2026-11-22T10:00:00Z");
        let cases = [
            // (granted_at from now, length, live?)
            (0, 480 * 60, true),
            (-60, 480 * 60, true),
            (30, 60 * 60, true),
            // The full 8 h starting in the future would end after now + 8 h.
            (30, 480 * 60, false),
            (290, 480 * 60, false),
            // Beyond the skew, a future granted_at is no consent at all.
            (61, 60, false),
            (290, 60 * 60, false),
        ];
        for (ahead, length, live) in cases {
            let mut g = Grant::new(Tier::SHELL, Duration::from_secs(60), None, now).unwrap();
            g.granted_at = now + chrono::TimeDelta::seconds(ahead);
            g.expires_at = g.granted_at + chrono::TimeDelta::seconds(length);
            write(&paths, &g).unwrap();
            let c = read(&paths, now);
            assert_eq!(c.live().is_some(), live, "granted {ahead} s ahead for {length} s: {c:?}");
            if let Some(g) = c.live() {
                assert!(g.expires_at <= now + chrono::TimeDelta::minutes(480));
            }
        }
    }

    #[test]
    fn a_scope_is_optional_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().to_path_buf());
        let now = Utc::now();
        let g = Grant::new(Tier::FIXES, Duration::from_secs(600), None, now).unwrap();
        // A file written before scopes existed reads as unscoped.
        write(&paths, &g).unwrap();
        let text = std::fs::read_to_string(paths.consent()).unwrap();
        assert!(!text.contains("operators") && !text.contains("max_actions"), "{text}");
        let live = read(&paths, now).live().cloned().unwrap();
        assert!(!live.is_scoped() && live.allows_operator("anyone") && live.allows_action("memory"));
        let names = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let s = g.clone().scoped(names(&["alice", "bob"]), names(&["memory"]), Some(3)).unwrap();
        assert!(s.allows_operator("bob") && !s.allows_operator("carol"));
        assert!(s.allows_action("memory") && !s.allows_action("disk-usage"));
        assert_eq!(s.scope_words().unwrap(), "operators alice, bob; only memory; at most 3 actions");
        write(&paths, &s).unwrap();
        assert_eq!(read(&paths, now).live(), Some(&s));
        for (ops, only, max, why) in [
            (names(&[]), None, None, "1 to 64"),
            (names(&["a b"]), None, None, "not a valid name"),
            (names(&["a", "a"]), None, None, "twice"),
            (None, names(&["Memory"]), None, "not a valid name"),
            (None, None, Some(0), "1 or more"),
        ] {
            let e = g.clone().scoped(ops.clone(), only.clone(), max).unwrap_err();
            assert!(e.contains(why), "{e}");
            // The same scope written by hand is no consent.
            let mut bad = g.clone();
            (bad.operators, bad.only, bad.max_actions) = (ops, only, max);
            write(&paths, &bad).unwrap();
            assert!(matches!(read(&paths, now), Consent::Off(Off::Malformed(m)) if m.contains(why)));
        }
    }

    #[test]
    fn actions_started_counts_the_grants_own_records_back_to_its_grant() {
        use crate::audit::{AuditLog, Event, Record};
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().join("home"));
        let g = Grant::new(Tier::FIXES, Duration::from_secs(600), None, Utc::now()).unwrap();
        assert_eq!(actions_started(&paths, &g).unwrap(), 0, "no log yet");
        let mut log = AuditLog::open(&paths).unwrap();
        let record = |event, grant_id: &str| {
            let mut r = Record::new(event);
            r.grant_id = Some(grant_id.to_string());
            r
        };
        // Before its consent.granted: not of this grant, whatever it says.
        log.append(record(Event::ActionStarted, &g.grant_id)).unwrap();
        log.append(record(Event::ConsentGranted, &g.grant_id)).unwrap();
        for event in [Event::ActionStarted, Event::ActionFinished, Event::ActionStarted, Event::ActionDenied] {
            log.append(record(event, &g.grant_id)).unwrap();
        }
        log.append(record(Event::ActionStarted, "g-ffffffffffffffff")).unwrap();
        assert_eq!(actions_started(&paths, &g).unwrap(), 2);
    }

    /// A grant's bounds, each to its unit: 1 s and 8 h are grants and a
    /// hair either side is not; a reason of 200 characters (not bytes) is one;
    /// a scope of 64 names is one and 65 not; a `granted_at` exactly
    /// [`CLOCK_SKEW`] ahead is trusted; a `consent.json` of exactly 64 KiB is
    /// read. Written from the list of consent.rs's mutants, ahead of its
    /// run: no test above meets these bounds exactly.
    #[test]
    fn every_bound_of_a_grant_holds_to_its_unit() {
        let hour8 = Duration::from_secs(8 * 60 * 60);
        assert!(check_duration(Duration::from_secs(1)).is_ok());
        assert!(check_duration(Duration::from_millis(999)).is_err());
        assert!(check_duration(hour8).is_ok());
        assert!(check_duration(hour8 + Duration::from_nanos(1)).is_err());
        assert!(check_reason(&"é".repeat(200)).is_ok());
        assert!(check_reason(&"é".repeat(201)).is_err());

        let now = at("2026-11-22T10:00:00Z");
        let g = Grant::new(Tier::FIXES, Duration::from_secs(60), None, now).unwrap();
        let decoded = |g: &Grant| decode(&serde_json::to_vec(g).unwrap(), now);
        let spanning = |start: chrono::TimeDelta, span: chrono::TimeDelta| {
            let mut g = g.clone();
            g.granted_at = now + start;
            g.expires_at = g.granted_at + span;
            g
        };
        let (second, micro) = (chrono::TimeDelta::seconds(1), chrono::TimeDelta::microseconds(1));
        let one_second = spanning(chrono::TimeDelta::zero(), second);
        assert_eq!(decoded(&one_second), Consent::Live(one_second.clone()));
        assert!(matches!(
            decoded(&spanning(chrono::TimeDelta::zero(), second - micro)),
            Consent::Off(Off::Malformed(_))
        ));
        let at_skew = spanning(CLOCK_SKEW, chrono::TimeDelta::minutes(1));
        assert_eq!(decoded(&at_skew), Consent::Live(at_skew.clone()));
        assert!(matches!(decoded(&spanning(CLOCK_SKEW + micro, second)), Consent::Off(Off::Malformed(_))));

        let names = |n: usize| Some((0..n).map(|i| format!("op{i}")).collect::<Vec<_>>());
        let widest = g.clone().scoped(names(64), None, None).expect("64 names");
        assert!(g.clone().scoped(names(65), None, None).unwrap_err().contains("1 to 64"));

        // The file's cap: a sound grant padded to exactly 64 KiB is read, one byte more is not.
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().to_path_buf());
        write(&paths, &widest).unwrap();
        let mut json = std::fs::read(paths.consent()).unwrap();
        json.resize(64 * 1024, b' ');
        std::fs::write(paths.consent(), &json).unwrap();
        assert_eq!(read(&paths, now), Consent::Live(widest.clone()));
        json.push(b' ');
        std::fs::write(paths.consent(), &json).unwrap();
        assert!(matches!(read(&paths, now), Consent::Off(Off::Unsafe(_))));
    }

    /// The parts a grant is shown and checked by: tier names and texts,
    /// what time is left, which scope counts as one, and a `grant_id` that
    /// is exactly `g-` and 16 hex digits.
    #[test]
    fn a_grant_s_words_time_left_scope_and_id_are_its_own() {
        let names: Vec<_> = Tier::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(names, ["diagnostics", "fixes", "agent", "shell"]);
        assert!(Tier::DIAGNOSTICS.allows().starts_with("read-only") && Tier::SHELL.allows().starts_with("everything"));
        assert_eq!((Tier::AGENT.get(), u8::from(Tier::SHELL), Tier::AGENT.to_string()), (3, 4, "3 (agent)".into()));
        let table: Vec<String> = Tier::table().lines().map(String::from).collect();
        assert_eq!(table.len(), 4);
        assert_eq!(table[1], format!("  2  fixes       {}", Tier::FIXES.allows()));
        let confirmed: Vec<_> = Tier::ALL.iter().map(|t| t.needs_confirmation()).collect();
        assert_eq!(confirmed, [false, false, true, true]);

        let now = at("2026-11-22T10:00:00Z");
        let g = Grant::new(Tier::FIXES, Duration::from_secs(60), None, now).unwrap();
        assert_eq!(g.remaining(now + chrono::TimeDelta::seconds(10)), Duration::from_secs(50));
        assert_eq!(g.remaining(now + chrono::TimeDelta::seconds(61)), Duration::ZERO);
        let one = |v: &str| Some(vec![v.to_string()]);
        for scoped in [
            g.clone().scoped(one("alice"), None, None).unwrap(),
            g.clone().scoped(None, one("memory"), None).unwrap(),
            g.clone().scoped(None, None, Some(1)).unwrap(),
        ] {
            assert!(scoped.is_scoped(), "{scoped:?}");
        }
        assert_eq!(g.clone().scoped(None, None, Some(1)).unwrap().scope_words().as_deref(), Some("at most 1 action"));
        for id in [
            "g-0123456789abcdef0",
            "g-0123456789abcde",
            "x-0123456789abcdef",
            "g-0123456789abcdeg",
            "gg0123456789abcdef",
        ] {
            let mut bad = g.clone();
            bad.grant_id = id.into();
            assert!(matches!(decode(&serde_json::to_vec(&bad).unwrap(), now), Consent::Off(Off::Malformed(_))), "{id}");
        }
        let mut good = g.clone();
        good.grant_id = "g-0123456789ABCdef".into();
        assert!(decode(&serde_json::to_vec(&good).unwrap(), now).live().is_some());
    }

    /// A home with an audit log and a live tier-2 grant, for the budget's count.
    fn budget_fixture() -> (tempfile::TempDir, Paths, Grant, crate::audit::AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().join("home"));
        let g = Grant::new(Tier::FIXES, Duration::from_secs(600), None, Utc::now()).unwrap();
        let log = crate::audit::AuditLog::open(&paths).unwrap();
        (dir, paths, g, log)
    }

    /// A record of `event` naming `grant_id`.
    fn of_grant(event: crate::audit::Event, grant_id: &str) -> crate::audit::Record {
        let mut r = crate::audit::Record::new(event);
        r.grant_id = Some(grant_id.to_string());
        r
    }

    /// The count passes over another grant's `consent.granted`, and stops
    /// after the first record older than its horizon (`granted_at` less
    /// [`CLOCK_SKEW`] and a minute), to the microsecond.
    #[test]
    fn actions_started_passes_another_grant_and_stops_at_its_horizon() {
        use crate::audit::Event;
        let (_dir, paths, mut g, mut log) = budget_fixture();
        let mut append = |event, grant_id: &str| log.append(of_grant(event, grant_id)).unwrap();
        append(Event::ActionStarted, &g.grant_id);
        append(Event::ConsentGranted, "g-eeeeeeeeeeeeeeee");
        let newest = append(Event::ActionStarted, &g.grant_id);
        let ts = crate::time::parse_rfc3339(&newest.ts).unwrap();
        let mut horizon_at = |at: DateTime<Utc>| {
            g.granted_at = at + CLOCK_SKEW + chrono::TimeDelta::seconds(60);
            actions_started(&paths, &g).unwrap()
        };
        assert_eq!(horizon_at(ts - chrono::TimeDelta::seconds(30)), 2, "all after the horizon");
        assert_eq!(
            horizon_at(ts + chrono::TimeDelta::microseconds(1)),
            1,
            "the newest before it: counted, then no more"
        );
    }

    /// A record stamped exactly at the horizon is not older than it, so the
    /// count goes on past it: records of one batch share a stamp, and both
    /// of two actions there are counted (cargo-mutants: `<` as `<=` counted one).
    #[test]
    fn actions_started_counts_every_record_stamped_at_its_horizon() {
        use crate::audit::Event;
        let (_dir, paths, mut g, mut log) = budget_fixture();
        let started = || of_grant(Event::ActionStarted, &g.grant_id);
        let both = log.append_batch(vec![started(), started()]).unwrap();
        assert_eq!(both[0].ts, both[1].ts, "one batch, one stamp");
        let ts = crate::time::parse_rfc3339(&both[0].ts).unwrap();
        g.granted_at = ts + CLOCK_SKEW + chrono::TimeDelta::seconds(60);
        assert_eq!(actions_started(&paths, &g).unwrap(), 2);
    }
}
