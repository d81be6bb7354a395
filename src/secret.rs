//! A secret in memory (an enrolment token, the control API's secret, the
//! agent host's secret): its `Debug` and `Display` print `***`, so a
//! `{:?}` of a config or a log line cannot leak it (DESIGN §5: no secret
//! in logs). Read it only through [`Secret::expose`], where it is sent or stored.

use std::fmt;

/// A secret string (an enrolment token, a shared secret): `Debug` and
/// `Display` print `***`; [`Secret::expose`] gives the text.
///
/// ```
/// let token = support::Secret::new("et-abc");
/// assert_eq!(format!("{token} {token:?}"), "*** ***");
/// assert_eq!(token.expose(), "et-abc");
/// assert!(token.eq_bytes(b"et-abc") && !token.eq_bytes(b"et-abd"));
/// ```
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    /// The secret itself, for the one place that sends or stores it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret, in time that does not depend on
    /// where they differ: both are MACed under a fresh random key and the
    /// tags compared with `ring::hmac::verify`, the daemon's way for its
    /// control secret.
    pub fn eq_bytes(&self, presented: &[u8]) -> bool {
        use ring::hmac;
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .expect("the OS random source (getrandom) failed");
        let tag = hmac::sign(&key, self.0.as_bytes());
        hmac::verify(&key, presented, tag.as_ref()).is_ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Read from a file (`daemon.toml`'s `enroll`) as a plain string.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl From<String> for Secret {
    fn from(secret: String) -> Secret {
        Secret(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_never_prints_itself() {
        let s = Secret::new("et-very-secret");
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Config {
            token: Secret,
        }
        let shown = format!("{s} {s:?} {:?} {:#?}", Config { token: s.clone() }, Some(&s));
        assert!(!shown.contains("very"), "{shown}");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "et-very-secret");
    }

    #[test]
    fn eq_bytes_is_equality() {
        let s = Secret::from("abc".to_string());
        for (presented, same) in [(&b"abc"[..], true), (b"abd", false), (b"ab", false), (b"abcd", false), (b"", false)]
        {
            assert_eq!(s.eq_bytes(presented), same, "{presented:?}");
        }
        assert!(Secret::new("").eq_bytes(b""));
    }
}
