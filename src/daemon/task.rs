//! A running task: its entry in the daemon's table, the run loop that
//! drives it to its end and records it, the owner's and operator's stop,
//! and the output decoder. Dropping an entry stops its task.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::records::end_records;
use super::{Daemon, OUTPUT_CHANNEL, RECENT_TASKS, SHUTDOWN_WAIT, exec, kill, tree};
use crate::control_api::{TaskDetail, TaskView, TranscriptView, WatchEvent};
use crate::lock;
use crate::protocol::{DeviceFrame, StoppedBy, Stream, TaskResult};
use crate::transcript::{self, Transcript};

/// A task in the daemon's table. Dropping it stops the task (as a
/// shutdown), so no path that loses an entry can leave its task running;
/// so an entry is only ever removed once its task is over (or never started),
/// and never moved between tables.
pub(super) struct TaskEntry {
    pub(super) info: TaskView,
    stop: watch::Sender<Option<StoppedBy>>,
    done: watch::Receiver<Option<TaskResult>>,
    transcript: Arc<Mutex<Transcript>>,
    /// Through what the owner stopped it, when not the CLI (`console`):
    /// goes on its `task.stopped` record.
    stop_via: Option<&'static str>,
    /// An interactive session's way in for its operator's frames.
    pub(super) session: Option<super::session::Inlet>,
}

impl TaskEntry {
    /// The entry of a task that `stop` stops and whose end arrives on `done`.
    pub(super) fn new(
        info: TaskView,
        stop: watch::Sender<Option<StoppedBy>>,
        done: watch::Receiver<Option<TaskResult>>,
        transcript: Arc<Mutex<Transcript>>,
    ) -> TaskEntry {
        TaskEntry { info, stop, done, transcript, stop_via: None, session: None }
    }

    /// Asks the task to stop, `by` whom, unless a stop was asked already.
    /// Returns whether this call asked.
    pub(super) fn stop(&self, by: StoppedBy) -> bool {
        let first = self.stop.borrow().is_none();
        if first {
            let _ = self.stop.send(Some(by));
        }
        first
    }
}

impl Drop for TaskEntry {
    fn drop(&mut self) {
        self.stop(StoppedBy::Shutdown);
    }
}

/// An ended task, kept for the owner to look back at.
pub(super) struct Finished {
    info: TaskView,
    result: TaskResult,
    transcript: Arc<Mutex<Transcript>>,
}

impl Daemon {
    /// Takes a task out of the table (and `tasks.json`).
    pub(super) fn forget_task(&self, task_id: &str) {
        let mut state = self.state();
        state.tasks.remove(task_id);
        self.persist_tasks(&state);
    }

    /// Runs an accepted task to its end and records it.
    pub(super) async fn drive(self, task: super::admit::Registered, frames: mpsc::Sender<DeviceFrame>) {
        let super::admit::Registered { spec, info, stop, done, transcript, forget, keys } = task;
        let hooks: Arc<dyn exec::Hooks> = Arc::new(TaskHooks { daemon: self.clone(), task_id: info.task_id.clone() });
        let (result, recording_sha256) = match keys {
            Some(keys) => self.drive_session(&spec, &info, keys, &frames, stop, hooks).await,
            None => (self.run_task(spec, &info, &transcript, &frames, stop, hooks).await, None),
        };
        let transcript_sha256 = info.agent.then(|| lock(&transcript).digest());
        let mut records = end_records(&info, &result, transcript_sha256);
        let via = self.state().tasks.get(&info.task_id).and_then(|t| t.stop_via);
        for r in records.iter_mut().filter(|r| r.event == crate::audit::Event::TaskStopped) {
            r.via = via.map(str::to_string);
        }
        if let Some(r) = records.iter_mut().find(|r| r.event == crate::audit::Event::ActionFinished) {
            r.recording_sha256 = recording_sha256;
            let refused = self.refused_input(&info.task_id);
            if refused > 0 {
                r.detail = Some(format!("{refused} operator frame(s) refused (bad signature, order or session)"));
            }
        }
        if let Err(e) = self.audit(records).await {
            tracing::error!(error = %crate::ErrorChain(&e), "could not record the end of a task");
        }
        {
            let mut recent = lock(&self.inner.recent);
            if recent.len() >= RECENT_TASKS {
                recent.pop_front();
            }
            recent.push_back(Finished { info: info.clone(), result: result.clone(), transcript });
        }
        drop(forget);
        let _ = frames.send(DeviceFrame::result(&info.request_id, &result)).await;
        let _ = done.send(Some(result));
        kill::reap_strays(&self.leaders());
    }

    /// Runs a task's commands to their end, its output going to `frames`,
    /// the transcript and the watchers.
    async fn run_task(
        &self,
        mut spec: exec::Spec,
        info: &TaskView,
        transcript: &Arc<Mutex<Transcript>>,
        frames: &mpsc::Sender<DeviceFrame>,
        stop: watch::Receiver<Option<StoppedBy>>,
        hooks: Arc<dyn exec::Hooks>,
    ) -> TaskResult {
        let limit = self.catalogue().agent.idle_timeout_s;
        let progress = (info.agent && limit > 0).then(|| {
            let (tx, rx) = watch::channel(None);
            spec.idle = Some(exec::Idle { limit: Duration::from_secs(limit), retrying_since: rx });
            tx
        });
        let (out_tx, mut out_rx) = mpsc::channel::<exec::Chunk>(OUTPUT_CHANNEL);
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
                    if let Some(progress) = &progress
                        && let Some(last) = lines.last()
                    {
                        // Only the last line counts: progress clears the clock, anything else starts it.
                        if last.stream == Stream::Stdout && last.kind.is_progress() {
                            progress.send_replace(None);
                        } else if progress.borrow().is_none() {
                            progress.send_replace(Some(tokio::time::Instant::now()));
                        }
                    }
                    me.publish_lines(&task_id, lines);
                    let frame = DeviceFrame::output(&request_id, seq, stream, data);
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
        result
    }

