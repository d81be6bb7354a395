//! The executor: runs one approved action's commands as real processes,
//! streams their output, enforces its limits, and kills its whole tree.
//!
//! Each command runs with `process_group(0)` (setpgid(2)), stdin from
//! /dev/null (or the agent's prompt), stdout and stderr piped, in the
//! action's cwd, with an environment reduced to [`environment`]. Output
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
//! tier, shutdown) SIGKILLs the tree at once. See [`super::tree`].

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use super::tree::{self, MARKER_ENV, TaskTree};
use crate::protocol::{Status, StoppedBy, Stream, TaskResult};

/// How long a tree has between SIGTERM and SIGKILL on timeout.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// The most bytes in one output chunk.
pub const CHUNK_BYTES: usize = 16 * 1024;

/// How long the pipes may stay open after the tree was killed (a process
/// in uninterruptible sleep) before the task is ended without them.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// How long connecting to an agent host and getting its response head may take.
pub const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
    pub cwd: PathBuf,
    pub timeout: Duration,
    pub max_output_bytes: u64,
    /// The task's own cgroup, when one is delegated to the daemon.
    pub cgroup: Option<tree::TaskCgroup>,
    /// Post to this agent host instead of running `commands`.
    pub http: Option<HttpAgent>,
}

/// One request to an agent host on loopback (`[agent] endpoint`).
#[derive(Clone)]
pub struct HttpAgent {
    /// A loopback address (the policy refuses any other host).
    pub addr: std::net::SocketAddr,
    /// The `Host` header: the endpoint's authority as written.
    pub host: String,
    /// The path and query.
    pub path: String,
    /// Sent as `X-Support-Secret`.
    pub secret: String,
    /// The JSON body: `{"task_id", "prompt", "mode"}`.
    pub body: Vec<u8>,
}

impl std::fmt::Debug for HttpAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAgent")
            .field("addr", &self.addr)
            .field("host", &self.host)
            .field("path", &self.path)
            .field("secret", &"***")
            .finish()
    }
}

/// A piece of output.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub stream: Stream,
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

/// Counts, hashes and caps what is delivered.
struct Delivered {
    bytes: u64,
    max: u64,
    truncated: bool,
    digest: ring::digest::Context,
}

impl Delivered {
    /// The part of `data` still within the cap.
    fn take<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let room = self.max.saturating_sub(self.bytes);
        let keep = &data[..data.len().min(room as usize)];
        if keep.len() < data.len() {
            self.truncated = true;
        }
        self.bytes += keep.len() as u64;
        self.digest.update(keep);
        keep
    }
}

/// How one command ended.
enum End {
    Exited(ExitStatus),
    Stopped(StoppedBy),
    TimedOut,
    NotStarted,
    /// The agent host answered with an error, or the exchange broke.
    Failed,
}

/// How the commands so far ended.
struct Tally {
    first_failure: Option<i32>,
    last_code: Option<i32>,
    status: Status,
    cancelled_by: Option<StoppedBy>,
}

impl Tally {
    /// Counts one command's end; false when no further command may run.
    fn add(&mut self, end: End) -> bool {
        match end {
            End::Exited(st) => {
                self.last_code = st.code();
                if !st.success() && self.first_failure.is_none() {
                    self.first_failure = Some(st.code().unwrap_or(-1));
                    self.status = Status::Failed;
                }
                true
            }
            End::NotStarted | End::Failed => self.end(Status::Failed, None),
            End::TimedOut => self.end(Status::Timeout, None),
            End::Stopped(by) => self.end(Status::Cancelled, Some(by)),
        }
    }

