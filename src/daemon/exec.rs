//! The executor: runs one approved action's commands as real processes,
//! streams their output, enforces its limits, and kills its whole tree.
//!
//! Each command runs with `process_group(0)` (setpgid(2)), stdin from
//! /dev/null (or the agent's prompt), stdout and stderr piped, in the
//! action's cwd, with an environment reduced to [`environment`]; with a
//! delegated cgroup, inside the task's cgroup from its first instruction
//! (started through `support __enter-cgroup`, see [`tree::TaskCgroup::spawn_with`]). Output
//! goes out in chunks of at most [`CHUNK_BYTES`] over a bounded channel
//! (so a slow reader slows the task, never the daemon's memory), and stops
//! at `max_output_bytes`: the rest is read and dropped and the result is
//! marked `truncated`.
//!
//! An agent host on loopback ([`HttpAgent`]) is driven instead by one
//! HTTP/1.1 POST whose NDJSON response body is the task's output; a stop
//! or the timeout aborts the request (the connection is closed).
//!
//! A task ends when its last command has exited and its pipes are closed.
//! When a command exits, whatever it left running is killed: an action
//! leaves nothing behind. On timeout the tree gets SIGTERM, then SIGKILL
//! after [`TERM_GRACE`]. A stop (owner, operator, revoke, expiry, lower
//! tier, shutdown) SIGKILLs the tree at once. How the tree is found and
//! killed: [`super::kill`].

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

pub use super::agent::Idle;
pub use super::agent_host::{HTTP_CONNECT_TIMEOUT, HttpAgent};
use super::end::{End, Tally};
use super::kill;
use super::tree::{self, MARKER_ENV};
use crate::protocol::{Status, StoppedBy, Stream, TaskResult};

/// How long a tree has between SIGTERM and SIGKILL on timeout.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// The most bytes in one output chunk.
pub const CHUNK_BYTES: usize = 16 * 1024;

/// How long the pipes may stay open after the tree was killed (a process
/// in uninterruptible sleep) before the task is ended without them.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Variables passed through from the daemon's environment to every task.
pub const BASE_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "USER"];

/// What to run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// `t-` and 16 hex digits.
    pub task_id: String,
    /// argv lists, run one after another.
    pub commands: Vec<Vec<String>>,
    /// Bytes for the first command's stdin; otherwise stdin is /dev/null.
    pub stdin: Option<String>,
    /// The whole environment of the processes (see [`environment`]).
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub cwd: PathBuf,
    /// How long the whole action may run; then SIGTERM, and SIGKILL after [`TERM_GRACE`].
    pub timeout: Duration,
    /// Output past this many bytes is read and dropped (`truncated`).
    pub max_output_bytes: u64,
    /// The task's own cgroup, when one is delegated to the daemon.
    pub cgroup: Option<tree::TaskCgroup>,
    /// Post to this agent host instead of running `commands`.
    pub http: Option<HttpAgent>,
    /// The agent's `[agent] idle_timeout_s`: the task ends `failed` when it
    /// made no progress for that long.
    pub idle: Option<Idle>,
}

/// A piece of output.
#[derive(Clone, Debug)]
pub struct Chunk {
    /// The pipe it came from.
    pub stream: Stream,
    /// At most [`CHUNK_BYTES`] bytes, as read.
    pub data: Vec<u8>,
}

/// What the executor tells the daemon while it runs.
pub trait Hooks: Send + Sync + 'static {
    /// A command's process started: its pid (= its process group id) and
    /// start time in clock ticks since boot.
    fn spawned(&self, pid: i32, start_ticks: u64);
    /// The leaders of the daemon's other running tasks.
    fn other_leaders(&self) -> Vec<i32>;
    /// The ids of the daemon's other running tasks.
    fn other_tasks(&self) -> Vec<String>;
}

