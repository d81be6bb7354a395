//! Interactive sessions recorded as asciicast v2 files, one per session, in
//! `STATE/recordings/<task_id>.cast` (the format: docs.asciinema.org,
//! "asciicast v2"): a JSON header line, then one JSON array per event,
//! `[seconds_since_start, code, data]`, with `"o"` for what the terminal
//! showed, `"i"` for what was typed and `"r"` for a resize (`"COLSxROWS"`).
//! The files play with `support play` and with `asciinema play`.
//!
//! - [`Recorder`]: writes one file: 0600, created `O_EXCL` without
//!   following a link, in a 0700 directory; each event in one write; a size
//!   cap; at the end fsynced, with the SHA-256 of its bytes for the record.
//! - `utf8`: terminal bytes decoded across chunk boundaries.
//! - [`prune`] (`retention`): the files older than `[shell] keep_recordings_days`.
//! - [`Reader`] (`read`): a bounded reader of one file (`support play`,
//!   `support recordings`); [`list`] summarises every file.
//!
//! The I/O is blocking std I/O: call it from `spawn_blocking` or a thread
//! of its own.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

mod read;
mod retention;
mod utf8;

pub use read::{Event, HeaderRead, MAX_FILE_BYTES, MAX_LINE_BYTES, ReadError, Reader, Summary, list};
pub use retention::prune;
use utf8::Utf8Stream;

/// The file name's extension (`<task_id>.cast`), as asciinema suggests.
pub const EXTENSION: &str = "cast";

/// The most terminal bytes in one event: a larger chunk is written as
/// several events at the same time, so no line nears the reader's
/// [`MAX_LINE_BYTES`].
pub const MAX_CHUNK: usize = 32 * 1024;

/// The most bytes of the title and of each `env` value in the header, and
/// the most `env` entries.
const MAX_HEADER_TEXT: usize = 1024;
const MAX_ENV: usize = 16;

/// The recordings' directory under the state directory: `STATE/recordings`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("recordings")
}

/// Whether `id` may name a recording: one path segment of 1 to 64 of
/// `[A-Za-z0-9_-]` (a task id, `t-...`), so no `/`, `..` or hidden name
/// can reach a path (DESIGN §10, path traversal from wire ids).
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The path of recording `id` in `dir`, or `None` when `id` is not [`valid_id`].
pub fn path(dir: &Path, id: &str) -> Option<PathBuf> {
    valid_id(id).then(|| dir.join(format!("{id}.{EXTENSION}")))
}

/// The header line's fields that vary (asciicast v2 "Header"; `version` is always 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The terminal's initial width, columns.
    pub width: u16,
    /// The terminal's initial height, rows.
    pub height: u16,
    /// When the session started, Unix seconds.
    pub timestamp: i64,
    /// Who opened the session and on what, for people (`support recordings` shows it).
    pub title: String,
    /// The captured environment: `SHELL` and `TERM`.
    pub env: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct HeaderLine<'a> {
    version: u8,
    width: u16,
    height: u16,
    timestamp: i64,
    title: &'a str,
    env: BTreeMap<&'a str, &'a str>,
}

/// Why a recording could not go on.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecordError {
    /// The next event would make the file larger than `max_bytes`
    /// (`[shell] max_recording_bytes`); nothing more is written, and the
    /// session ends.
    CapReached {
        /// The cap, bytes.
        max_bytes: u64,
    },
    /// The file or its directory could not be created, written or synced;
    /// an unsafe directory, or a file (or link) already at the path, is
    /// one too (`AlreadyExists`).
    Io(io::Error),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::CapReached { max_bytes } => write!(
                f,
                "the session's recording reached its cap of {max_bytes} bytes ([shell] max_recording_bytes), so the session ends"
            ),
            RecordError::Io(e) => write!(f, "cannot write the session's recording: {e}"),
        }
    }
}

impl std::error::Error for RecordError {}

impl From<io::Error> for RecordError {
    fn from(e: io::Error) -> Self {
        RecordError::Io(e)
    }
}

/// A finished recording, for the `action.finished` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The file.
    pub path: PathBuf,
    /// SHA-256 of the whole file, lower-case hex.
    pub sha256: String,
    /// The file's size, bytes.
    pub bytes: u64,
}

/// One session's recording being written. Dropping it without
/// [`Recorder::finish`] leaves a valid file of the events so far (unsynced).
pub struct Recorder {
    file: File,
    path: PathBuf,
    written: u64,
    max_bytes: u64,
    digest: ring::digest::Context,
    output: Utf8Stream,
    input: Utf8Stream,
    last: Duration,
    capped: bool,
    /// A write failed and the file could not be cut back to its last
    /// whole event: neither the file nor its digest may be trusted.
    broken: bool,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder").field("path", &self.path).field("written", &self.written).finish_non_exhaustive()
    }
}

