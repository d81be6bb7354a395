//! An interactive session's recording (`crate::recording`, asciicast v2 in
//! `STATE/recordings/<task_id>.cast`), written on a thread of its own
//! (its writes are blocking) from the session's events in order. A write
//! that fails, or the file reaching `[shell] max_recording_bytes`, stops
//! the recording and tells the session, which then ends with that message.

use std::path::Path;
use std::sync::mpsc::sync_channel;

use tokio::sync::watch;

use super::session::{Recorded, Recording};
use crate::recording::{self, Finished, Header, RecordError, Recorder};

/// Events the recorder thread may hold: the session waits beyond that.
const EVENTS_QUEUE: usize = 64;

/// A recording being written: what the session feeds, and its end.
pub(super) struct Started {
    /// For the session.
    pub(super) recording: Recording,
    /// The file's digest once the session's [`Recording`] is dropped.
    pub(super) finished: std::thread::JoinHandle<Result<Finished, RecordError>>,
}

/// Creates the recording of `task_id` under `state_dir` and starts its
/// thread; `input` says whether keystrokes are recorded.
///
/// # Errors
/// The recording cannot be created (the session then does not start).
pub(super) fn start(
    state_dir: &Path,
    task_id: &str,
    header: &Header,
    max_bytes: u64,
    input: bool,
) -> Result<Started, RecordError> {
    let mut recorder = Recorder::create(&recording::dir(state_dir), task_id, header, max_bytes)?;
    let (events, rx) = sync_channel::<Recorded>(EVENTS_QUEUE);
    let (stop_tx, stopped) = watch::channel(None);
    let finished = std::thread::Builder::new()
        .name("recording".into())
        .spawn(move || {
            let mut failed = false;
            for event in rx {
                if failed {
                    continue;
                }
                let wrote = match event {
                    Recorded::Output(at, bytes) => recorder.output(at, &bytes),
                    Recorded::Input(at, bytes) => recorder.input(at, &bytes),
                    Recorded::Resize(at, cols, rows) => recorder.resize(at, cols, rows),
                };
                if let Err(e) = wrote {
                    tracing::warn!(error = %e, "the session's recording stopped");
                    let _ = stop_tx.send(Some(e.to_string()));
                    failed = true;
                }
            }
            recorder.finish()
        })
        .map_err(RecordError::Io)?;
    Ok(Started { recording: Recording { events, stopped, input }, finished })
}
