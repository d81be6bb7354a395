//! The writer: one `O_APPEND` write and an `fdatasync` per batch, under
//! an exclusive `flock`, after recovering a torn tail.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use super::chain::{Parsed, seal};
use super::*;
use crate::paths::{self, Paths};

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
    /// Why a chain begun now (no log, no key) is not a first start: what
    /// shows that an earlier chain existed. Said in an `audit.reset` record.
    earlier: Option<String>,
    /// Stamps each record's `ts` (the daemon's clock; the system's by default).
    clock: crate::Clock,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog").field("path", &self.path).field("key", &"***").finish()
    }
}

/// Holds the `flock` until dropped.
pub(super) struct Locked<'a>(&'a File);
impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

pub(super) fn lock<'a>(file: &'a File, path: &Path, timeout: Option<Duration>) -> Result<Locked<'a>, AuditError> {
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
        // A daemon writes `daemon.started` before it makes `device.key`
        // (Daemon::start opens the log first), so a device key beside no
        // log and no key means a chain was there and both files went.
        let earlier = (key.is_none() && paths.device_key().exists())
            .then(|| "device.key exists, so a daemon has run in this home and kept a chain here".to_string());
        Ok(AuditLog {
            paths: paths.clone(),
            path,
            file,
            key,
            cached: None,
            lock_timeout: None,
            earlier,
            clock: crate::Clock::default(),
        })
    }

    /// Makes each append give up with [`AuditError::LockTimeout`] when
    /// another writer holds the lock longer than `timeout` (the daemon
    /// then denies with `AUDIT_UNAVAILABLE` rather than hang).
    pub fn set_lock_timeout(&mut self, timeout: Option<Duration>) {
        self.lock_timeout = timeout;
    }

    /// Stamps records by `clock` (the daemon's, so that its records and
    /// its decisions read one clock) instead of the system's.
    pub fn set_clock(&mut self, clock: crate::Clock) {
        self.clock = clock;
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
        let now = self.clock.wall();
        let seal_one = |record: &mut Record, head: &mut Head, out: &mut Vec<u8>| {
            seal(key, record, head, now, out);
            *head = Head { seq: record.seq, mac: record.mac.clone() };
        };
        if let Some(keep) = torn {
            let mut r = Record::new(Event::AuditRecovered);
            r.detail = Some(format!("dropped {} bytes of a torn record at the end of the log", len - keep));
            seal_one(&mut r, &mut head, &mut out);
        } else if head.seq == 0
            && made_key
            && let Some(why) = self.earlier.take()
        {
            let mut r = Record::new(Event::AuditReset);
            r.detail = Some(format!(
                "a new chain and a new audit.key although an earlier chain existed ({why}): audit.jsonl and \
                 audit.key were both removed"
            ));
            tracing::warn!(detail = %why, "audit.jsonl and audit.key were both missing: a new chain begins, recorded as audit.reset");
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
            let (timeout, clock) = (self.lock_timeout, self.clock.clone());
            let held = self.cached.as_ref().map(|(_, h)| h.seq).filter(|_| self.key.is_some());
            *self = AuditLog::open(&self.paths)?;
            self.lock_timeout = timeout;
            self.clock = clock;
            if let Some(seq) = held
                && self.key.is_none()
            {
                self.earlier = Some(format!("this process had written the chain up to seq {seq}"));
            }
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
pub(super) fn load_key(path: &Path, may_create: bool) -> Result<(hmac::Key, bool), AuditError> {
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
