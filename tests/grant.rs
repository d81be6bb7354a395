//! Grants through the real binary: flags and ranges, status, expiry,
//! unsafe consent files, modes under any umask, concurrent writers.

mod common;

use std::time::{Duration, Instant};

use common::{Home, is_root, mode};

#[test]
fn invalid_flags_and_ranges_exit_2_naming_the_range() {
    let h = Home::new();
    for (args, needle) in [
        (&["allow", "--tier", "0", "--minutes", "5"][..], "the tier is 1 to 4"),
        (&["allow", "--tier", "5", "--minutes", "5"], "4  shell"),
        (&["allow", "--tier", "two", "--minutes", "5"], "1  diagnostics"),
        (&["allow", "--tier", "1", "--minutes", "0"], "minutes are 1 to 480"),
        (&["allow", "--tier", "1", "--minutes", "481"], "minutes are 1 to 480"),
        (&["allow", "--tier", "1", "--minutes", "-3"], "minutes are 1 to 480"),
        (&["allow", "--tier", "1", "--duration", "0s"], "1 second to 8 hours"),
        (&["allow", "--tier", "1", "--duration", "8h 1s"], "1 second to 8 hours"),
        (&["allow", "--tier", "1", "--duration", "soon"], "30s"),
        (&["allow", "--tier", "1", "--minutes", "5", "--duration", "5m"], "cannot be used with"),
        (&["allow", "--tier", "1"], "--minutes"),
        (&["allow", "--minutes", "5"], "--tier"),
        (&["allow", "--tier", "1", "--minutes", "5", "--reason", "two\nlines"], "control characters"),
    ] {
        h.run(args).code(2).says(needle);
    }
    assert!(!h.file("consent.json").exists());
    assert_eq!(h.status()["enabled"], false);
}

#[test]
fn tiers_3_and_4_need_yes_and_print_the_exact_command() {
    let h = Home::new();
    let home = h.path.display().to_string();
    for tier in ["3", "4"] {
        let r = h.run(&["allow", "--tier", tier, "--minutes", "10", "--reason", "fix wifi"]);
        r.code(2).says(&format!("support --home {home} allow --tier {tier} --minutes 10 --reason 'fix wifi' --yes"));
        assert_eq!(h.status()["enabled"], false);
    }
    h.run(&["allow", "--tier", "4", "--minutes", "10", "--yes"]).code(0).says("raw shell");
    assert_eq!(h.status()["tier"], 4);
}

#[test]
fn status_json_carries_the_contract_fields() {
    let h = Home::new();
    let off = h.status();
    assert_eq!(off["enabled"], false);
    assert_eq!(off["off_reason"], "no grant");
    assert!(off["daemon"].is_null());
    h.run(&["allow", "--tier", "2", "--minutes", "60", "--reason", "printer"]).code(0).says("Granted tier 2");
    let on = h.status();
    assert_eq!(on["enabled"], true);
    assert_eq!(on["tier"], 2);
    assert_eq!(on["reason"], "printer");
    assert!(on["grant_id"].as_str().unwrap().starts_with("g-"));
    let left = on["remaining_seconds"].as_u64().unwrap();
    assert!((3590..=3600).contains(&left), "{left}");
    for f in ["granted_at", "expires_at"] {
        assert!(chrono::DateTime::parse_from_rfc3339(on[f].as_str().unwrap()).is_ok(), "{f}");
    }
    for p in ["home", "consent", "audit", "policy_dir", "secret"] {
        assert!(on["paths"][p].as_str().unwrap().starts_with(&h.path.display().to_string()), "{p}");
    }
    assert_eq!(on["paths"]["consent"], h.file("consent.json").display().to_string());
    // A new grant replaces the old one.
    h.run(&["allow", "--tier", "1", "--minutes", "5"]).code(0);
    let replaced = h.status();
    assert_eq!(replaced["tier"], 1);
    assert_ne!(replaced["grant_id"], on["grant_id"]);
    h.run(&["revoke"]).code(0).says("Revoked grant g-").says("(tier 1, diagnostics)");
    h.run(&["revoke"]).code(0).says("No grant was in force");
    assert_eq!(h.status()["enabled"], false);
}

