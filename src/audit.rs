//! The append-only, hash-chained audit log (DESIGN §5).
//!
//! `audit.jsonl` holds one JSON record per line. Each record carries the
//! MAC of the one before it (`prev`) and its own
//! `mac = HMAC-SHA256(audit.key, prev || canonical)`, where `prev` is the
//! previous record's MAC as 64 lowercase hex digits (64 zeros for the first
//! record) and `canonical` is the line up to the `mac` field, closed with
//! `}` (the record serialised without `mac`). Fields appear in the fixed
//! order of [`Record`], absent ones omitted, so a line is
//! `{"seq":N,...,"prev":"<hex>","mac":"<hex>"}`.
//!
//! Every writer (CLI and daemon) takes an exclusive `flock` on the log,
//! appends with one `O_APPEND` write and `fdatasync`s before returning, so
//! the chain stays linear across processes and a record returned as written
//! is on disk. A torn last line (a crash mid-write) is cut back by the next
//! writer, which first appends an `audit.recovered` record.
//!
//! What this does not catch: someone holding `audit.key` (any process of
//! the owner's user) can rewrite the whole chain, and cutting records off
//! the end leaves a shorter chain that still verifies. SECURITY.md says
//! how the head is anchored off the machine.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::paths::{self, FileError, Paths};

/// `prev` of the first record: 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The longest record a reader accepts, in bytes (writers stay far below).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// The most one `append_batch` writes at once, in bytes; a torn batch is
/// at most this long, so recovery never has to look further back.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// `,"mac":"` + 64 hex + `"}`.
const MAC_SUFFIX: usize = 74;
/// `,"prev":"` + 64 hex + `"`.
const PREV_SUFFIX: usize = 74;
/// What readers hold in memory at once: well above two records.
const READ_CHUNK: usize = 4 << 20;

/// An audit event name, as written in the `event` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Event {
    #[serde(rename = "consent.granted")]
    ConsentGranted,
    #[serde(rename = "consent.revoked")]
    ConsentRevoked,
    #[serde(rename = "consent.expired")]
    ConsentExpired,
    #[serde(rename = "action.denied")]
    ActionDenied,
    #[serde(rename = "action.started")]
    ActionStarted,
    #[serde(rename = "action.finished")]
    ActionFinished,
    #[serde(rename = "task.stopped")]
    TaskStopped,
    #[serde(rename = "task.aborted")]
    TaskAborted,
    #[serde(rename = "audit.recovered")]
    AuditRecovered,
    /// The first record of a chain begun while `audit.key` already existed:
    /// an earlier log was removed or moved aside.
    #[serde(rename = "audit.restarted")]
    AuditRestarted,
    #[serde(rename = "daemon.started")]
    DaemonStarted,
    #[serde(rename = "daemon.stopped")]
    DaemonStopped,
    #[serde(rename = "control.unauthorized")]
    ControlUnauthorized,
    #[serde(rename = "trust.added")]
    TrustAdded,
    #[serde(rename = "trust.removed")]
    TrustRemoved,
    /// `support allow` refused because it ran inside a task's process tree.
    #[serde(rename = "consent.refused")]
    ConsentRefused,
    /// `support trust add` refused because it ran inside a task's process tree.
    #[serde(rename = "trust.refused")]
    TrustRefused,
}

impl Event {
    /// The wire name, e.g. `consent.granted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::ConsentGranted => "consent.granted",
            Event::ConsentRevoked => "consent.revoked",
            Event::ConsentExpired => "consent.expired",
            Event::ActionDenied => "action.denied",
            Event::ActionStarted => "action.started",
            Event::ActionFinished => "action.finished",
            Event::TaskStopped => "task.stopped",
            Event::TaskAborted => "task.aborted",
            Event::AuditRecovered => "audit.recovered",
            Event::AuditRestarted => "audit.restarted",
            Event::DaemonStarted => "daemon.started",
            Event::DaemonStopped => "daemon.stopped",
            Event::ControlUnauthorized => "control.unauthorized",
            Event::TrustAdded => "trust.added",
            Event::TrustRemoved => "trust.removed",
            Event::ConsentRefused => "consent.refused",
            Event::TrustRefused => "trust.refused",
        }
    }
}

/// One audit record. `seq`, `ts`, `prev` and `mac` are set by
/// [`AuditLog::append`]; callers fill the event and what applies.
/// The field order is part of the format (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// 1, 2, ... with no gap.
    pub seq: u64,
    /// RFC 3339 UTC, microseconds.
    pub ts: String,
    pub event: Event,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// A denial code (DESIGN §7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// A task's end: ok, failed, timeout, cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_sha256: Option<String>,
    /// An agent task's transcript: SHA-256 over its lines, 64 hex digits
    /// (see `daemon::transcript`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript_sha256: Option<String>,
    /// Who stopped a task: owner, operator, revoke, expiry, tier_lowered, shutdown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The previous record's `mac`, 64 hex digits.
    pub prev: String,
    /// HMAC-SHA256 as 64 hex digits; empty until sealed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
}

