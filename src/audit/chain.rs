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

/// Records a thread checks at least: for fewer, another thread costs more than it saves.
const MACS_PER_THREAD: usize = 4096;

/// The index of the first record whose MAC fails, checked on up to
/// `threads` threads (the MACs are independent once the links are checked),
/// in chunks of at least [`MACS_PER_THREAD`] records, the first on this thread.
pub(super) fn first_bad_mac(key: &hmac::Key, parsed: &[Parsed<'_>], threads: usize) -> Option<usize> {
    let bad_in = |part: &[Parsed<'_>]| part.iter().position(|p| !p.mac_ok(key));
    // One path for one thread and for many: how the records are split is a
    // cost, never a result (a branch between the two left mutants no test could tell).
    let chunk = parsed.len().div_ceil(threads.max(1)).max(MACS_PER_THREAD);
    let mut parts = parsed.chunks(chunk);
    let first = parts.next()?;
    std::thread::scope(|s| {
        let others: Vec<_> =
            parts.enumerate().map(|(i, part)| ((i + 1) * chunk, s.spawn(move || bad_in(part)))).collect();
        let here = bad_in(first);
        // A thread that died proves nothing: count its whole chunk as unverified.
        let there =
            others.into_iter().filter_map(|(at, h)| h.join().map_or(Some(at), |found| found.map(|j| at + j))).min();
        here.or(there)
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

    fn line(seq: &str, prev: &str, mac: &str) -> Vec<u8> {
        format!(r#"{{"seq":{seq},"prev":"{prev}","mac":"{mac}"}}"#).into_bytes()
    }

    /// The bounds of the form, each to the byte: the shortest line that can
    /// hold a record is read, a seq of up to 19 digits is read and one of 20
    /// is not (the seq after it could overflow a `u64`), the digits end at a
    /// comma, and `prev` and `mac` are each 64 lowercase hex digits (found by
    /// cargo-mutants: `<` → `<=` of the length check, `>` → `>=` of the
    /// digits' bound and `&&` → `||` of the hex checks passed every other test).
    #[test]
    fn a_record_s_fixed_fields_are_read_to_their_bounds() {
        let zeros = "0".repeat(64);
        let shortest = line("10", &zeros, &zeros);
        assert_eq!(shortest.len(), b"{\"seq\":".len() + 2 + PREV_SUFFIX + MAC_SUFFIX);
        assert_eq!(Parsed::from_line(&shortest).map(|p| p.seq), Some(10));
        let most = "9".repeat(19);
        assert_eq!(Parsed::from_line(&line(&most, &zeros, &zeros)).map(|p| p.seq), Some(9_999_999_999_999_999_999));
        assert!(Parsed::from_line(&line("10000000000000000000", &zeros, &zeros)).is_none(), "20 digits");
        assert!(Parsed::from_line(&line("10x", &zeros, &zeros)).is_none(), "digits not ended by a comma");
        let hex = "0123456789abcdef".repeat(4);
        let every_digit = line("10", &hex, &zeros);
        let p = Parsed::from_line(&every_digit).expect("every hex digit");
        assert_eq!((p.prev, p.mac), (hex.as_bytes(), zeros.as_bytes()));
        for bad in [format!("{}A", &hex[1..]), format!("g{}", &hex[1..])] {
            assert!(Parsed::from_line(&line("10", &bad, &zeros)).is_none(), "prev {bad}");
            assert!(Parsed::from_line(&line("10", &zeros, &bad)).is_none(), "mac {bad}");
        }
    }

    /// Wherever the bad MACs lie and however many threads check them, the
    /// first one is named (the chunks' offsets, and the earliest of them).
    #[test]
    fn the_first_bad_mac_is_named_on_any_number_of_threads() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
        let n = 3 * MACS_PER_THREAD + 5;
        let (mut out, mut head, now) = (Vec::new(), Head { seq: 0, mac: "0".repeat(64) }, Utc::now());
        for _ in 0..n {
            let mut record = Record::new(super::super::Event::ActionDenied);
            seal(&key, &mut record, &head, now, &mut out);
            head = Head { seq: record.seq, mac: record.mac };
        }
        let sealed: Vec<&[u8]> = out.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        let spoil = |line: &[u8]| {
            let mut line = line.to_vec();
            let at = line.len() - 3; // the mac's last digit
            line[at] = if line[at] == b'0' { b'1' } else { b'0' };
            line
        };
        let cases = [
            vec![],
            vec![0],
            vec![n - 1],
            vec![5, 3 * MACS_PER_THREAD],
            vec![2 * MACS_PER_THREAD + 7, n - 1],
            vec![4099],
        ];
        for bad in &cases {
            let lines: Vec<Vec<u8>> =
                sealed.iter().enumerate().map(|(i, l)| if bad.contains(&i) { spoil(l) } else { l.to_vec() }).collect();
            let parsed: Vec<Parsed<'_>> = lines.iter().map(|l| Parsed::from_line(l).expect("well formed")).collect();
            for threads in [0, 1, 2, 3, 4, 8] {
                assert_eq!(
                    first_bad_mac(&key, &parsed, threads),
                    bad.first().copied(),
                    "bad {bad:?}, {threads} threads"
                );
            }
        }
        assert_eq!(first_bad_mac(&key, &[], 4), None);
    }
}
