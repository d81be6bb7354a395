//! TLS failures a person can act on (issue 17): a pin mismatch names the
//! pinned and the presented fingerprints, an unknown issuer says to pass
//! `--relay-ca`, a name the certificate lacks says which names it has and
//! how to add one; `--relay-fingerprint` takes what `openssl x509
//! -fingerprint -sha256` prints; a `--san` the kept self-signed
//! certificate lacks is refused with the fix; `support relay rotate-cert`
//! makes a new certificate for a year, keeping the old one's names, and a
//! client pinned to the old one is told both fingerprints. Real relays,
//! the real operator CLI, the real `openssl`.

mod common;

use std::path::Path;
use std::process::Command;

use common::net::Relay;
use common::{Run, bin};

/// `support operator --relay URL TRUST... --key KEY devices --json`.
fn devices(url: &str, trust: &[&str], key: &Path) -> Run {
    let out = Command::new(bin())
        .args(["operator", "--relay", url])
        .args(trust)
        .arg("--key")
        .arg(key)
        .args(["devices", "--json"])
        .env_remove("SUPPORT_OPERATOR_RELAY_CA")
        .env_remove("SUPPORT_OPERATOR_RELAY_FINGERPRINT")
        .output()
        .unwrap();
    Run::from(out)
}

#[test]
fn a_wrong_pin_names_both_fingerprints_and_openssls_form_is_accepted() {
    let relay = Relay::start("127.0.0.1:0");
    let (_, key) = relay.operator("desk");
    let pinned = format!("sha256:{}", "ab".repeat(32));
    let wrong = devices(&relay.url(), &["--relay-fingerprint", &pinned], &key);
    wrong.code(1).says(&pinned).says(&relay.fingerprint).says("not your relay");
    assert!(!wrong.stderr.contains("ApplicationVerificationFailure"), "{}", wrong.stderr);
    // What openssl prints for the relay's certificate, as it prints it.
    let openssl = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(relay.ca())
        .output()
        .expect("openssl is installed");
    let printed = String::from_utf8(openssl.stdout).unwrap();
    assert!(printed.to_ascii_lowercase().starts_with("sha256 fingerprint="), "{printed}");
    devices(&relay.url(), &["--relay-fingerprint", printed.trim()], &key).code(0);
    // Its older upper-case form, and the bare hex digits, too.
    let hex = relay.fingerprint.strip_prefix("sha256:").unwrap().to_string();
    let pairs: Vec<String> = hex.as_bytes().chunks(2).map(|p| String::from_utf8_lossy(p).to_uppercase()).collect();
    devices(&relay.url(), &["--relay-fingerprint", &format!("SHA256 Fingerprint={}", pairs.join(":"))], &key).code(0);
    devices(&relay.url(), &["--relay-fingerprint", &hex], &key).code(0);
    devices(&relay.url(), &["--relay-fingerprint", "sha256:12"], &key).code(2).says("openssl x509 -fingerprint");
}

#[test]
fn an_unknown_issuer_says_to_pass_the_relays_ca_and_a_missing_name_which_names_it_has() {
    let relay = Relay::start("127.0.0.1:0");
    let (_, key) = relay.operator("desk");
    let other = Relay::start("127.0.0.1:0");
    let stranger = devices(&relay.url(), &["--relay-ca", other.ca().to_str().unwrap()], &key);
    // Each self-signed certificate has a subject of its own: another relay's
    // is no issuer of this one (not a BadSignature from a shared name).
    stranger.code(1).says("not signed by a CA you trust (UnknownIssuer)").says("--relay-ca");
    // 127.0.0.2 reaches a relay listening there, but its certificate names 127.0.0.1.
    let elsewhere = Relay::start("127.0.0.2:0");
    let (_, key2) = elsewhere.operator("desk");
    let unnamed = devices(&elsewhere.url(), &["--relay-ca", elsewhere.ca().to_str().unwrap()], &key2);
    unnamed.code(1).says("does not name 127.0.0.2").says("localhost").says("rotate-cert --san 127.0.0.2");
}

#[test]
fn a_san_the_kept_certificate_lacks_is_refused_and_rotate_cert_adds_it_for_a_year() {
    let Relay { dir, state, addr, fingerprint: old, mut proc } = Relay::start("127.0.0.2:0");
    proc.term();
    let serve = |extra: &[&str]| {
        let out = Command::new(bin())
            .args(["relay", "--state"])
            .arg(&state)
            .args(["serve", "--self-signed", "--listen", "127.0.0.1:0"])
            .args(extra)
            .output()
            .unwrap();
        Run::from(out)
    };
    serve(&["--san", "127.0.0.2"]).code(2).says("does not name 127.0.0.2").says("rotate-cert --san 127.0.0.2");
    let rotated = Run::from(
        Command::new(bin())
            .args(["relay", "--state"])
            .arg(&state)
            .args(["rotate-cert", "--san", "127.0.0.2", "--json"])
            .output()
            .unwrap(),
    );
    rotated.code(0);
    let v = rotated.json();
    assert_eq!(v["previous"], old.as_str(), "{v}");
    let new = v["fingerprint"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let names: Vec<&str> = v["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    for name in ["localhost", "127.0.0.1", "::1", "127.0.0.2"] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    let not_after: chrono::DateTime<chrono::Utc> = v["not_after"].as_str().unwrap().parse().unwrap();
    let days = (not_after - chrono::Utc::now()).num_days();
    assert!((364..=366).contains(&days), "valid for {days} days");
    // Served after a restart, and reachable by its new name; the old pin is told both.
    let relay = Relay::start_in(dir, state, &addr, &[]);
    assert_eq!(relay.fingerprint, new);
    let (_, key) = relay.operator("desk");
    devices(&relay.url(), &["--relay-ca", relay.ca().to_str().unwrap()], &key).code(0);
    devices(&relay.url(), &["--relay-fingerprint", &old], &key).code(1).says(&old).says(&new);
}

#[test]
fn serve_warns_when_the_self_signed_certificate_has_less_than_30_days_left() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("relay");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A certificate kept from before that ends in 10 days.
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let end = chrono::Utc::now() + chrono::Duration::days(10);
    use chrono::Datelike as _;
    params.not_after = rcgen::date_time_ymd(end.year(), end.month() as u8, end.day() as u8);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    for (name, text) in [("key.pem", key.serialize_pem()), ("cert.pem", cert.pem())] {
        std::fs::write(state.join(name), text).unwrap();
        std::fs::set_permissions(state.join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let relay = Relay::start_in(dir, state, "127.0.0.1:0", &[]);
    let logs: String = std::fs::read_dir(relay.dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("relay-"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(logs.contains("reusing the self-signed certificate"), "{logs}");
    assert!(logs.contains("warning: it expires in"), "{logs}");
    assert!(logs.contains("rotate-cert"), "{logs}");
}
