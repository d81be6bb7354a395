//! A daemon with the test catalogue linked to a relay, an operator's run
//! of the kill-resistant tree fixture through it, left running, and its end.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use super::lab::test_policy;
use super::net::{Device, Relay, add_policy};
use super::{Home, Run};

/// A daemon (the binary) enrolled with `relay`, in a new home with the
/// test catalogue, with no session bus and `env` on top of its
/// environment; its log beside the home. Connected when this returns.
pub fn linked_device(relay: &Relay, env: &[(&str, &str)]) -> Device {
    let home = Home::new();
    add_policy(&home, &test_policy());
    let log = std::fs::File::create(home.path.with_extension("daemon.log")).unwrap();
    let mut cmd = home.cmd(&[
        "daemon",
        "--relay",
        &relay.url(),
        "--relay-ca",
        relay.ca().to_str().unwrap(),
        "--enroll",
        &relay.token(),
    ]);
    cmd.env("SUPPORT_LOG", "info,support=debug")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Device::spawned(home, cmd.spawn().unwrap(), true)
}

/// `support operator run DEVICE tree pidfile=PIDFILE` with the key in
/// `key`, left running (its output piped).
pub fn run_tree(relay: &Relay, key: &Path, device: &Device, pidfile: &Path) -> Child {
    relay
        .operator_cli(key, &["run", &device.device_id, "tree", &format!("pidfile={}", pidfile.display())])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The operator's run, once it has ended (at most 30 s, or the test fails).
pub fn ended(child: Child) -> Run {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    Run::from(rx.recv_timeout(Duration::from_secs(30)).expect("the operator's run ended").unwrap())
}