impl Record {
    /// A record of `event` with every optional field empty.
    pub fn new(event: Event) -> Record {
        Record {
            seq: 0,
            ts: String::new(),
            event,
            grant_id: None,
            tier: None,
            action: None,
            params: None,
            request_id: None,
            task_id: None,
            operator: None,
            code: None,
            status: None,
            exit_code: None,
            duration_ms: None,
            output_bytes: None,
            output_sha256: None,
            transcript_sha256: None,
            by: None,
            reason: None,
            detail: None,
            prev: String::new(),
            mac: String::new(),
        }
    }
}

/// A failure of the audit log. While any of these stands, nothing runs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error(transparent)]
    File(#[from] FileError),
    /// Writing or syncing failed (disk full, read-only, I/O error); `source` says which.
    #[error("cannot write the audit log {path} (nothing was done; check free space and permissions)", path = path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another writer held the lock past the deadline set with
    /// [`AuditLog::set_lock_timeout`].
    #[error("the audit log {path} stayed locked by another writer for {waited_ms} ms; nothing was done", path = path.display())]
    LockTimeout { path: PathBuf, waited_ms: u64 },
    /// The log has records but its key is gone.
    #[error("the audit key {path} is missing but the log has records; restore the key, or move the log aside to start a new one", path = path.display())]
    KeyMissing { path: PathBuf },
    /// The key file is not 32 bytes of base64url.
    #[error("the audit key {path} is malformed; restore it from a backup, or move the log and key aside to start anew", path = path.display())]
    KeyMalformed { path: PathBuf },
    /// The last record cannot be chained onto.
    #[error("the last record of {path} is not sound ({why}); run `support audit --verify`, then move the log aside to start a new one", path = path.display())]
    BadTail { path: PathBuf, why: String },
    /// A record, or a batch, larger than a reader accepts; nothing was written.
    #[error("audit record too large ({bytes} bytes, at most {limit}); nothing was written")]
    TooLarge { bytes: usize, limit: usize },
    /// Verification found the chain broken at `seq`.
    #[error(
        "audit chain broken at seq {seq}: {why}. Records from there on cannot be trusted; keep a copy of the log as evidence"
    )]
    Broken { seq: u64, why: String },
}

/// The position the next record chains from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The last record's seq (0 for an empty log).
    pub seq: u64,
    /// The last record's mac ([`GENESIS_PREV`] for an empty log).
    pub mac: String,
}

impl Head {
    fn genesis() -> Head {
        Head { seq: 0, mac: GENESIS_PREV.into() }
    }
}

/// A writer of the audit log. Hold one per process; each append locks.
pub struct AuditLog {
    paths: Paths,
    path: PathBuf,
    file: File,
    /// `None` until there is a key: it is made together with the first
    /// record, under the same lock, so an existing key beside an empty log
    /// always means a log that was removed (or a first write cut short).
    key: Option<hmac::Key>,
    /// File length and head after our last append, to skip re-reading the tail.
    cached: Option<(u64, Head)>,
    /// How long an append waits for the lock; `None` waits for ever.
    lock_timeout: Option<Duration>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).field("key", &"***").finish()
    }
}

/// Holds the `flock` until dropped.
struct Locked<'a>(&'a File);
impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

fn lock<'a>(file: &'a File, path: &Path, timeout: Option<Duration>) -> Result<Locked<'a>, AuditError> {
    let Some(timeout) = timeout else {
        file.lock().map_err(|source| AuditError::Write { path: path.into(), source })?;
        return Ok(Locked(file));
    };
    let start = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Locked(file)),
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < timeout => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(AuditError::LockTimeout {
                    path: path.into(),
                    waited_ms: start.elapsed().as_millis() as u64,
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(AuditError::Write { path: path.into(), source }),
        }
    }
}

impl AuditLog {
    /// Opens (creating if needed) the log under `paths`, and its key if
    /// there is one. The key is made with the first record: 32 random
    /// bytes, base64url, 0600.
    ///
    /// # Errors
    /// [`AuditError::File`] for unsafe or unwritable files;
    /// [`AuditError::KeyMissing`] / [`AuditError::KeyMalformed`].
    pub fn open(paths: &Paths) -> Result<AuditLog, AuditError> {
        paths.ensure_dirs()?;
        let path = paths.audit();
        let file = paths::open_append(&path)?;
        let key = {
            let _guard = lock(&file, &path, None)?;
            let len = file.metadata().map_err(|source| AuditError::Write { path: path.clone(), source })?.len();
            match load_key(&paths.audit_key(), false) {
                Ok((key, _)) => Some(key),
                Err(AuditError::KeyMissing { .. }) if len == 0 => None,
                Err(e) => return Err(e),
            }
        };
        Ok(AuditLog { paths: paths.clone(), path, file, key, cached: None, lock_timeout: None })
    }

    /// Makes each append give up with [`AuditError::LockTimeout`] when
    /// another writer holds the lock longer than `timeout` (the daemon
    /// then denies with `AUDIT_UNAVAILABLE` rather than hang).
    pub fn set_lock_timeout(&mut self, timeout: Option<Duration>) {
        self.lock_timeout = timeout;
    }

