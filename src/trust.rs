//! The operators the owner trusts: `trusted_operators.toml`.
//!
//! ```toml
//! [[operator]]
//! name = "alice"                      # [A-Za-z0-9._-]{1,64}
//! public_key = "ed25519:..."          # see identity.rs for the encoding
//! added_at = "2026-11-22T10:00:00Z"   # RFC 3339 UTC
//! ```
//!
//! The file is written atomically, 0600. A file that is unsafe or does not
//! parse is an error, never an empty list that silently trusts nobody or
//! a partial one.

use serde::{Deserialize, Serialize};

use crate::identity::{KeyParseError, PublicKey};
use crate::paths::{self, FileError, Paths};

const MAX_TRUST_BYTES: u64 = 1024 * 1024;

/// A failure reading or changing the trusted operators.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// `trusted_operators.toml` is unsafe or unreadable.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file does not parse, or holds an invalid entry.
    #[error("{path}: {message}; fix or remove the file", path = path.display())]
    Malformed {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A name that is not `[A-Za-z0-9._-]{1,64}`.
    #[error("operator name `{0}` is not valid: use 1 to 64 letters, digits, `.`, `_` or `-`")]
    BadName(String),
    /// A public key that is not `ed25519:<base64url of 32 bytes>`.
    #[error(transparent)]
    BadKey(#[from] KeyParseError),
    /// The name or key is already trusted.
    #[error("{0}")]
    Duplicate(String),
    /// `trust remove` of a name that is not trusted.
    #[error("no trusted operator is called `{0}`; `support trust list` shows them")]
    NotFound(String),
}

/// One trusted operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// The owner's name for the operator (`[A-Za-z0-9._-]{1,64}`).
    pub name: String,
    /// `ed25519:<base64url>`.
    pub public_key: String,
    /// RFC 3339 UTC.
    pub added_at: String,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    #[serde(default)]
    operator: Vec<Operator>,
}

/// An operator name: 1 to 64 of `[A-Za-z0-9._-]`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Every trusted operator, in the order added.
///
/// # Errors
/// [`TrustError::File`] or [`TrustError::Malformed`].
pub fn list(paths: &Paths) -> Result<Vec<Operator>, TrustError> {
    let path = paths.trusted_operators();
    paths::check_dir(&paths.config_dir)?;
    let Some(bytes) = paths::read_capped(&path, MAX_TRUST_BYTES)? else { return Ok(Vec::new()) };
    parse(&bytes, &path)
}

/// The operators listed in the bytes of a `trusted_operators.toml` read
/// from `path` (named in errors): every name valid, every key parsed.
///
/// # Errors
/// [`TrustError::Malformed`] for bytes that are not UTF-8, not the TOML
/// above, or hold an invalid name or key: never a partial list.
pub fn parse(bytes: &[u8], path: &std::path::Path) -> Result<Vec<Operator>, TrustError> {
    let malformed = |message: String| TrustError::Malformed { path: path.into(), message };
    let text = std::str::from_utf8(bytes).map_err(|_| malformed("not UTF-8".into()))?;
    let file: TrustFile = toml::from_str(text).map_err(|e| malformed(e.to_string()))?;
    for op in &file.operator {
        if !valid_name(&op.name) {
            return Err(malformed(format!("operator name `{}` is not valid", op.name)));
        }
        op.public_key.parse::<PublicKey>().map_err(|e| malformed(format!("operator `{}`: {e}", op.name)))?;
    }
    Ok(file.operator)
}

/// Whether `read` (as [`list`] returns it) still trusts the key
/// `public_key` (`ed25519:...`) that signed a running task's command: an
/// unreadable or damaged file trusts no one (fail closed, as the gate
/// refuses every command then), nor does a key that does not parse.
pub fn still_trusts(read: &Result<Vec<Operator>, TrustError>, public_key: &str) -> bool {
    let (Ok(operators), Ok(key)) = (read, public_key.parse::<PublicKey>()) else { return false };
    operators.iter().any(|o| o.public_key.parse::<PublicKey>().is_ok_and(|k| k == key))
}

/// Checks a name and key for [`add`] without writing anything.
///
/// # Errors
/// [`TrustError::BadName`], [`TrustError::BadKey`], [`TrustError::Duplicate`].
pub fn check_new(paths: &Paths, name: &str, public_key: &str) -> Result<PublicKey, TrustError> {
    if !valid_name(name) {
        return Err(TrustError::BadName(name.into()));
    }
    let key: PublicKey = public_key.trim().parse()?;
    let text = key.to_string();
    for op in list(paths)? {
        if op.name == name {
            return Err(TrustError::Duplicate(format!(
                "`{name}` is already trusted; `support trust remove {name}` first to replace its key"
            )));
        }
        if op.public_key == text {
            return Err(TrustError::Duplicate(format!("that key is already trusted as `{}`", op.name)));
        }
    }
    Ok(key)
}

/// Adds an operator.
///
/// # Errors
/// As [`check_new`], plus file errors.
pub fn add(
    paths: &Paths,
    name: &str,
    public_key: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Operator, TrustError> {
    let key = check_new(paths, name, public_key)?;
    let mut operators = list(paths)?;
    let op = Operator { name: name.into(), public_key: key.to_string(), added_at: crate::time::rfc3339(now) };
    operators.push(op.clone());
    save(paths, operators)?;
    Ok(op)
}

/// Removes an operator by name; returns it.
///
/// # Errors
/// [`TrustError::NotFound`], plus file errors.
pub fn remove(paths: &Paths, name: &str) -> Result<Operator, TrustError> {
    let mut operators = list(paths)?;
    let i = operators.iter().position(|o| o.name == name).ok_or_else(|| TrustError::NotFound(name.into()))?;
    let op = operators.remove(i);
    save(paths, operators)?;
    Ok(op)
}

fn save(paths: &Paths, operator: Vec<Operator>) -> Result<(), TrustError> {
    paths.ensure_dirs()?;
    let text = toml::to_string(&TrustFile { operator }).expect("operators serialise");
    let text = format!("# Operators whose signed commands this device accepts. Edit with `support trust`.\n{text}");
    Ok(paths::write_atomic(&paths.trusted_operators(), text.as_bytes())?)
}
