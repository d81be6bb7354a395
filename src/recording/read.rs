//! Reading a recording back, bounded: a file over [`MAX_FILE_BYTES`] or a
//! line over [`MAX_LINE_BYTES`] is refused, and so is anything that is not
//! asciicast v2, with the line and the reason. Every byte read goes into
//! the SHA-256 that [`Reader::sha256`] gives once the end is reached.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::paths::FileError;

/// The largest file read: well above any `[shell] max_recording_bytes` a
/// session may be given, so only a file support did not write is refused.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// The longest line read, newline included. The writer's longest event is
/// one chunk of at most [`super::MAX_CHUNK`] bytes escaped as JSON (6 bytes
/// each at worst, `\u001b`), far below it.
pub const MAX_LINE_BYTES: u64 = 1 << 20;

/// Why a recording cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No such recording.
    #[error("there is no recording {}", .0.display())]
    NotFound(PathBuf),
    /// The file may not be trusted (a link, not ours, writable by others).
    #[error(transparent)]
    File(#[from] FileError),
    /// Larger than [`MAX_FILE_BYTES`].
    #[error("{} is larger than {limit} bytes: not a recording support wrote", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap, bytes.
        limit: u64,
    },
    /// Not asciicast v2 (or a line over [`MAX_LINE_BYTES`]).
    #[error("{} is not an asciicast v2 recording: line {line}: {why}", path.display())]
    Bad {
        /// The file.
        path: PathBuf,
        /// Its line, from 1.
        line: u64,
        /// What is wrong.
        why: String,
    },
    /// The file could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// The header line as read: asciicast v2's fields this crate uses; the
/// others (`theme`, `command`, ...) are allowed and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct HeaderRead {
    /// Always 2.
    pub version: u8,
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
    /// Unix seconds, when given.
    #[serde(default)]
    pub timestamp: Option<i64>,
    /// The title, when given.
    #[serde(default)]
    pub title: Option<String>,
    /// The captured environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds of inactivity a player shortens to, when given.
    #[serde(default)]
    pub idle_time_limit: Option<f64>,
}

/// One event line.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Since the start (never less than the event before).
    pub at: Duration,
    /// `o` output, `i` input, `r` resize, `m` marker (others are passed on).
    pub code: String,
    /// The text (for `r`, `COLSxROWS`).
    pub data: String,
}

/// A recording being read, line by line.
pub struct Reader {
    path: PathBuf,
    input: io::Take<BufReader<File>>,
    header: HeaderRead,
    line: u64,
    last: Duration,
    bytes: u64,
    digest: ring::digest::Context,
    done: bool,
}

impl Reader {
    /// Opens `path` (no link followed; ours, not writable by others; at
    /// most [`MAX_FILE_BYTES`]) and reads its header.
    ///
    /// # Errors
    /// [`ReadError::NotFound`], [`ReadError::File`], [`ReadError::TooLarge`],
    /// [`ReadError::Bad`] for a header that is not asciicast v2, [`ReadError::Io`].
    pub fn open(path: &Path) -> Result<Reader, ReadError> {
        let file = crate::paths::open_read(path)?.ok_or_else(|| ReadError::NotFound(path.into()))?;
        let len = file.metadata().map_err(|source| ReadError::Io { path: path.into(), source })?.len();
        if len > MAX_FILE_BYTES {
            return Err(ReadError::TooLarge { path: path.into(), limit: MAX_FILE_BYTES });
        }
        let mut reader = Reader {
            path: path.into(),
            // One more byte than the cap, so a file that grew while read is still caught.
            input: BufReader::new(file).take(MAX_FILE_BYTES + 1),
            header: HeaderRead {
                version: 0,
                width: 0,
                height: 0,
                timestamp: None,
                title: None,
                env: BTreeMap::new(),
                idle_time_limit: None,
            },
            line: 0,
            last: Duration::ZERO,
            bytes: 0,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            done: false,
        };
        let first = reader.next_line()?.ok_or_else(|| reader.bad("the file is empty"))?;
        let header: HeaderRead =
            serde_json::from_slice(&first).map_err(|e| reader.bad(format!("not a header object: {e}")))?;
        if header.version != 2 {
            return Err(reader.bad(format!("version {} (only 2 is read)", header.version)));
        }
        if header.width == 0 || header.height == 0 {
            return Err(reader.bad("width and height must be at least 1"));
        }
        reader.header = header;
        Ok(reader)
    }

    /// The header.
    pub fn header(&self) -> &HeaderRead {
        &self.header
    }

