//! The operator's profile, `operator.toml` in the config directory: the
//! relay, how to recognise it, and the key, written once by `support
//! operator init` so no operator command needs `--relay`, `--relay-ca` or
//! `--key` again. A flag, or its `SUPPORT_OPERATOR_*` variable, wins over
//! the profile, field by field.
//!
//! ```toml
//! relay = "wss://relay.example.org:8443"
//! relay_fingerprint = "sha256:…"        # or relay_ca = "/path/to/cert.pem" (or "system")
//! key = "/home/me/.config/support/operator.key"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::paths::{self, Paths};

/// The largest `operator.toml` read, in bytes.
const MAX_PROFILE_BYTES: u64 = 64 * 1024;

/// What `operator.toml` holds; every field optional, unknown ones refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The relay: `wss://HOST:PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// The relay's CA certificate (PEM), or `system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ca: Option<String>,
    /// The relay certificate's SHA-256, instead of `relay_ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_fingerprint: Option<String>,
    /// The operator's private key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// `operator.toml` in the config directory.
pub fn path(paths: &Paths) -> PathBuf {
    paths.config_dir.join("operator.toml")
}

/// `operator.key` beside it: where `init` makes the key by default.
pub fn default_key(paths: &Paths) -> PathBuf {
    paths.config_dir.join("operator.key")
}

/// Reads the profile; an absent file is an empty profile.
///
/// # Errors
/// [`Error::Usage`] naming the file when it is over 64 KiB, not TOML, or
/// has a field it does not know; [`Error::File`] when it cannot be read.
pub fn load(paths: &Paths) -> Result<Profile, Error> {
    let file = path(paths);
    let Some(bytes) = paths::read_capped(&file, MAX_PROFILE_BYTES)? else { return Ok(Profile::default()) };
    let text = std::str::from_utf8(&bytes).map_err(|_| Error::Usage(format!("{}: not UTF-8", file.display())))?;
    toml::from_str(text).map_err(|e| Error::Usage(format!("{}: {}", file.display(), e.message())))
}

/// Writes `profile` (0600, atomically), making the config directory if needed.
///
/// # Errors
/// [`Error::File`] when it cannot be written.
pub fn save(paths: &Paths, profile: &Profile) -> Result<PathBuf, Error> {
    paths::ensure_dir(&paths.config_dir)?;
    let file = path(paths);
    let text = toml::to_string(profile).map_err(|e| Error::Failed(format!("cannot write {}: {e}", file.display())))?;
    let header =
        "# support operator profile: written by `support operator init`; flags and SUPPORT_OPERATOR_* override it.\n";
    paths::write_atomic(&file, format!("{header}{text}").as_bytes())?;
    Ok(file)
}

/// A relative path made absolute against the current directory, so a
/// file that keeps it (`operator.toml`, `daemon.toml`) works from anywhere.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `--relay-ca` as a file keeps it: a path made [`absolute`]; `system` as it is.
pub fn absolute_ca(ca: &str) -> String {
    match ca {
        "system" => ca.to_string(),
        path => absolute(Path::new(path)).display().to_string(),
    }
}
