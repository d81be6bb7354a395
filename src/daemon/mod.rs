//! The daemon: one per home. It holds the device key, the catalogue and the
//! audit log, decides on signed commands ([`gate`]), runs what passes
//! ([`exec`]), stops what the owner's consent no longer covers, and
//! answers the owner on the loopback control API ([`control`]).
//!
//! Data flows one way: command → [`gate`] → audit (`action.started`,
//! fsynced) → [`exec`] → frames → audit (`action.finished`). Commands reach
//! it through [`Daemon::submit`]; the relay link (issue C) calls the same.
//!
//! # Files (all under the home's state directory)
//! - `daemon.lock`: held (flock) while a daemon runs: one per home.
//! - `daemon.json`: `pid`, `control_port`, `started_at`, `version`,
//!   `device_id`; written once the control API is bound, removed on exit.
//! - `tasks.json`: the running tasks, so that the next start after a crash
//!   can kill what was left and audit `task.aborted`.

mod agent_host;
pub mod control;
pub mod exec;
pub mod gate;
pub mod kill;
pub mod link;
pub mod transcript;
pub mod tree;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, mpsc, watch};

use crate::lock;

use crate::audit::{AuditError, AuditLog, Event, Record};
use crate::consent::{self, Consent, Off};
use crate::identity::{KeyError, KeyPair};
use crate::paths::{self, FileError, Paths};
use crate::policy::{Catalogue, Kind, PolicyError};
use crate::protocol::{DenyCode, DeviceFrame, Run, StoppedBy, Stream, TaskResult};
use gate::{Decision, Denial, ReplayCache, Snapshot, Verdict};
pub use link::{LinkConfig, LinkStatus};
use transcript::Transcript;

/// How long an audit append waits for another writer's lock.
pub const AUDIT_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the consent file is re-read when inotify is unavailable.
pub const CONSENT_POLL: Duration = Duration::from_secs(1);
/// How often it is re-read anyway while inotify watches it (a safety net:
/// changes arrive through inotify and `POST /v1/consent/changed`, every
/// command re-reads the grant, and expiry has its own timer).
pub const CONSENT_POLL_WATCHED: Duration = Duration::from_secs(10);
/// The most nonces the replay cache holds (about 2 MiB at most).
pub const REPLAY_CAPACITY: usize = 16_384;
/// Output chunks buffered between a task and its reader.
pub const OUTPUT_CHANNEL: usize = 16;
/// Events buffered for each `/v1/events` reader before it misses some.
pub const EVENTS_CHANNEL: usize = 256;
/// How many ended tasks keep their transcript for `GET /v1/tasks/{id}`.
pub const RECENT_TASKS: usize = 8;
/// How long a shutdown waits for stopped tasks to be recorded.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Settings for [`run`] and [`Daemon::start`].
///
/// # Defaults
/// `max_tasks = 8`, no relay link.
#[derive(Clone, Debug)]
pub struct Options {
    /// The most tasks running at once; more are denied `BUSY`.
    pub max_tasks: usize,
    /// The relay to keep a link to, if any.
    pub link: Option<LinkConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_tasks: 8, link: None }
    }
}

/// Why the daemon cannot start or go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Another daemon holds this home's lock.
    #[error("another daemon is already running for this home{}; stop it first, or use another --home", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning { pid: Option<u32> },
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running task as the owner sees it (`support tasks`, `tasks.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskInfo {
    /// `t-` and 16 hex digits.
    pub task_id: String,
    pub request_id: String,
    pub action: String,
    pub tier: u8,
    /// Drives the owner's agent (an action of kind `agent`): one at a time.
    #[serde(default)]
    pub agent: bool,
    pub params: BTreeMap<String, String>,
    /// The owner's name for the operator.
    pub operator: String,
    pub grant_id: String,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// The current command's process (and process group) id.
    pub pid: Option<i32>,
    /// Its start time, clock ticks since boot (proc(5)).
    pub start_ticks: Option<u64>,
    /// The task's own cgroup directory, when one is delegated to the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// `/proc/sys/kernel/random/boot_id` when it started: after a reboot,
    /// its pids and process group mean nothing.
    #[serde(default)]
    pub boot_id: String,
}

/// This boot's id (proc(5)); empty if unreadable.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default().trim().to_string()
}

struct TaskEntry {
    info: TaskInfo,
    stop: watch::Sender<Option<StoppedBy>>,
    done: watch::Receiver<Option<TaskResult>>,
    transcript: Arc<Mutex<Transcript>>,
}

/// The consent as the daemon enforces it.
struct ConsentState {
    /// As read, with the monotonic deadline applied.
    effective: Consent,
    /// Per grant id: the monotonic deadline fixed when it was first read.
    deadlines: HashMap<String, Instant>,
    /// Grants whose `consent.expired` is on the record.
    expired_written: HashSet<String>,
}

struct State {
    consent: ConsentState,
    replay: ReplayCache,
    tasks: BTreeMap<String, TaskEntry>,
}

struct Inner {
    paths: Paths,
    options: Options,
    key: KeyPair,
    device_id: String,
    catalogue: Catalogue,
    started_at: DateTime<Utc>,
    started: Instant,
    /// Held for the daemon's life: one daemon per home.
    _lock: File,
    audit: Mutex<AuditLog>,
    state: Mutex<State>,
    events: broadcast::Sender<Arc<str>>,
    consent_changed: Notify,
    control_port: Mutex<Option<u16>>,
    link: Mutex<LinkStatus>,
    /// The last record this daemon wrote, for the heartbeat: kept apart
    /// from `audit`, whose lock an append holds through its fsync.
    audit_head: Mutex<Option<crate::protocol::AuditHead>>,
    /// A cgroup v2 delegated to the daemon, if any.
    cgroup: Option<tree::Delegated>,
    /// The last [`RECENT_TASKS`] tasks that ended, with their transcripts.
    recent: Mutex<std::collections::VecDeque<Finished>>,
}

/// An ended task, kept for the owner to look back at.
struct Finished {
    info: TaskInfo,
    result: TaskResult,
    transcript: Arc<Mutex<Transcript>>,
}

/// A handle on the running daemon; clones share it.
#[derive(Clone)]
pub struct Daemon {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("device_id", &self.inner.device_id).finish()
    }
}

/// Whether a daemon holds this home's lock now (so `daemon.json` is not stale).
pub fn is_running(paths: &Paths) -> bool {
    let Ok(Some(file)) = paths::open_read(&lock_path(paths)) else { return false };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

/// `daemon.lock`: a running daemon holds an exclusive flock(2) on it.
pub(crate) fn lock_path(paths: &Paths) -> PathBuf {
    paths.state_dir.join("daemon.lock")
}

/// `tasks.json`: the running tasks (see [`TaskInfo`]).
pub(crate) fn tasks_path(paths: &Paths) -> PathBuf {
    paths.state_dir.join("tasks.json")
}

/// The contents of `daemon.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub control_port: u16,
    /// RFC 3339 UTC.
    pub started_at: String,
    pub version: String,
    pub device_id: String,
}

