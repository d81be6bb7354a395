//! The system under test: a daemon in this process on a real home, its
//! runtime, the commands sent and the tasks running, each step checked
//! against the model and the audit log read back from disk.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use proptest::test_runner::TestCaseError;
use support::consent::{self, Grant, Tier};
use support::daemon::{Daemon, Options};
use support::{AuditLog, Clock, DenyCode, DeviceFrame, Event, KeyPair, Paths, Record, Run, Status, StoppedBy};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use super::model::{ACTIONS, Cmd, Expect, MAX_TASKS, Model, OPERATORS, Sent, Step, Who};

const POLICY_HEAD: &str = "[[action]]\nkind = \"diagnostic\"\ndescription = \"model test\"\n";
/// How long a task may take to end once it must (kill and record).
const END_WITHIN: Duration = Duration::from_secs(5);

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($fmt)+)));
        }
    };
}

/// A task the daemon accepted and has not ended.
struct Running {
    request_id: String,
    frames: mpsc::Receiver<DeviceFrame>,
}

struct Up {
    rt: Runtime,
    daemon: Daemon,
}

pub struct Sut {
    _dir: tempfile::TempDir,
    paths: Paths,
    clock: Clock,
    alice: KeyPair,
    bob: KeyPair,
    stranger: KeyPair,
    up: Option<Up>,
    device_id: String,
    /// The true time the case started at; the model's `t` is counted from it.
    passed: TimeDelta,
    /// Every command sent (for replays), with the model's view of it.
    sent: Vec<(Run, Sent)>,
    /// The true millisecond the last command was signed for (its
    /// `issued_at` before offsets): a daemon starts only after it.
    last_signed: std::cell::Cell<i64>,
    running: Vec<Running>,
    /// Denials of counted codes in this daemon's life, and whether every
    /// write of its life could succeed (then they must all add up).
    counted: u64,
    intact: bool,
    /// Seq of this daemon's `daemon.started`.
    since: u64,
}

fn tmp() -> tempfile::TempDir {
    // tmpfs, when there is one: an fsync costs nothing, so a thousand sequences fit in CI.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new().prefix("support-model-").tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

/// One daemon per process, as in production: a daemon kills the orphans
/// re-parented to its process that no task of its own claims (kill.rs),
/// so two in one test process would kill each other's tasks.
pub fn one_daemon() -> std::sync::MutexGuard<'static, ()> {
    static ONE_DAEMON: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_DAEMON.lock().unwrap_or_else(|p| p.into_inner())
}

/// A home with the model's catalogue and alice trusted (her key in
/// `alice.key`) and a tier 1 grant of 10 minutes, for a real daemon.
pub fn home_for_a_real_daemon() -> (Paths, tempfile::TempDir) {
    let dir = tmp();
    let paths = Paths::under(dir.path().join("home"));
    prepare(&paths);
    let (alice, _) = KeyPair::load_or_create(&paths.home.join("alice.key")).unwrap();
    support::trust::add(&paths, "alice", &alice.public_key().to_string(), Utc::now()).unwrap();
    let g = Grant::new(Tier::new(1).unwrap(), Duration::from_secs(600), None, Utc::now()).unwrap();
    consent::write(&paths, &g).unwrap();
    (paths, dir)
}

/// The catalogue of [`super::model::ACTIONS`] in `policy.d/model.toml`.
fn prepare(paths: &Paths) {
    paths.ensure_dirs().unwrap();
    std::fs::create_dir_all(paths.policy_dir()).unwrap();
    std::fs::write(paths.policy_dir().join("model.toml"), policy()).unwrap();
}

/// A real failing store: the log's path is a directory, so every open and
/// every append fails in the kernel (EISDIR).
pub fn break_audit(paths: &Paths) {
    std::fs::rename(paths.audit(), paths.audit().with_extension("aside")).unwrap();
    std::fs::create_dir(paths.audit()).unwrap();
}

/// The log back in its place.
pub fn heal_audit(paths: &Paths) {
    std::fs::remove_dir(paths.audit()).unwrap();
    std::fs::rename(paths.audit().with_extension("aside"), paths.audit()).unwrap();
}

