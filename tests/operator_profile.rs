//! The operator's profile (issue 17): `support operator init` makes the
//! key (PEM, PKCS#8, 0600, its directory too) and `operator.toml`, and
//! every operator command then needs no flag; a flag or a
//! `SUPPORT_OPERATOR_*` variable still wins; `init` does not overwrite a
//! profile without `--force` and keeps the key; a profile with a field it
//! does not know is refused naming the file; a bare-DER key from before
//! still works. A real relay and the real binary.

mod common;

use common::net::Relay;
use common::{Home, Run, mode};

/// `support operator ARGS` in `home`, with no `SUPPORT_OPERATOR_*` from outside.
fn operator(home: &Home, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = home.cmd(&[&["operator"][..], args].concat());
    for var in [
        "SUPPORT_OPERATOR_RELAY",
        "SUPPORT_OPERATOR_RELAY_CA",
        "SUPPORT_OPERATOR_RELAY_FINGERPRINT",
        "SUPPORT_OPERATOR_KEY",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    Run::from(cmd.output().unwrap())
}

#[test]
fn init_once_then_every_operator_command_needs_no_flag() {
    let relay = Relay::start("127.0.0.1:0");
    let home = Home::new();
    // Before init: what to do.
    operator(&home, &["devices"], &[]).code(2).says("support operator init");
    let init = operator(&home, &["init", "--relay", &relay.url(), "--relay-fingerprint", &relay.fingerprint], &[]);
    init.code(0).says("operator.toml");
    let public = init.stdout.trim().to_string();
    assert!(public.starts_with("ed25519:"), "{public}");
    let key = home.path.join("operator.key");
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n") && pem.trim_end().ends_with("-----END PRIVATE KEY-----"));
    assert_eq!(mode(&key) & 0o777, 0o600);
    // Standard enough for openssl to read it as an Ed25519 key.
    let read =
        std::process::Command::new("openssl").args(["pkey", "-noout", "-text", "-in"]).arg(&key).output().unwrap();
    assert!(read.status.success() && String::from_utf8_lossy(&read.stdout).contains("ED25519"), "{read:?}");
    let profile = std::fs::read_to_string(home.path.join("operator.toml")).unwrap();
    assert!(profile.contains(&relay.url()) && profile.contains(&relay.fingerprint), "{profile}");
    relay.admin(&["add-operator", "desk", &public]).code(0);
    let listed = operator(&home, &["devices", "--json"], &[]);
    listed.code(0);
    assert!(listed.json().is_array(), "{}", listed.stdout);

    // A flag wins over the profile, and so does its variable.
    let wrong = format!("sha256:{}", "cd".repeat(32));
    operator(&home, &["--relay-fingerprint", &wrong, "devices"], &[]).code(1).says(&wrong);
    operator(&home, &["devices"], &[("SUPPORT_OPERATOR_RELAY_FINGERPRINT", &wrong)]).code(1).says(&wrong);
    // The flag's CA instead of the profile's pin: not "both".
    operator(&home, &["--relay-ca", relay.ca().to_str().unwrap(), "devices"], &[]).code(0);

    // Not replaced without --force; with it, the key is kept.
    operator(&home, &["init", "--relay", &relay.url(), "--relay-ca", "system"], &[]).code(2).says("--force");
    let again =
        operator(&home, &["init", "--force", "--relay", &relay.url(), "--relay-ca", relay.ca().to_str().unwrap()], &[]);
    again.code(0).says("Using the key");
    assert_eq!(again.stdout.trim(), public);
    operator(&home, &["devices"], &[]).code(0);

    // A field it does not know is refused, naming the file.
    std::fs::write(home.path.join("operator.toml"), "relay = \"wss://x:1\"\nrelay_pin = \"x\"\n").unwrap();
    operator(&home, &["devices"], &[]).code(2).says("operator.toml").says("relay_pin");
}

#[test]
fn keygen_writes_pem_and_a_bare_der_key_still_loads() {
    let relay = Relay::start("127.0.0.1:0");
    let home = Home::new();
    let pem_key = home.path.join("keys/desk.pem");
    let made = operator(&home, &["keygen", "--out", pem_key.to_str().unwrap()], &[]);
    made.code(0);
    assert!(std::fs::read_to_string(&pem_key).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
    assert_eq!(mode(pem_key.parent().unwrap()) & 0o777, 0o700);
    // A key from before, bare PKCS#8 DER, 0600.
    let (old, der) = support::KeyPair::generate();
    let der_key = home.path.join("keys/old.der");
    std::fs::write(&der_key, der).unwrap();
    std::fs::set_permissions(&der_key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    relay.admin(&["add-operator", "old", &old.public_key().to_string()]).code(0);
    relay.admin(&["add-operator", "desk", made.stdout.trim()]).code(0);
    let (url, ca) = (relay.url(), relay.ca());
    let ca = ca.to_str().unwrap();
    for key in [&der_key, &pem_key] {
        let flags = ["--relay", &url, "--relay-ca", ca, "--key", key.to_str().unwrap()];
        operator(&home, &[&flags[..], &["devices"]].concat(), &[]).code(0);
    }
    // Something else in a PEM block is not a key.
    let cert = home.path.join("keys/cert.pem");
    std::fs::copy(relay.ca(), &cert).unwrap();
    std::fs::set_permissions(&cert, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let flags = ["--relay", &url, "--relay-ca", ca, "--key", cert.to_str().unwrap()];
    operator(&home, &[&flags[..], &["devices"]].concat(), &[]).code(2).says("not an Ed25519 PKCS#8 key");
}