    /// Seals and appends one record; returns it as written.
    ///
    /// # Errors
    /// [`AuditError::Write`] when it is not durably written (the file is
    /// cut back to where it was); [`AuditError::BadTail`] when the last
    /// record is unsound.
    pub fn append(&mut self, record: Record) -> Result<Record, AuditError> {
        Ok(self.append_batch(vec![record])?.pop().expect("one record in, one out"))
    }

    /// Seals and appends records in one write and one `fdatasync`.
    ///
    /// # Errors
    /// As [`AuditLog::append`]; then none of them is written.
    pub fn append_batch(&mut self, mut records: Vec<Record>) -> Result<Vec<Record>, AuditError> {
        self.reopen_if_replaced()?;
        let cached = self.cached.take();
        let guard = lock(&self.file, &self.path, self.lock_timeout)?;
        let (key, made_key) = match &self.key {
            Some(k) => (k.clone(), false),
            None => {
                let len =
                    self.file.metadata().map_err(|source| AuditError::Write { path: self.path.clone(), source })?;
                let (k, made) = load_key(&self.paths.audit_key(), len.len() == 0)?;
                self.key = Some(k.clone());
                (k, made)
            }
        };
        let (mut len, mut head, torn) = self.position_locked(cached, &key)?;
        let mut out = Vec::with_capacity(records.len() * 320);
        let key = &key;
        let seal_one = |record: &mut Record, head: &mut Head, out: &mut Vec<u8>| {
            seal(key, record, head, Utc::now(), out);
            *head = Head { seq: record.seq, mac: record.mac.clone() };
        };
        if let Some(keep) = torn {
            let mut r = Record::new(Event::AuditRecovered);
            r.detail = Some(format!("dropped {} bytes of a torn record at the end of the log", len - keep));
            seal_one(&mut r, &mut head, &mut out);
        } else if head.seq == 0 && !made_key {
            // Deleting the log must not pass for a first start: say so in the new chain.
            let mut r = Record::new(Event::AuditRestarted);
            r.detail = Some(
                "a new chain although audit.key already existed: an earlier log was removed, moved aside or \
                 emptied, or the first write never finished"
                    .into(),
            );
            seal_one(&mut r, &mut head, &mut out);
        }
        for record in &mut records {
            let start = out.len();
            seal_one(record, &mut head, &mut out);
            let bytes = out.len() - start;
            if bytes > MAX_RECORD_BYTES {
                return Err(AuditError::TooLarge { bytes, limit: MAX_RECORD_BYTES });
            }
        }
        if out.len() > MAX_BATCH_BYTES {
            return Err(AuditError::TooLarge { bytes: out.len(), limit: MAX_BATCH_BYTES });
        }
        // Only now, with every record sealed and checked, cut the torn tail.
        if let Some(keep) = torn {
            let io = |source| AuditError::Write { path: self.path.clone(), source };
            self.file.set_len(keep).map_err(io)?;
            tracing::warn!(dropped = len - keep, "audit log: cut back a torn last record");
            len = keep;
        }
        self.write_synced(len, &out)?;
        drop(guard);
        self.cached = Some((len + out.len() as u64, head));
        Ok(records)
    }