impl Recorder {
    /// Creates `dir` (0700, checked: not a link, ours, not writable by
    /// others) and in it `<task_id>.cast` (0600, `O_EXCL`, `O_NOFOLLOW`),
    /// and writes the header line. The file is locked (`flock`) while the
    /// recorder lives, so [`prune`] leaves it alone.
    ///
    /// # Errors
    /// [`RecordError::Io`]: `InvalidInput` for a `task_id` that is not
    /// [`valid_id`]; `AlreadyExists` when anything (a file, a link) is at
    /// the path; an unsafe directory; any I/O error.
    /// [`RecordError::CapReached`] when even the header exceeds `max_bytes`.
    pub fn create(dir: &Path, task_id: &str, header: &Header, max_bytes: u64) -> Result<Recorder, RecordError> {
        let path = path(dir, task_id).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a task id", crate::text::safe_id(task_id)))
        })?;
        crate::paths::ensure_dir(dir).map_err(io::Error::other)?;
        // Append: a torn line cut back with `set_len` is then overwritten, not left as a hole.
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())))?;
        // The umask may have taken bits; 0600 exactly, before any byte is written.
        file.set_permissions(Permissions::from_mode(0o600))?;
        file.try_lock().map_err(|e| io::Error::other(format!("cannot lock {}: {e}", path.display())))?;
        let mut recorder = Recorder {
            file,
            path,
            written: 0,
            max_bytes,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            output: Utf8Stream::default(),
            input: Utf8Stream::default(),
            last: Duration::ZERO,
            capped: false,
            broken: false,
        };
        let env: BTreeMap<&str, &str> = (header.env.iter().take(MAX_ENV))
            .map(|(k, v)| (crate::text::head(k, MAX_HEADER_TEXT), crate::text::head(v, MAX_HEADER_TEXT)))
            .collect();
        let line = HeaderLine {
            version: 2,
            width: header.width.max(1),
            height: header.height.max(1),
            timestamp: header.timestamp,
            title: crate::text::head(&header.title, MAX_HEADER_TEXT),
            env,
        };
        let mut bytes = serde_json::to_vec(&line).expect("a header serialises");
        bytes.push(b'\n');
        if let Err(e) = recorder.write_line(&bytes) {
            // Ours and empty: a session that cannot start leaves no file behind.
            let _ = std::fs::remove_file(&recorder.path);
            return Err(e);
        }
        Ok(recorder)
    }

    /// Records what the terminal showed (`"o"`), `at` after the start.
    ///
    /// # Errors
    /// [`RecordError::CapReached`] (then and after, nothing is written), or [`RecordError::Io`].
    pub fn output(&mut self, at: Duration, bytes: &[u8]) -> Result<(), RecordError> {
        for piece in bytes.chunks(MAX_CHUNK) {
            let text = self.output.decode(piece);
            self.event(at, "o", &text)?;
        }
        Ok(())
    }

    /// Records what was typed (`"i"`), `at` after the start.
    ///
    /// # Errors
    /// As [`Recorder::output`].
    pub fn input(&mut self, at: Duration, bytes: &[u8]) -> Result<(), RecordError> {
        for piece in bytes.chunks(MAX_CHUNK) {
            let text = self.input.decode(piece);
            self.event(at, "i", &text)?;
        }
        Ok(())
    }

    /// Records a resize (`"r"`, `"COLSxROWS"`), `at` after the start.
    ///
    /// # Errors
    /// As [`Recorder::output`].
    pub fn resize(&mut self, at: Duration, cols: u16, rows: u16) -> Result<(), RecordError> {
        self.event(at, "r", &format!("{cols}x{rows}"))
    }

    /// Writes what the UTF-8 decoders kept back, then flushes and fsyncs
    /// the file and its directory.
    ///
    /// # Errors
    /// [`RecordError::Io`] when a sync fails, or when an earlier write
    /// failed and the file could not be cut back to its last whole event.
    pub fn finish(mut self) -> Result<Finished, RecordError> {
        let at = self.last;
        for code in ["o", "i"] {
            let rest = if code == "o" { self.output.finish() } else { self.input.finish() };
            match self.event(at, code, &rest) {
                Ok(()) | Err(RecordError::CapReached { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if self.broken {
            return Err(io::Error::other(format!("{} is damaged: a write failed", self.path.display())).into());
        }
        self.file.flush()?;
        self.file.sync_all()?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()?;
        let sha256 = hex::encode(self.digest.clone().finish());
        Ok(Finished { path: self.path.clone(), sha256, bytes: self.written })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn event(&mut self, at: Duration, code: &str, text: &str) -> Result<(), RecordError> {
        if self.capped {
            return Err(RecordError::CapReached { max_bytes: self.max_bytes });
        }
        // Out-of-order times would make players wait backwards; a clock
        // that stepped back is recorded as no time passing.
        let at = at.max(self.last);
        self.last = at;
        if text.is_empty() {
            return Ok(());
        }
        let mut line = format!("[{}.{:06}, ", at.as_secs(), at.subsec_micros()).into_bytes();
        serde_json::to_writer(&mut line, code).expect("a string serialises");
        line.extend_from_slice(b", ");
        serde_json::to_writer(&mut line, text).expect("a string serialises");
        line.extend_from_slice(b"]\n");
        self.write_line(&line)
    }

    /// One write per line, so a reader (or a crash) sees whole events.
    fn write_line(&mut self, line: &[u8]) -> Result<(), RecordError> {
        if self.broken {
            return Err(io::Error::other(format!("{} is damaged: a write failed", self.path.display())).into());
        }
        if self.written + line.len() as u64 > self.max_bytes {
            self.capped = true;
            return Err(RecordError::CapReached { max_bytes: self.max_bytes });
        }
        if let Err(e) = self.file.write_all(line) {
            // Cut back a torn line, so the file stays whole events and its digest holds.
            if self.file.set_len(self.written).is_err() {
                self.broken = true;
            }
            return Err(e.into());
        }
        self.written += line.len() as u64;
        self.digest.update(line);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
