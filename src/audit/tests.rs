use super::*;
use std::io::Write as _;

use crate::Paths;

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
    // A new chain, which says first that this process held an earlier one.
    assert_eq!(log.append(Record::new(Event::ConsentRevoked)).unwrap().seq, 2, "after audit.reset");
    assert_eq!(std::fs::read_to_string(&aside).unwrap().lines().count(), 3, "the old log is left alone");
    assert_eq!(verify(&paths).unwrap().records, 2);
    let first = list(&paths, 0).unwrap().records.remove(0).record.unwrap();
    assert_eq!(first.event, Event::AuditReset);
    assert!(first.detail.unwrap().contains("up to seq 3"));
}

#[test]
fn both_files_gone_beside_a_device_key_begin_with_audit_reset() {
    let (_dir, paths) = log_with(2);
    std::fs::write(paths.device_key(), b"k").unwrap();
    std::fs::remove_file(paths.audit()).unwrap();
    std::fs::remove_file(paths.audit_key()).unwrap();
    let mut log = AuditLog::open(&paths).unwrap();
    assert_eq!(log.append(Record::new(Event::ConsentRevoked)).unwrap().seq, 2);
    let first = list(&paths, 0).unwrap().records.remove(0).record.unwrap();
    assert_eq!(first.event, Event::AuditReset);
    assert!(first.detail.unwrap().contains("device.key exists"));
    // A first start (no device key yet) begins silently, as before.
    let (_fresh_dir, fresh) = log_with(0);
    let mut log = AuditLog::open(&fresh).unwrap();
    assert_eq!(log.append(Record::new(Event::ConsentRevoked)).unwrap().seq, 1);
}

#[test]
fn the_prover_sees_an_edit_that_keeps_the_log_s_length() {
    use crate::protocol::ChainState;
    let (_dir, paths) = log_with(3);
    let mut prover = Prover::default();
    assert_eq!(prover.prove(&paths, 2).0.chain, ChainState::Verified);
    let text = std::fs::read_to_string(paths.audit()).unwrap();
    let edited = text.replace("\"reason\":\"r0\"", "\"reason\":\"r7\"");
    assert_eq!(edited.len(), text.len());
    std::fs::OpenOptions::new().write(true).open(paths.audit()).unwrap().write_all(edited.as_bytes()).unwrap();
    let (p, _) = prover.prove(&paths, 2);
    assert_eq!((p.chain, p.verified_seq, p.mac), (ChainState::Broken, 0, None));
}

#[test]
fn a_proof_names_the_mac_at_the_witnessed_seq_only_while_the_chain_verifies_to_it() {
    use crate::protocol::ChainState;
    let (_dir, paths) = log_with(5);
    let records = list(&paths, 0).unwrap().records;
    let mac3 = records[2].record.as_ref().unwrap().mac.clone();
    let (p, head) = prove(&paths, 3);
    assert_eq!((p.mac.as_deref(), p.verified_seq, p.chain), (Some(mac3.as_str()), 5, ChainState::Verified));
    assert_eq!(head.unwrap().seq, 5);
    assert_eq!(prove(&paths, 9).0.mac, None, "no record 9");
    // Edit record 2: record 3's stored mac is intact, but the chain does not verify to it.
    let text = std::fs::read_to_string(paths.audit()).unwrap();
    let edited = text.replace("\"reason\":\"r1\"", "\"reason\":\"r9\"");
    assert_ne!(edited, text);
    std::fs::write(paths.audit(), edited).unwrap();
    let (p, head) = prove(&paths, 3);
    assert_eq!((p.mac, p.verified_seq, p.chain, head), (None, 1, ChainState::Broken, None));
    std::fs::remove_file(paths.audit_key()).unwrap();
    assert_eq!(prove(&paths, 3).0.chain, ChainState::NoKey);
    std::fs::remove_file(paths.audit()).unwrap();
    assert_eq!(prove(&paths, 3).0.chain, ChainState::NoLog);
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
    let mut lines: Vec<String> = std::fs::read_to_string(paths.audit()).unwrap().lines().map(String::from).collect();
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
    let events: Vec<Event> = list(&both, 0).unwrap().records.iter().map(|l| l.record.as_ref().unwrap().event).collect();
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
