//! Trusted operators through the real binary.

mod common;

use common::{Home, mode, new_public_key};

#[test]
fn add_list_remove_are_stored_0600_and_audited() {
    let h = Home::new();
    h.run(&["trust", "list"]).code(0).says("No operators are trusted");
    let alice = new_public_key();
    h.run(&["trust", "add", "alice", &alice]).code(0).says("Trusted `alice` (SHA256:");
    assert_eq!(mode(&h.file("trusted_operators.toml")), 0o600);
    let list = h.run(&["trust", "list", "--json"]).code(0).json();
    assert_eq!(list[0]["name"], "alice");
    assert_eq!(list[0]["public_key"], alice.as_str());
    let fingerprint = list[0]["fingerprint"].as_str().unwrap().to_string();
    h.run(&["trust", "list"]).code(0).says("alice").says(&fingerprint);

    h.run(&["trust", "add", "alice", &new_public_key()]).code(2).says("already trusted");
    h.run(&["trust", "add", "bob", &alice]).code(2).says("already trusted as `alice`");
    h.run(&["trust", "remove", "alice"]).code(0);
    h.run(&["trust", "remove", "alice"]).code(2).says("no trusted operator is called `alice`");
    assert_eq!(h.run(&["trust", "list", "--json"]).code(0).json(), serde_json::json!([]));

    let events: Vec<serde_json::Value> =
        h.run(&["audit", "--json"]).code(0).stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 2, "refused changes are not recorded as changes");
    assert_eq!(events[1]["event"], "trust.added");
    assert_eq!(events[0]["event"], "trust.removed");
    assert!(events.iter().all(|e| e["operator"] == "alice" && e["detail"] == fingerprint.as_str()));
}

#[test]
fn invalid_names_and_keys_are_refused_with_the_encoding() {
    let h = Home::new();
    let good = new_public_key();
    for (name, key, needle) in [
        ("alice", &good[8..], "does not start with `ed25519:`"),
        ("alice", "ed25519:AAAA", "3 bytes instead of 32"),
        ("alice", "ed25519:%%%%", "bad base64url"),
        ("alice", &format!("{good}AAAA"), "instead of 32"),
        ("alice", "ssh-ed25519 AAAAC3Nza", "does not start"),
        ("al ice", &good, "not valid"),
        ("", &good, "not valid"),
    ] {
        // `--`: a key's base64 may begin with `-` (1 in 64), which is no flag.
        h.run(&["trust", "add", "--", name, key]).code(2).says(needle);
    }
    assert!(!h.file("trusted_operators.toml").exists());
}

#[test]
fn a_malformed_trust_file_is_an_error_not_an_empty_list() {
    let h = Home::new();
    h.run(&["trust", "add", "alice", &new_public_key()]).code(0);
    let path = h.file("trusted_operators.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace("ed25519:", "ed25519:!");
    std::fs::write(&path, text).unwrap();
    h.run(&["trust", "list"]).code(1).says("trusted_operators.toml").says("fix or remove");
}

#[test]
fn trust_is_withdrawn_even_when_the_audit_log_is_broken() {
    let h = Home::new();
    h.run(&["trust", "add", "alice", &new_public_key()]).code(0);
    let log = h.file("audit.jsonl");
    let text = std::fs::read_to_string(&log).unwrap().replace("trust.added", "trust.removed");
    std::fs::write(&log, text).unwrap();
    h.run(&["trust", "add", "bob", &new_public_key()]).code(1).says("is not sound");
    h.run(&["trust", "remove", "alice"])
        .code(1)
        .says("`alice` is no longer trusted, but the audit record could not be written");
    assert_eq!(h.run(&["trust", "list", "--json"]).code(0).json(), serde_json::json!([]));
}

#[test]
fn a_long_trust_file_is_read_whole_and_one_over_a_mebibyte_is_refused() {
    let h = Home::new();
    h.run(&["trust", "add", "alice", &new_public_key()]).code(0);
    let path = h.file("trusted_operators.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for i in 0..40 {
        text.push_str(&format!(
            "\n[[operator]]\nname = \"op-{i}\"\npublic_key = \"{}\"\nadded_at = \"2026-12-01T10:00:00Z\"\n",
            new_public_key()
        ));
    }
    assert!(text.len() > 4096, "{} bytes", text.len());
    std::fs::write(&path, &text).unwrap();
    assert_eq!(h.run(&["trust", "list", "--json"]).code(0).json().as_array().unwrap().len(), 41);
    text.push_str(&format!("# {}\n", "x".repeat(1 << 20)));
    std::fs::write(&path, &text).unwrap();
    h.run(&["trust", "list"]).code(1).says("trusted_operators.toml").says("larger than 1048576 bytes");
}
