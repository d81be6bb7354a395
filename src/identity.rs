//! Ed25519 identities (RFC 8032, through ring): key pairs kept as PKCS#8
//! files (RFC 5958) at mode 0600, the encoding of public keys, their
//! fingerprints, device ids and signatures.
//!
//! A public key is written `ed25519:` followed by its 32 raw bytes
//! (RFC 8032 §5.1.5) in base64url without padding (RFC 4648 §5), so 51
//! characters in all, e.g.
//! `ed25519:11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo`.
//! Its fingerprint is `SHA256:` and the SHA-256 of those 32 bytes in
//! base64 without padding, as OpenSSH prints them.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::paths::{self, FileError};

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

impl PublicKey {
    /// Checks an Ed25519 signature (64 bytes) over `message`.
    ///
    /// # Errors
    /// [`BadSignature`] when it does not verify.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), BadSignature> {
        UnparsedPublicKey::new(&ED25519, &self.0).verify(message, signature).map_err(|_| BadSignature)
    }

    /// The device id for this key: `d-` and the first 10 bytes of its
    /// SHA-256 in lowercase hex (22 characters). Short enough to read out,
    /// stable for the key, and one safe path segment.
    pub fn device_id(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        format!("d-{}", hex::encode(&digest.as_ref()[..10]))
    }
}

/// A signature that does not verify under the key it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the Ed25519 signature does not verify")]
pub struct BadSignature;

/// The most a key file may hold; a PKCS#8 Ed25519 key is 83 or 85 bytes.
const KEY_FILE_CAP: u64 = 4096;

/// An Ed25519 key pair (a device's or an operator's). `Debug` never shows
/// the private half.
pub struct KeyPair {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair").field("public", &self.public).field("private", &"***").finish()
    }
}

/// A key file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file is unsafe or unreadable.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file is not a PKCS#8 v1/v2 Ed25519 key (PEM or DER).
    #[error("{path}: not an Ed25519 PKCS#8 key file (PEM or DER); move it aside to make a new one")]
    Malformed {
        /// The key file.
        path: std::path::PathBuf,
    },
}

impl KeyPair {
    /// A new random key pair, and its PKCS#8 v2 document (the bytes to keep).
    pub fn generate() -> (KeyPair, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("the OS random source (getrandom) failed");
        let pair = KeyPair::from_pkcs8(pkcs8.as_ref()).expect("ring parses the key it just made");
        (pair, pkcs8.as_ref().to_vec())
    }

