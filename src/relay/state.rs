//! The relay's state directory: the files in it, the lock that lets one
//! relay at a time use it, and the checks made before the relay says it is
//! ready (systemd `READY=1`, `listening on`).

use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use super::RelayError;
use super::presence;
use super::registry::{Registry, Stamp};
use crate::paths::{self, FileError, RelayPaths, Unsafe};

/// A state directory checked usable and locked by this process: made
/// 0700 if missing, safe (ours, not group/other-writable, no links), its
/// registry readable, a file written in it, and no other relay holding
/// it. Dropping it releases the lock.
#[derive(Debug)]
pub struct State {
    pub(crate) dir: PathBuf,
    pub(crate) registry: (Registry, Stamp),
    pub(crate) admin: Option<UnixListener>,
    _lock: File,
}

impl State {
    /// Checks and locks `dir` (see [`State`]), and binds its admin socket
    /// (a relay that cannot bind it still runs; `devices` then falls back
    /// to `live.json`).
    ///
    /// # Errors
    /// [`RelayError::File`] for an unsafe or unwritable directory or file;
    /// [`RelayError::AlreadyRunning`] when another relay holds the lock;
    /// [`RelayError::Registry`] for an unreadable or malformed registry.
    pub fn open(dir: PathBuf) -> Result<State, RelayError> {
        paths::ensure_dir(&dir)?;
        paths::create_new(&RelayPaths::new(&dir).lock(), b"")?;
        let lock =
            paths::open_read(&RelayPaths::new(&dir).lock())?.ok_or_else(|| RelayError::AlreadyRunning(dir.clone()))?;
        if lock.try_lock().is_err() {
            return Err(RelayError::AlreadyRunning(dir));
        }
        let registry = Registry::load(&dir)?;
        // Proves the directory writable now rather than at the first device.
        presence::write_snapshot(&dir, &presence::Snapshot::default())?;
        let admin = bind_admin(&dir);
        Ok(State { dir, registry, admin, _lock: lock })
    }

    /// The directory, as given to [`State::open`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Binds `admin.sock` 0600; an old socket is a leftover, since we hold the lock.
fn bind_admin(dir: &Path) -> Option<UnixListener> {
    let path = RelayPaths::new(dir).admin_socket();
    match paths::bind_socket(&path) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot bind the admin socket; `relay devices` will read live.json");
            None
        }
    }
}

/// Whether a relay holds the lock on `dir` now.
pub fn is_running(dir: &Path) -> bool {
    let Ok(Some(file)) = paths::open_read(&RelayPaths::new(dir).lock()) else { return false };
    file.try_lock_shared().is_err()
}

/// The user to run an admin command as, when `err` refused a file in the
/// state directory `dir` for belonging to another user: the directory's
/// owner, who runs the relay. `None` when the directory is ours (then a
/// file in it was left by someone else, and `chown` is the right fix).
pub fn owner_to_run_as(dir: &Path, err: &FileError) -> Option<String> {
    let FileError::Unsafe { path, why: Unsafe::ForeignOwner { uid, .. } } = err else { return None };
    if !path.starts_with(dir) {
        return None;
    }
    let owner = std::fs::symlink_metadata(dir).map(|m| m.uid()).unwrap_or(*uid);
    if owner == paths::current_uid() {
        return None;
    }
    Some(match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner)) {
        Ok(Some(user)) => user.name,
        _ => format!("#{owner}"),
    })
}
