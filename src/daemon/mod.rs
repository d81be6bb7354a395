//! The daemon: one per home. It holds the device key, the catalogue and the
//! audit log, decides on signed commands ([`gate`]), runs what passes
//! ([`exec`]), stops what the owner's consent no longer covers, and
//! answers the owner on the loopback control API (`control.rs`).
//!
//! Data flows one way: command → [`gate`] → audit (`action.started`,
//! fsynced) → [`exec`] → frames → audit (`action.finished`). Commands reach
//! it through [`Daemon::submit`], which the relay link calls.
//!
//! # Layout
//! - `admit.rs`: a command's way in: admit (the gate), register (the grant
//!   again, `BUSY`, one agent task at a time), launch (`action.started` first).
//! - `task.rs`: a running task: its entry (dropping it stops the task), the
//!   run loop that records its end, stop, the output decoder.
//! - [`exec`]: the processes of one task, in phases; `end.rs`: how its
//!   commands' ends add up to its result; [`kill`]: where a
//!   process tree is killed; [`tree`]: `/proc` reads and cgroups.
//! - `enforce.rs`: consent as enforced: re-reading, expiry, the watcher and its supervisor.
//! - `records.rs`: audit records built from a task or a denial (pure).
//! - `denials.rs`: denials of unverified senders, counted per window, one summary each.
//! - `files.rs`: `daemon.lock`, `daemon.json`, the secret, `run/tasks.json`
//!   and recovery after a crash.
//! - `agent.rs` and `agent_host.rs`: the owner's agent checked ready; the
//!   HTTP client of a loopback agent host.
//! - `guard.rs`: the escalation guard's evidence, for the CLI's `allow` and `trust add`.
//! - `control.rs`: the loopback control API (its messages: [`crate::control_api`]).
//! - `console/`: the owner's console in the browser, on a second loopback port.
//! - `http.rs`: what the two loopback HTTP servers share (Host check, caps, deadlines, permits).
//! - `link.rs`: the one outbound connection to the relay.
//! - `notify.rs`: desktop notifications on the session D-Bus, and each ended grant's summary in the log.
//! - [`gate`]: the decision, pure.
//! - `session.rs`: an interactive session (the `shell` action without `cmd`): its
//!   operator frames checked in, its run loop; `pty.rs`: its process on a pseudo-terminal;
//!   `session_record.rs`: its recording, written on a thread of its own.
//! - `replay.rs`: the replay cache, and its nonces read back from the audit log (and `run/lost-nonces`) at start.
//!
//! # Files (all under the home's state directory)
//! - `daemon.lock`: held (flock) while a daemon runs: one per home.
//! - `daemon.json`: `pid`, `control_port`, `started_at`, `version`,
//!   `device_id`, `console_port`; written once the control API and the
//!   console are bound, removed on exit.
//! - `control.sock`: the control API for the owner's own processes (0600,
//!   same-uid peers), bound at start, removed on exit.
//! - `run/tasks.json`: the running tasks, so that the next start after a
//!   crash can kill what was left and audit `task.aborted`.
//! - `run/lost-nonces`: the nonces of verified commands whose record could
//!   not be written (audit store failing), read back at start (`replay.rs`).

mod admit;
mod agent;
mod agent_host;
mod console;
mod control;
pub mod control_request;
mod denials;
mod end;
mod enforce;
pub mod exec;
mod files;
pub mod gate;
pub(crate) mod guard;
mod http;
pub mod kill;
mod link;
mod notify;
mod pty;
mod records;
mod replay;
mod session;
mod session_record;
mod task;
pub mod tree;

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, mpsc, watch};