    /// Parses a PKCS#8 document (RFC 5958), `None` if it is not an Ed25519 key.
    pub fn from_pkcs8(der: &[u8]) -> Option<KeyPair> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).ok()?;
        let public = PublicKey(pair.public_key().as_ref().try_into().ok()?);
        Some(KeyPair { pair, public })
    }

    /// Reads the key at `path`, or makes one there (0600, with `O_EXCL`,
    /// fsynced) when there is none. Returns the key and whether it is new.
    ///
    /// # Errors
    /// [`KeyError::File`] if the file is unsafe (a link, someone else's,
    /// readable or writable by others) or unreadable;
    /// [`KeyError::Malformed`] if it holds something else.
    pub fn load_or_create(path: &Path) -> Result<(KeyPair, bool), KeyError> {
        if let Some(bytes) = paths::read_secret(path, KEY_FILE_CAP)? {
            return Ok((KeyPair::parse_file(&bytes, path)?, false));
        }
        let (pair, der) = KeyPair::generate();
        if paths::create_new(path, &der)? {
            return Ok((pair, true));
        }
        // Another process made it first: use theirs.
        let bytes = paths::read_secret(path, KEY_FILE_CAP)?.unwrap_or_default();
        Ok((KeyPair::parse_file(&bytes, path)?, false))
    }

    /// Makes a new key at `path` as PEM (`-----BEGIN PRIVATE KEY-----`,
    /// PKCS#8, RFC 7468), 0600, with `O_EXCL`, fsynced: an operator's key,
    /// which people move between machines and tools. Returns `None` when
    /// the file exists (nothing is overwritten).
    ///
    /// # Errors
    /// [`KeyError::File`] when it cannot be written.
    pub fn create_pem(path: &Path) -> Result<Option<KeyPair>, KeyError> {
        let (pair, v2) = KeyPair::generate();
        // The v1 form (RFC 8410 §7), which OpenSSL and ssh-keygen read too.
        let der = pkcs8_v1(&v2).expect("ring makes the RFC 8410 v2 form");
        let unix = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        let text = pem::encode_config(&pem::Pem::new("PRIVATE KEY", der), unix);
        Ok(paths::create_new(path, text.as_bytes())?.then_some(pair))
    }

    /// A key file's bytes: a PEM `PRIVATE KEY` block or the bare PKCS#8 DER.
    fn parse_file(bytes: &[u8], path: &Path) -> Result<KeyPair, KeyError> {
        let malformed = || KeyError::Malformed { path: path.into() };
        if bytes.starts_with(b"-----BEGIN") {
            let block = pem::parse(bytes).map_err(|_| malformed())?;
            if block.tag() != "PRIVATE KEY" {
                return Err(malformed());
            }
            return KeyPair::from_pkcs8(block.contents()).ok_or_else(malformed);
        }
        KeyPair::from_pkcs8(bytes).ok_or_else(malformed)
    }

    /// Reads an existing key file (as [`KeyPair::load_or_create`], without creating).
    ///
    /// # Errors
    /// As [`KeyPair::load_or_create`], and [`FileError::Io`] when it is missing.
    pub fn load(path: &Path) -> Result<KeyPair, KeyError> {
        let bytes = paths::read_secret(path, KEY_FILE_CAP)?.ok_or_else(|| FileError::Io {
            op: "read",
            path: path.into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        KeyPair::parse_file(&bytes, path)
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Signs `message`: 64 bytes (RFC 8032 §5.1.6).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.pair.sign(message).as_ref().try_into().expect("Ed25519 signatures are 64 bytes")
    }
}

/// RFC 8410 §7's PKCS#8 v1 document of an Ed25519 key from ring's v2 one
/// (RFC 5958: version 2, with the public key after the private one,
/// ring's own template): the 32-byte seed under the v1 header. `None` for another shape.
fn pkcs8_v1(v2: &[u8]) -> Option<Vec<u8>> {
    const V2_HEAD: [u8; 16] =
        [0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    const V1_HEAD: [u8; 16] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    let seed = v2.strip_prefix(&V2_HEAD[..])?.get(..32)?;
    Some([&V1_HEAD[..], seed].concat())
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

    /// The v1 document made from a v2 one is the same key.
    #[test]
    fn a_v1_document_holds_the_same_key_as_the_v2_one() {
        let (pair, v2) = crate::KeyPair::generate();
        let v1 = pkcs8_v1(&v2).unwrap();
        assert_eq!(v1.len(), 48);
        assert_eq!(crate::KeyPair::from_pkcs8(&v1).unwrap().public_key(), pair.public_key());
        assert_eq!(pkcs8_v1(&v1), None, "a v1 document is not taken for v2");
    }

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

    #[test]
    fn key_files_are_made_once_at_0600_and_sign() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        let (made, new) = super::KeyPair::load_or_create(&path).unwrap();
        assert!(new);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (again, new) = super::KeyPair::load_or_create(&path).unwrap();
        assert!(!new);
        assert_eq!(made.public_key(), again.public_key());
        let id = made.public_key().device_id();
        assert_eq!(id.len(), 22);
        assert_eq!(id, again.public_key().device_id());
        let sig = made.sign(b"message");
        assert!(again.public_key().verify(b"message", &sig).is_ok());
        assert!(again.public_key().verify(b"messagE", &sig).is_err());
        std::fs::write(&path, b"not a key").unwrap();
        assert!(matches!(super::KeyPair::load(&path), Err(super::KeyError::Malformed { .. })));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(super::KeyPair::load(&path), Err(super::KeyError::File(_))));
    }
}