    /// A log moved aside (to start a new chain) is not written to again:
    /// if the path no longer names our file, open it (and its key) anew.
    fn reopen_if_replaced(&mut self) -> Result<(), AuditError> {
        use std::os::unix::fs::MetadataExt;
        let ours = self.file.metadata().map_err(|source| AuditError::Write { path: self.path.clone(), source })?;
        let same = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.dev() == ours.dev() && m.ino() == ours.ino());
        if !same {
            let timeout = self.lock_timeout;
            *self = AuditLog::open(&self.paths)?;
            self.lock_timeout = timeout;
        }
        // The owner took the write bit away (chmod a-w): that is a
        // read-only log, even for root, who could write it regardless.
        let mode = self.file.metadata().map_err(|source| AuditError::Write { path: self.path.clone(), source })?.mode();
        if mode & 0o200 == 0 {
            return Err(AuditError::Write {
                path: self.path.clone(),
                source: io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("it is read-only (mode {:o})", mode & 0o7777),
                ),
            });
        }
        Ok(())
    }

    fn read_at(&self, from: u64, to: u64) -> Result<Vec<u8>, AuditError> {
        let mut buf = vec![0; (to - from) as usize];
        self.file
            .read_exact_at(&mut buf, from)
            .map_err(|source| AuditError::Write { path: self.path.clone(), source })?;
        Ok(buf)
    }

    /// The file length, the head to chain from, and where to cut a torn
    /// last line (`Some(length to keep)`). Call with the lock held.
    fn position_locked(
        &self,
        cached: Option<(u64, Head)>,
        key: &hmac::Key,
    ) -> Result<(u64, Head, Option<u64>), AuditError> {
        let len = self.file.metadata().map_err(|source| AuditError::Write { path: self.path.clone(), source })?.len();
        if let Some((cached_len, head)) = cached
            && cached_len == len
        {
            return Ok((len, head, None));
        }
        let whole_end = self.whole_end(len)?;
        let head = self.head_before(whole_end, key)?;
        Ok((len, head, (whole_end < len).then_some(whole_end)))
    }

    /// The offset just past the last line end (0 if none), looking back
    /// at most one torn batch.
    fn whole_end(&self, len: u64) -> Result<u64, AuditError> {
        let mut window = (MAX_RECORD_BYTES as u64) * 2 + 2;
        loop {
            let n = len.min(window);
            let buf = self.read_at(len - n, len)?;
            if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
                return Ok(len - n + i as u64 + 1);
            }
            if n == len {
                return Ok(0);
            }
            if window > (MAX_BATCH_BYTES + MAX_RECORD_BYTES) as u64 {
                return Err(self.bad_tail("no line end in the last 8 MiB"));
            }
            window *= 4;
        }
    }

    /// The head after the whole lines that end at `end`: the last record
    /// must be well-formed, its MAC must verify, and it must follow the
    /// record before it (seq + 1, prev = that record's mac).
    fn head_before(&self, end: u64, key: &hmac::Key) -> Result<Head, AuditError> {
        if end == 0 {
            return Ok(Head::genesis());
        }
        let from = end.saturating_sub(MAX_RECORD_BYTES as u64 * 2 + 2);
        let buf = self.read_at(from, end)?;
        let body = &buf[..buf.len() - 1];
        let split = body.iter().rposition(|&b| b == b'\n');
        let last_line = match split {
            Some(i) => &body[i + 1..],
            None if from == 0 => body,
            None => return Err(self.bad_tail("a record longer than 64 KiB")),
        };
        let last = Parsed::from_line(last_line).ok_or_else(|| self.bad_tail("not a well-formed record"))?;
        if !last.mac_ok(key) {
            return Err(self.bad_tail(&format!("the mac of seq {} does not verify", last.seq)));
        }
        let (want_seq, want_prev) = match split {
            None => (1, GENESIS_PREV.as_bytes()),
            Some(i) => {
                let before = &body[..i];
                let prev_line = match before.iter().rposition(|&b| b == b'\n') {
                    Some(j) => &before[j + 1..],
                    None if from == 0 => before,
                    None => return Err(self.bad_tail("a record longer than 64 KiB")),
                };
                let prev = Parsed::from_line(prev_line).ok_or_else(|| self.bad_tail("not a well-formed record"))?;
                (prev.seq + 1, prev.mac)
            }
        };
        if last.seq != want_seq || last.prev != want_prev {
            return Err(self.bad_tail(&format!("seq {} does not follow the record before it", last.seq)));
        }
        Ok(Head { seq: last.seq, mac: String::from_utf8_lossy(last.mac).into_owned() })
    }

    fn bad_tail(&self, why: &str) -> AuditError {
        AuditError::BadTail { path: self.path.clone(), why: why.into() }
    }

    fn write_synced(&self, len: u64, bytes: &[u8]) -> Result<(), AuditError> {
        use std::io::Write as _;
        let result = (&self.file).write_all(bytes).and_then(|()| self.file.sync_data());
        if let Err(source) = result {
            // Leave no half record behind; the caller must not proceed either way.
            let _ = self.file.set_len(len).and_then(|()| self.file.sync_data());
            return Err(AuditError::Write { path: self.path.clone(), source });
        }
        Ok(())
    }
}

/// The key, and whether this call made it (only allowed for an empty log).
fn load_key(path: &Path, may_create: bool) -> Result<(hmac::Key, bool), AuditError> {
    let malformed = || AuditError::KeyMalformed { path: path.into() };
    let (text, made) = match paths::read_secret(path, 1024)? {
        Some(t) => (t, false),
        None if may_create => {
            let mut raw = [0u8; 32];
            crate::fill_random(&mut raw);
            let encoded = format!("{}\n", URL_SAFE_NO_PAD.encode(raw));
            if !paths::create_new(path, encoded.as_bytes())? {
                return load_key(path, false);
            }
            (encoded.into_bytes(), true)
        }
        None => return Err(AuditError::KeyMissing { path: path.into() }),
    };
    let text = std::str::from_utf8(&text).map_err(|_| malformed())?;
    let raw = URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| malformed())?;
    if raw.len() != 32 {
        return Err(malformed());
    }
    Ok((hmac::Key::new(hmac::HMAC_SHA256, &raw), made))
}

fn compute_mac(key: &hmac::Key, prev: &[u8], canonical_open: &[u8]) -> [u8; 64] {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(prev);
    ctx.update(canonical_open);
    ctx.update(b"}");
    let mut hex_out = [0u8; 64];
    hex::encode_to_slice(ctx.sign().as_ref(), &mut hex_out).expect("64 hex digits for 32 bytes");
    hex_out
}

/// Fills seq/ts/prev/mac of `record` after `head` and appends its line to `out`.
fn seal(key: &hmac::Key, record: &mut Record, head: &Head, now: DateTime<Utc>, out: &mut Vec<u8>) {
    record.seq = head.seq + 1;
    record.ts = crate::time::rfc3339_micros(now);
    record.prev.clone_from(&head.mac);
    record.mac.clear();
    let start = out.len();
    serde_json::to_writer(&mut *out, record).expect("a record always serialises");
    out.pop(); // the closing brace; the mac goes before it
    let mac = compute_mac(key, head.mac.as_bytes(), &out[start..]);
    out.extend_from_slice(b",\"mac\":\"");
    out.extend_from_slice(&mac);
    out.extend_from_slice(b"\"}\n");
    record.mac = String::from_utf8_lossy(&mac).into_owned();
}