use crate::audit::{AuditError, AuditLog, Event, Record};
use crate::consent::Consent;
use crate::control_api::{ConsentView, StatusView, WatchEvent};
use crate::identity::{KeyError, KeyPair};
use crate::lock;
use crate::paths::{self, FileError, Paths};
use crate::policy::{Catalogue, PolicyError};
use crate::protocol::StoppedBy;
pub(crate) use console::open_in_browser;
pub use console::serve as serve_console;
pub use control::serve as serve_control;
pub use denials::{DENIAL_WINDOW, RECORDED_SENDERS};
use enforce::ConsentState;
pub use files::{DaemonInfo, decode_tasks, ensure_secret, is_running, read_info};
use gate::ReplayCache;
pub use link::{HEARTBEAT_ENV, LinkConfig, LinkStatus};
pub use notify::{GRANT_WARNING, GRANT_WARNING_ENV, NotifyOptions};
pub use records::RECORDED_VALUE_BYTES;
use task::{Finished, TaskEntry};

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
/// `max_tasks = 8`, no relay link, no desktop notifications, the system's clocks, the console on any free port.
#[derive(Clone, Debug)]
pub struct Options {
    /// The most tasks running at once; more are denied `BUSY`.
    pub max_tasks: usize,
    /// The relay to keep a link to, if any.
    pub link: Option<LinkConfig>,
    /// The `support` binary, to start each command inside its task's
    /// cgroup when one is delegated (`tree::TaskCgroup::spawn_with`);
    /// `support daemon` gives `/proc/self/exe`. Default `None`: a command
    /// is moved into its cgroup once it runs.
    pub cgroup_helper: Option<std::path::PathBuf>,
    /// Desktop notifications (`notify.rs`); default none.
    pub notify: NotifyOptions,
    /// The wall and monotonic clocks the decisions read (grant, freshness,
    /// records). Default: the system's; a test steps its own ([`crate::Clock`]).
    pub clock: crate::Clock,
    /// The owner's console's port on 127.0.0.1 (0: any free port; it is
    /// written to `daemon.json`), for [`run`].
    pub console_port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_tasks: 8,
            link: None,
            cgroup_helper: None,
            notify: NotifyOptions::default(),
            clock: crate::Clock::default(),
            console_port: 0,
        }
    }
}

