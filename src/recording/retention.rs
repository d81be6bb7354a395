//! Retention: recordings older than `[shell] keep_recordings_days` are removed.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Removes from `dir` every recording (`<id>.cast`, a regular file) last
/// written more than `keep_days` × 24 h before `now`, and returns how many
/// it removed. A recording still being written is locked by its
/// [`super::Recorder`] and is kept whatever its age; anything else in the
/// directory (links, other names) is left alone. A missing `dir` is 0.
///
/// # Errors
/// When `dir` cannot be listed, or a file that is due cannot be removed.
pub fn prune(dir: &Path, keep_days: u64, now: SystemTime) -> io::Result<usize> {
    let keep = Duration::from_secs(keep_days.saturating_mul(24 * 60 * 60));
    let Some(cutoff) = now.checked_sub(keep) else { return Ok(0) };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".cast")) else { continue };
        if !super::valid_id(id) {
            continue;
        }
        let path = entry.path();
        // Gone or unreadable since the listing: not ours to judge now.
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        if !meta.is_file() || !meta.modified().is_ok_and(|m| m < cutoff) {
            continue;
        }
        let Ok(file) =
            OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK).open(&path)
        else {
            continue;
        };
        if file.try_lock().is_err() {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if removed > 0 {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(removed)
}