/// The parts of a line that verification needs, found at fixed places.
struct Parsed<'a> {
    seq: u64,
    prev: &'a [u8],
    mac: &'a [u8],
    /// The line up to the mac field (the canonical bytes without the closing brace).
    open: &'a [u8],
}

impl<'a> Parsed<'a> {
    fn from_line(line: &'a [u8]) -> Option<Parsed<'a>> {
        const SEQ: &[u8] = b"{\"seq\":";
        if line.len() < SEQ.len() + 2 + PREV_SUFFIX + MAC_SUFFIX {
            return None;
        }
        let (open, mac_part) = line.split_at(line.len() - MAC_SUFFIX);
        let mac = mac_part.strip_prefix(b",\"mac\":\"")?.strip_suffix(b"\"}")?;
        let prev = open[open.len() - PREV_SUFFIX..].strip_prefix(b",\"prev\":\"")?.strip_suffix(b"\"")?;
        let digits = &open.strip_prefix(SEQ)?;
        let end = digits.iter().position(|b| !b.is_ascii_digit())?;
        if end == 0 || end > 19 || digits[end] != b',' {
            return None;
        }
        let seq = std::str::from_utf8(&digits[..end]).ok()?.parse().ok()?;
        let hex_ok = |h: &[u8]| h.len() == 64 && h.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        (hex_ok(mac) && hex_ok(prev)).then_some(Parsed { seq, prev, mac, open })
    }

    fn mac_ok(&self, key: &hmac::Key) -> bool {
        compute_mac(key, self.prev, self.open) == self.mac
    }
}

const MAC_MISMATCH: &str = "mac mismatch (the record was altered, or not sealed with this log's key)";

/// Checks one line's form, seq and link to the chain so far (not its MAC).
fn check_link<'a>(expect_seq: u64, expect_prev: &[u8], line: &'a [u8]) -> Result<Parsed<'a>, String> {
    let p = Parsed::from_line(line).ok_or("not a well-formed record (altered, or not written by support)")?;
    if p.seq != expect_seq {
        return Err(format!(
            "expected seq {expect_seq}, found seq {} (a record was deleted, inserted or moved)",
            p.seq
        ));
    }
    if p.prev != expect_prev {
        return Err(format!("prev does not match the mac of seq {} (the chain was altered)", expect_seq - 1));
    }
    Ok(p)
}

/// Checks one line against the chain so far; returns its mac or why it fails.
fn check_line<'a>(key: &hmac::Key, expect_seq: u64, expect_prev: &[u8], line: &'a [u8]) -> Result<&'a [u8], String> {
    let p = check_link(expect_seq, expect_prev, line)?;
    if !p.mac_ok(key) {
        return Err(MAC_MISMATCH.into());
    }
    Ok(p.mac)
}

/// The index of the first record whose MAC fails, checked on up to
/// `threads` threads (the MACs are independent once the links are checked).
fn first_bad_mac(key: &hmac::Key, parsed: &[Parsed<'_>], threads: usize) -> Option<usize> {
    if threads <= 1 || parsed.len() < 4096 {
        return parsed.iter().position(|p| !p.mac_ok(key));
    }
    let chunk = parsed.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = parsed
            .chunks(chunk)
            .enumerate()
            .map(|(i, part)| (i * chunk, s.spawn(move || part.iter().position(|p| !p.mac_ok(key)))))
            .collect();
        // A thread that died proves nothing: count its whole chunk as unverified.
        handles.into_iter().filter_map(|(at, h)| h.join().map_or(Some(at), |found| found.map(|j| at + j))).min()
    })
}

/// Reads `r` in chunks of [`READ_CHUNK`] and calls `f` with each batch of
/// complete lines (without their `\n`); the last call also gets what
/// follows the last line end: a torn line, or a line longer than
/// [`MAX_RECORD_BYTES`], after which reading stops. Memory stays bounded
/// by the chunk, whatever the file holds.
fn scan_batches(
    mut r: impl Read,
    path: &Path,
    mut f: impl FnMut(&[&[u8]], Option<&[u8]>) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    let io = |source| AuditError::File(FileError::Io { op: "read", path: path.into(), source });
    let mut buf = vec![0u8; READ_CHUNK];
    let mut end = 0;
    loop {
        let mut eof = false;
        while end < buf.len() {
            let n = r.read(&mut buf[end..]).map_err(io)?;
            if n == 0 {
                eof = true;
                break;
            }
            end += n;
        }
        let mut lines = Vec::new();
        let mut start = 0;
        for i in memchr::memchr_iter(b'\n', &buf[..end]) {
            lines.push(&buf[start..i]);
            start = i + 1;
        }
        let rest = &buf[start..end];
        if eof || rest.len() > MAX_RECORD_BYTES {
            return f(&lines, (!rest.is_empty()).then_some(rest));
        }
        f(&lines, None)?;
        let kept = rest.len();
        buf.copy_within(start..end, 0);
        end = kept;
    }
}