fn policy() -> String {
    let mut text = String::new();
    for (name, tier, slow) in &ACTIONS[..ACTIONS.len() - 1] {
        let argv = if *slow { r#"["sleep", "30"]"# } else { r#"["true"]"# };
        text.push_str(&format!("{POLICY_HEAD}name = \"{name}\"\ntier = {tier}\nargv = {argv}\ntimeout_s = 60\n\n"));
    }
    text
}

impl Sut {
    pub fn new() -> Sut {
        let dir = tmp();
        let paths = Paths::under(dir.path().join("home"));
        prepare(&paths);
        let (alice, _) = KeyPair::generate();
        let (bob, _) = KeyPair::generate();
        let (stranger, _) = KeyPair::generate();
        support::trust::add(&paths, "alice", &alice.public_key().to_string(), Utc::now()).unwrap();
        let mut sut = Sut {
            _dir: dir,
            paths,
            clock: Clock::stepped(),
            alice,
            bob,
            stranger,
            up: None,
            device_id: String::new(),
            passed: TimeDelta::zero(),
            last_signed: std::cell::Cell::new(0),
            sent: Vec::new(),
            running: Vec::new(),
            counted: 0,
            intact: true,
            since: 0,
        };
        sut.start().expect("the first start");
        sut
    }

    fn start(&mut self) -> Result<(), String> {
        // A command signed in the very millisecond of a start carries an
        // `issued_at` rounded up past the start, so the daemon takes it for
        // one signed after it, and the model (which orders by epoch) not:
        // found at 56,000 cases in release, where both fit in one
        // millisecond. Start in a later millisecond than any signing.
        let signed = chrono::DateTime::from_timestamp_millis(self.last_signed.get()).unwrap_or_default();
        while Utc::now() <= signed {
            std::hint::spin_loop();
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let options = Options { max_tasks: MAX_TASKS, clock: self.clock.clone(), ..Options::default() };
        let daemon = {
            let _enter = rt.enter();
            Daemon::start(&self.paths, options).map_err(|e| support::ErrorChain(&e).to_string())?
        };
        self.device_id = daemon.device_id().to_string();
        self.up = Some(Up { rt, daemon });
        self.counted = 0;
        self.intact = true;
        self.since = self.records().iter().rev().find(|r| r.event == Event::DaemonStarted).map_or(0, |r| r.seq);
        Ok(())
    }

    fn records(&self) -> Vec<Record> {
        match support::audit::list(&self.paths, 0) {
            Ok(l) => l.records.into_iter().filter_map(|l| l.record).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Applies step `i` to the daemon and the model; checks they agree.
    pub fn apply(&mut self, i: usize, step: &Step, model: &mut Model) -> Result<(), TestCaseError> {
        let mut stopped = Vec::new();
        match step {
            Step::Allow { tier, secs, operators, only, max_actions } => {
                let names = |l: &Option<Vec<usize>>, all: &[&str]| {
                    l.as_ref().map(|l| l.iter().map(|&i| all[i].to_string()).collect::<Vec<_>>())
                };
                let actions: Vec<&str> = ACTIONS.iter().map(|a| a.0).collect();
                let now = self.clock.wall();
                let g = Grant::new(Tier::new(*tier).unwrap(), Duration::from_secs(*secs), None, now)
                    .unwrap()
                    .scoped(names(operators, &OPERATORS), names(only, &actions), *max_actions)
                    .unwrap();
                if self.allow(&g) {
                    let granted = model.wall();
                    model.grant = Some(super::model::Grant {
                        id: g.grant_id.clone(),
                        tier: *tier,
                        granted,
                        expires: granted + *secs as i64,
                        operators: operators.clone(),
                        only: only.clone(),
                        max_actions: *max_actions,
                    });
                }
            }
            Step::Revoke => {
                consent::remove(&self.paths).unwrap();
                model.grant = None;
            }
            Step::Pass(s) => {
                self.clock.pass(Duration::from_secs(*s as u64));
                self.passed += TimeDelta::seconds(*s);
                model.t += s;
            }
            Step::SetWall(s) => {
                self.clock.set_wall_by(TimeDelta::seconds(*s));
                model.skew += s;
            }
            Step::TrustBob(add) => {
                let key = self.bob.public_key().to_string();
                if *add && !model.bob_trusted {
                    support::trust::add(&self.paths, "bob", &key, self.clock.wall()).unwrap();
                } else if !*add && model.bob_trusted {
                    support::trust::remove(&self.paths, "bob").unwrap();
                }
                model.bob_trusted = *add;
            }
            Step::Restart => {
                if let Some(up) = self.up.take() {
                    up.rt.block_on(up.daemon.shutdown());
                    self.check_counted()?;
                    drop(up);
                    for task in &mut self.running {
                        stopped.push((task.request_id.clone(), false));
                    }
                }
                model.stopped();
                self.try_start(model);
            }
            Step::Crash => {
                // Dropped mid-flight: no shutdown, no closing of the denial window.
                drop(self.up.take());
                model.stopped();
                self.running.clear();
                self.try_start(model);
            }
            Step::BreakAudit => {
                if !model.broken {
                    break_audit(&self.paths);
                    model.broken = true;
                    self.intact = false;
                }
            }
            Step::HealAudit => {
                if model.broken {
                    heal_audit(&self.paths);
                    model.broken = false;
                }
                if self.up.is_none() {
                    self.try_start(model);
                }
            }
            Step::Send(cmd) => self.send(i, cmd, model)?,
        }
        if let Some(up) = &self.up {
            // What the watcher does at a change of the file and at the grant's end.
            up.rt.block_on(up.daemon.consent_changed());
        }
        stopped.extend(model.refresh());
        self.check_running(i, step, model, &stopped)
    }

    fn try_start(&mut self, model: &mut Model) {
        if model.broken {
            // Without a writable log the daemon must not start.
            assert!(self.start().is_err(), "a daemon started with its audit store failing");
            return;
        }
        self.start().expect("a start on a sound home");
        model.started();
    }

    /// Writes `consent.granted`, then the grant, as `support allow` does;
    /// false (and no grant) when the record cannot be written.
    fn allow(&self, g: &Grant) -> bool {
        let Ok(mut log) = AuditLog::open(&self.paths) else { return false };
        log.set_clock(self.clock.clone());
        let mut r = Record::new(Event::ConsentGranted);
        r.grant_id = Some(g.grant_id.clone());
        r.tier = Some(g.tier.get());
        if log.append(r).is_err() {
            return false;
        }
        consent::write(&self.paths, g).unwrap();
        true
    }

    fn sign(&self, key: &KeyPair, device: &str, action: usize, offset: i64) -> Run {
        // Rounded up to the millisecond that `issued_at` carries: a command
        // signed in the millisecond the daemon started is not issued before it.
        let now = Utc::now();
        let up = now.timestamp_millis() + i64::from(!now.timestamp_subsec_nanos().is_multiple_of(1_000_000));
        self.last_signed.set(self.last_signed.get().max(up));
        let issued = chrono::DateTime::from_timestamp_millis(up).unwrap() + self.passed + TimeDelta::seconds(offset);
        let request_id = support::protocol::new_request_id();
        Run::signed(key, &request_id, device, ACTIONS[action].0, BTreeMap::new(), issued)
    }

    fn send(&mut self, i: usize, cmd: &Cmd, model: &mut Model) -> Result<(), TestCaseError> {
        let (t, epoch) = (model.t, model.epoch);
        let sent = |run: &Run, signer, bad_signature, issued, action| Sent {
            signer,
            bad_signature,
            issued,
            nonce: run.nonce.clone(),
            action,
            epoch,
        };
        let device = self.device_id.clone();
        let (run, seen) = match cmd {
            Cmd::Valid { who, action } => {
                let key = if *who == Who::Alice { &self.alice } else { &self.bob };
                let run = self.sign(key, &device, *action, 0);
                let s = sent(&run, Some(*who), false, t, *action);
                (run, s)
            }
            Cmd::Stranger { action } => {
                let run = self.sign(&self.stranger, &device, *action, 0);
                let s = sent(&run, None, false, t, *action);
                (run, s)
            }
            Cmd::Altered { action } => {
                let mut run = self.sign(&self.alice, &device, *action, 0);
                run.action = ACTIONS[(*action + 1) % ACTIONS.len()].0.to_string();
                let s = sent(&run, Some(Who::Alice), true, t, *action);
                (run, s)
            }
            Cmd::OtherDevice { action } => {
                let run = self.sign(&self.alice, "d-ffffffffffffffffffff", *action, 0);
                let s = sent(&run, Some(Who::Alice), true, t, *action);
                (run, s)
            }
            Cmd::Skewed { action, offset } => {
                let run = self.sign(&self.alice, &device, *action, *offset);
                let s = sent(&run, Some(Who::Alice), false, t + offset, *action);
                (run, s)
            }
            Cmd::Replay { back, new_request_id } => {
                if self.sent.is_empty() {
                    return Ok(());
                }
                let (old, seen) = &self.sent[self.sent.len() - 1 - back % self.sent.len()];
                let (mut run, mut seen) = (old.clone(), seen.clone());
                if *new_request_id {
                    run.request_id = support::protocol::new_request_id();
                    seen.bad_signature = true;
                }
                (run, seen)
            }
        };
        self.sent.push((run.clone(), seen.clone()));
        model.prune();
        let before = model.clone();
        let mut expect = model.decide(&seen, &run.request_id);
        let Some(up) = &self.up else {
            ensure!(expect == Expect::Undelivered, "step {i}: no daemon is up, the model expects {expect:?}");
            return Ok(());
        };
        let (tx, mut frames) = mpsc::channel(64);
        let outcome = up.rt.block_on(up.daemon.submit(run.clone(), tx));
        if let Err(d) = &outcome
            && d.code == DenyCode::StaleCommand
            && before.may_have_forgotten(seen.issued)
            && expect != Expect::Undelivered
        {
            // Issued no later than a nonce the cache may have dropped: refused, nothing remembered.
            *model = before;
            expect = Expect::Deny(vec![DenyCode::StaleCommand]);
        }
        let records = if model.broken { Vec::new() } else { self.records() };
        let on_record = |event: Event| {
            records.iter().any(|r| r.event == event && r.request_id.as_deref() == Some(run.request_id.as_str()))
        };
        match (&expect, outcome) {
            (Expect::Run, Ok(_task)) => {
                ensure!(on_record(Event::ActionStarted), "step {i}: started with no durable action.started: {cmd:?}");
                if ACTIONS[seen.action].2 {
                    self.running.push(Running { request_id: run.request_id.clone(), frames });
                } else {
                    let end = up.rt.block_on(wait_result(&mut frames));
                    ensure!(end.as_ref().map(|e| e.0) == Some(Status::Ok), "step {i}: quick ended {end:?}");
                }
            }
            (Expect::Deny(codes), Err(denial)) if codes.contains(&denial.code) => {
                let frame = frames.try_recv();
                ensure!(
                    matches!(frame, Ok(DeviceFrame::Denied { code, .. }) if code == denial.code),
                    "step {i}: a denial with no denied frame: {frame:?}"
                );
                if is_counted(denial.code.as_str()) {
                    self.counted += 1;
                } else if !model.broken {
                    let ok = records.iter().any(|r| {
                        r.event == Event::ActionDenied
                            && r.request_id.as_deref() == Some(run.request_id.as_str())
                            && r.code.as_deref() == Some(denial.code.as_str())
                    });
                    ensure!(ok, "step {i}: {} not on the record: {cmd:?}", denial.code.as_str());
                }
            }
            (expect, got) => {
                return Err(TestCaseError::fail(format!(
                    "step {i}: {cmd:?}: the model expects {expect:?}, the daemon gave {:?}",
                    got.map_err(|d| (d.code, d.message))
                )));
            }
        }
        Ok(())
    }

    /// Every task the model stopped has ended, its processes gone; every
    /// task it keeps still runs.
    fn check_running(
        &mut self,
        i: usize,
        step: &Step,
        model: &Model,
        stopped: &[(String, bool)],
    ) -> Result<(), TestCaseError> {
        let Some(up) = &self.up else {
            self.running.clear();
            return Ok(());
        };
        let mut kept = Vec::new();
        for mut task in self.running.drain(..) {
            let must_stop = stopped.iter().find(|(id, _)| *id == task.request_id);
            let still = model.running.iter().any(|t| t.request_id == task.request_id);
            if must_stop.is_some() || !still {
                let view = up.daemon.status_view();
                let pid = view.tasks.iter().find(|t| t.request_id == task.request_id).and_then(|t| t.pid);
                let end = up.rt.block_on(wait_result(&mut task.frames));
                ensure!(
                    end.as_ref().map(|e| e.0) == Some(Status::Cancelled),
                    "step {i} ({step:?}): {} ended {end:?}",
                    task.request_id
                );
                ensure!(!pid.is_some_and(alive), "step {i} ({step:?}): {} ended, its process lives", task.request_id);
                if must_stop.is_some_and(|(_, untrusted)| *untrusted) {
                    let by = end.as_ref().and_then(|e| e.1);
                    ensure!(
                        by == Some(StoppedBy::TrustRemoved),
                        "step {i} ({step:?}): {} of an operator no longer trusted ended by {by:?}",
                        task.request_id
                    );
                }
            } else {
                let early = task.frames.try_recv();
                ensure!(
                    !matches!(early, Ok(DeviceFrame::Result { .. })),
                    "step {i} ({step:?}): {} ended while its grant covers it: {early:?}",
                    task.request_id
                );
                kept.push(task);
            }
        }
        self.running = kept;
        let table = up.daemon.status_view().tasks.len();
        ensure!(
            table == model.running.len(),
            "step {i}: {table} tasks in the table, the model has {:?}",
            model.running
        );
        Ok(())
    }

    /// Every counted denial of this daemon's life is on record, in full or
    /// in an `action.denied.aggregated` summary (after a clean shutdown,
    /// with every write of its life possible).
    fn check_counted(&self) -> Result<(), TestCaseError> {
        if !self.intact {
            return Ok(());
        }
        let records = self.records();
        let mine = records.iter().filter(|r| r.seq > self.since);
        let (mut full, mut summarised, mut codes) = (0u64, 0u64, 0u64);
        for r in mine {
            match r.event {
                Event::ActionDenied if r.code.as_deref().is_some_and(is_counted) => full += 1,
                Event::ActionDeniedAggregated => {
                    let detail = r.detail.as_deref().unwrap_or_default();
                    summarised += detail.split(' ').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
                    codes += r.code.as_deref().map_or(0, |c| c.split(',').count() as u64);
                }
                _ => {}
            }
        }
        ensure!(
            self.counted == summarised + full - codes,
            "{} counted denials; on record: {full} in full, {summarised} in summaries of {codes} code(s)",
            self.counted
        );
        Ok(())
    }

    /// Ends the case: a clean shutdown, whose records must add up.
    pub fn finish(mut self, model: &mut Model) -> Result<(), TestCaseError> {
        if let Some(up) = self.up.take() {
            up.rt.block_on(up.daemon.shutdown());
            if !model.broken {
                self.check_counted()?;
            }
        }
        Ok(())
    }
}

/// Whether denials of `code` are counted rather than each recorded
/// (src/daemon/denials.rs): anyone on the path can cause them.
fn is_counted(code: &str) -> bool {
    ["UNTRUSTED_OPERATOR", "BAD_SIGNATURE", "BAD_FRAME", "REPLAY", "STALE_COMMAND"].contains(&code)
}

/// Whether `pid` is a live process (present in /proc, not a zombie).
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

/// How a task ended: its status, what stopped it, why.
type Ended = (Status, Option<support::StoppedBy>, Option<String>);

/// The task's end, within [`END_WITHIN`]; `None` if none came.
async fn wait_result(frames: &mut mpsc::Receiver<DeviceFrame>) -> Option<Ended> {
    let deadline = tokio::time::Instant::now() + END_WITHIN;
    loop {
        match tokio::time::timeout_at(deadline, frames.recv()).await {
            Ok(Some(DeviceFrame::Result { status, cancelled_by, reason, .. })) => {
                return Some((status, cancelled_by, reason));
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return None,
        }
    }
}