/// The environment for a task: [`BASE_ENV`] and the action's own names,
/// taken from `from` (the daemon's environment), never a name starting
/// with `SUPPORT_`; plus [`MARKER_ENV`] set to the task id. PATH defaults
/// to `/usr/local/bin:/usr/bin:/bin` when the daemon has none.
pub fn environment(
    action_env: &[String],
    from: impl IntoIterator<Item = (String, String)>,
    task_id: &str,
) -> Vec<(String, String)> {
    let allowed = |name: &str| {
        !name.starts_with("SUPPORT_") && (BASE_ENV.contains(&name) || action_env.iter().any(|n| n == name))
    };
    let mut env: Vec<(String, String)> = from.into_iter().filter(|(k, _)| allowed(k)).collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    env.push((MARKER_ENV.into(), task_id.into()));
    env
}

/// Counts, hashes and caps what is delivered: handed to the reader of a
/// task's output, so that the result's `output_bytes` and
/// `output_sha256` cover exactly the chunks the operator can receive.
pub(super) struct Delivered {
    bytes: u64,
    max: u64,
    /// Output went past `max` (the rest is read and dropped), or a chunk
    /// was lost to a slow reader as the task ended.
    pub(super) truncated: bool,
    digest: ring::digest::Context,
}

impl Delivered {
    /// The part of `data` still within the cap (not counted until it is
    /// handed on with [`Delivered::deliver`] or [`Delivered::offer`]).
    pub(super) fn take<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let room = self.max.saturating_sub(self.bytes);
        let keep = &data[..data.len().min(room as usize)];
        if keep.len() < data.len() {
            self.truncated = true;
        }
        keep
    }

    /// Hands `data` (from [`Delivered::take`]) to the reader through
    /// `permit`, and counts it.
    pub(super) fn deliver(&mut self, permit: mpsc::Permit<'_, Chunk>, stream: Stream, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.digest.update(data);
        permit.send(Chunk { stream, data: data.to_vec() });
    }

    /// Hands `data` on if the reader has room now. Otherwise it is lost,
    /// not counted, and the output is marked truncated (a task that is
    /// ending does not wait for a slow reader).
    pub(super) fn offer(&mut self, out: &mpsc::Sender<Chunk>, stream: Stream, data: &[u8]) {
        match out.try_reserve() {
            Ok(permit) => self.deliver(permit, stream, data),
            Err(mpsc::error::TrySendError::Full(())) => self.truncated = true,
            Err(mpsc::error::TrySendError::Closed(())) => {}
        }
    }
}

/// Runs `spec` to its end. `stop` carries who stopped the task; output
/// goes to `out` (a closed receiver just drops it).
pub async fn run(
    spec: Spec,
    out: mpsc::Sender<Chunk>,
    mut stop: watch::Receiver<Option<StoppedBy>>,
    hooks: Arc<dyn Hooks>,
) -> TaskResult {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let mut delivered = Delivered {
        bytes: 0,
        max: spec.max_output_bytes,
        truncated: false,
        digest: ring::digest::Context::new(&ring::digest::SHA256),
    };
    let mut tally =
        Tally { first_failure: None, last_code: None, status: Status::Ok, cancelled_by: None, reason: None };
    match &spec.http {
        Some(http) => {
            let idle = spec.idle.as_ref();
            tally.add(super::agent_host::run_http(http, &out, &mut stop, deadline, idle, &mut delivered).await);
        }
        None => {
            for (i, argv) in spec.commands.iter().enumerate() {
                let stdin = if i == 0 { spec.stdin.as_deref() } else { None };
                let end = run_one(&spec, argv, stdin, &out, &mut stop, deadline, &mut delivered, &hooks).await;
                if !tally.add(end) {
                    break;
                }
            }
        }
    }
    if let Some(cg) = &spec.cgroup {
        cg.kill();
        cg.remove();
    }
    let Tally { first_failure, last_code, status, cancelled_by, reason } = tally;
    let exit_code = match status {
        Status::Ok => last_code.or(Some(0)),
        Status::Failed => first_failure.filter(|c| *c >= 0).or(last_code),
        Status::Timeout | Status::Cancelled => None,
    };
    TaskResult {
        status,
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        truncated: delivered.truncated,
        output_bytes: delivered.bytes,
        output_sha256: hex::encode(delivered.digest.finish()),
        cancelled_by,
        reason: if status == Status::Failed && exit_code.is_none() { reason } else { None },
    }
}