/// Reads `daemon.json`, `None` when there is none (or it is unreadable).
pub fn read_info(paths: &Paths) -> Option<DaemonInfo> {
    let bytes = paths::read_capped(&paths.daemon_info(), 4096).ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Makes the control API's secret (32 random bytes, base64url: 43
/// characters, 0600, written atomically) if there is none or it is cut
/// short, and returns it.
///
/// # Errors
/// [`FileError`] if the file is unsafe (see [`paths`]) or unwritable.
pub fn ensure_secret(paths: &Paths) -> Result<String, FileError> {
    if let Some(s) = paths::read_secret(&paths.secret(), 1024)? {
        let text = String::from_utf8_lossy(&s).trim().to_string();
        // A secret cut short (a crash while it was written) is replaced.
        if text.len() >= 43 {
            return Ok(text);
        }
        tracing::warn!(path = %paths.secret().display(), "the control API secret is too short; making a new one");
    }
    let mut raw = [0u8; 32];
    crate::fill_random(&mut raw);
    let text = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, raw);
    paths::write_atomic(&paths.secret(), text.as_bytes())?;
    Ok(text)
}

impl Daemon {
    /// Takes the home's lock, loads (or makes) the device key and the
    /// control secret, loads the catalogue, opens the audit log, kills
    /// what a crashed daemon left (auditing `task.aborted`), makes this
    /// process a child subreaper, and audits `daemon.started`.
    ///
    /// # Errors
    /// [`DaemonError::AlreadyRunning`] when another daemon holds the
    /// lock; file, key, policy and audit errors as they come.
    pub fn start(paths: &Paths, options: Options) -> Result<Daemon, DaemonError> {
        paths.ensure_dirs()?;
        let lock = paths::open_append(&lock_path(paths))?;
        // A client checking whether a daemon runs holds a shared lock for
        // microseconds: retry briefly before calling the home taken.
        let mut tries = 0;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(DaemonError::AlreadyRunning { pid: read_info(paths).map(|i| i.pid) });
                }
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(DaemonError::Io { what: format!("lock {}", lock_path(paths).display()), source });
                }
            }
        }
        let (key, _) = KeyPair::load_or_create(&paths.device_key())?;
        let catalogue = Catalogue::load(paths)?;
        let mut audit = AuditLog::open(paths)?;
        audit.set_lock_timeout(Some(AUDIT_LOCK_TIMEOUT));
        // Orphans of our tasks come back to us, not to init (prctl(2)).
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| DaemonError::Io { what: "prctl(PR_SET_CHILD_SUBREAPER)".into(), source: e.into() })?;
        let device_id = key.public_key().device_id();
        let (events, _) = broadcast::channel(EVENTS_CHANNEL);
        let daemon = Daemon {
            inner: Arc::new(Inner {
                paths: paths.clone(),
                options,
                key,
                device_id,
                catalogue,
                started_at: Utc::now(),
                started: Instant::now(),
                _lock: lock,
                audit: Mutex::new(audit),
                state: Mutex::new(State {
                    consent: ConsentState {
                        effective: Consent::Off(Off::NoGrant),
                        deadlines: HashMap::new(),
                        expired_written: HashSet::new(),
                    },
                    replay: ReplayCache::new(REPLAY_CAPACITY),
                    tasks: BTreeMap::new(),
                }),
                events,
                consent_changed: Notify::new(),
                control_port: Mutex::new(None),
                link: Mutex::default(),
                audit_head: Mutex::default(),
                cgroup: tree::Delegated::detect(),
                recent: Mutex::new(std::collections::VecDeque::new()),
            }),
        };
        if let Some(cg) = &daemon.inner.cgroup {
            tracing::info!(dir = %cg.dir().display(), "a cgroup is delegated: each task gets its own");
        }
        daemon.recover()?;
        let mut started = Record::new(Event::DaemonStarted);
        started.detail = Some(format!(
            "pid {}, version {}, device {}",
            std::process::id(),
            env!("CARGO_PKG_VERSION"),
            daemon.inner.device_id
        ));
        daemon.audit_sync(vec![started])?;
        daemon.refresh_consent_sync();
        Ok(daemon)
    }

    /// This device's id (from its public key).
    pub fn device_id(&self) -> &str {
        &self.inner.device_id
    }

    /// The device key (the link signs its hello with it).
    pub fn device_key(&self) -> &KeyPair {
        &self.inner.key
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// Appends records, from synchronous code.
    fn audit_sync(&self, records: Vec<Record>) -> Result<Vec<Record>, AuditError> {
        let written = lock(&self.inner.audit).append_batch(records)?;
        if let Some(last) = written.last() {
            let head = crate::protocol::AuditHead { seq: last.seq, mac: last.mac.clone() };
            *lock(&self.inner.audit_head) = Some(head);
        }
        for r in &written {
            self.publish(json!({"kind": "audit", "record": r}));
        }
        Ok(written)
    }

    /// Appends records off the runtime's thread.
    async fn audit(&self, records: Vec<Record>) -> Result<Vec<Record>, AuditError> {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.audit_sync(records)).await {
            Ok(r) => r,
            Err(e) => Err(AuditError::Write { path: self.inner.paths.audit(), source: std::io::Error::other(e) }),
        }
    }

    /// Sends one line to every `/v1/events` reader.
    fn publish(&self, value: Value) {
        let _ = self.inner.events.send(Arc::from(value.to_string()));
    }

    /// A receiver of the event stream: one JSON object per item, `kind`
    /// `audit` (a record as written), `output` (a task's chunk) or `status`.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.events.subscribe()
    }

    /// Kills what a daemon that died mid-task left, as `tasks.json` names it.
    fn recover(&self) -> Result<(), DaemonError> {
        let path = tasks_path(&self.inner.paths);
        let left: Vec<TaskInfo> = match paths::read_capped(&path, 4 << 20) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                // Nothing to go on: say so on the record rather than pass silently.
                tracing::error!(path = %path.display(), error = %e, "tasks.json is malformed");
                let mut r = Record::new(Event::TaskAborted);
                r.detail = Some(format!("tasks.json was malformed ({e}); tasks it listed could not be cleaned up"));
                let _ = self.audit_sync(vec![r]);
                Vec::new()
            }),
            Ok(None) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
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
            if let Some(cg) = &cgroup {
                cg.kill();
            }
            // No killpg here: after a crash the group id may belong to
            // someone else by now; members are checked by start time.
            let killed = tree::kill_until_gone(-1, 50, || {
                let mut found = tree::leftovers(&t.task_id, pgid, ticks);
                if let Some(cg) = &cgroup {
                    found.extend(cg.members().into_iter().filter(|p| tree::alive(*p)));
                }
                found
            });
            if let Some(cg) = &cgroup {
                cg.remove();
            }
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
        Ok(())
    }

    /// Writes `tasks.json` for the next start to clean up after a crash.
    /// Not fsynced: it only has to outlive this process, and after a power
    /// loss the boot id differs and every task died with the machine.
    fn persist_tasks(&self, state: &State) {
        let list: Vec<&TaskInfo> = state.tasks.values().map(|t| &t.info).collect();
        let bytes = serde_json::to_vec_pretty(&list).unwrap_or_default();
        if let Err(e) = paths::replace_unsynced(&tasks_path(&self.inner.paths), &bytes) {
            tracing::error!(error = %e, "could not write tasks.json");
        }
    }

    /// Re-reads the grant and stops every task above the live tier.
    /// Call when the consent file may have changed; cheap when it did not.
    /// It reads one small file on the runtime's thread (no thread is
    /// started for it, so the idle daemon keeps two threads); only a
    /// `consent.expired` record, once per grant, waits for an fsync here.
    pub async fn consent_changed(&self) {
        self.refresh_consent_sync();
    }

    /// Asks the watcher to re-read the grant now (`POST /v1/consent/changed`).
    pub fn nudge_consent(&self) {
        self.inner.consent_changed.notify_one();
    }

    fn refresh_consent_sync(&self) {
        let now = Utc::now();
        let read = consent::read(&self.inner.paths, now);
        let mut records = Vec::new();
        let mut state = self.state();
        let (effective, by_when_off) = match read {
            Consent::Live(g) => {
                let left = (g.expires_at - now).to_std().unwrap_or_default();
                let deadline =
                    *state.consent.deadlines.entry(g.grant_id.clone()).or_insert_with(|| Instant::now() + left);
                if Instant::now() >= deadline {
                    (Consent::Off(Off::Expired(g)), StoppedBy::Expiry)
                } else {
                    (Consent::Live(g), StoppedBy::Revoke)
                }
            }
            Consent::Off(Off::Expired(g)) => (Consent::Off(Off::Expired(g)), StoppedBy::Expiry),
            off => (off, StoppedBy::Revoke),
        };
        if let Consent::Off(Off::Expired(g)) = &effective
            && state.consent.expired_written.insert(g.grant_id.clone())
        {
            let mut r = Record::new(Event::ConsentExpired);
            r.grant_id = Some(g.grant_id.clone());
            r.tier = Some(g.tier.get());
            r.detail = Some(format!("expired at {}", crate::time::rfc3339(g.expires_at)));
            records.push(r);
        }
        let live_tier = effective.live().map(|g| g.tier.get()).unwrap_or(0);
        let by = if effective.live().is_some() { StoppedBy::TierLowered } else { by_when_off };
        let changed = state.consent.effective != effective;
        state.consent.effective = effective;
        for task in state.tasks.values() {
            if task.info.tier > live_tier && task.stop.borrow().is_none() {
                tracing::info!(task = %task.info.task_id, by = by.as_str(), "stopping a task the grant no longer covers");
                let _ = task.stop.send(Some(by));
            }
        }
        drop(state);
        if changed {
            self.publish(json!({"kind": "status", "status": self.status_json()}));
        }
        if !records.is_empty()
            && let Err(e) = self.audit_sync(records)
        {
            tracing::error!(error = %e, "could not record consent.expired");
        }
    }

    /// When the live grant ends, by the earlier of its two clocks.
    fn next_expiry(&self) -> Option<tokio::time::Instant> {
        let state = self.state();
        let g = state.consent.effective.live()?;
        let mono = state.consent.deadlines.get(&g.grant_id).copied()?;
        let wall = Instant::now() + (g.expires_at - Utc::now()).to_std().unwrap_or_default();
        Some(tokio::time::Instant::from_std(mono.min(wall)))
    }

    /// Decides on a signed command and, if it passes, starts it. Frames go
    /// to `frames`: `denied`, or `accepted`, `output`…, `result`. Returns
    /// the task id, or the denial (also sent as a frame and audited).
    pub async fn submit(&self, run: Run, frames: mpsc::Sender<DeviceFrame>) -> Result<String, Denial> {
        // Consent is checked as of now, not as of the last poll.
        self.consent_changed().await;
        let trusted = crate::trust::list(&self.inner.paths);
        let now = Utc::now();
        let decision = {
            let mut state = self.state();
            state.replay.prune(now);
            let decision = match &trusted {
                Ok(trusted) => gate::decide(
                    &run,
                    Snapshot {
                        device_id: &self.inner.device_id,
                        now,
                        consent: &state.consent.effective,
                        catalogue: &self.inner.catalogue,
                        trusted,
                        replay: &state.replay,
                        not_before: self.inner.started_at,
                    },
                ),
                Err(e) => Decision {
                    verdict: Verdict::Deny(Denial {
                        code: DenyCode::UntrustedOperator,
                        message: format!("the owner's trusted operators cannot be read: {e}"),
                    }),
                    remember_nonce: false,
                    operator: None,
                },
            };
            if decision.remember_nonce {
                state.replay.insert(&run.nonce, &run.issued_at, now);
            }
            decision
        };
        let operator = decision.operator.clone();
        let approved = match decision.verdict {
            Verdict::Deny(denial) => return self.deny(&run, operator, decision.remember_nonce, denial, &frames).await,
            Verdict::Run(a) => a,
        };
        let task_id = format!("t-{}", crate::random_hex(8));
        // vars() would panic on a name or value that is not UTF-8: such a variable is left out.
        let daemon_env = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        let env = exec::environment(&approved.action.env, daemon_env, &task_id);
        let agent = approved.action.kind == Kind::Agent;
        let http = if agent {
            match self.prepare_agent(&approved.rendered, &run.params, &task_id, &env) {
                Ok(http) => http,
                Err(denial) => return self.deny(&run, operator, true, denial, &frames).await,
            }
        } else {
            None
        };
        let cgroup = self.inner.cgroup.as_ref().and_then(|d| d.for_task(&task_id));
        let info = TaskInfo {
            task_id: task_id.clone(),
            request_id: run.request_id.clone(),
            action: approved.action.name.clone(),
            tier: approved.action.tier.get(),
            agent,
            params: run.params.clone(),
            operator: approved.operator.clone(),
            grant_id: approved.grant.grant_id.clone(),
            started_at: crate::time::rfc3339(now),
            pid: None,
            start_ticks: None,
            cgroup: cgroup.as_ref().map(|c| c.dir().to_path_buf()),
            boot_id: boot_id(),
        };
        let (stop_tx, stop_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(None);
        let transcript = Arc::new(Mutex::new(Transcript::new(agent)));
        let refused = {
            let mut state = self.state();
            let busy = |message: String| Some(Denial { code: DenyCode::Busy, message });
            // The grant is checked again where the task is registered: a
            // revoke or expiry between the gate and here finds no task to stop.
            let still = state
                .consent
                .effective
                .live()
                .is_some_and(|g| g.grant_id == approved.grant.grant_id && g.tier >= approved.action.tier);
            let refused = if !still {
                Some(Denial {
                    code: DenyCode::NoConsent,
                    message: "the owner's grant ended or changed while the command was being checked".into(),
                })
            } else if state.tasks.len() >= self.inner.options.max_tasks {
                busy(format!("{} tasks are running, the most this device runs at once", self.inner.options.max_tasks))
            } else if let Some(other) = state.tasks.values().find(|t| agent && t.info.agent) {
                busy(format!("the agent is already on a task ({}); one agent task at a time", other.info.task_id))
            } else {
                None
            };
            if refused.is_none() {
                let entry =
                    TaskEntry { info: info.clone(), stop: stop_tx, done: done_rx, transcript: transcript.clone() };
                state.tasks.insert(task_id.clone(), entry);
                self.persist_tasks(&state);
            }
            refused
        };
        if let Some(denial) = refused {
            if let Some(cg) = &cgroup {
                cg.remove();
            }
            return self.deny(&run, operator, true, denial, &frames).await;
        }
        let mut started = task_record(Event::ActionStarted, &info);
        started.detail = Some(match &http {
            Some(h) => format!("POST http://{}{} (the agent host)", h.host, h.path),
            None => format!("argv {}", render_argv(&approved.rendered.commands)),
        });
        if let Err(e) = self.audit(vec![started]).await {
            tracing::error!(error = %e, "action.started could not be written; denying");
            self.forget_task(&task_id);
            if let Some(cg) = &cgroup {
                cg.remove();
            }
            let denial = Denial {
                code: DenyCode::AuditUnavailable,
                message: format!("the device's audit log cannot be written, so nothing runs: {e}"),
            };
            return self.deny(&run, operator, true, denial, &frames).await;
        }
        let _ =
            frames.send(DeviceFrame::Accepted { request_id: run.request_id.clone(), task_id: task_id.clone() }).await;
        let spec = exec::Spec {
            task_id: task_id.clone(),
            commands: approved.rendered.commands.clone(),
            stdin: approved.rendered.stdin.clone(),
            env,
            cwd: resolve_cwd(&approved.action.cwd),
            timeout: Duration::from_secs(approved.action.timeout_s),
            max_output_bytes: approved.action.max_output_bytes,
            cgroup,
            http,
        };
        let me = self.clone();
        tokio::spawn(async move { me.drive(info, spec, stop_rx, done_tx, frames, transcript).await });
        Ok(task_id)
    }

    /// Checks that the owner's agent can start: its program is installed,
    /// or its agent host's secret can be read, in which case the request to
    /// the host is returned.
    ///
    /// # Errors
    /// A denial `AGENT_UNAVAILABLE` naming the program or file and the
    /// `[agent]` setting to change.
    fn prepare_agent(
        &self,
        rendered: &crate::policy::Rendered,
        params: &BTreeMap<String, String>,
        task_id: &str,
        env: &[(String, String)],
    ) -> Result<Option<exec::HttpAgent>, Denial> {
        let unavailable = |message: String| Denial { code: DenyCode::AgentUnavailable, message };
        let config = &self.catalogue().agent;
        let Some(endpoint) = &config.endpoint else {
            let program = rendered.commands.first().and_then(|c| c.first()).map(String::as_str).unwrap_or("");
            let path = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or("");
            return match find_program(program, path) {
                Some(_) => Ok(None),
                None => Err(unavailable(format!(
                    "the owner's agent program `{program}` is not installed on this device (not found on the daemon's PATH); \
                     install it, or set [agent] argv (or endpoint) in a policy.d file and restart the daemon"
                ))),
            };
        };
        let target = agent_endpoint(endpoint).map_err(|m| unavailable(format!("[agent] endpoint: {m}")))?;
        let file = config.secret_file.as_deref().unwrap_or("");
        let path = resolve_cwd(file);
        let secret = match paths::read_secret(&path, 4096) {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).trim().to_string(),
            Ok(None) => String::new(),
            Err(e) => {
                return Err(unavailable(format!(
                    "the agent host's secret cannot be read: {e}; fix it, or set [agent] secret_file in a policy.d file"
                )));
            }
        };
        let header_safe = secret.bytes().all(|b| b.is_ascii_graphic());
        if secret.is_empty() || !header_safe {
            return Err(unavailable(format!(
                "the agent host's secret file {} is missing, empty or not printable ASCII; \
                 fix it, or set [agent] secret_file in a policy.d file",
                path.display()
            )));
        }
        let body = json!({
            "task_id": task_id,
            "prompt": params.get("prompt").cloned().unwrap_or_default(),
            "mode": params.get("mode").map(String::as_str).unwrap_or("plan"),
        });
        Ok(Some(exec::HttpAgent {
            addr: target.0,
            host: target.1,
            path: target.2,
            secret,
            body: body.to_string().into_bytes(),
        }))
    }

    async fn deny(
        &self,
        run: &Run,
        operator: Option<String>,
        signed: bool,
        denial: Denial,
        frames: &mpsc::Sender<DeviceFrame>,
    ) -> Result<String, Denial> {
        let mut r = Record::new(Event::ActionDenied);
        r.request_id = Some(crate::text::safe_id(&run.request_id));
        r.action = Some(crate::text::safe_id(&run.action));
        r.operator = operator;
        r.code = Some(denial.code.as_str().into());
        // The reason may quote the command's text: capped like a value.
        r.reason = Some(recorded_value(&denial.message));
        // Parameters only from a command whose signature held, naming a
        // known action, with plain names and a size a record can hold:
        // anything else is anyone's text and goes in as its size alone.
        let bytes: usize = run.params.iter().map(|(k, v)| k.len() + v.len().min(RECORDED_VALUE_BYTES)).sum();
        let plain_names = run.params.keys().all(|k| crate::text::safe_id(k) == *k);
        if signed && self.catalogue().get(&run.action).is_ok() && plain_names && bytes <= 4 * RECORDED_VALUE_BYTES {
            r.params = Some(recorded_params(&run.params));
        } else if !run.params.is_empty() {
            let bytes: usize = run.params.iter().map(|(k, v)| k.len() + v.len()).sum();
            r.detail = Some(format!("{} parameters, {bytes} bytes, not recorded", run.params.len()));
        }
        if let Err(e) = self.audit(vec![r]).await {
            tracing::error!(error = %e, code = denial.code.as_str(), "could not record a denial");
        }
        tracing::info!(code = denial.code.as_str(), message = %denial.message, "denied a command");
        let _ = frames
            .send(DeviceFrame::Denied {
                request_id: run.request_id.clone(),
                code: denial.code,
                message: denial.message.clone(),
            })
            .await;
        Err(denial)
    }

    fn catalogue(&self) -> &Catalogue {
        &self.inner.catalogue
    }

    fn forget_task(&self, task_id: &str) {
        let mut state = self.state();
        state.tasks.remove(task_id);
        self.persist_tasks(&state);
    }

    /// Runs an accepted task to its end and records it.
    async fn drive(
        self,
        info: TaskInfo,
        spec: exec::Spec,
        stop: watch::Receiver<Option<StoppedBy>>,
        done: watch::Sender<Option<TaskResult>>,
        frames: mpsc::Sender<DeviceFrame>,
        transcript: Arc<Mutex<Transcript>>,
    ) {
        let (out_tx, mut out_rx) = mpsc::channel::<exec::Chunk>(OUTPUT_CHANNEL);
        let hooks: Arc<dyn exec::Hooks> = Arc::new(TaskHooks { daemon: self.clone(), task_id: info.task_id.clone() });
        let forward = {
            let frames = frames.clone();
            let me = self.clone();
            let request_id = info.request_id.clone();
            let task_id = info.task_id.clone();
            let transcript = transcript.clone();
            tokio::spawn(async move {
                let mut seq = 0u64;
                let mut decode = Utf8Carry::default();
                let mut send = async |stream: Stream, data: String| {
                    if data.is_empty() {
                        return;
                    }
                    // The transcript reads exactly the text the operator gets,
                    // so both sides' digests agree.
                    let lines = lock(&transcript).push(stream, data.as_bytes());
                    me.publish_lines(&task_id, lines);
                    let frame = DeviceFrame::Output { request_id: request_id.clone(), seq, stream, data };
                    seq += 1;
                    let _ = frames.send(frame).await;
                };
                while let Some(chunk) = out_rx.recv().await {
                    send(chunk.stream, decode.text(chunk.stream, &chunk.data)).await;
                }
                for stream in [Stream::Stdout, Stream::Stderr] {
                    send(stream, decode.rest(stream)).await;
                }
                let lines = lock(&transcript).finish();
                me.publish_lines(&task_id, lines);
            })
        };
        let result = exec::run(spec, out_tx, stop, hooks).await;
        let _ = forward.await;
        let agent = info.agent;
        let transcript_sha256 = agent.then(|| lock(&transcript).digest());
        let mut records = Vec::new();
        if let Some(by) = result.cancelled_by {
            let mut r = task_record(Event::TaskStopped, &info);
            r.by = Some(by.as_str().into());
            r.duration_ms = Some(result.duration_ms);
            r.transcript_sha256.clone_from(&transcript_sha256);
            records.push(r);
        }
        let mut r = task_record(Event::ActionFinished, &info);
        r.status = Some(result.status.as_str().into());
        r.exit_code = result.exit_code.map(i64::from);
        r.duration_ms = Some(result.duration_ms);
        r.output_bytes = Some(result.output_bytes);
        r.output_sha256 = Some(result.output_sha256.clone());
        r.transcript_sha256 = transcript_sha256;
        r.by = result.cancelled_by.map(|b| b.as_str().into());
        if result.truncated {
            r.detail = Some("output truncated at the action's max_output_bytes".into());
        }
        records.push(r);
        if let Err(e) = self.audit(records).await {
            tracing::error!(task = %info.task_id, error = %e, "could not record the end of a task");
        }
        {
            let mut recent = lock(&self.inner.recent);
            if recent.len() >= RECENT_TASKS {
                recent.pop_front();
            }
            recent.push_back(Finished { info: info.clone(), result: result.clone(), transcript });
        }
        self.forget_task(&info.task_id);
        let _ = frames.send(DeviceFrame::result(&info.request_id, &result)).await;
        let _ = done.send(Some(result));
        tree::reap_strays(&self.leaders());
    }

    fn leaders(&self) -> Vec<i32> {
        self.state().tasks.values().filter_map(|t| t.info.pid).collect()
    }

    fn publish_lines(&self, task_id: &str, lines: Vec<transcript::Line>) {
        for line in lines {
            self.publish(json!({"kind": "transcript", "task_id": task_id, "line": line}));
        }
    }

    /// One task, running or among the last [`RECENT_TASKS`] ended, as
    /// `GET /v1/tasks/{id}` shows it: `{"task": TaskInfo, "running",
    /// "result": TaskResult or null, "transcript": {"total",
    /// "sha256", "lines": [Line]}}`. `None` if unknown.
    pub fn task_detail(&self, task_id: &str) -> Option<Value> {
        let view = |info: &TaskInfo, result: Option<&TaskResult>, t: &Mutex<Transcript>| {
            let t = lock(t);
            json!({
                "task": info,
                "running": result.is_none(),
                "result": result,
                "transcript": {"total": t.total(), "sha256": t.digest(), "lines": t.lines()},
            })
        };
        if let Some(t) = self.state().tasks.get(task_id) {
            return Some(view(&t.info, None, &t.transcript));
        }
        let recent = lock(&self.inner.recent);
        let f = recent.iter().rev().find(|f| f.info.task_id == task_id)?;
        Some(view(&f.info, Some(&f.result), &f.transcript))
    }

    /// The running tasks.
    pub fn tasks(&self) -> Vec<TaskInfo> {
        self.state().tasks.values().map(|t| t.info.clone()).collect()
    }

    /// Stops one task and waits (at most 5 s) for its end. `None` when no
    /// such task runs.
    pub async fn stop_task(&self, task_id: &str, by: StoppedBy) -> Option<TaskResult> {
        let mut done = {
            let state = self.state();
            let task = state.tasks.get(task_id)?;
            if task.stop.borrow().is_none() {
                let _ = task.stop.send(Some(by));
            }
            task.done.clone()
        };
        let waited = tokio::time::timeout(SHUTDOWN_WAIT, done.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(r)) => r.clone(),
            _ => None,
        }
    }

    /// Stops every task; returns how many ended, with their results.
    pub async fn stop_all(&self, by: StoppedBy) -> Vec<(String, Option<TaskResult>)> {
        // Signal every task first, then wait: none waits on another's end.
        let waiting: Vec<(String, watch::Receiver<Option<TaskResult>>)> = {
            let state = self.state();
            state
                .tasks
                .iter()
                .map(|(id, t)| {
                    if t.stop.borrow().is_none() {
                        let _ = t.stop.send(Some(by));
                    }
                    (id.clone(), t.done.clone())
                })
                .collect()
        };
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        for (id, mut done) in waiting {
            let r = tokio::time::timeout_at(deadline, done.wait_for(Option::is_some)).await;
            out.push((id, r.ok().and_then(|r| r.ok().and_then(|v| v.clone()))));
        }
        out
    }

    /// The daemon as `GET /v1/status` shows it.
    pub fn status_json(&self) -> Value {
        let link = self.link_status();
        let state = self.state();
        let consent = match &state.consent.effective {
            Consent::Live(g) => json!({
                "enabled": true,
                "tier": g.tier.get(),
                "grant_id": g.grant_id,
                "expires_at": crate::time::rfc3339(g.expires_at),
            }),
            Consent::Off(off) => {
                json!({"enabled": false, "tier": null, "grant_id": null, "expires_at": null, "off_reason": off.reason()})
            }
        };
        json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "device_id": self.inner.device_id,
            "started_at": crate::time::rfc3339(self.inner.started_at),
            "uptime_seconds": self.inner.started.elapsed().as_secs(),
            "control_port": *lock(&self.inner.control_port),
            "connected": link.connected,
            "relay": link.relay,
            "link": link,
            "running_tasks": state.tasks.len(),
            "tasks": state.tasks.values().map(|t| &t.info).collect::<Vec<_>>(),
            "consent": consent,
        })
    }

    /// Stops every task (`cancelled_by: shutdown`), waits for them to be
    /// recorded, and audits `daemon.stopped`.
    pub async fn shutdown(&self) {
        let stopped = self.stop_all(StoppedBy::Shutdown).await;
        let mut r = Record::new(Event::DaemonStopped);
        r.detail = Some(format!("pid {}; {} running task(s) stopped", std::process::id(), stopped.len()));
        if let Err(e) = self.audit(vec![r]).await {
            tracing::error!(error = %e, "could not record daemon.stopped");
        }
    }

    /// Watches the consent file (inotify, with a 10 s poll as a safety net, 1 s without inotify)
    /// and the grant's expiry until `shutdown` resolves.
    pub async fn watch_consent(&self, shutdown: impl Future<Output = ()>) {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let watcher = consent_watcher(&self.inner.paths, tx);
        tokio::pin!(shutdown);
        let mut poll = tokio::time::interval(if watcher.is_some() { CONSENT_POLL_WATCHED } else { CONSENT_POLL });
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
        loop {
            let expiry = self.next_expiry();
            tokio::select! {
                _ = &mut shutdown => break,
                _ = rx.recv() => {}
                _ = self.inner.consent_changed.notified() => {}
                _ = poll.tick() => {}
                _ = async { tokio::time::sleep_until(expiry.unwrap_or_else(tokio::time::Instant::now)).await }, if expiry.is_some() => {}
                _ = async { sigchld.as_mut().expect("guarded").recv().await }, if sigchld.is_some() => {
                    tree::reap_strays(&self.leaders());
                    continue;
                }
            }
            self.consent_changed().await;
        }
        drop(watcher);
    }

    /// The relay link as it stands.
    pub fn link_status(&self) -> LinkStatus {
        lock(&self.inner.link).clone()
    }

    pub(crate) fn set_link(&self, change: impl FnOnce(&mut LinkStatus)) {
        change(&mut lock(&self.inner.link));
    }

    /// What the link reports every 30 s: the grant, running tasks, the
    /// audit head as this daemon last wrote it, uptime and version.
    pub fn heartbeat(&self) -> crate::protocol::Heartbeat {
        let audit_head = lock(&self.inner.audit_head).clone();
        let state = self.state();
        let (tier, expires_at) = match &state.consent.effective {
            Consent::Live(g) => (Some(g.tier.get()), Some(crate::time::rfc3339(g.expires_at))),
            Consent::Off(_) => (None, None),
        };
        crate::protocol::Heartbeat {
            tier,
            expires_at,
            running_tasks: state.tasks.len() as u32,
            audit_head,
            uptime_s: self.inner.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn set_control_port(&self, port: u16) {
        *lock(&self.inner.control_port) = Some(port);
    }
}

/// Watches the state directory for changes to `consent.json`. `None` if
/// inotify is unavailable (the poll still runs).
fn consent_watcher(paths: &Paths, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let file = paths.consent();
    let name = file.file_name().map(|n| n.to_owned());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own reads of the file raise open/access events: only a change counts,
        // or each read would wake the watcher to read it again.
        // A lost or overflowed event queue (an error, or a rescan flag) means
        // anything may have changed: re-read then too.
        let changed = match &event {
            Ok(e) if e.kind.is_access() => false,
            Ok(e) => e.need_rescan() || e.paths.iter().any(|p| p.file_name() == name.as_deref()),
            Err(_) => true,
        };
        if changed {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "inotify unavailable; polling the grant every second"))
    .ok()?;
    let dir = file.parent()?;
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(error = %e, "cannot watch {}; polling", dir.display()))
        .ok()?;
    Some(watcher)
}

