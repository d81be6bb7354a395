//! An interactive session: the `shell` action without `cmd`, at tier 4,
//! admitted as every task is (the gate, scope, budget: one session is one
//! action), run on a pty ([`super::pty`]) until its shell exits, a stop
//! ends it (owner, operator or its connection, revoke, expiry, a lower
//! tier, shutdown, the link lost), it is idle for `[shell] idle_timeout_s`,
//! or its recording reaches `[shell] max_recording_bytes`.
//!
//! Its output goes to the operator as signed `terminal` answers, to the
//! owner as `terminal` watch events, and to its recording; the operator's
//! `input` and `resize` frames come in through [`Daemon::session_input`],
//! each checked ([`InputCheck`]) before it reaches the pty. A frame
//! refused as a replay of one already taken is only counted; any other
//! refusal (altered, foreign, out of order, or a keystroke the queue had
//! no room for) ends the session: the operator's keystrokes no longer all
//! reach the shell as typed, and later ones would be refused by order
//! anyway, leaving the operator typing into nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::sync::{mpsc, watch};

use super::pty::{self, Pty};
use super::{Daemon, exec, kill, session_record};
use crate::control_api::{TaskView, WatchEvent};
use crate::protocol::session::{InputCheck, InputError, Keys};
use crate::protocol::{DeviceFrame, SessionInput, Status, StoppedBy, TaskResult};
use crate::recording::Header;

/// Operator frames checked but not yet written to the pty, per session.
const KEYS_QUEUE: usize = 256;

/// How long the pty may stay open after its shell ended and the tree was
/// swept or killed (a process in uninterruptible sleep) before the session
/// ends without it.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// The pty's size when the `run` gives none.
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// The way in for one session's operator frames, kept in its task's entry.
pub(super) struct Inlet {
    check: InputCheck,
    /// `None` once the stream of keystrokes broke: the session sees its
    /// end of the channel close, and why in `broken`.
    tx: Option<mpsc::Sender<Keys>>,
    refused: u64,
    broken: Option<String>,
}

impl Inlet {
    /// The inlet of the session `run` on device `device_id`, and where its
    /// checked frames come out.
    pub(super) fn new(device_id: &str, run: &crate::Run) -> Option<(Inlet, mpsc::Receiver<Keys>)> {
        let check = InputCheck::new(device_id, run).ok()?;
        let (tx, rx) = mpsc::channel(KEYS_QUEUE);
        Some((Inlet { check, tx: Some(tx), refused: 0, broken: None }, rx))
    }
}

/// A session's `[shell]` settings, as of its start.
pub(super) struct Settings {
    /// The program, resolved ([`pty::program`]).
    pub(super) program: String,
    /// Columns and rows at the start.
    pub(super) size: (u16, u16),
    /// No input and no output for this long ends it.
    pub(super) idle: Duration,
}

impl Settings {
    /// The settings for a session of `info` under `shell`.
    pub(super) fn of(shell: &crate::policy::ShellConfig, info: &TaskView) -> Settings {
        let cell = |name: &str, default: u16| info.params.get(name).and_then(|v| v.parse().ok()).unwrap_or(default);
        Settings {
            program: pty::program(shell.program.as_deref()),
            size: (cell("cols", DEFAULT_SIZE.0), cell("rows", DEFAULT_SIZE.1)),
            idle: Duration::from_secs(shell.idle_timeout_s),
        }
    }
}

/// What a session tells its recording, in order (see [`super::session_record`]).
#[derive(Debug)]
pub(super) enum Recorded {
    /// Bytes the pty wrote, at this time since the start.
    Output(Duration, Vec<u8>),
    /// Bytes the operator typed.
    Input(Duration, Vec<u8>),
    /// A new window size.
    Resize(Duration, u16, u16),
}

/// Where a session's events are recorded: a sender, and a signal that
/// the recording cannot go on (its cap, or a write that failed): the why.
pub(super) struct Recording {
    /// Events, in order.
    pub(super) events: std::sync::mpsc::SyncSender<Recorded>,
    /// Set (once) when the recording has stopped, with the message for people.
    pub(super) stopped: watch::Receiver<Option<String>>,
    /// Whether the operator's input is recorded too (`[shell] record_input`).
    pub(super) input: bool,
}

impl Recording {
    fn note(&self, event: Recorded) {
        if self.stopped.borrow().is_none() {
            // The recorder thread holds few events; a full queue waits briefly
            // rather than lose one (the file must be the whole session).
            let _ = self.events.send(event);
        }
    }
}

