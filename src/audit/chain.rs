//! The chain itself: how a record is sealed (`seq`, `ts`, `prev`, `mac`)
//! and how one line is checked against the one before it.

use chrono::{DateTime, Utc};
use ring::hmac;

use super::{Head, MAC_SUFFIX, PREV_SUFFIX, Record};

pub(super) fn compute_mac(key: &hmac::Key, prev: &[u8], canonical_open: &[u8]) -> [u8; 64] {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(prev);
    ctx.update(canonical_open);
    ctx.update(b"}");
    let mut hex_out = [0u8; 64];
    hex::encode_to_slice(ctx.sign().as_ref(), &mut hex_out).expect("64 hex digits for 32 bytes");
    hex_out
}

/// Fills seq/ts/prev/mac of `record` after `head` and appends its line to `out`.
pub(super) fn seal(key: &hmac::Key, record: &mut Record, head: &Head, now: DateTime<Utc>, out: &mut Vec<u8>) {
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
pub(super) struct Parsed<'a> {
    pub(super) seq: u64,
    pub(super) prev: &'a [u8],
    pub(super) mac: &'a [u8],
    /// The line up to the mac field (the canonical bytes without the closing brace).
    open: &'a [u8],
}

impl<'a> Parsed<'a> {
    pub(super) fn from_line(line: &'a [u8]) -> Option<Parsed<'a>> {
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

    pub(super) fn mac_ok(&self, key: &hmac::Key) -> bool {
        compute_mac(key, self.prev, self.open) == self.mac
    }
}

pub(super) const MAC_MISMATCH: &str = "mac mismatch (the record was altered, or not sealed with this log's key)";

/// Checks one line's form, seq and link to the chain so far (not its MAC).
pub(super) fn check_link<'a>(expect_seq: u64, expect_prev: &[u8], line: &'a [u8]) -> Result<Parsed<'a>, String> {
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
pub(super) fn check_line<'a>(
    key: &hmac::Key,
    expect_seq: u64,
    expect_prev: &[u8],
    line: &'a [u8],
) -> Result<&'a [u8], String> {
    let p = check_link(expect_seq, expect_prev, line)?;
    if !p.mac_ok(key) {
        return Err(MAC_MISMATCH.into());
    }
    Ok(p.mac)
}

/// The index of the first record whose MAC fails, checked on up to
/// `threads` threads (the MACs are independent once the links are checked).
pub(super) fn first_bad_mac(key: &hmac::Key, parsed: &[Parsed<'_>], threads: usize) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A line shorter than its fixed fields (a torn tail, a stray byte) is
    /// not a record: refused, never sliced out of bounds (found by cargo-mutants).
    #[test]
    fn a_line_too_short_to_hold_a_record_is_refused_at_every_length() {
        let record = br#"{"seq":1,"prev":"0000000000000000000000000000000000000000000000000000000000000000","mac":"0000000000000000000000000000000000000000000000000000000000000000"}"#;
        let shortest = b"{\"seq\":".len() + 2 + PREV_SUFFIX + MAC_SUFFIX;
        for len in 0..shortest {
            let line = vec![b'0'; len];
            assert!(Parsed::from_line(&line).is_none(), "{len} bytes");
            let cut = &record[record.len() - len.min(record.len())..];
            assert!(Parsed::from_line(cut).is_none(), "the last {len} bytes of a record");
        }
    }
}