struct TaskHooks {
    daemon: Daemon,
    task_id: String,
}

impl exec::Hooks for TaskHooks {
    fn spawned(&self, pid: i32, start_ticks: u64) {
        let mut state = self.daemon.state();
        if let Some(t) = state.tasks.get_mut(&self.task_id) {
            t.info.pid = Some(pid);
            t.info.start_ticks = Some(start_ticks);
        }
        self.daemon.persist_tasks(&state);
    }

    fn other_tasks(&self) -> Vec<String> {
        self.daemon.state().tasks.keys().filter(|id| **id != self.task_id).cloned().collect()
    }

    fn other_leaders(&self) -> Vec<i32> {
        self.daemon
            .state()
            .tasks
            .values()
            .filter(|t| t.info.task_id != self.task_id)
            .filter_map(|t| t.info.pid)
            .collect()
    }
}

fn task_record(event: Event, t: &TaskInfo) -> Record {
    let mut r = Record::new(event);
    r.task_id = Some(t.task_id.clone());
    r.request_id = Some(t.request_id.clone());
    r.action = Some(t.action.clone());
    r.tier = Some(t.tier);
    r.params = Some(recorded_params(&t.params));
    r.operator = Some(t.operator.clone());
    r.grant_id = Some(t.grant_id.clone());
    r
}