/// Why the daemon cannot start or go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Another daemon holds this home's lock.
    #[error("another daemon is already running for this home{}; stop it first, or use another --home", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning {
        /// Its pid, from `daemon.json`, when readable.
        pid: Option<u32>,
    },
    /// A file of the home is unsafe or unreadable.
    #[error(transparent)]
    File(#[from] FileError),
    /// The device key cannot be loaded or made.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The catalogue does not load.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The audit log cannot be opened or written.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A system call failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

/// What the daemon holds under one lock: the grant it enforces, the
/// nonces it has seen, and its running tasks.
struct State {
    consent: ConsentState,
    replay: ReplayCache,
    tasks: BTreeMap<String, TaskEntry>,
}

impl State {
    /// `grant`'s scope and the actions started under it so far.
    fn scope_of(&self, grant: &crate::consent::Grant) -> crate::protocol::GrantScope {
        crate::protocol::GrantScope {
            operators: grant.operators.clone(),
            only: grant.only.clone(),
            max_actions: grant.max_actions,
            actions_used: self.consent.used.get(&grant.grant_id).copied(),
        }
    }
}

/// The daemon's parts, shared by every clone of [`Daemon`].
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
    recent: Mutex<VecDeque<Finished>>,
    /// Denials of unverified senders, counted in windows (`denials.rs`).
    denials: Mutex<denials::DenialWindow>,
    /// The owner's console: its port, login tokens and sessions (`console/`).
    console: Mutex<console::State>,
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
        paths::ensure_dir(&paths.run_dir())?;
        let lock = paths::open_append(&paths.daemon_lock())?;
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
                    return Err(DaemonError::Io { what: format!("lock {}", paths.daemon_lock().display()), source });
                }
            }
        }
        let (mut audit, catalogue, key) = match open_parts(paths) {
            Ok(parts) => parts,
            Err(e) => {
                // Fail closed: a crashed predecessor's tasks must not run on
                // with no daemon to end them at their grant's end.
                let killed = files::kill_listed(paths);
                if killed > 0 {
                    tracing::error!(killed, "cannot start; killed what the previous daemon's tasks left");
                }
                return Err(e);
            }
        };
        audit.set_lock_timeout(Some(AUDIT_LOCK_TIMEOUT));
        audit.set_clock(options.clock.clone());
        // Orphans of our tasks come back to us, not to init (prctl(2)).
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| DaemonError::Io { what: "prctl(PR_SET_CHILD_SUBREAPER)".into(), source: e.into() })?;
        let device_id = key.public_key().device_id();
        let started_at = options.clock.wall();
        // A predecessor's nonces, from the record: its commands never run twice (replay.rs).
        let mut replay = ReplayCache::new(REPLAY_CAPACITY);
        let remembered = replay.load(paths, started_at)?;
        let (events, _) = broadcast::channel(EVENTS_CHANNEL);
        let cgroup = tree::Delegated::detect().map(|d| d.spawning_with(options.cgroup_helper.clone()));
        let daemon = Daemon {
            inner: Arc::new(Inner {
                paths: paths.clone(),
                options,
                key,
                device_id,
                catalogue,
                started_at,
                started: Instant::now(),
                _lock: lock,
                audit: Mutex::new(audit),
                state: Mutex::new(State { consent: ConsentState::new(), replay, tasks: BTreeMap::new() }),
                events,
                consent_changed: Notify::new(),
                control_port: Mutex::new(None),
                link: Mutex::default(),
                audit_head: Mutex::default(),
                cgroup,
                recent: Mutex::new(VecDeque::new()),
                denials: Mutex::default(),
                console: Mutex::default(),
            }),
        };
        if let Some(cg) = &daemon.inner.cgroup {
            tracing::info!(dir = %cg.dir().display(), "a cgroup is delegated: each task gets its own");
        }
        if remembered > 0 {
            tracing::info!(nonces = remembered, "nonces of recent commands read back from the audit log");
        }
        daemon.recover()?;
        let keep_days = daemon.inner.catalogue.shell.keep_recordings_days;
        match crate::recording::prune(&crate::recording::dir(&paths.state_dir), keep_days, std::time::SystemTime::now())
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(removed = n, keep_days, "old session recordings removed ([shell] keep_recordings_days)")
            }
            Err(e) => tracing::warn!(error = %e, "cannot prune the session recordings"),
        }
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
            self.publish(&WatchEvent::Audit { record: Box::new(r.clone()) });
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

    /// Sends one event to every `/v1/events` reader, serialised once.
    fn publish(&self, event: &WatchEvent) {
        if self.inner.events.receiver_count() > 0 {
            let _ = self.inner.events.send(Arc::from(serde_json::to_string(event).unwrap_or_default()));
        }
    }

    /// A receiver of the event stream: one [`WatchEvent`] as JSON per item.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.events.subscribe()
    }

    /// The action catalogue, as loaded at start.
    fn catalogue(&self) -> &Catalogue {
        &self.inner.catalogue
    }

    /// The daemon as `GET /v1/status` shows it.
    pub fn status_view(&self) -> StatusView {
        let link = self.link_status();
        let state = self.state();
        let consent = match &state.consent.effective {
            Consent::Live(g) => ConsentView {
                enabled: true,
                tier: Some(g.tier.get()),
                grant_id: Some(g.grant_id.clone()),
                expires_at: Some(crate::time::rfc3339(g.expires_at)),
                off_reason: None,
                scope: Some(state.scope_of(g)),
                granted_at: Some(crate::time::rfc3339(g.granted_at)),
                granted_by: Some(g.granted_by.user.clone()),
                reason: g.reason.clone(),
            },
            Consent::Off(off) => ConsentView {
                enabled: false,
                tier: None,
                grant_id: None,
                expires_at: None,
                off_reason: Some(off.reason()),
                scope: None,
                granted_at: None,
                granted_by: None,
                reason: None,
            },
        };
        StatusView {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            device_id: self.inner.device_id.clone(),
            started_at: crate::time::rfc3339(self.inner.started_at),
            uptime_seconds: self.inner.started.elapsed().as_secs(),
            control_port: *lock(&self.inner.control_port),
            connected: link.connected,
            relay: link.relay.clone(),
            link,
            running_tasks: state.tasks.len(),
            tasks: state.tasks.values().map(|t| t.info.clone()).collect(),
            consent,
        }
    }

    /// Stops every task (`cancelled_by: shutdown`), waits for them to be
    /// recorded, and audits `daemon.stopped`.
    pub async fn shutdown(&self) {
        let stopped = self.stop_all(StoppedBy::Shutdown).await;
        self.close_denial_window().await;
        let mut r = Record::new(Event::DaemonStopped);
        r.detail = Some(format!("pid {}; {} running task(s) stopped", std::process::id(), stopped.len()));
        if let Err(e) = self.audit(vec![r]).await {
            tracing::error!(error = %crate::ErrorChain(&e), "could not record daemon.stopped");
        }
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
        let scope = state.consent.effective.live().filter(|g| g.is_scoped()).map(|g| state.scope_of(g));
        crate::protocol::Heartbeat {
            tier,
            expires_at,
            running_tasks: state.tasks.len() as u32,
            audit_head,
            uptime_s: self.inner.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").into(),
            scope,
            witness: None,
            trusted_operators: Vec::new(),
        }
    }

    fn set_control_port(&self, port: u16) {
        *lock(&self.inner.control_port) = Some(port);
    }
}
/// The audit log, the catalogue and the device key, in that order: the
/// log before the key, since a key that exists with no log and no
/// audit.key shows an earlier chain was removed (`audit.reset`).
fn open_parts(paths: &Paths) -> Result<(AuditLog, Catalogue, KeyPair), DaemonError> {
    let audit = AuditLog::open(paths)?;
    let catalogue = Catalogue::load(paths)?;
    let (key, _) = KeyPair::load_or_create(&paths.device_key())?;
    Ok((audit, catalogue, key))
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
    let console_port = daemon.inner.options.console_port;
    let console = TcpListener::bind(("127.0.0.1", console_port)).await.map_err(|source| DaemonError::Io {
        what: format!("cannot listen on 127.0.0.1:{console_port} for the console"),
        source,
    })?;
    let console_port =
        console.local_addr().map_err(|source| DaemonError::Io { what: "console address".into(), source })?.port();
    let info = DaemonInfo {
        pid: std::process::id(),
        control_port: port,
        console_port: Some(console_port),
        started_at: crate::time::rfc3339(daemon.inner.started_at),
        version: env!("CARGO_PKG_VERSION").into(),
        device_id: daemon.device_id().into(),
    };
    files::write_info(paths, &info)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let socket = control::bind_socket(paths);
    let server = tokio::spawn(control::serve(listener, socket, daemon.clone(), secret, stop_rx.clone()));
    let console = tokio::spawn(console::serve(console, daemon.clone(), stop_rx.clone()));
    let watcher = {
        let (d, rx) = (daemon.clone(), stop_rx.clone());
        tokio::spawn(async move { d.enforce_consent(rx).await })
    };
    let notifier = notify::spawn(daemon.clone(), daemon.inner.options.notify.clone(), stop_rx.clone());
    let link = daemon.inner.options.link.clone().map(|config| {
        let (tx, rx) = mpsc::channel(256);
        let span = tracing::info_span!("link", relay = %config.url);
        tokio::spawn(tracing::Instrument::instrument(link::run(daemon.clone(), config, rx, tx, stop_rx.clone()), span))
    });
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "sd_notify READY=1 failed");
    }
    tracing::info!(port, console_port, device_id = %daemon.device_id(), "daemon ready; control API on 127.0.0.1");
    shutdown.await;
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    daemon.shutdown().await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = console.await;
    let _ = watcher.await;
    let _ = notifier.await;
    if let Some(link) = link {
        let _ = link.await;
    }
    let _ = paths::remove(&paths.daemon_info());
    let _ = paths::remove(&paths.control_socket());
    Ok(())
}