    fn end(&mut self, status: Status, by: Option<StoppedBy>) -> bool {
        self.status = status;
        self.cancelled_by = by;
        self.last_code = None;
        false
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
    let mut tally = Tally { first_failure: None, last_code: None, status: Status::Ok, cancelled_by: None };
    match &spec.http {
        Some(http) => {
            tally.add(run_http(http, &out, &mut stop, deadline, &mut delivered).await);
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
    let Tally { first_failure, last_code, status, cancelled_by } = tally;
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
    }
}

fn spawn(spec: &Spec, argv: &[String], with_stdin: bool) -> std::io::Result<Child> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(if with_stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd.spawn()
}

async fn read_some(pipe: &mut Option<impl AsyncRead + Unpin>, buf: &mut [u8]) -> usize {
    match pipe {
        Some(p) => p.read(buf).await.unwrap_or(0),
        None => std::future::pending().await,
    }
}

/// Waits until someone asks the task to stop; never returns if the sender is gone.
async fn stop_requested(stop: &mut watch::Receiver<Option<StoppedBy>>) -> StoppedBy {
    loop {
        if let Some(by) = *stop.borrow_and_update() {
            return by;
        }
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
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
    if let Some(by) = *stop.borrow() {
        return End::Stopped(by);
    }
    let mut child = match spawn(spec, argv, stdin.is_some()) {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("support: could not start `{}`: {e}\n", argv[0]);
            let keep = delivered.take(msg.as_bytes()).to_vec();
            let _ = out.send(Chunk { stream: Stream::Stderr, data: keep }).await;
            return End::NotStarted;
        }
    };
    // No pid means it has already been reaped; 0 would name the daemon's own group.
    let Some(pid) = child.id().map(|p| p as i32) else {
        return End::Exited(child.wait().await.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(9)));
    };
    if let Some(cg) = &spec.cgroup {
        cg.add(pid);
    }
    let start_ticks = tree::stat(pid).map(|s| s.start_ticks).unwrap_or(0);
    hooks.spawned(pid, start_ticks);
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let text = text.to_owned();
        tokio::spawn(async move {
            let _ = pipe.write_all(text.as_bytes()).await;
        });
    }
    let task_id = spec.task_id.clone();
    let cgroup = spec.cgroup.clone();
    let find = move || {
        let others = hooks.other_leaders();
        let other_tasks = hooks.other_tasks();
        let mut found = tree::members(&TaskTree {
            task_id: &task_id,
            pgid: pid,
            start_ticks,
            other_leaders: &others,
            other_tasks: &other_tasks,
        });
        if let Some(cg) = &cgroup {
            // Everything in the task's cgroup is the task's; what the scan
            // found joins it, so a later escape cannot leave it.
            for p in &found {
                cg.add(*p);
            }
            found.extend(cg.members().into_iter().filter(|p| tree::alive(*p)));
        }
        found
    };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut buf_out = vec![0u8; CHUNK_BYTES];
    let mut buf_err = vec![0u8; CHUNK_BYTES];
    let mut exited: Option<ExitStatus> = None;
    let mut end: Option<End> = None;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut give_up_at: Option<tokio::time::Instant> = None;
    let far = deadline + Duration::from_secs(365 * 24 * 3600);
    loop {
        if exited.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        let (stream, n) = tokio::select! {
            n = read_some(&mut stdout, &mut buf_out) => (Stream::Stdout, n),
            n = read_some(&mut stderr, &mut buf_err) => (Stream::Stderr, n),
            st = child.wait(), if exited.is_none() => {
                exited = Some(st.unwrap_or_else(|_| std::os::unix::process::ExitStatusExt::from_raw(9)));
                // The command is over: nothing it started may outlive it.
                kill_all(spec.cgroup.as_ref(), pid, &find);
                give_up_at.get_or_insert(tokio::time::Instant::now() + DRAIN_LIMIT);
                continue;
            }
            // A stop also ends a timeout's grace period at once.
            by = stop_requested(stop), if !matches!(end, Some(End::Stopped(_))) => {
                kill_all(spec.cgroup.as_ref(), pid, &find);
                end = Some(End::Stopped(by));
                kill_at = None;
                give_up_at = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                continue;
            }
            _ = tokio::time::sleep_until(deadline), if end.is_none() => {
                tree::signal_all(pid, &find(), Signal::SIGTERM);
                end = Some(End::TimedOut);
                kill_at = Some(tokio::time::Instant::now() + TERM_GRACE);
                continue;
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                kill_all(spec.cgroup.as_ref(), pid, &find);
                kill_at = None;
                give_up_at = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                continue;
            }
            _ = tokio::time::sleep_until(give_up_at.unwrap_or(far)), if give_up_at.is_some() => break,
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
            let chunk = Chunk { stream, data: keep.to_vec() };
            if end.is_some() {
                // Ending: a slow reader loses the last output rather than delay the kill.
                let _ = out.try_send(chunk);
                continue;
            }
            // A slow reader slows the task, but never holds off a stop or the timeout.
            tokio::select! {
                _ = out.send(chunk) => {}
                by = stop_requested(stop) => {
                    kill_all(spec.cgroup.as_ref(), pid, &find);
                    end = Some(End::Stopped(by));
                    give_up_at = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                }
                _ = tokio::time::sleep_until(deadline) => {
                    tree::signal_all(pid, &find(), Signal::SIGTERM);
                    end = Some(End::TimedOut);
                    kill_at = Some(tokio::time::Instant::now() + TERM_GRACE);
                }
            }
        }
    }
    if exited.is_none() {
        // Pipes held by something unkillable: the leader is dead or dying.
        kill_all(spec.cgroup.as_ref(), pid, &find);
        exited = tokio::time::timeout(Duration::from_secs(1), child.wait()).await.ok().and_then(Result::ok);
    }
    // Nothing of this command outlives it, however it ended.
    kill_all(spec.cgroup.as_ref(), pid, &find);
    match end {
        Some(e) => e,
        None => End::Exited(exited.unwrap_or_else(|| std::os::unix::process::ExitStatusExt::from_raw(9))),
    }
}

/// SIGKILLs the tree: the cgroup at once if there is one, then by scans.
fn kill_all(cgroup: Option<&tree::TaskCgroup>, pid: i32, find: impl Fn() -> BTreeSet<i32>) {
    if let Some(cg) = cgroup {
        cg.kill();
    }
    tree::kill_until_gone(pid, 50, find);
}