/// Starts one command: in its task's cgroup from its first instruction
/// when the cgroup has a helper ([`tree::TaskCgroup::spawn_with`]: one
/// more exec, of `support __enter-cgroup`), otherwise directly.
///
/// `registered` runs with the child (its pid known) before any kill may
/// run again: a task's leader is a child of the daemon, and until the task
/// is registered as running, and its exec has laid out the environment with
/// the task's marker (the kernel closes the exec's close-on-exec pipe, which
/// `spawn` waits for, before it does), another task's kill would take it
/// for an unclaimed orphan (counterexamples of tests/decision_model.rs).
fn spawn(spec: &Spec, argv: &[String], with_stdin: bool, registered: impl FnOnce(&Child)) -> std::io::Result<Child> {
    let program = program(&argv[0], &spec.env, &spec.cwd);
    let helper = spec.cgroup.as_ref().and_then(|cg| Some((cg.spawn_with()?, cg.dir().join("cgroup.procs"))));
    let mut cmd = match helper {
        Some((helper, procs)) => {
            let mut cmd = Command::new(helper);
            cmd.arg(tree::ENTER_CGROUP).arg(procs).arg("--").arg(program).args(argv);
            cmd
        }
        None => {
            let mut cmd = Command::new(program);
            cmd.arg0(&argv[0]).args(&argv[1..]);
            cmd
        }
    };
    cmd.env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(if with_stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    super::kill::spawning(|| {
        let child = cmd.spawn()?;
        registered(&child);
        Ok(child)
    })
}

/// The file `name` names for a process with environment `env` in `cwd`,
/// found as the child's own PATH search would find it (execvp(3): each
/// entry of the child's PATH in order, an empty one meaning `cwd`, the
/// first regular file it may execute); `name` itself when it holds a `/`,
/// when `env` has no PATH, when the search finds nothing (so the error is
/// the one execvp gives), or when the file found is neither ELF nor `#!`
/// (execvp would run such a file with /bin/sh; posix_spawn would not).
///
/// Why: with a PATH of the child's own and a bare name, std must fork(2)
/// the daemon (copying its page tables) to search in the child; with a path
/// it can posix_spawn(3), which does not copy them. `argv[0]` stays `name`.
fn program(name: &str, env: &[(String, String)], cwd: &Path) -> PathBuf {
    let path = env.iter().rev().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str());
    let Some(path) = path.filter(|_| !name.contains('/')) else { return PathBuf::from(name) };
    find_on_path(name, path, cwd).filter(|file| starts_as_the_kernel_runs(file)).unwrap_or_else(|| PathBuf::from(name))
}

/// Where execvp(3) finds `name` for a process whose PATH is `path` and
/// whose working directory is `cwd`: `name` itself when it holds a `/`,
/// else each entry of `path` in order (an empty one meaning `cwd`). Only a
/// regular file this process may execute counts; `None` when there is none.
pub(super) fn find_on_path(name: &str, path: &str, cwd: &Path) -> Option<PathBuf> {
    use nix::unistd::{AccessFlags, access};
    let runnable = |file: &Path| file.metadata().is_ok_and(|m| m.is_file()) && access(file, AccessFlags::X_OK).is_ok();
    if name.is_empty() {
        return None;
    }
    if name.contains('/') {
        let file = cwd.join(name);
        return runnable(&file).then_some(file);
    }
    path.split(':').map(|dir| cwd.join(if dir.is_empty() { "." } else { dir }).join(name)).find(|f| runnable(f))
}

/// Whether `file` begins as an ELF image or a `#!` script, which execve(2)
/// runs itself. Opened without blocking and checked to be a regular file
/// once open: a name swapped for a FIFO after the PATH search must not
/// hold up the daemon's only runtime thread (it is then left to execvp).
fn starts_as_the_kernel_runs(file: &Path) -> bool {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut head = [0u8; 4];
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY).bits())
        .open(file);
    let Ok(f) = opened else { return false };
    f.metadata().is_ok_and(|m| m.is_file())
        && f.take(4).read_exact(&mut head).is_ok()
        && (head == *b"\x7fELF" || head.starts_with(b"#!"))
}