/// The longest parameter value an audit record holds as it is; a longer
/// one (an agent's prompt, up to 512 KiB) would break the record's 64 KiB
/// cap, so the record keeps its head, its length and its SHA-256.
pub const RECORDED_VALUE_BYTES: usize = 4096;

/// Parameters as an audit record holds them (see [`RECORDED_VALUE_BYTES`]).
fn recorded_params(params: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    params.iter().map(|(k, v)| (k.clone(), recorded_value(v))).collect()
}

/// `v`, or its first KiB, its length and its SHA-256 when it is longer
/// than [`RECORDED_VALUE_BYTES`].
fn recorded_value(v: &str) -> String {
    if v.len() <= RECORDED_VALUE_BYTES {
        return v.to_string();
    }
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, v.as_bytes()));
    format!("{}… [{} bytes, sha256 {digest}]", crate::text::head(v, 1024), v.len())
}

/// Decodes output chunks as UTF-8, holding back a character split across
/// two chunks until its end arrives (invalid bytes become U+FFFD), so a
/// split never turns one character into two replacement characters.
#[derive(Default)]
struct Utf8Carry {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Utf8Carry {
    fn held(&mut self, stream: Stream) -> &mut Vec<u8> {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    /// The text of `data` after what was held back, minus an incomplete character at its end.
    fn text(&mut self, stream: Stream, data: &[u8]) -> String {
        let held = self.held(stream);
        held.extend_from_slice(data);
        // An incomplete sequence at the very end (at most 3 bytes) waits for the next chunk.
        let keep = (1..=held.len().min(3))
            .find(|back| {
                let tail = &held[held.len() - back..];
                tail[0] & 0xC0 != 0x80 && std::str::from_utf8(tail).is_err_and(|e| e.error_len().is_none())
            })
            .unwrap_or(0);
        let tail = held.split_off(held.len() - keep);
        let text = String::from_utf8_lossy(held).into_owned();
        *held = tail;
        text
    }

    /// What is still held back (the output ended inside a character).
    fn rest(&mut self, stream: Stream) -> String {
        String::from_utf8_lossy(&std::mem::take(self.held(stream))).into_owned()
    }
}

/// The commands for the record; an element over [`RECORDED_VALUE_BYTES`]
/// (an argv prompt) is cut as [`recorded_params`] cuts a value.
fn render_argv(commands: &[Vec<String>]) -> String {
    commands
        .iter()
        .map(|argv| {
            let argv: Vec<String> = argv.iter().map(|e| recorded_value(e)).collect();
            shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "))
        })
        .collect::<Vec<_>>()
        .join(" ; then ")
}

/// Where `program` would be found, as execvp(3) looks for it: a name with
/// a slash as it stands, else each directory of `path` in turn. Only a
/// regular file with an execute bit counts.
fn find_program(program: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let runnable =
        |p: &std::path::Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let p = PathBuf::from(program);
        return runnable(&p).then_some(p);
    }
    path.split(':').filter(|d| !d.is_empty()).map(|d| std::path::Path::new(d).join(program)).find(|p| runnable(p))
}

/// An `[agent] endpoint` (already checked to be loopback when the policy
/// loaded) as the address to connect to, the `Host` header and the path.
/// `localhost` is taken as 127.0.0.1, never looked up.
fn agent_endpoint(endpoint: &str) -> Result<(std::net::SocketAddr, String, String), String> {
    let rest = endpoint.strip_prefix("http://").ok_or("must start with http://")?;
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = path.split('#').next().unwrap_or("/");
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let (host, port) = authority.rsplit_once(':').ok_or("needs a port")?;
    let port: u16 = port.parse().map_err(|_| format!("bad port `{port}`"))?;
    let ip: std::net::IpAddr = match host {
        "localhost" | "127.0.0.1" => std::net::Ipv4Addr::LOCALHOST.into(),
        "[::1]" => std::net::Ipv6Addr::LOCALHOST.into(),
        other => return Err(format!("`{other}` is not a loopback address")),
    };
    Ok((std::net::SocketAddr::new(ip, port), authority.to_string(), path))
}

/// `~` and `~/x` against the owner's home; anything else as written.
fn resolve_cwd(cwd: &str) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
    match cwd.strip_prefix('~') {
        Some("") => home,
        Some(rest) => home.join(rest.trim_start_matches('/')),
        None => PathBuf::from(cwd),
    }
}