impl Daemon {
    /// An operator's `input` or `resize` frame from the relay: passed to
    /// its session's pty if it passes [`InputCheck`]; else refused (logged,
    /// counted on the session's end record) and, unless it is a replay of
    /// a frame already taken, the session's stream is marked broken and
    /// closed, which ends the session with the reason.
    pub(super) fn session_input(&self, frame: SessionInput) {
        let mut state = self.state();
        let entry = state.tasks.values_mut().find(|t| t.info.request_id == frame.request_id() && t.session.is_some());
        let Some(inlet) = entry.and_then(|t| t.session.as_mut()) else {
            tracing::info!(kind = frame.kind(), request = %crate::text::safe_id(frame.request_id()), "a session frame for no running session was refused");
            return;
        };
        let Some(tx) = inlet.tx.as_ref() else {
            inlet.refused += 1;
            return;
        };
        let why = match inlet.check.check(&frame) {
            Ok(keys) => match tx.try_send(keys) {
                Ok(()) => return,
                Err(_) => format!(
                    "the session's input queue was full ({KEYS_QUEUE} frames): keystrokes were lost, so the session ends"
                ),
            },
            Err(e @ InputError::Order { expected, got, .. }) if got < expected => {
                // The same signed frame again: taken once already, nothing is lost.
                inlet.refused += 1;
                tracing::warn!(error = %e, "a replayed session frame was refused");
                return;
            }
            Err(e) => format!(
                "an operator frame was refused ({e}): the operator's keystrokes did not all arrive as sent \
                 (the relay altered, dropped, reordered or made up a frame), so the session ends"
            ),
        };
        inlet.refused += 1;
        tracing::warn!(%why, "a session's input stream broke");
        inlet.tx = None;
        inlet.broken = Some(why);
    }

    /// Why the task's session's input stream broke, if it did.
    fn input_broken(&self, task_id: &str) -> Option<String> {
        self.state().tasks.get(task_id).and_then(|t| t.session.as_ref()).and_then(|i| i.broken.clone())
    }

    /// How many frames of the task's session were refused so far.
    pub(super) fn refused_input(&self, task_id: &str) -> u64 {
        self.state().tasks.get(task_id).and_then(|t| t.session.as_ref()).map_or(0, |i| i.refused)
    }

    /// Stops every interactive session, `by` whom (the relay link was lost:
    /// no operator can see or steer them any more).
    pub(super) fn stop_sessions(&self, by: StoppedBy) {
        let state = self.state();
        for t in state.tasks.values().filter(|t| t.info.interactive) {
            t.stop(by);
        }
    }
}

/// Where a session is on its way to its end.
struct Ending {
    /// The shell's exit: its code, or `None` for a signal.
    exited: Option<Option<i32>>,
    /// Who stopped it.
    stopped: Option<StoppedBy>,
    /// Why it ended otherwise (idle, the recording's cap), for people.
    reason: Option<String>,
    /// After this the pty is given up on.
    give_up_at: Option<tokio::time::Instant>,
}

impl Ending {
    fn live(&self) -> bool {
        self.exited.is_none() && self.stopped.is_none() && self.reason.is_none()
    }
}