async fn read_some(pipe: &mut Option<impl AsyncRead + Unpin>, buf: &mut [u8]) -> usize {
    match pipe {
        Some(p) => p.read(buf).await.unwrap_or(0),
        None => std::future::pending().await,
    }
}

/// Waits until someone asks the task to stop; never returns if the sender is gone.
pub(super) async fn stop_requested(stop: &mut watch::Receiver<Option<StoppedBy>>) -> StoppedBy {
    loop {
        if let Some(by) = *stop.borrow_and_update() {
            return by;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Where one command is on its way to its end. Every phase but the last
/// listens for a stop, which kills the tree at once.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Running until `deadline` (the task's timeout).
    Running { deadline: tokio::time::Instant },
    /// The leader exited and what it left was killed; the pipes have until
    /// `give_up_at` to close, and the timeout still applies meanwhile.
    Exited { deadline: tokio::time::Instant, give_up_at: tokio::time::Instant },
    /// Timed out: the tree got SIGTERM and gets SIGKILL at `kill_at`. If the
    /// leader had already exited, the pipes are still given up at `give_up_at`.
    Terminating { kill_at: tokio::time::Instant, give_up_at: Option<tokio::time::Instant> },
    /// The tree was SIGKILLed (a stop, or a timeout past its grace); the
    /// pipes have until `give_up_at`.
    Draining { give_up_at: tokio::time::Instant, by: Option<StoppedBy> },
}

/// What a phase's next timer does when it fires.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Alarm {
    Timeout,
    Kill,
    GiveUp,
}

impl Phase {
    /// Not yet timed out or stopped: output may wait for a slow reader.
    fn live(&self) -> bool {
        matches!(self, Phase::Running { .. } | Phase::Exited { .. })
    }

    /// Whether a stop still changes anything (a stop also ends a
    /// timeout's grace period at once).
    fn stoppable(&self) -> bool {
        !matches!(self, Phase::Draining { by: Some(_), .. })
    }

    /// The next timer: its instant and what it does.
    fn alarm(&self) -> (tokio::time::Instant, Alarm) {
        match *self {
            Phase::Running { deadline } => (deadline, Alarm::Timeout),
            Phase::Exited { deadline, give_up_at } if deadline < give_up_at => (deadline, Alarm::Timeout),
            Phase::Exited { give_up_at, .. } => (give_up_at, Alarm::GiveUp),
            Phase::Terminating { kill_at, give_up_at: Some(give_up_at) } if give_up_at < kill_at => {
                (give_up_at, Alarm::GiveUp)
            }
            Phase::Terminating { kill_at, .. } => (kill_at, Alarm::Kill),
            Phase::Draining { give_up_at, .. } => (give_up_at, Alarm::GiveUp),
        }
    }

    /// The leader has exited; the pipes have until `give_up_at`, unless an
    /// earlier bound is already set.
    fn leader_exited(self, give_up_at: tokio::time::Instant) -> Phase {
        match self {
            Phase::Running { deadline } => Phase::Exited { deadline, give_up_at },
            Phase::Terminating { kill_at, give_up_at: None } => {
                Phase::Terminating { kill_at, give_up_at: Some(give_up_at) }
            }
            other => other,
        }
    }

    /// Timed out now: SIGTERM was sent.
    fn timed_out(self, now: tokio::time::Instant) -> Phase {
        let give_up_at = match self {
            Phase::Exited { give_up_at, .. } => Some(give_up_at),
            _ => None,
        };
        Phase::Terminating { kill_at: now + TERM_GRACE, give_up_at }
    }

    /// The tree was SIGKILLed now: by a stop (`by`) or after a timeout's grace.
    fn killed(self, now: tokio::time::Instant, by: Option<StoppedBy>) -> Phase {
        Phase::Draining { give_up_at: now + DRAIN_LIMIT, by }
    }

    /// How the command ended, given its exit status if it was collected.
    fn end(self, exited: Option<ExitStatus>) -> End {
        match self {
            Phase::Running { .. } | Phase::Exited { .. } => {
                End::Exited(exited.unwrap_or_else(|| std::os::unix::process::ExitStatusExt::from_raw(9)))
            }
            Phase::Terminating { .. } | Phase::Draining { by: None, .. } => End::TimedOut,
            Phase::Draining { by: Some(by), .. } => End::Stopped(by),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_one(
    spec: &Spec,
    argv: &[String],
    stdin: Option<&str>,
    out: &mpsc::Sender<Chunk>,
    stop: &mut watch::Receiver<Option<StoppedBy>>,
    deadline: tokio::time::Instant,
    delivered: &mut Delivered,
    hooks: &Arc<dyn Hooks>,
) -> End {
    use tokio::time::{Instant, sleep_until};

    if let Some(by) = *stop.borrow() {
        return End::Stopped(by);
    }
    let ticks = std::cell::Cell::new(0);
    let registered = |child: &Child| {
        // No pid means it has already been reaped.
        let Some(pid) = child.id().map(|p| p as i32) else { return };
        if let Some(cg) = &spec.cgroup {
            cg.add(pid);
        }
        let start_ticks = tree::stat(pid).map(|s| s.start_ticks).unwrap_or(0);
        ticks.set(start_ticks);
        hooks.spawned(pid, start_ticks);
    };
    let mut child = match spawn(spec, argv, stdin.is_some(), registered) {
        Ok(c) => c,
        Err(e) => {
            let why = format!("could not start `{}`: {e}", argv[0]);
            let text = format!("support: {why}\n");
            let keep = delivered.take(text.as_bytes());
            if let Ok(permit) = out.reserve().await {
                delivered.deliver(permit, Stream::Stderr, keep);
            }
            return End::Failed(why);
        }
    };
    // No pid means it has already been reaped; 0 would name the daemon's own group.
    let Some(pid) = child.id().map(|p| p as i32) else {
        return End::Exited(child.wait().await.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(9)));
    };
    let start_ticks = ticks.get();
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let text = text.to_owned();
        tokio::spawn(async move {
            let _ = pipe.write_all(text.as_bytes()).await;
        });
    }
    let others = || kill::Others { leaders: hooks.other_leaders(), tasks: hooks.other_tasks() };
    let tree =
        kill::Tree { task_id: &spec.task_id, pgid: pid, start_ticks, cgroup: spec.cgroup.as_ref(), others: &others };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut buf_out = vec![0u8; CHUNK_BYTES];
    let mut buf_err = vec![0u8; CHUNK_BYTES];
    let mut exited: Option<ExitStatus> = None;
    let mut phase = Phase::Running { deadline };
    let mut idled = false;
    loop {
        if exited.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        let (alarm_at, alarm) = phase.alarm();
        let idle_at = spec.idle.as_ref().filter(|_| phase.live() && !idled && !delivered.truncated).and_then(Idle::at);
        let (stream, n) = tokio::select! {
            n = read_some(&mut stdout, &mut buf_out) => (Stream::Stdout, n),
            n = read_some(&mut stderr, &mut buf_err) => (Stream::Stderr, n),
            st = child.wait(), if exited.is_none() => {
                exited = Some(st.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(9)));
                // The command is over: nothing it started may outlive it.
                kill::sweep(&tree);
                phase = phase.leader_exited(Instant::now() + DRAIN_LIMIT);
                continue;
            }
            by = stop_requested(stop), if phase.stoppable() => {
                kill::kill_tree(&tree);
                phase = phase.killed(Instant::now(), Some(by));
                continue;
            }
            _ = sleep_until(idle_at.unwrap_or(alarm_at)), if idle_at.is_some() => {
                // Progress may have come meanwhile: then the next round waits anew.
                if spec.idle.as_ref().is_some_and(Idle::passed) {
                    kill::kill_tree(&tree);
                    phase = phase.killed(Instant::now(), None);
                    idled = true;
                }
                continue;
            }
            _ = sleep_until(alarm_at) => {
                match alarm {
                    Alarm::Timeout => {
                        kill::terminate(&tree);
                        phase = phase.timed_out(Instant::now());
                    }
                    Alarm::Kill => {
                        kill::kill_tree(&tree);
                        phase = phase.killed(Instant::now(), None);
                    }
                    Alarm::GiveUp => break,
                }
                continue;
            }
        };
        if n == 0 {
            match stream {
                Stream::Stdout => stdout = None,
                Stream::Stderr => stderr = None,
            }
            continue;
        }
        let data = match stream {
            Stream::Stdout => &buf_out[..n],
            Stream::Stderr => &buf_err[..n],
        };
        let keep = delivered.take(data);
        if !keep.is_empty() && !out.is_closed() {
            if !phase.live() {
                // Ending: a slow reader loses the last output rather than delay the kill.
                delivered.offer(out, stream, keep);
                continue;
            }
            // A slow reader slows the task, but never holds off a stop or the timeout.
            tokio::select! {
                permit = out.reserve() => if let Ok(permit) = permit {
                    delivered.deliver(permit, stream, keep);
                },
                by = stop_requested(stop) => {
                    kill::kill_tree(&tree);
                    phase = phase.killed(Instant::now(), Some(by));
                }
                _ = sleep_until(deadline) => {
                    kill::terminate(&tree);
                    phase = phase.timed_out(Instant::now());
                }
            }
        }
    }
    if exited.is_none() {
        // Pipes held by something unkillable: the leader is dead or dying.
        kill::kill_tree(&tree);
        exited = tokio::time::timeout(Duration::from_secs(1), child.wait()).await.ok().and_then(Result::ok);
    }
    // Nothing of this command outlives it, however it ended.
    if exited.is_some() {
        kill::sweep(&tree);
    } else {
        kill::kill_tree(&tree);
    }
    match (idled, &spec.idle) {
        (true, Some(idle)) => End::Idle(idle.limit),
        _ => phase.end(exited),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(max: u64) -> Delivered {
        Delivered { bytes: 0, max, truncated: false, digest: ring::digest::Context::new(&ring::digest::SHA256) }
    }

    /// The count and digest are of what the reader got: a chunk lost to a
    /// full queue as a task ends is not in them, and the output says
    /// truncated (else the operator's check of the result would fail).
    #[test]
    fn a_chunk_lost_to_a_slow_reader_is_not_counted_and_marks_the_output_truncated() {
        let (out, mut rx) = mpsc::channel::<Chunk>(1);
        let mut d = delivered(1 << 20);
        let keep = d.take(b"first");
        d.offer(&out, Stream::Stdout, keep);
        d.offer(&out, Stream::Stdout, b"lost");
        assert!(d.truncated);
        assert_eq!(d.bytes, 5);
        let got = rx.try_recv().unwrap().data;
        assert_eq!(got, b"first");
        let want = ring::digest::digest(&ring::digest::SHA256, &got);
        assert_eq!(d.digest.finish().as_ref(), want.as_ref());
    }

    /// A closed reader loses nothing it could have read: not truncated.
    #[test]
    fn a_chunk_offered_to_a_closed_reader_is_neither_counted_nor_truncated() {
        let (out, rx) = mpsc::channel::<Chunk>(1);
        drop(rx);
        let mut d = delivered(1 << 20);
        d.offer(&out, Stream::Stdout, b"gone");
        assert!(!d.truncated);
        assert_eq!(d.bytes, 0);
    }

    /// The cap counts what was handed on, and cuts at it.
    #[test]
    fn take_cuts_at_the_cap_of_what_was_delivered() {
        let (out, mut rx) = mpsc::channel::<Chunk>(4);
        let mut d = delivered(6);
        let keep = d.take(b"abcd");
        d.offer(&out, Stream::Stdout, keep);
        assert_eq!(d.take(b"efgh"), b"ef");
        assert!(d.truncated);
        assert_eq!(rx.try_recv().unwrap().data, b"abcd");
    }

    #[test]
    fn a_fifo_in_place_of_a_program_is_passed_over_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("df");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // A blocking open would wait here for a writer that never comes.
        assert!(!starts_as_the_kernel_runs(&fifo));
        let script = dir.path().join("ok");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(starts_as_the_kernel_runs(&script));
    }

    #[test]
    fn a_bare_name_is_found_on_the_childs_path_as_execvp_would() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(a.join("tool"), "").unwrap(); // not executable: skipped
        std::fs::create_dir(a.join("sub")).unwrap(); // a directory: skipped
        let exe = b.join("tool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::create_dir(b.join("sub")).unwrap();
        let env = |path: &str| vec![("HOME".to_string(), "/".to_string()), ("PATH".to_string(), path.to_string())];
        let search = format!("/nonexistent:{}:{}", a.display(), b.display());
        assert_eq!(program("tool", &env(&search), Path::new("/")), exe);
        // Relative and empty entries are the child's cwd.
        assert_eq!(program("tool", &env("a:b"), dir.path()), dir.path().join("b").join("tool"));
        assert_eq!(program("tool", &env(":"), &b), b.join(".").join("tool"));
        // Nothing found, a name with a slash, no PATH: the name as given.
        assert_eq!(program("sub", &env(&search), Path::new("/")), PathBuf::from("sub"));
        assert_eq!(program("missing", &env(&search), Path::new("/")), PathBuf::from("missing"));
        assert_eq!(program("./tool", &env(&search), Path::new("/")), PathBuf::from("./tool"));
        assert_eq!(program("tool", &[], Path::new("/")), PathBuf::from("tool"));
        // No `#!` and not ELF: left to execvp, which runs it with /bin/sh.
        std::fs::write(&exe, "echo hi\n").unwrap();
        assert_eq!(program("tool", &env(&search), Path::new("/")), PathBuf::from("tool"));
        assert_eq!(program("sh", &env("/bin:/usr/bin"), Path::new("/")).parent(), Some(Path::new("/bin")));
    }

    #[test]
    fn phases_arm_the_earliest_timer_and_end_as_the_old_deadlines_did() {
        let now = tokio::time::Instant::now();
        let deadline = now + Duration::from_secs(10);
        let running = Phase::Running { deadline };
        assert_eq!(running.alarm(), (deadline, Alarm::Timeout));
        assert!(running.live() && running.stoppable());
        assert!(matches!(running.end(None), End::Exited(_)));

        // Exited 2 s before the deadline: the timeout still fires first.
        let exited = running.leader_exited(now + Duration::from_secs(8) + DRAIN_LIMIT);
        assert_eq!(exited.alarm(), (deadline, Alarm::Timeout));
        let exited_late = Phase::Running { deadline }.leader_exited(now + DRAIN_LIMIT);
        assert_eq!(exited_late.alarm(), (now + DRAIN_LIMIT, Alarm::GiveUp));

        // A timeout after the exit keeps the drain bound beside the grace period.
        let terminating = exited_late.timed_out(now);
        assert_eq!(terminating.alarm(), (now + TERM_GRACE, Alarm::Kill));
        assert!(!terminating.live() && terminating.stoppable());
        assert!(matches!(terminating.end(None), End::TimedOut));
        let past_grace = terminating.killed(now + TERM_GRACE, None);
        assert_eq!(past_grace.alarm(), (now + TERM_GRACE + DRAIN_LIMIT, Alarm::GiveUp));
        assert!(past_grace.stoppable(), "a stop during the drain still counts");
        assert!(matches!(past_grace.end(None), End::TimedOut));

        // A stop ends everything, once.
        let stopped = terminating.killed(now, Some(StoppedBy::Owner));
        assert!(!stopped.stoppable());
        assert!(matches!(stopped.end(None), End::Stopped(StoppedBy::Owner)));
        assert!(matches!(stopped.leader_exited(now), Phase::Draining { by: Some(StoppedBy::Owner), .. }));
    }
}
