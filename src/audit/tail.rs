//! Reading the log back from its newest record: what a restarting daemon
//! needs from the record (the nonces of the last minutes, the actions
//! started under a grant) without reading further back than that.

use std::ops::ControlFlow;
use std::os::unix::fs::FileExt as _;

use super::{AuditError, MAX_RECORD_BYTES, Record};
use crate::paths::{self, FileError, Paths};

/// Bytes read from the file at once.
const CHUNK: u64 = 1 << 20;

/// Calls `f` with each record of the log, newest first, until `f` breaks
/// or the log's first record has been given. A line that is not a record
/// (a torn last line, garbage) is passed over. MACs are not checked here:
/// whoever can write the log holds its key too (SECURITY.md), and
/// `support audit --verify` is the check. Memory stays within a chunk
/// (1 MiB) and one record.
///
/// # Errors
/// [`AuditError::File`] when the log or its directory is unsafe or a read fails.
pub fn newest_first(paths: &Paths, mut f: impl FnMut(Record) -> ControlFlow<()>) -> Result<(), AuditError> {
    let path = paths.audit();
    paths::check_dir(&paths.state_dir)?;
    let Some(file) = paths::open_read(&path)? else { return Ok(()) };
    let io = |op, source| AuditError::File(FileError::Io { op, path: path.clone(), source });
    let mut pos = file.metadata().map_err(|e| io("stat", e))?.len();
    // The head of a line that began before the chunk last read.
    let mut carry: Vec<u8> = Vec::new();
    while pos > 0 {
        let start = pos.saturating_sub(CHUNK);
        let mut buf = vec![0u8; (pos - start) as usize];
        file.read_exact_at(&mut buf, start).map_err(|e| io("read", e))?;
        buf.extend_from_slice(&carry);
        carry.clear();
        // Unless this chunk starts the file, its first line may begin in the chunk before.
        let body = match memchr::memchr(b'\n', &buf) {
            Some(i) if start > 0 => {
                carry.extend_from_slice(&buf[..i]);
                &buf[i + 1..]
            }
            None if start > 0 => {
                carry = buf;
                if carry.len() > MAX_RECORD_BYTES {
                    carry.clear();
                }
                pos = start;
                continue;
            }
            _ => &buf[..],
        };
        for line in body.rsplit(|b| *b == b'\n') {
            let Ok(record) = serde_json::from_slice::<Record>(line) else { continue };
            if f(record).is_break() {
                return Ok(());
            }
        }
        pos = start;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Event};

    #[test]
    fn records_come_newest_first_across_chunks_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().join("home"));
        let mut log = AuditLog::open(&paths).unwrap();
        // About 3 MiB of records, so that lines straddle chunk ends.
        let n = 1500;
        for i in 0..n {
            let mut r = Record::new(Event::ActionFinished);
            r.detail = Some(format!("{i:06} {}", "x".repeat(2000)));
            log.append(r).unwrap();
        }
        drop(log);
        use std::io::Write as _;
        std::fs::OpenOptions::new().append(true).open(paths.audit()).unwrap().write_all(b"{\"seq\":99").unwrap();
        let mut seen = Vec::new();
        newest_first(&paths, |r| {
            seen.push(r.seq);
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(seen, (1..=n as u64).rev().collect::<Vec<_>>());
        let mut few = 0;
        newest_first(&paths, |_| {
            few += 1;
            if few == 3 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })
        .unwrap();
        assert_eq!(few, 3);
    }
}