/// Runs the session of `info` to its end. `keys` brings the operator's
/// checked frames; `frames` takes its `terminal` answers.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    daemon: &Daemon,
    spec: &exec::Spec,
    info: &TaskView,
    settings: Settings,
    mut keys: mpsc::Receiver<Keys>,
    frames: &mpsc::Sender<DeviceFrame>,
    mut stop: watch::Receiver<Option<StoppedBy>>,
    hooks: Arc<dyn exec::Hooks>,
    recording: Option<Recording>,
) -> TaskResult {
    let started = Instant::now();
    let mut seq = 0u64;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut bytes = 0u64;
    let publish_size = |cols, rows| {
        daemon.publish(&WatchEvent::TerminalSize { task_id: info.task_id.clone(), cols, rows });
    };
    let pty = match Pty::start(spec, &settings.program, settings.size, |pid, ticks| hooks.spawned(pid, ticks)) {
        Ok(p) => p,
        Err(why) => {
            let text = format!("support: {why}\r\n");
            digest.update(text.as_bytes());
            let _ = frames.send(DeviceFrame::terminal(&info.request_id, 0, text.as_bytes())).await;
            return TaskResult {
                status: Status::Failed,
                exit_code: None,
                duration_ms: started.elapsed().as_millis() as u64,
                truncated: false,
                output_bytes: text.len() as u64,
                output_sha256: hex::encode(digest.finish()),
                cancelled_by: None,
                reason: Some(why),
            };
        }
    };
    let Pty { control, pid, start_ticks, mut output, mut exited } = pty;
    publish_size(settings.size.0, settings.size.1);
    let others = || kill::Others { leaders: hooks.other_leaders(), tasks: hooks.other_tasks() };
    let tree =
        kill::Tree { task_id: &spec.task_id, pgid: pid, start_ticks, cgroup: spec.cgroup.as_ref(), others: &others };
    let mut cap = recording.as_ref().map(|r| r.stopped.clone());
    let at = || started.elapsed();
    let mut end = Ending { exited: None, stopped: None, reason: None, give_up_at: None };
    let mut idle_at = tokio::time::Instant::now() + settings.idle;
    let (mut keys_open, mut output_open) = (true, true);
    // Output not sent to the operator (a slow link as the session ended).
    let mut lost = false;
    loop {
        if !output_open && (end.exited.is_some() || !end.live()) {
            break;
        }
        let give_up = end.give_up_at;
        tokio::select! {
            chunk = output.recv(), if output_open => {
                let Some(data) = chunk else {
                    // The pty is closed everywhere; the shell's exit status is on its way.
                    output_open = false;
                    end.give_up_at.get_or_insert(tokio::time::Instant::now() + DRAIN_LIMIT);
                    continue;
                };
                idle_at = tokio::time::Instant::now() + settings.idle;
                daemon.publish(&WatchEvent::Terminal {
                    task_id: info.task_id.clone(),
                    data: base64::engine::general_purpose::STANDARD.encode(&data),
                });
                if let Some(r) = &recording {
                    r.note(Recorded::Output(at(), data.clone()));
                }
                // The result's count and digest cover the frames handed to the
                // link, and only those: what the operator can check it received.
                let permit = if end.live() {
                    tokio::select! {
                        permit = frames.reserve() => permit.ok(),
                        by = exec::stop_requested(&mut stop) => {
                            stopped(&tree, &mut end, by);
                            None
                        }
                    }
                } else {
                    // Ending: a slow link loses the last output rather than delay the kill.
                    frames.try_reserve().ok()
                };
                match permit {
                    Some(permit) => {
                        bytes += data.len() as u64;
                        digest.update(&data);
                        permit.send(DeviceFrame::terminal(&info.request_id, seq, &data));
                        seq += 1;
                    }
                    None => lost = true,
                }
            }
            k = keys.recv(), if keys_open && end.live() => match k {
                Some(Keys::Data(data)) => {
                    idle_at = tokio::time::Instant::now() + settings.idle;
                    if let Some(r) = recording.as_ref().filter(|r| r.input) {
                        r.note(Recorded::Input(at(), data.clone()));
                    }
                    if !control.write(data) {
                        tracing::warn!("the pty took no more input; keystrokes dropped");
                    }
                }
                Some(Keys::Size { cols, rows }) => {
                    control.resize(cols, rows);
                    publish_size(cols, rows);
                    if let Some(r) = &recording {
                        r.note(Recorded::Resize(at(), cols, rows));
                    }
                }
                None => {
                    keys_open = false;
                    if let Some(why) = daemon.input_broken(&info.task_id) {
                        kill::kill_tree(&tree);
                        end.reason = Some(why);
                        end.give_up_at = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                    }
                }
            },
            code = &mut exited, if end.exited.is_none() => {
                end.exited = Some(code.ok().flatten());
                // The shell is over: nothing it started may outlive it.
                kill::sweep(&tree);
                end.give_up_at.get_or_insert(tokio::time::Instant::now() + DRAIN_LIMIT);
            }
            by = exec::stop_requested(&mut stop), if end.stopped.is_none() => stopped(&tree, &mut end, by),
            _ = tokio::time::sleep_until(idle_at), if end.live() => {
                kill::kill_tree(&tree);
                end.reason = Some(format!("the session was idle (no input, no output) for {} s", settings.idle.as_secs()));
                end.give_up_at = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
            }
            why = recording_stopped(&mut cap), if end.live() => {
                kill::kill_tree(&tree);
                end.reason = Some(why);
                end.give_up_at = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
            }
            _ = tokio::time::sleep_until(give_up.unwrap_or_else(tokio::time::Instant::now)), if give_up.is_some() => break,
        }
    }
    // Nothing of the session outlives it, however it ended.
    if end.exited.is_some() {
        kill::sweep(&tree);
    } else {
        kill::kill_tree(&tree);
    }
    let (status, exit_code, cancelled_by, reason) = match end {
        Ending { stopped: Some(by), .. } => (Status::Cancelled, None, Some(by), None),
        Ending { reason: Some(why), .. } => (Status::Failed, None, None, Some(why)),
        Ending { exited: Some(Some(0)), .. } => (Status::Ok, Some(0), None, None),
        Ending { exited: Some(Some(code)), .. } => (Status::Failed, Some(code), None, None),
        Ending { exited: Some(None), .. } => {
            (Status::Failed, None, None, Some("the shell was killed by a signal".into()))
        }
        Ending { .. } => (Status::Failed, None, None, Some("the pty closed before the shell's exit was seen".into())),
    };
    TaskResult {
        status,
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
        truncated: lost,
        output_bytes: bytes,
        output_sha256: hex::encode(digest.finish()),
        cancelled_by,
        reason,
    }
}