/// Posts the task to an agent host and relays its response body as
/// stdout. A non-2xx answer is a failure with the head of its body on
/// stderr; a stop or the deadline drops the connection, which aborts the
/// request on the host's side.
async fn run_http(
    http: &HttpAgent,
    out: &mpsc::Sender<Chunk>,
    stop: &mut watch::Receiver<Option<StoppedBy>>,
    deadline: tokio::time::Instant,
    delivered: &mut Delivered,
) -> End {
    use http_body_util::BodyExt as _;

    if let Some(by) = *stop.borrow() {
        return End::Stopped(by);
    }
    let say = |delivered: &mut Delivered, msg: String| {
        let keep = delivered.take(format!("support: {msg}\n").as_bytes()).to_vec();
        let _ = out.try_send(Chunk { stream: Stream::Stderr, data: keep });
    };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(http.addr).await.map_err(|e| format!("connect: {e}"))?;
        // Another local user may hold the port while the host is down: the
        // secret and the prompt go only to a listener of the owner's own.
        match listener_uids(http.addr.port()) {
            uids if !uids.is_empty() && uids.iter().all(|u| *u == crate::paths::current_uid()) => {}
            uids if uids.is_empty() => {
                return Err("cannot tell who listens on that port (/proc/net/tcp); not sending the secret".into());
            }
            uids => return Err(format!("the port is held by another user (uid {uids:?}); not sending it the secret")),
        }
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // The connection is driven here and aborted with this task: a stop aborts the request.
        let driver = AbortOnDrop(tokio::spawn(conn));
        let request = hyper::Request::post(http.path.as_str())
            .header(hyper::header::HOST, http.host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/x-ndjson")
            .header("X-Support-Secret", http.secret.as_str())
            .body(http_body_util::Full::new(bytes::Bytes::from(http.body.clone())))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        Ok::<_, String>((response, driver))
    };
    let connect_by = (tokio::time::Instant::now() + HTTP_CONNECT_TIMEOUT).min(deadline);
    let (response, driver) = tokio::select! {
        r = exchange => match r {
            Ok(r) => r,
            Err(e) => {
                say(delivered, format!("the agent host at {} failed: {e}", http.addr));
                return End::NotStarted;
            }
        },
        by = stop_requested(stop) => return End::Stopped(by),
        _ = tokio::time::sleep_until(connect_by) => {
            if connect_by >= deadline {
                return End::TimedOut;
            }
            say(delivered, format!("the agent host at {} did not answer within {} s", http.addr, HTTP_CONNECT_TIMEOUT.as_secs()));
            return End::NotStarted;
        }
    };
    // Aborting the driver closes the socket, whichever way this ends.
    let _driver = driver;
    let status = response.status();
    let mut body = response.into_body();
    let ok = status.is_success();
    let mut error_head = Vec::new();
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            by = stop_requested(stop) => return End::Stopped(by),
            _ = tokio::time::sleep_until(deadline) => return End::TimedOut,
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => {
                say(delivered, format!("the agent host's response broke off: {e}"));
                return End::Failed;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
        };
        if !ok {
            // The head of an error body is enough for the message.
            let room = 1024usize.saturating_sub(error_head.len());
            error_head.extend_from_slice(&data[..data.len().min(room)]);
            if error_head.len() >= 1024 {
                break;
            }
            continue;
        }
        for piece in data.chunks(CHUNK_BYTES) {
            let keep = delivered.take(piece);
            if keep.is_empty() || out.is_closed() {
                continue;
            }
            let chunk = Chunk { stream: Stream::Stdout, data: keep.to_vec() };
            tokio::select! {
                _ = out.send(chunk) => {}
                by = stop_requested(stop) => return End::Stopped(by),
                _ = tokio::time::sleep_until(deadline) => return End::TimedOut,
            }
        }
    }
    if !ok {
        let head = String::from_utf8_lossy(&error_head);
        say(delivered, format!("the agent host answered HTTP {status}: {}", head.trim()));
        return End::Failed;
    }
    End::Exited(std::os::unix::process::ExitStatusExt::from_raw(0))
}

/// The uids of the TCP sockets listening on `port` on a loopback or
/// wildcard address, from `/proc/net/tcp` and `/proc/net/tcp6` (proc(5)):
/// the address is hex in host byte order, the port hex, state `0A` is
/// LISTEN, the uid is the eighth field.
fn listener_uids(port: u16) -> Vec<u32> {
    const LOCAL: [&str; 6] = [
        "0100007F",
        "7F000001",
        "00000000",
        "00000000000000000000000001000000",
        "00000000000000000000000000000001",
        "00000000000000000000000000000000",
    ];
    let mut uids = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Some(text) = tree::read_proc(std::path::Path::new(file), 32 << 20) else { continue };
        for line in String::from_utf8_lossy(&text).lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(uid)) = (f.get(1), f.get(3), f.get(7)) else { continue };
            let Some((addr, p)) = local.split_once(':') else { continue };
            let v4_mapped_loopback = addr.len() == 32 && addr.starts_with("0000000000000000FFFF0000");
            if *state == "0A"
                && u16::from_str_radix(p, 16) == Ok(port)
                && (LOCAL.contains(&addr) || v4_mapped_loopback)
                && let Ok(uid) = uid.parse()
            {
                uids.push(uid);
            }
        }
    }
    uids
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
