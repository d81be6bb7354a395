//! The owner's console's login tokens and browser sessions, in memory
//! only (a restarted daemon forgets them: the owner runs `support console`
//! again).
//!
//! A login token is issued over the control API (bearer secret) to
//! `support console`, lives [`LOGIN_TTL`] and is used once. A session is
//! made from it: its id goes in the `support_console` cookie, its CSRF
//! token to the page (`GET /console/api/session`). Tokens and session ids
//! are 32 random bytes; only their SHA-256 is kept, so a lookup compares
//! digests of what was presented (no timing tells how much of a secret
//! matched), and the CSRF token is compared in constant time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::secret::Secret;

/// How long a login token may wait for its one use.
pub const LOGIN_TTL: Duration = Duration::from_secs(60);
/// Login tokens outstanding at once; issuing one more drops the oldest.
pub const MAX_LOGINS: usize = 16;
/// A session unused for this long is gone.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions at once; a new login past it ends the least recently used.
pub const MAX_SESSIONS: usize = 16;

type Digest = [u8; 32];

fn digest(secret: &str) -> Digest {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn random_secret() -> String {
    let mut raw = [0u8; 32];
    crate::fill_random(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// A browser session.
struct Session {
    csrf: Secret,
    last_used: Instant,
}

/// The tokens and sessions of one daemon.
#[derive(Default)]
pub struct Logins {
    tokens: Vec<(Digest, Instant)>,
    sessions: HashMap<Digest, Session>,
}

/// Why a login token was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginRefused {
    /// Never issued, used already, or past [`LOGIN_TTL`].
    UsedOrExpired,
}

impl Logins {
    /// A new login token (43 characters of base64url), valid for
    /// [`LOGIN_TTL`] from `now`.
    pub fn issue(&mut self, now: Instant) -> Secret {
        self.drop_expired_tokens(now);
        if self.tokens.len() >= MAX_LOGINS {
            self.tokens.remove(0);
        }
        let token = random_secret();
        self.tokens.push((digest(&token), now + LOGIN_TTL));
        Secret::new(token)
    }

    /// Uses `token` once: a new session id (for the cookie).
    ///
    /// # Errors
    /// [`LoginRefused::UsedOrExpired`] for a token not (or no longer) valid.
    pub fn redeem(&mut self, token: &str, now: Instant) -> Result<Secret, LoginRefused> {
        self.drop_expired_tokens(now);
        let presented = digest(token);
        let Some(i) = self.tokens.iter().position(|(d, _)| *d == presented) else {
            return Err(LoginRefused::UsedOrExpired);
        };
        self.tokens.remove(i);
        self.expire(now);
        if self.sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = self.sessions.iter().min_by_key(|(_, s)| s.last_used).map(|(d, _)| *d)
        {
            self.sessions.remove(&oldest);
        }
        let sid = random_secret();
        self.sessions.insert(digest(&sid), Session { csrf: Secret::new(random_secret()), last_used: now });
        Ok(Secret::new(sid))
    }

    /// One rule for both: a token is gone at `now + LOGIN_TTL` (issued at
    /// `now`), and a token gone does not count against [`MAX_LOGINS`].
    fn drop_expired_tokens(&mut self, now: Instant) {
        self.tokens.retain(|(_, expires)| *expires > now);
    }

    fn expire(&mut self, now: Instant) {
        self.sessions.retain(|_, s| now.duration_since(s.last_used) < SESSION_IDLE);
    }

    /// The CSRF token of the session `sid`, if it stands; marks it used.
    pub fn session(&mut self, sid: &str, now: Instant) -> Option<Secret> {
        self.expire(now);
        let s = self.sessions.get_mut(&digest(sid))?;
        s.last_used = now;
        Some(s.csrf.clone())
    }

    /// Whether `presented` is the CSRF token of session `sid` (constant time).
    pub fn csrf_ok(&mut self, sid: &str, presented: &[u8], now: Instant) -> bool {
        self.session(sid, now).is_some_and(|csrf| csrf.eq_bytes(presented))
    }

    /// How many sessions stand.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_used_once_and_only_within_its_minute() {
        let mut l = Logins::default();
        let t0 = Instant::now();
        let token = l.issue(t0);
        assert_eq!(token.expose().len(), 43);
        let sid = l.redeem(token.expose(), t0 + Duration::from_secs(59)).expect("fresh");
        assert!(matches!(l.redeem(token.expose(), t0 + Duration::from_secs(59)), Err(LoginRefused::UsedOrExpired)));
        let late = l.issue(t0);
        assert!(matches!(l.redeem(late.expose(), t0 + LOGIN_TTL), Err(LoginRefused::UsedOrExpired)));
        assert!(matches!(l.redeem("made-up", t0), Err(LoginRefused::UsedOrExpired)));
        let csrf = l.session(sid.expose(), t0).expect("session");
        assert!(l.csrf_ok(sid.expose(), csrf.expose().as_bytes(), t0));
        assert!(!l.csrf_ok(sid.expose(), b"wrong", t0));
        assert!(!l.csrf_ok("not-a-session", csrf.expose().as_bytes(), t0));
    }

    #[test]
    fn sessions_are_bounded_and_expire_when_idle() {
        let mut l = Logins::default();
        let t0 = Instant::now();
        let first = {
            let t = l.issue(t0);
            l.redeem(t.expose(), t0).unwrap()
        };
        for i in 1..=MAX_SESSIONS as u64 {
            let at = t0 + Duration::from_secs(i);
            let t = l.issue(at);
            l.redeem(t.expose(), at).unwrap();
        }
        assert_eq!(l.sessions(), MAX_SESSIONS);
        assert!(l.session(first.expose(), t0 + Duration::from_secs(100)).is_none(), "the least recently used went");
        let later = t0 + Duration::from_secs(100) + SESSION_IDLE;
        let t = l.issue(later);
        let sid = l.redeem(t.expose(), later).unwrap();
        assert_eq!(l.sessions(), 1, "the idle ones went");
        assert!(l.session(sid.expose(), later).is_some());
    }

    /// The idle limit is twelve hours to the instant, from the last use
    /// (the `*` → `+` mutant of `12 * 3600` and `<` → `<=` of the idle check
    /// passed every other test).
    #[test]
    fn a_session_stands_until_twelve_hours_after_its_last_use() {
        let mut l = Logins::default();
        let t0 = Instant::now();
        let t = l.issue(t0);
        let sid = l.redeem(t.expose(), t0).unwrap();
        let twelve_hours = Duration::from_secs(12 * 60 * 60);
        let used = t0 + twelve_hours - Duration::from_secs(1);
        assert!(l.session(sid.expose(), used).is_some(), "idle 11 h 59 min 59 s");
        assert!(l.session(sid.expose(), used + twelve_hours - Duration::from_nanos(1)).is_some(), "a use restarts it");
        let last = used + twelve_hours - Duration::from_nanos(1);
        assert!(l.session(sid.expose(), last + twelve_hours).is_none(), "idle exactly 12 h");
        assert_eq!(l.sessions(), 0);
    }

    #[test]
    fn outstanding_tokens_are_bounded() {
        let mut l = Logins::default();
        let t0 = Instant::now();
        let first = l.issue(t0);
        for _ in 0..MAX_LOGINS {
            l.issue(t0);
        }
        assert!(matches!(l.redeem(first.expose(), t0), Err(LoginRefused::UsedOrExpired)));
    }
}