    /// The process group leaders of the running tasks.
    pub(super) fn leaders(&self) -> Vec<i32> {
        self.state().tasks.values().filter_map(|t| t.info.pid).collect()
    }

    fn publish_lines(&self, task_id: &str, lines: Vec<transcript::Line>) {
        for line in lines {
            self.publish(&WatchEvent::Transcript { task_id: task_id.to_string(), line });
        }
    }

    /// One task, running or among the last [`RECENT_TASKS`] ended, as
    /// `GET /v1/tasks/{id}` shows it. `None` if unknown.
    pub fn task_detail(&self, task_id: &str) -> Option<TaskDetail> {
        let view = |info: &TaskView, result: Option<&TaskResult>, t: &Mutex<Transcript>| {
            let t = lock(t);
            TaskDetail {
                task: info.clone(),
                running: result.is_none(),
                result: result.cloned(),
                transcript: TranscriptView { total: t.total(), sha256: t.digest(), lines: t.lines() },
            }
        };
        if let Some(t) = self.state().tasks.get(task_id) {
            return Some(view(&t.info, None, &t.transcript));
        }
        let recent = lock(&self.inner.recent);
        let f = recent.iter().rev().find(|f| f.info.task_id == task_id)?;
        Some(view(&f.info, Some(&f.result), &f.transcript))
    }

    /// The running tasks.
    pub fn tasks(&self) -> Vec<TaskView> {
        self.state().tasks.values().map(|t| t.info.clone()).collect()
    }

    /// Stops one task and waits (at most 5 s) for its end. `None` when no
    /// such task runs.
    pub async fn stop_task(&self, task_id: &str, by: StoppedBy) -> Option<TaskResult> {
        self.stop_task_via(task_id, by, None).await
    }

    /// [`Daemon::stop_task`], the stop made through `via` (`console`),
    /// which its `task.stopped` record carries when this stop is the first.
    pub(super) async fn stop_task_via(
        &self,
        task_id: &str,
        by: StoppedBy,
        via: Option<&'static str>,
    ) -> Option<TaskResult> {
        let mut done = {
            let mut state = self.state();
            let task = state.tasks.get_mut(task_id)?;
            if task.stop(by) {
                task.stop_via = via;
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
                    t.stop(by);
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
}

/// Takes a task out of the table when dropped: made as its entry goes in,
/// held by admission and then by [`Daemon::drive`], so that however either
/// ends, a panic included, a task that is gone never holds a slot or the
/// agent's turn.
pub(super) struct ForgetOnDrop {
    daemon: Daemon,
    task_id: String,
}

impl ForgetOnDrop {
    /// The guard of `task_id`'s entry in `daemon`'s table.
    pub(super) fn new(daemon: &Daemon, task_id: &str) -> ForgetOnDrop {
        ForgetOnDrop { daemon: daemon.clone(), task_id: task_id.to_string() }
    }
}

impl Drop for ForgetOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Nothing of the task may outlive its driver: kill what it left,
            // as after a crash, before its entry (the record of it) goes.
            let info = self.daemon.state().tasks.get(&self.task_id).map(|t| t.info.clone());
            if let Some(t) = info {
                let cgroup = t.cgroup.map(tree::TaskCgroup::at);
                let (pgid, ticks) = (t.pid.unwrap_or(-1), t.start_ticks.unwrap_or(0));
                let killed = kill::kill_leftovers(&t.task_id, pgid, ticks, cgroup.as_ref());
                tracing::error!(task = %self.task_id, killed, "a task's driver panicked; its processes were killed");
            }
        }
        self.daemon.forget_task(&self.task_id);
    }
}

/// What the executor tells the daemon of one task (see [`exec::Hooks`]).
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

/// Puts an entry with no process behind it into `daemon`'s table; its stop signal.
#[cfg(test)]
pub(super) fn fake_task(daemon: &Daemon, task_id: &str) -> watch::Receiver<Option<StoppedBy>> {
    let info: TaskView = serde_json::from_value(serde_json::json!({
        "task_id": task_id, "request_id": "r-1", "action": "slow", "tier": 1,
        "params": {}, "operator": "alice", "grant_id": "g-1", "started_at": "2026-01-01T00:00:00Z",
        "pid": null, "start_ticks": null,
    }))
    .unwrap();
    let (stop_tx, stop_rx) = watch::channel(None);
    let (_done, done_rx) = watch::channel(None);
    let transcript = Arc::new(Mutex::new(Transcript::new(false)));
    let entry = TaskEntry::new(info, stop_tx, done_rx, transcript);
    daemon.state().tasks.insert(task_id.to_string(), entry);
    stop_rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_guard_held_through_admission_takes_the_entry_out_on_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::start(&crate::Paths::under(dir.path().join("home")), Default::default()).unwrap();
        for n in 0..2 * daemon.inner.options.max_tasks {
            let task_id = format!("t-{n:016x}");
            let mut stopped = fake_task(&daemon, &task_id);
            let forget = ForgetOnDrop::new(&daemon, &task_id);
            let panicked = tokio::spawn(async move {
                let _forget = forget;
                panic!("a log write, say, part-way through admission");
            })
            .await;
            assert!(panicked.unwrap_err().is_panic());
            assert!(daemon.tasks().is_empty(), "entry {n} is still in the table");
            assert_eq!(*stopped.wait_for(Option::is_some).await.unwrap(), Some(StoppedBy::Shutdown));
        }
    }

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
}