/// Calls `f` with each line and whether it was complete (see [`scan_batches`]).
fn scan_lines(
    r: impl Read,
    path: &Path,
    mut f: impl FnMut(&[u8], bool) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    scan_batches(r, path, |lines, rest| {
        for line in lines {
            f(line, true)?;
        }
        rest.map_or(Ok(()), |r| f(r, false))
    })
}

/// Opens the log and key for reading under a shared lock; `None` if there is no log.
fn open_for_reading(paths: &Paths) -> Result<Option<(File, hmac::Key)>, AuditError> {
    let path = paths.audit();
    paths::check_dir(&paths.state_dir)?;
    let Some(file) = paths::open_read(&path)? else { return Ok(None) };
    file.lock_shared().map_err(|source| AuditError::File(FileError::Io { op: "lock", path: path.clone(), source }))?;
    let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(false);
    if empty {
        return Ok(None);
    }
    Ok(Some((file, load_key(&paths.audit_key(), false)?.0)))
}

/// What a successful verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// How many records the chain holds.
    pub records: u64,
    /// The last record's seq and mac.
    pub head: Head,
}

/// Verifies the whole chain: seq 1, 2, ... with no gap, each `prev` equal
/// to the previous `mac`, each `mac` correct under `audit.key`.
///
/// # Errors
/// [`AuditError::Broken`] naming the first bad seq (the position where
/// the record should be) and why; file and key errors as [`AuditLog::open`].
pub fn verify(paths: &Paths) -> Result<Verified, AuditError> {
    let Some((file, key)) = open_for_reading(paths)? else {
        return Ok(Verified { records: 0, head: Head::genesis() });
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let mut prev = GENESIS_PREV.as_bytes().to_vec();
    let mut seq = 0u64;
    scan_batches(&file, &paths.audit(), |lines, rest| {
        // Form, seq and links in order; the first failure there bounds the MAC pass.
        let mut parsed = Vec::with_capacity(lines.len());
        let mut broken_link = None;
        for line in lines {
            match check_link(seq + 1, &prev, line) {
                Ok(p) => {
                    prev.clear();
                    prev.extend_from_slice(p.mac);
                    seq += 1;
                    parsed.push(p);
                }
                Err(why) => {
                    broken_link = Some(AuditError::Broken { seq: seq + 1, why });
                    break;
                }
            }
        }
        if let Some(i) = first_bad_mac(&key, &parsed, threads) {
            return Err(AuditError::Broken { seq: parsed[i].seq, why: MAC_MISMATCH.into() });
        }
        if let Some(e) = broken_link {
            return Err(e);
        }
        match rest {
            Some(r) if r.len() > MAX_RECORD_BYTES => {
                Err(AuditError::Broken { seq: seq + 1, why: "a line longer than 64 KiB: not a record".into() })
            }
            Some(_) => Err(AuditError::Broken {
                seq: seq + 1,
                why: "the last record is torn (no line end); the next write recovers it".into(),
            }),
            None => Ok(()),
        }
    })?;
    Ok(Verified { records: seq, head: Head { seq, mac: String::from_utf8_lossy(&prev).into_owned() } })
}

/// One record as listed, with whether it verified in its place.
#[derive(Clone, Debug)]
pub struct Listed {
    /// The parsed record; `None` when the line is not valid JSON.
    pub record: Option<Record>,
    /// The MAC and chain link check out.
    pub verified: bool,
}

/// The newest records of the log, with how many it holds.
#[derive(Clone, Debug)]
pub struct Listing {
    /// Lines in the log.
    pub total: u64,
    /// The newest `limit` of them, oldest first.
    pub records: Vec<Listed>,
}

/// Reads the log, keeping the newest `limit` records (0: all), each marked
/// verified or not. A record is checked against the one before it, so a
/// break marks the records at the break, not every record after it.
///
/// # Errors
/// File and key errors as [`AuditLog::open`].
pub fn list(paths: &Paths, limit: usize) -> Result<Listing, AuditError> {
    let Some((file, key)) = open_for_reading(paths)? else { return Ok(Listing { total: 0, records: Vec::new() }) };
    let mut kept = std::collections::VecDeque::new();
    let mut total = 0u64;
    let (mut prev, mut last_seq) = (GENESIS_PREV.as_bytes().to_vec(), 0u64);
    scan_lines(&file, &paths.audit(), |line, complete| {
        total += 1;
        let record: Option<Record> = serde_json::from_slice(line).ok();
        let verified = complete && check_line(&key, last_seq + 1, &prev, line).is_ok();
        // Unreadable lines leave the chain where it was, so what follows them can still verify.
        if let Some(r) = &record {
            prev = r.mac.clone().into_bytes();
            last_seq = r.seq;
        }
        if limit > 0 && kept.len() == limit {
            kept.pop_front();
        }
        kept.push_back(Listed { record, verified });
        Ok(())
    })?;
    Ok(Listing { total, records: kept.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_with(n: usize) -> (tempfile::TempDir, Paths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().join("h"));
        let mut log = AuditLog::open(&paths).unwrap();
        for i in 0..n {
            let mut r = Record::new(Event::ConsentGranted);
            r.tier = Some(1);
            r.reason = Some(format!("r{i}"));
            log.append(r).unwrap();
        }
        (dir, paths)
    }

    #[test]
    fn every_single_byte_flip_is_caught_at_its_seq() {
        let (_dir, paths) = log_with(4);
        let original = std::fs::read(paths.audit()).unwrap();
        let lines: Vec<usize> = std::iter::once(0)
            .chain(original.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1))
            .collect();
        let (start, end) = (lines[2], lines[3] - 1); // record 3, without its newline
        for i in start..end {
            for bit in [0x01u8, 0x20] {
                let mut bytes = original.clone();
                bytes[i] ^= bit;
                std::fs::write(paths.audit(), &bytes).unwrap();
                match verify(&paths) {
                    Err(AuditError::Broken { seq: 3, .. }) => {}
                    other => panic!("flip at byte {} bit {bit:#x}: {other:?}", i - start),
                }
            }
        }
        std::fs::write(paths.audit(), &original).unwrap();
        assert_eq!(verify(&paths).unwrap().records, 4);
    }

    #[test]
    fn large_logs_name_the_earliest_break_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().join("h"));
        let mut log = AuditLog::open(&paths).unwrap();
        for _ in 0..4 {
            log.append_batch((0..3000).map(|_| Record::new(Event::ActionDenied)).collect()).unwrap();
        }
        assert_eq!(verify(&paths).unwrap().records, 12_000);
        let original = std::fs::read_to_string(paths.audit()).unwrap();
        let mut lines: Vec<String> = original.lines().map(String::from).collect();
        // A mac flipped in record 9000 (checked on another thread than record 1)...
        let at = lines[8999].len() - 3;
        let flipped = if &lines[8999][at..at + 1] == "0" { "1" } else { "0" };
        lines[8999].replace_range(at..at + 1, flipped);
        // ...and a deleted record later on: the earlier break is the one named.
        lines.remove(10_500);
        std::fs::write(paths.audit(), lines.join("\n") + "\n").unwrap();
        match verify(&paths) {
            Err(AuditError::Broken { seq: 9000, why }) => assert!(why.contains("mac mismatch"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A line longer than a record can be, with no end: named, and memory stays bounded.
        let mut long = original.clone().into_bytes();
        long.extend(std::iter::repeat_n(b'x', 5 << 20));
        std::fs::write(paths.audit(), long).unwrap();
        match verify(&paths) {
            Err(AuditError::Broken { seq: 12_001, why }) => assert!(why.contains("longer than 64 KiB"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn torn_tail_is_cut_back_and_recorded() {
        let (_dir, paths) = log_with(2);
        let mut f = std::fs::OpenOptions::new().append(true).open(paths.audit()).unwrap();
        std::io::Write::write_all(&mut f, b"{\"seq\":3,\"ts\":\"2026").unwrap();
        assert!(matches!(verify(&paths), Err(AuditError::Broken { seq: 3, .. })));
        let mut log = AuditLog::open(&paths).unwrap();
        let written = log.append(Record::new(Event::ConsentRevoked)).unwrap();
        assert_eq!(written.seq, 4);
        let all = list(&paths, 0).unwrap().records;
        let recovered = all[2].record.as_ref().unwrap();
        assert_eq!(recovered.event, Event::AuditRecovered);
        assert!(recovered.detail.as_deref().unwrap().contains("dropped 19 bytes"));
        assert_eq!(verify(&paths).unwrap().records, 4);
    }

    #[test]
    fn a_forged_tail_stops_writers() {
        let (_dir, paths) = log_with(2);
        let text = std::fs::read_to_string(paths.audit()).unwrap().replace("\"r1\"", "\"r9\"");
        std::fs::write(paths.audit(), text).unwrap();
        let mut log = AuditLog::open(&paths).unwrap();
        assert!(matches!(log.append(Record::new(Event::ConsentRevoked)), Err(AuditError::BadTail { .. })));
    }

    #[test]
    fn a_replayed_old_record_at_the_end_stops_writers() {
        let (_dir, paths) = log_with(3);
        let text = std::fs::read_to_string(paths.audit()).unwrap();
        let first = text.lines().next().unwrap().to_string();
        std::fs::write(paths.audit(), format!("{text}{first}\n")).unwrap();
        let err = AuditLog::open(&paths).unwrap().append(Record::new(Event::ConsentRevoked)).unwrap_err();
        assert!(err.to_string().contains("does not follow the record before it"), "{err}");
    }

    #[test]
    fn oversized_records_are_refused_before_anything_is_written() {
        let (_dir, paths) = log_with(1);
        // A torn tail too: refusing the record must not cut it unrecorded.
        let mut before = std::fs::read(paths.audit()).unwrap();
        before.extend_from_slice(b"{\"seq\":2,\"ts");
        std::fs::write(paths.audit(), &before).unwrap();
        let mut big = Record::new(Event::ActionDenied);
        big.detail = Some("x".repeat(MAX_RECORD_BYTES));
        let mut log = AuditLog::open(&paths).unwrap();
        assert!(matches!(log.append(big), Err(AuditError::TooLarge { .. })));
        assert_eq!(std::fs::read(paths.audit()).unwrap(), before);
        assert_eq!(log.append(Record::new(Event::ConsentRevoked)).unwrap().seq, 3, "after audit.recovered");
        assert_eq!(verify(&paths).unwrap().records, 3);
    }

    #[test]
    fn a_log_moved_aside_is_not_written_again() {
        let (dir, paths) = log_with(2);
        let mut log = AuditLog::open(&paths).unwrap();
        log.append(Record::new(Event::ConsentRevoked)).unwrap();
        let aside = dir.path().join("old.jsonl");
        std::fs::rename(paths.audit(), &aside).unwrap();
        std::fs::rename(paths.audit_key(), dir.path().join("old.key")).unwrap();
        assert_eq!(log.append(Record::new(Event::ConsentRevoked)).unwrap().seq, 1, "a new chain");
        assert_eq!(std::fs::read_to_string(&aside).unwrap().lines().count(), 3, "the old log is left alone");
        assert_eq!(verify(&paths).unwrap().records, 1);
    }

    #[test]
    fn a_torn_batch_larger_than_two_records_is_recovered() {
        let (_dir, paths) = log_with(1);
        let mut log = AuditLog::open(&paths).unwrap();
        let mut batch = Vec::new();
        for i in 0..2000 {
            let mut r = Record::new(Event::ActionDenied);
            r.detail = Some(format!("{i:0>100}"));
            batch.push(r);
        }
        log.append_batch(batch).unwrap();
        let good = std::fs::read(paths.audit()).unwrap();
        let first_line = good.iter().position(|&b| b == b'\n').unwrap() + 1;
        // A crash after the size grew but before the batch's data reached the disk:
        // the first record, then 300 KB of zeros with no line end.
        let mut torn = good[..first_line].to_vec();
        torn.extend(std::iter::repeat_n(0u8, 300_000));
        std::fs::write(paths.audit(), &torn).unwrap();
        let mut log = AuditLog::open(&paths).unwrap();
        let next = log.append(Record::new(Event::ConsentRevoked)).unwrap();
        let kept = 1;
        assert_eq!(next.seq, kept + 2, "the whole records kept, then audit.recovered, then this");
        assert_eq!(verify(&paths).unwrap().records, kept + 2);
    }

    #[test]
    fn the_listing_marks_only_the_records_at_a_break() {
        let (_dir, paths) = log_with(6);
        let mut lines: Vec<String> =
            std::fs::read_to_string(paths.audit()).unwrap().lines().map(String::from).collect();
        lines.remove(2);
        std::fs::write(paths.audit(), lines.join("\n") + "\n").unwrap();
        let listing = list(&paths, 0).unwrap();
        let marks: Vec<bool> = listing.records.iter().map(|l| l.verified).collect();
        assert_eq!(marks, [true, true, false, true, true]);
        let newest = list(&paths, 2).unwrap();
        assert_eq!((newest.total, newest.records.len()), (5, 2));
        assert_eq!(newest.records[1].record.as_ref().unwrap().seq, 6);
    }

    #[test]
    fn a_deleted_log_shows_in_the_new_chain() {
        let (_dir, paths) = log_with(3);
        std::fs::remove_file(paths.audit()).unwrap();
        let written = AuditLog::open(&paths).unwrap().append(Record::new(Event::ConsentRevoked)).unwrap();
        assert_eq!(written.seq, 2);
        let first = list(&paths, 0).unwrap().records[0].record.clone().unwrap();
        assert_eq!((first.seq, first.event), (1, Event::AuditRestarted));
        // Two writers opened on an empty home before either appends: still a first start.
        let dir = tempfile::tempdir().unwrap();
        let both = Paths::under(dir.path().join("h"));
        let (mut a, mut b) = (AuditLog::open(&both).unwrap(), AuditLog::open(&both).unwrap());
        b.append(Record::new(Event::ConsentGranted)).unwrap();
        a.append(Record::new(Event::ConsentRevoked)).unwrap();
        let events: Vec<Event> =
            list(&both, 0).unwrap().records.iter().map(|l| l.record.as_ref().unwrap().event).collect();
        assert_eq!(events, [Event::ConsentGranted, Event::ConsentRevoked]);
        assert_eq!(verify(&both).unwrap().records, 2);
        // A first start, with no key yet, has no such record.
        let (_dir2, fresh) = log_with(1);
        assert_eq!(list(&fresh, 0).unwrap().records[0].record.as_ref().unwrap().event, Event::ConsentGranted);
    }

    #[test]
    fn a_missing_key_with_records_is_an_error_not_a_new_key() {
        let (_dir, paths) = log_with(1);
        std::fs::remove_file(paths.audit_key()).unwrap();
        assert!(matches!(AuditLog::open(&paths), Err(AuditError::KeyMissing { .. })));
        assert!(matches!(verify(&paths), Err(AuditError::KeyMissing { .. })));
    }
}