#[test]
fn a_short_grant_expires() {
    let h = Home::new();
    h.run(&["allow", "--tier", "1", "--duration", "2s"]).code(0);
    assert_eq!(h.status()["enabled"], true);
    let deadline = Instant::now() + Duration::from_secs(15);
    let off = loop {
        let s = h.status();
        if s["enabled"] == false {
            break s;
        }
        assert!(Instant::now() < deadline, "a 2 s grant still live after 15 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(off["off_reason"].as_str().unwrap().starts_with("expired at "), "{off}");
    h.run(&["status"]).code(0).says("OFF: expired at");
    h.run(&["actions"]).code(0).says("nothing may run");
}

fn assert_off_because(h: &Home, needle: &str) {
    let s = h.status();
    assert_eq!(s["enabled"], false, "{s}");
    let why = s["off_reason"].as_str().unwrap();
    assert!(why.starts_with("consent file unsafe") && why.contains(needle), "{why}");
    h.run(&["status"]).code(0).says("OFF").says(needle);
    h.run(&["actions"]).code(0).says("nothing may run");
}

#[test]
fn an_unsafe_consent_file_means_no_consent() {
    use std::os::unix::fs::PermissionsExt;
    let h = Home::new();
    h.run(&["allow", "--tier", "2", "--minutes", "30"]).code(0);
    let consent = h.file("consent.json");
    let moved = h.file("elsewhere.json");

    std::fs::rename(&consent, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &consent).unwrap();
    assert_off_because(&h, "symbolic link");
    std::fs::remove_file(&consent).unwrap();
    std::fs::rename(&moved, &consent).unwrap();
    assert_eq!(h.status()["enabled"], true);

    std::fs::set_permissions(&consent, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_off_because(&h, "writable by group or others");
    std::fs::set_permissions(&consent, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(h.status()["enabled"], true);

    if is_root() {
        std::os::unix::fs::chown(&consent, Some(65534), Some(65534)).unwrap();
        assert_off_because(&h, "owned by uid 65534");
    } else {
        eprintln!("not root: the foreign-owner case needs chown and is covered by paths' unit checks");
    }
    // Revoke still clears it.
    h.run(&["revoke"]).code(0);
    assert!(!consent.exists());
}

#[test]
fn a_malformed_grant_is_off_with_the_reason() {
    let h = Home::new();
    h.run(&["allow", "--tier", "1", "--minutes", "30"]).code(0);
    let consent = h.file("consent.json");
    let text = std::fs::read_to_string(&consent).unwrap().replace("\"tier\": 1", "\"tier\": 9");
    std::fs::write(&consent, text).unwrap();
    let s = h.status();
    assert_eq!(s["enabled"], false);
    assert!(s["off_reason"].as_str().unwrap().starts_with("consent file malformed"), "{s}");
}

#[test]
fn files_are_0600_and_dirs_0700_whatever_the_umask() {
    for umask in ["000", "077", "277"] {
        let h = Home::new();
        h.run_umask(umask, &["allow", "--tier", "1", "--minutes", "5"]).code(0);
        h.run_umask(umask, &["trust", "add", "alice", &common::new_public_key()]).code(0);
        assert_eq!(mode(&h.path), 0o700, "home, umask {umask}");
        for f in ["consent.json", "audit.jsonl", "audit.key", "trusted_operators.toml"] {
            assert_eq!(mode(&h.file(f)), 0o600, "{f}, umask {umask}");
        }
        h.run_umask(umask, &["audit", "--verify"]).code(0).says("ok: 2 records");
    }
}

#[test]
fn no_grant_is_made_when_the_audit_log_cannot_be_written() {
    let h = Home::new();
    h.run(&["status"]).code(0);
    std::fs::create_dir_all(&h.path).unwrap();
    let elsewhere = h.path.parent().unwrap().join("other.jsonl");
    std::fs::write(&elsewhere, b"").unwrap();
    std::os::unix::fs::symlink(&elsewhere, h.file("audit.jsonl")).unwrap();
    h.run(&["allow", "--tier", "1", "--minutes", "5"]).code(1).says("audit.jsonl is unsafe: it is a symbolic link");
    assert!(!h.file("consent.json").exists());
    assert_eq!(std::fs::read(&elsewhere).unwrap(), b"");
}

#[test]
fn fifty_concurrent_allow_and_revoke_keep_one_gapless_chain() {
    let h = Home::new();
    let children: Vec<_> = (0..50)
        .map(|i| {
            let args: &[&str] = if i % 3 == 0 { &["revoke"] } else { &["allow", "--tier", "2", "--minutes", "5"] };
            h.cmd(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    h.run(&["audit", "--verify"]).code(0).says("ok: 50 records");
    let listing = h.run(&["audit", "--json", "--limit", "0"]);
    let mut seqs: Vec<u64> = listing
        .code(0)
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    let s = h.status();
    assert!(s["enabled"] == true || s["off_reason"] == "no grant", "{s}");
}

#[test]
fn without_a_home_files_follow_xdg() {
    let dir = tempfile::tempdir().unwrap();
    let (config, state) = (dir.path().join("config"), dir.path().join("state"));
    let run = |args: &[&str]| {
        let out = std::process::Command::new(common::bin())
            .args(args)
            .env_remove("SUPPORT_HOME")
            .env("XDG_CONFIG_HOME", &config)
            .env("XDG_STATE_HOME", &state)
            .env("HOME", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["allow", "--tier", "1", "--minutes", "5"]);
    run(&["trust", "add", "alice", &common::new_public_key()]);
    let s: serde_json::Value = serde_json::from_str(&run(&["status", "--json"])).unwrap();
    assert_eq!(s["enabled"], true);
    let (cs, ss) = (config.join("support"), state.join("support"));
    assert_eq!(s["paths"]["consent"], ss.join("consent.json").display().to_string());
    assert_eq!(s["paths"]["audit"], ss.join("audit.jsonl").display().to_string());
    assert_eq!(s["paths"]["policy_dir"], cs.join("policy.d").display().to_string());
    for f in [ss.join("consent.json"), ss.join("audit.jsonl"), ss.join("audit.key"), cs.join("trusted_operators.toml")]
    {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert_eq!(mode(&cs), 0o700);
    assert_eq!(mode(&ss), 0o700);
}

#[test]
fn a_home_writable_by_others_means_no_consent_and_no_writes() {
    use std::os::unix::fs::PermissionsExt;
    let h = Home::new();
    h.run(&["allow", "--tier", "1", "--minutes", "30"]).code(0);
    std::fs::set_permissions(&h.path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let s = h.status();
    assert_eq!(s["enabled"], false);
    assert!(s["off_reason"].as_str().unwrap().contains("chmod 700"), "{s}");
    h.run(&["allow", "--tier", "1", "--minutes", "30"]).code(1).says("chmod 700");
    h.run(&["audit", "--verify"]).code(1).says("writable by group or others");
    h.run(&["actions"]).code(0).says("nothing may run");
    std::fs::set_permissions(&h.path, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(h.status()["enabled"], true);
}

#[test]
fn a_grant_that_cannot_be_written_is_withdrawn_on_the_record() {
    let h = Home::new();
    h.run(&["status"]).code(0);
    std::fs::create_dir_all(h.file("consent.json").join("blocker")).unwrap();
    h.run(&["allow", "--tier", "2", "--minutes", "5"]).code(1).says("consent.json");
    assert_eq!(h.status()["enabled"], false);
    let events: Vec<String> = h
        .run(&["audit", "--json"])
        .code(0)
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["consent.revoked", "consent.granted"]);
}

#[test]
fn a_grant_dated_in_the_future_gets_no_extra_time() {
    let h = Home::new();
    h.run(&["allow", "--tier", "1", "--minutes", "480"]).code(0);
    let path = h.file("consent.json");
    let mut grant: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let now = chrono::Utc::now();
    let at = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    // (granted_at ahead, length, the reason it is off): 4 min ahead for 8 h ran 8 h 04 m before.
    for (ahead, minutes, why) in [(240, 480, "in the future"), (30, 480, "more than 8 hours from now")] {
        let granted = now + chrono::TimeDelta::seconds(ahead);
        grant["granted_at"] = at(granted).into();
        grant["expires_at"] = at(granted + chrono::TimeDelta::minutes(minutes)).into();
        std::fs::write(&path, grant.to_string()).unwrap();
        let s = h.status();
        assert_eq!(s["enabled"], false, "{s}");
        assert!(s["off_reason"].as_str().unwrap().contains(why), "{s}");
    }
    let granted = now + chrono::TimeDelta::seconds(30);
    grant["granted_at"] = at(granted).into();
    grant["expires_at"] = at(granted + chrono::TimeDelta::minutes(60)).into();
    std::fs::write(&path, grant.to_string()).unwrap();
    let s = h.status();
    assert_eq!(s["enabled"], true, "{s}");
    assert!(s["remaining_seconds"].as_u64().unwrap() <= 3630, "{s}");
}
