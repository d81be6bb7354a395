//! Readers: `verify` (the whole chain, MACs on every core) and `list`
//! (the newest records, each marked verified or not), in bounded memory.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use ring::hmac;

use super::chain::{MAC_MISMATCH, check_line, check_link, first_bad_mac};
use super::log::load_key;
use super::*;
use crate::paths::{self, Paths};

/// Reads `r` in chunks of [`READ_CHUNK`] and calls `f` with each batch of
/// complete lines (without their `\n`); the last call also gets what
/// follows the last line end: a torn line, or a line longer than
/// [`MAX_RECORD_BYTES`], after which reading stops. Memory stays bounded
/// by the chunk, whatever the file holds.
pub(super) fn scan_batches(
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
pub(super) fn scan_lines(
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
pub(super) fn open_for_reading(paths: &Paths) -> Result<Option<(File, hmac::Key)>, AuditError> {
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
    verify_chain(&file, &paths.audit(), &key, 0).0
}

/// [`verify`] over an open log, also returning the mac of record `want`
/// if every record up to it verifies (`want` 0: none wanted).
fn verify_chain(
    file: &File,
    path: &Path,
    key: &hmac::Key,
    want: u64,
) -> (Result<Verified, AuditError>, Option<String>) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let mut prev = GENESIS_PREV.as_bytes().to_vec();
    let mut seq = 0u64;
    let mut wanted = None;
    let scanned = scan_batches(file, path, |lines, rest| {
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
        let bad = first_bad_mac(key, &parsed, threads);
        if let Some(p) = parsed[..bad.unwrap_or(parsed.len())].iter().find(|p| p.seq == want) {
            wanted = Some(String::from_utf8_lossy(p.mac).into_owned());
        }
        if let Some(i) = bad {
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
    });
    let verified = scanned
        .map(|()| Verified { records: seq, head: Head { seq, mac: String::from_utf8_lossy(&prev).into_owned() } });
    (verified, wanted)
}

/// The device's answer to the relay's witnessed seq `seq` (0: none
/// witnessed): verifies the whole chain (as [`verify`]) and reports the mac
/// of record `seq` if records 1 to `seq` verify, with the log's head when
/// the whole chain verifies. Never fails: what went wrong is the answer's
/// [`ChainState`](crate::protocol::ChainState).
pub fn prove(paths: &Paths, seq: u64) -> (crate::protocol::WitnessProof, Option<Head>) {
    use crate::protocol::{ChainState, WitnessProof};
    let answer = |mac, verified_seq, chain| WitnessProof { seq, mac, verified_seq, chain };
    let (file, key) = match open_for_reading(paths) {
        Ok(Some(open)) => open,
        Ok(None) => return (answer(None, 0, ChainState::NoLog), None),
        Err(AuditError::KeyMissing { .. } | AuditError::KeyMalformed { .. }) => {
            return (answer(None, 0, ChainState::NoKey), None);
        }
        Err(_) => return (answer(None, 0, ChainState::Unreadable), None),
    };
    match verify_chain(&file, &paths.audit(), &key, seq) {
        (Ok(v), mac) => (answer(mac, v.records, ChainState::Verified), Some(v.head)),
        (Err(AuditError::Broken { seq: at, .. }), mac) => (answer(mac, at - 1, ChainState::Broken), None),
        (Err(_), _) => (answer(None, 0, ChainState::Unreadable), None),
    }
}

/// What identifies one version of `audit.jsonl` and `audit.key` on disk:
/// (device, inode, length, mtime, ctime) of each, `None` if missing. The
/// ctime cannot be set back by a user, so an unchanged stamp means unchanged content.
type FilesStamp = [Option<(u64, u64, u64, i64, i64, i64, i64)>; 2];

fn files_stamp(paths: &Paths) -> FilesStamp {
    use std::os::unix::fs::MetadataExt as _;
    [paths.audit(), paths.audit_key()].map(|p| {
        std::fs::symlink_metadata(p)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
    })
}

/// [`prove`], re-reading the log only when it or its key changed on disk
/// (or another seq is asked): an idle daemon proves its chain with two `stat`s.
#[derive(Debug, Default)]
pub struct Prover {
    last: Option<(FilesStamp, (crate::protocol::WitnessProof, Option<Head>))>,
}

impl Prover {
    /// As [`prove`], from the last answer when nothing changed since.
    pub fn prove(&mut self, paths: &Paths, seq: u64) -> (crate::protocol::WitnessProof, Option<Head>) {
        let stamp = files_stamp(paths);
        if let Some((s, proof)) = &self.last
            && *s == stamp
            && proof.0.seq == seq
        {
            return proof.clone();
        }
        let proof = prove(paths, seq);
        // Changed while we read, or so recently that a change within the
        // same clock tick would leave the stamp as it is: read again next time.
        let now = chrono::Utc::now().timestamp();
        let settled = stamp.iter().flatten().all(|s| now - s.5 >= 2);
        if settled && files_stamp(paths) == stamp {
            self.last = Some((stamp, proof.clone()));
        } else {
            self.last = None;
        }
        proof
    }
}

/// The log's first record, read without the key (not verified); `None`
/// when there is no log or its first line is not a record.
pub fn first(paths: &Paths) -> Option<Record> {
    let file = paths::open_read(&paths.audit()).ok()??;
    let mut buf = Vec::with_capacity(1024);
    file.take(MAX_RECORD_BYTES as u64 + 1).read_to_end(&mut buf).ok()?;
    let line = buf.split(|&b| b == b'\n').next()?;
    serde_json::from_slice(line).ok()
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
