//! One-command enrolment and the daemon as a service (issue 17): `support
//! relay enroll-token` prints the one line an owner runs; `support service
//! install` writes `daemon.toml` (0600, keeping its other keys) from it, and
//! where systemd does not run (this test machine) installs nothing, says
//! so and prints the foreground command, which then enrols the device for
//! real. The units `service unit` prints pass `systemd-analyze verify`;
//! `service status` says there is no systemd. The real binary, a real relay.

mod common;

use std::process::Stdio;

use common::net::{Device, Relay};
use common::{Home, Run, mode};

/// The words of the `support service install ...` line enroll-token printed.
fn install_line(stderr: &str) -> Vec<String> {
    let line = stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("support service install "))
        .unwrap_or_else(|| panic!("no install line in:\n{stderr}"));
    shlex::split(line).unwrap()
}

#[test]
fn the_line_enroll_token_prints_enrols_the_device() {
    let relay = Relay::start("127.0.0.1:0");
    let token = relay.admin(&["enroll-token", "--ttl", "10m", "--url", &relay.url()]);
    token.code(0);
    let words = install_line(&token.stderr);
    assert!(words.contains(&relay.fingerprint) && words.contains(&token.stdout.trim().to_string()), "{words:?}");
    let home = Home::new();
    std::fs::create_dir_all(&home.path).unwrap();
    // A key of its own that install must keep.
    let config = home.path.join("daemon.toml");
    std::fs::write(&config, "console_port = 0\nrelay = \"wss://old.example:1\"\n").unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let args: Vec<&str> = words.iter().skip(1).map(String::as_str).collect();
    let installed = home.run(&args);
    installed.code(1).says("systemd is not running").says("no service was installed");
    let foreground = format!("support --home {} daemon", home.path.display());
    installed.says(&foreground);
    assert_eq!(mode(&config) & 0o777, 0o600);
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains("console_port = 0") && !written.contains("old.example"), "{written}");
    // The foreground command, as printed, enrols the device with what install wrote.
    let log = std::fs::File::create(home.path.with_extension("daemon.log")).unwrap();
    let child = home.cmd(&["daemon"]).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let device = Device::spawned(home, child, true);
    let listed = relay.admin(&["devices", "--json"]).json();
    assert_eq!(listed[0]["device_id"], device.device_id.as_str(), "{listed}");
}

#[test]
fn bad_install_flags_are_refused_before_anything_is_written() {
    let home = Home::new();
    home.run(&["service", "install", "--enroll", "et-x"]).code(2).says("need --relay URL");
    home.run(&["service", "install", "--relay", "ws://plain:1", "--relay-ca", "system"]).code(2);
    home.run(&["service", "install", "--relay", "wss://r:1", "--relay-fingerprint", "sha256:12"]).code(2);
    assert!(!home.path.join("daemon.toml").exists());
}

#[test]
fn the_units_verify_and_status_says_there_is_no_systemd() {
    let dir = tempfile::tempdir().unwrap();
    for scope in ["--user", "--system"] {
        let unit = Home::new().run(&["service", "unit", scope]);
        unit.code(0);
        assert!(unit.stdout.contains(&format!("ExecStart={} daemon", common::bin().display())), "{}", unit.stdout);
        assert_eq!(unit.stdout.contains("\nUser="), scope == "--system", "{}", unit.stdout);
        let file = dir.path().join("support-daemon.service");
        std::fs::write(&file, &unit.stdout).unwrap();
        let verify =
            std::process::Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&file).output().unwrap();
        assert!(verify.status.success(), "{scope}: {}", String::from_utf8_lossy(&verify.stderr));
    }
    let status = Home::new().run(&["service", "status", "--json"]);
    status.code(3);
    let v: serde_json::Value = Run::json(&status);
    assert_eq!(v["state"], "no-systemd", "{v}");
}