/// Runs the daemon until `shutdown` resolves: serves the control API on
/// `listener` (loopback), writes `daemon.json`, tells systemd it is ready
/// (sd_notify `READY=1`), enforces consent, then stops every task and
/// audits `daemon.stopped`.
///
/// # Errors
/// As [`Daemon::start`]; and writing `daemon.json`.
pub async fn run(
    paths: &Paths,
    options: Options,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let daemon = Daemon::start(paths, options)?;
    let port =
        listener.local_addr().map_err(|source| DaemonError::Io { what: "control API address".into(), source })?.port();
    daemon.set_control_port(port);
    let secret = ensure_secret(paths)?;
    let info = DaemonInfo {
        pid: std::process::id(),
        control_port: port,
        started_at: crate::time::rfc3339(daemon.inner.started_at),
        version: env!("CARGO_PKG_VERSION").into(),
        device_id: daemon.device_id().into(),
    };
    paths::write_atomic(&paths.daemon_info(), &serde_json::to_vec_pretty(&info).unwrap_or_default())?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(control::serve(listener, daemon.clone(), secret, stop_rx.clone()));
    let watcher = {
        let d = daemon.clone();
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            d.watch_consent(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
        })
    };
    let link = daemon.inner.options.link.clone().map(|config| {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(link::run(daemon.clone(), config, rx, tx, stop_rx.clone()))
    });
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY=1 failed");
    }
    tracing::info!(port, device_id = %daemon.device_id(), "daemon ready; control API on 127.0.0.1");
    shutdown.await;
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    daemon.shutdown().await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = watcher.await;
    if let Some(link) = link {
        let _ = link.await;
    }
    let _ = paths::remove(&paths.daemon_info());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_chunks_arrives_whole() {
        let text = "añ€😀z".as_bytes();
        for cut in 0..=text.len() {
            for second in cut..=text.len() {
                let mut d = Utf8Carry::default();
                let mut out = d.text(Stream::Stdout, &text[..cut]);
                out += &d.text(Stream::Stdout, &text[cut..second]);
                out += &d.text(Stream::Stdout, &text[second..]);
                out += &d.rest(Stream::Stdout);
                assert_eq!(out, "añ€😀z", "cut at {cut} and {second}");
            }
        }
        // Invalid bytes still become U+FFFD; an output ending mid-character too.
        let mut d = Utf8Carry::default();
        assert_eq!(d.text(Stream::Stderr, b"a\xffb\xe2\x82"), "a\u{fffd}b");
        assert_eq!(d.text(Stream::Stdout, b"x"), "x", "streams are held apart");
        assert_eq!(d.rest(Stream::Stderr), "\u{fffd}");
    }

    #[test]
    fn long_values_are_recorded_as_head_length_and_digest() {
        assert_eq!(recorded_value("short"), "short");
        let long = "é".repeat(RECORDED_VALUE_BYTES);
        let kept = recorded_value(&long);
        assert!(kept.len() < 1200 && kept.contains(&format!("… [{} bytes, sha256 ", long.len())), "{kept}");
        assert!(kept.starts_with("éé"));
    }
}