/// The result of a session that never started, `why`.
fn not_started(why: String) -> TaskResult {
    tracing::error!(%why, "a session could not start");
    TaskResult {
        status: Status::Failed,
        exit_code: None,
        duration_ms: 0,
        truncated: false,
        output_bytes: 0,
        output_sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, b"")),
        cancelled_by: None,
        reason: Some(why),
    }
}

/// A stop came: the tree is killed at once.
fn stopped(tree: &kill::Tree<'_>, end: &mut Ending, by: StoppedBy) {
    kill::kill_tree(tree);
    end.stopped = Some(by);
    end.give_up_at = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
}

/// Waits until the recording stops, with why; never when there is none.
async fn recording_stopped(cap: &mut Option<watch::Receiver<Option<String>>>) -> String {
    let Some(rx) = cap else { return std::future::pending().await };
    let why = rx.wait_for(Option::is_some).await.ok().and_then(|why| why.clone());
    match why {
        Some(why) => why,
        None => std::future::pending().await,
    }
}

impl Daemon {
    /// Runs the session of `info` (see [`run`]) with the `[shell]` settings
    /// in force; its result, and its recording's SHA-256 if one was made.
    pub(super) async fn drive_session(
        &self,
        spec: &exec::Spec,
        info: &TaskView,
        keys: mpsc::Receiver<Keys>,
        frames: &mpsc::Sender<DeviceFrame>,
        stop: watch::Receiver<Option<StoppedBy>>,
        hooks: Arc<dyn exec::Hooks>,
    ) -> (TaskResult, Option<String>) {
        let shell = self.catalogue().shell.clone();
        let settings = Settings::of(&shell, info);
        let header = Header {
            width: settings.size.0,
            height: settings.size.1,
            timestamp: chrono::Utc::now().timestamp(),
            title: format!("{} on {}: interactive shell {}", info.operator, self.device_id(), info.task_id),
            env: [("SHELL".to_string(), settings.program.clone()), ("TERM".to_string(), pty::TERM.to_string())].into(),
        };
        let (state_dir, task_id) = (self.inner.paths.state_dir.clone(), info.task_id.clone());
        let (max, input) = (shell.max_recording_bytes, shell.record_input);
        let started =
            tokio::task::spawn_blocking(move || session_record::start(&state_dir, &task_id, &header, max, input)).await;
        let started = match started {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return (not_started(format!("{e}; the session does not start without it")), None),
            Err(e) => return (not_started(format!("the recording could not be started: {e}")), None),
        };
        let result = run(self, spec, info, settings, keys, frames, stop, hooks, Some(started.recording)).await;
        let finished = tokio::task::spawn_blocking(move || started.finished.join()).await;
        match finished {
            Ok(Ok(Ok(f))) => {
                tracing::info!(file = %f.path.display(), bytes = f.bytes, "the session's recording is complete");
                (result, Some(f.sha256))
            }
            Ok(Ok(Err(e))) => {
                tracing::error!(error = %e, "the session's recording could not be finished");
                (result, None)
            }
            _ => {
                tracing::error!("the session's recording thread failed");
                (result, None)
            }
        }
    }
}
