//! The audit log through the real binary: every tamper kind fails
//! `--verify` with exit 1 naming the right seq, a torn tail is recovered,
//! and the listing reads as a table.

mod common;

use common::Home;

/// A home whose log has 6 records.
fn home_with_six_records() -> Home {
    let h = Home::new();
    h.run(&["allow", "--tier", "1", "--minutes", "5"]).code(0);
    h.run(&["trust", "add", "alice", &common::new_public_key()]).code(0);
    h.run(&["allow", "--tier", "2", "--minutes", "5", "--reason", "printer"]).code(0);
    h.run(&["revoke"]).code(0);
    h.run(&["trust", "remove", "alice"]).code(0);
    h.run(&["revoke"]).code(0);
    h.run(&["audit", "--verify"]).code(0).says("ok: 6 records");
    h
}

fn lines(h: &Home) -> Vec<String> {
    std::fs::read_to_string(h.file("audit.jsonl")).unwrap().lines().map(String::from).collect()
}

fn write_lines(h: &Home, lines: &[String]) {
    std::fs::write(h.file("audit.jsonl"), lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let start = line.find(&format!("\"{name}\":\"")).unwrap() + name.len() + 4;
    &line[start..start + line[start..].find('"').unwrap()]
}

/// Applies `tamper` to a fresh six-record log and expects `--verify` to name `seq`.
fn assert_caught(what: &str, seq: u64, tamper: impl FnOnce(&mut Vec<String>)) {
    let h = home_with_six_records();
    let mut l = lines(&h);
    tamper(&mut l);
    write_lines(&h, &l);
    let r = h.run(&["audit", "--verify"]);
    assert_eq!(r.code, 1, "{what}: {}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains(&format!("audit chain broken at seq {seq}:")), "{what}: {}", r.stderr);
    h.run(&["audit"]).code(0).says("✗");
}

#[test]
fn a_flipped_byte_in_any_field_is_caught() {
    let h = home_with_six_records();
    let fields = ["\"seq\":3", "\"ts\":\"", "\"event\":\"", "\"tier\":", "\"reason\":\"", "\"prev\":\"", "\"mac\":\""];
    let original = lines(&h)[2].clone();
    assert!(original.contains("\"reason\":\"printer\""), "{original}");
    for f in fields {
        let mut l = lines(&h);
        let at = original.find(f).unwrap() + f.len() - 1;
        let mut bytes = original.clone().into_bytes();
        bytes[at] ^= 0x01;
        l[2] = String::from_utf8(bytes).unwrap();
        write_lines(&h, &l);
        let r = h.run(&["audit", "--verify"]);
        assert_eq!(r.code, 1, "flip in {f}: {}", r.stdout);
        assert!(r.stderr.contains("seq 3:"), "flip in {f}: {}", r.stderr);
    }
}

#[test]
fn a_deleted_record_is_caught() {
    assert_caught("delete", 3, |l| {
        l.remove(2);
    });
}

#[test]
fn two_swapped_records_are_caught() {
    assert_caught("swap", 3, |l| l.swap(2, 3));
}

#[test]
fn an_inserted_record_is_caught() {
    assert_caught("insert a copy", 3, |l| {
        let copy = l[1].clone();
        l.insert(2, copy);
    });
    // A forged record in the right place, with the right seq and prev but no key.
    assert_caught("insert a forgery", 3, |l| {
        let prev = field(&l[1], "mac").to_string();
        let forged = format!(
            "{{\"seq\":3,\"ts\":\"2026-11-22T10:00:00.000000Z\",\"event\":\"consent.revoked\",\"prev\":\"{prev}\",\"mac\":\"{}\"}}",
            "ab".repeat(32)
        );
        l.insert(2, forged);
    });
}

#[test]
fn a_changed_prev_is_caught() {
    assert_caught("prev", 4, |l| {
        let prev = field(&l[3], "prev").to_string();
        l[3] = l[3].replace(&prev, &"0".repeat(64));
    });
}

#[test]
fn a_record_resealed_with_plain_sha256_is_caught() {
    assert_caught("plain sha-256", 3, |l| {
        let line = &l[2];
        let prev = field(line, "prev");
        let mac_at = line.find(",\"mac\":\"").unwrap();
        let canonical = format!("{}}}", &line[..mac_at]);
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(prev.as_bytes());
        ctx.update(canonical.as_bytes());
        let plain = hex::encode(ctx.finish().as_ref());
        l[2] = format!("{},\"mac\":\"{plain}\"}}", &line[..mac_at]);
    });
}

#[test]
fn a_torn_line_is_recovered_by_the_next_write() {
    use std::io::Write;
    let h = home_with_six_records();
    let mut f = std::fs::OpenOptions::new().append(true).open(h.file("audit.jsonl")).unwrap();
    let torn = b"{\"seq\":7,\"ts\":\"2026-11-22T10:";
    f.write_all(torn).unwrap();
    drop(f);
    h.run(&["audit", "--verify"]).code(1).says("seq 7: the last record is torn");
    h.run(&["allow", "--tier", "1", "--minutes", "5"]).code(0);
    h.run(&["audit", "--verify"]).code(0).says("ok: 8 records");
    let newest: Vec<serde_json::Value> = h
        .run(&["audit", "--json", "--limit", "2"])
        .code(0)
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(newest[0]["event"], "consent.granted");
    assert_eq!(newest[1]["event"], "audit.recovered");
    assert_eq!(newest[1]["seq"], 7);
    assert!(newest[1]["detail"].as_str().unwrap().contains(&format!("dropped {} bytes", torn.len())), "{}", newest[1]);
}

#[test]
fn a_tampered_tail_stops_further_grants() {
    let h = home_with_six_records();
    let mut l = lines(&h);
    l[5] = l[5].replace("consent.revoked", "consent.granted");
    write_lines(&h, &l);
    h.run(&["allow", "--tier", "1", "--minutes", "5"]).code(1).says("is not sound");
    assert_eq!(h.status()["enabled"], false);
}

#[test]
fn the_listing_is_a_table_newest_first_and_json_per_line() {
    let h = home_with_six_records();
    let table = h.run(&["audit"]);
    table.code(0).says("consent.granted").says("trust.added").says("alice").says("6 of 6 records");
    let out = &table.stdout;
    assert!(out.find("trust.removed").unwrap() < out.find("trust.added").unwrap(), "newest first:\n{out}");
    assert!(out.contains('✓') && !out.contains('✗'));
    let limited = h.run(&["audit", "--limit", "2"]);
    limited.code(0).says("2 of 6 records");
    let json = h.run(&["audit", "--json", "--limit", "0"]);
    let records: Vec<serde_json::Value> = json.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 6);
    assert_eq!(records[0]["seq"], 6);
    assert_eq!(records[5]["prev"], "0".repeat(64));
    assert!(records.iter().all(|r| r["mac"].as_str().unwrap().len() == 64));
    // A fresh home has no log at all.
    let fresh = Home::new();
    fresh.run(&["audit"]).code(0).says("No audit records yet");
    fresh.run(&["audit", "--verify"]).code(0).says("ok: 0 records");
}

#[test]
fn a_missing_key_fails_closed() {
    let h = home_with_six_records();
    std::fs::remove_file(h.file("audit.key")).unwrap();
    h.run(&["audit", "--verify"]).code(1).says("audit.key is missing");
    h.run(&["allow", "--tier", "1", "--minutes", "5"]).code(1).says("audit.key is missing");
    assert!(!h.file("audit.key").exists(), "a new key must not be made for an existing log");
}