    /// The next event, or `None` at the end of the file.
    ///
    /// # Errors
    /// [`ReadError::Bad`] for a line that is not `[seconds, "code", "data"]`
    /// with seconds finite and not negative, or longer than
    /// [`MAX_LINE_BYTES`]; [`ReadError::TooLarge`]; [`ReadError::Io`].
    pub fn next_event(&mut self) -> Result<Option<Event>, ReadError> {
        loop {
            let Some(line) = self.next_line()? else { return Ok(None) };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let (secs, code, data): (f64, String, String) =
                serde_json::from_slice(&line).map_err(|e| self.bad(format!("not an event [time, code, data]: {e}")))?;
            let at = Duration::try_from_secs_f64(secs).map_err(|_| self.bad(format!("time {secs} is not a time")))?;
            if code.is_empty() || code.len() > 8 {
                return Err(self.bad("the event code must be 1 to 8 bytes"));
            }
            // A time before the last is played as no time passing.
            self.last = self.last.max(at);
            return Ok(Some(Event { at: self.last, code, data }));
        }
    }

    /// The SHA-256 (hex) of every byte of the file, once [`Reader::next_event`]
    /// has returned `None`; `None` before.
    pub fn sha256(&self) -> Option<String> {
        self.done.then(|| hex::encode(self.digest.clone().finish()))
    }

    /// Bytes read so far (the file's size at the end).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The time of the last event read.
    pub fn last_at(&self) -> Duration {
        self.last
    }

    fn next_line(&mut self) -> Result<Option<Vec<u8>>, ReadError> {
        if self.done {
            return Ok(None);
        }
        let mut line = Vec::new();
        let n = (&mut self.input)
            .take(MAX_LINE_BYTES + 1)
            .read_until(b'\n', &mut line)
            .map_err(|source| ReadError::Io { path: self.path.clone(), source })?;
        self.bytes += n as u64;
        if self.bytes > MAX_FILE_BYTES {
            return Err(ReadError::TooLarge { path: self.path.clone(), limit: MAX_FILE_BYTES });
        }
        if n == 0 {
            self.done = true;
            return Ok(None);
        }
        self.line += 1;
        if n as u64 > MAX_LINE_BYTES {
            return Err(self.bad(format!("longer than {MAX_LINE_BYTES} bytes")));
        }
        self.digest.update(&line);
        Ok(Some(line))
    }

    fn bad(&self, why: impl Into<String>) -> ReadError {
        ReadError::Bad { path: self.path.clone(), line: self.line.max(1), why: why.into() }
    }
}

/// One recording as `support recordings` lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// The task id (the file's name without `.cast`).
    pub id: String,
    /// When the session started, RFC 3339 UTC (from the header), when known.
    pub started: Option<String>,
    /// The header's title (who opened the session, on what), when given.
    pub title: Option<String>,
    /// Seconds from the start to the last event.
    pub duration_s: Option<f64>,
    /// The file's size, bytes.
    pub bytes: u64,
    /// SHA-256 of the file, hex (compare it with the session's `action.finished` record).
    pub sha256: Option<String>,
    /// Why the file could not be read, when it could not.
    pub error: Option<String>,
}

/// Every recording in `dir` (`<id>.cast` with a valid id), oldest start
/// first (those with no known start last), each read through [`Reader`] to its end; a file that cannot be
/// read is listed with its `error`. A missing `dir` is an empty list.
///
/// # Errors
/// When `dir` exists but cannot be listed.
pub fn list(dir: &Path) -> io::Result<Vec<Summary>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".cast")) else { continue };
        if super::valid_id(id) {
            out.push(summarise(dir, id));
        }
    }
    out.sort_by(|a, b| (a.started.is_none(), &a.started, &a.id).cmp(&(b.started.is_none(), &b.started, &b.id)));
    Ok(out)
}

fn summarise(dir: &Path, id: &str) -> Summary {
    let path = super::path(dir, id).expect("the id was checked");
    let mut s = Summary {
        id: id.into(),
        started: None,
        title: None,
        duration_s: None,
        bytes: std::fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0),
        sha256: None,
        error: None,
    };
    let read = || -> Result<Reader, ReadError> {
        let mut r = Reader::open(&path)?;
        while r.next_event()?.is_some() {}
        Ok(r)
    };
    match read() {
        Ok(r) => {
            s.started =
                r.header.timestamp.and_then(|t| chrono::DateTime::from_timestamp(t, 0)).map(crate::time::rfc3339);
            s.title = r.header.title.clone();
            s.duration_s = Some(r.last.as_secs_f64());
            s.bytes = r.bytes;
            s.sha256 = r.sha256();
        }
        Err(e) => s.error = Some(crate::ErrorChain(&e).to_string()),
    }
    s
}
