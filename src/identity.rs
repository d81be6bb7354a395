//! Ed25519 identities: the encoding of public keys and their fingerprints.
//!
//! A public key is written `ed25519:` followed by its 32 raw bytes
//! (RFC 8032 §5.1.5) in base64url without padding (RFC 4648 §5), so 51
//! characters in all, e.g.
//! `ed25519:11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo`.
//! Its fingerprint is `SHA256:` and the SHA-256 of those 32 bytes in
//! base64 without padding, as OpenSSH prints them.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

/// The text before an encoded public key.
pub const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// An Ed25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

/// A public key that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not an Ed25519 public key: {0}; expected `ed25519:` and 43 base64url characters (32 bytes), as printed by `support operator keygen`"
)]
pub struct KeyParseError(pub String);

impl PublicKey {
    /// Wraps 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> PublicKey {
        PublicKey(bytes)
    }
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// `SHA256:<base64>` of the raw bytes.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        format!("SHA256:{}", STANDARD_NO_PAD.encode(digest.as_ref()))
    }
}

impl FromStr for PublicKey {
    type Err = KeyParseError;

    /// Parses `ed25519:<base64url>`.
    ///
    /// # Errors
    /// A missing prefix, bad base64url, a length other than 32 bytes, or
    /// the all-zero key.
    fn from_str(s: &str) -> Result<PublicKey, KeyParseError> {
        let b64 = s
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or_else(|| KeyParseError("it does not start with `ed25519:`".into()))?;
        let raw = URL_SAFE_NO_PAD.decode(b64).map_err(|e| KeyParseError(format!("bad base64url ({e})")))?;
        let bytes: [u8; 32] =
            raw.try_into().map_err(|raw: Vec<u8>| KeyParseError(format!("{} bytes instead of 32", raw.len())))?;
        if bytes == [0; 32] {
            return Err(KeyParseError("the all-zero key".into()));
        }
        Ok(PublicKey(bytes))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    #[test]
    fn round_trips_a_real_key_and_rejects_bad_ones() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key = PublicKey::from_bytes(pair.public_key().as_ref().try_into().unwrap());
        let text = key.to_string();
        assert_eq!(text.len(), 51);
        assert_eq!(text.parse::<PublicKey>().unwrap(), key);
        assert!(key.fingerprint().starts_with("SHA256:"));
        for bad in [&text[8..], &text[..50], "ed25519:!!!!", "ssh-ed25519 AAAA", &format!("{text}AA")] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad}");
        }
        let zero = format!("ed25519:{}", URL_SAFE_NO_PAD.encode([0u8; 32]));
        assert!(zero.parse::<PublicKey>().is_err());
    }
}
