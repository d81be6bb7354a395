//! The daemon's files in the state directory: `daemon.lock` (one daemon
//! per home), `daemon.json` (how clients find it), the control API's
//! `secret`, and `tasks.json` (the running tasks, so that the next start
//! after a crash kills what was left and audits `task.aborted`).

use serde::{Deserialize, Serialize};

use super::records::task_record;
use super::{Daemon, DaemonError, State, tree};
use crate::audit::{Event, Record};
use crate::control_api::TaskView;
use crate::paths::{self, FileError, Paths};
use crate::secret::Secret;

/// The largest `tasks.json` read (bytes).
pub(crate) const TASKS_CAP: u64 = 4 << 20;

/// This boot's id (proc(5)); empty if unreadable.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_string()
}

/// Whether a daemon holds this home's lock now (so `daemon.json` is not stale).
pub fn is_running(paths: &Paths) -> bool {
    let Ok(Some(file)) = paths::open_read(&paths.daemon_lock()) else { return false };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

/// The contents of `daemon.json`: how a client finds the running daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// The daemon's process id.
    pub pid: u32,
    /// The control API's port on 127.0.0.1.
    pub control_port: u16,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// The daemon's version.
    pub version: String,
    /// This device's id.
    pub device_id: String,
    /// The owner's console's port on 127.0.0.1 (`support console`);
    /// absent from a daemon of an older version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_port: Option<u16>,
}

/// Reads `daemon.json`, `None` when there is none (or it is unreadable).
pub fn read_info(paths: &Paths) -> Option<DaemonInfo> {
    let bytes = paths::read_capped(&paths.daemon_info(), 4096).ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `daemon.json` (0600, atomically).
///
/// # Errors
/// [`FileError`] when it cannot be written.
pub(super) fn write_info(paths: &Paths, info: &DaemonInfo) -> Result<(), FileError> {
    paths::write_atomic(&paths.daemon_info(), &serde_json::to_vec_pretty(info).unwrap_or_default())
}

/// Makes the control API's secret (32 random bytes, base64url: 43
/// characters, 0600, written atomically) if there is none or it is cut
/// short, and returns it.
///
/// # Errors
/// [`FileError`] if the file is unsafe (see [`paths`]) or unwritable.
pub fn ensure_secret(paths: &Paths) -> Result<Secret, FileError> {
    if let Some(s) = paths::read_secret(&paths.secret(), 1024)? {
        let text = String::from_utf8_lossy(&s).trim().to_string();
        // A secret cut short (a crash while it was written) is replaced.
        if text.len() >= 43 {
            return Ok(Secret::new(text));
        }
        tracing::warn!(path = %paths.secret().display(), "the control API secret is too short; making a new one");
    }
    let mut raw = [0u8; 32];
    crate::fill_random(&mut raw);
    let text = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw);
    paths::write_atomic(&paths.secret(), text.as_bytes())?;
    Ok(Secret::new(text))
}

/// The tasks `tasks.json` lists (as [`TaskView`], or as a reader's own
/// narrower shape `T`): `Ok(None)` when there is no such file. Read as
/// every file of the home is: owner and mode checked, capped at [`TASKS_CAP`].
///
/// # Errors
/// [`FileError`] when the file is unsafe or unreadable; a message when it
/// is not the JSON the daemon writes.
pub(crate) fn read_tasks<T: serde::de::DeserializeOwned>(
    paths: &Paths,
) -> Result<Option<Result<Vec<T>, String>>, FileError> {
    read_tasks_at(&paths.tasks())
}

/// [`read_tasks`] of the file at `path`.
fn read_tasks_at<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> Result<Option<Result<Vec<T>, String>>, FileError> {
    let Some(bytes) = paths::read_capped(path, TASKS_CAP)? else { return Ok(None) };
    Ok(Some(serde_json::from_slice(&bytes).map_err(|e| e.to_string())))
}

impl Daemon {
    /// Kills what a daemon that died mid-task left, as `tasks.json` names it
    /// (and the file where daemons before `run/` kept it, once).
    pub(super) fn recover(&self) -> Result<(), DaemonError> {
        let path = self.inner.paths.tasks();
        let legacy = self.inner.paths.tasks_before_run_dir();
        let mut left: Vec<TaskView> = Vec::new();
        for file in [&legacy, &path] {
            match read_tasks_at(file) {
                Ok(Some(Ok(tasks))) => left.extend(tasks),
                Ok(Some(Err(e))) => {
                    // Nothing to go on: say so on the record rather than pass silently.
                    tracing::error!(path = %file.display(), error = %e, "tasks.json is malformed");
                    let mut r = Record::new(Event::TaskAborted);
                    r.detail = Some(format!("tasks.json was malformed ({e}); tasks it listed could not be cleaned up"));
                    let _ = self.audit_sync(vec![r]);
                }
                Ok(None) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut records = Vec::new();
        let this_boot = boot_id();
        for t in &left {
            if t.boot_id.is_empty() || t.boot_id != this_boot {
                let mut r = task_record(Event::TaskAborted, t);
                r.detail = Some("the machine restarted during this task; nothing of it can be left".into());
                records.push(r);
                continue;
            }
            // Unknown pid (a crash before the spawn): find it by marker only.
            let pgid = t.pid.unwrap_or(-1);
            let ticks = t.start_ticks.unwrap_or(0);
            let cgroup = t.cgroup.clone().map(tree::TaskCgroup::at);
            let killed = super::kill::kill_leftovers(&t.task_id, pgid, ticks, cgroup.as_ref());
            let mut r = task_record(Event::TaskAborted, t);
            r.detail = Some(format!(
                "the daemon stopped without finishing this task; {killed} leftover process{} killed",
                if killed == 1 { " was" } else { "es were" }
            ));
            records.push(r);
        }
        if !records.is_empty() {
            self.audit_sync(records)?;
        }
        paths::write_atomic(&path, b"[]\n")?;
        paths::remove(&legacy)?;
        Ok(())
    }

    /// Writes `tasks.json` for the next start to clean up after a crash.
    /// Not fsynced: it only has to outlive this process, and after a power
    /// loss the boot id differs and every task died with the machine.
    pub(super) fn persist_tasks(&self, state: &State) {
        let list: Vec<&TaskView> = state.tasks.values().map(|t| &t.info).collect();
        let bytes = serde_json::to_vec_pretty(&list).unwrap_or_default();
        if let Err(e) = paths::replace_unsynced(&self.inner.paths.tasks(), &bytes) {
            tracing::error!(error = %crate::ErrorChain(&e), "could not write tasks.json");
        }
    }
}
