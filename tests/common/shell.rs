//! The shell tests' common ground (tests/shell_session.rs,
//! tests/shell_forgery.rs): a relay and a device running `/bin/sh`
//! sessions, the operator CLI on a pty, and the pids a session prints.
//!
//! Used as `#[path = "common/shell.rs"] mod shell;` beside `mod common;`
//! and `#[path = "common/operator_pty.rs"] mod operator_pty;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::lab::alive;
use crate::common::net::{Device, Relay};
use crate::operator_pty::OnPty;

/// The shell the device runs: dash, for a prompt and job control that do not depend on rc files.
pub const POLICY: &str = "[shell]\nprogram = \"/bin/sh\"\n";

/// `support operator shell DEVICE` on an 80x24 pty of the test's own.
pub fn operator_shell(relay: &Relay, key: &Path, device: &str) -> OnPty {
    OnPty::spawn(&relay.operator_cli(key, &["shell", device]), 80, 24)
}

/// A relay, a device at tier `tier` running `POLICY`, and an operator it trusts.
pub fn setup(tier: u8) -> (Relay, Device, PathBuf) {
    setup_with(tier, POLICY)
}

/// As [`setup`], with the catalogue addition `policy`.
pub fn setup_with(tier: u8, policy: &str) -> (Relay, Device, PathBuf) {
    let relay = Relay::start("127.0.0.1:0");
    let device = Device::enrolled_with(&relay, policy);
    let (key, path) = relay.operator("alice");
    device.trust("alice", &key);
    device.allow(tier);
    (relay, device, path)
}

pub fn paths(device: &Device) -> support::Paths {
    support::Paths::under(device.home.path.clone())
}

/// Waits until `pid` is gone from /proc (at most 10 s).
#[track_caller]
pub fn gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} outlived its session");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid the session's shell printed after `marker=` (the echo of the
/// command typed, `marker=$!`, is passed over: it may come before the
/// prompt, when the keys were typed before the shell started).
#[track_caller]
pub fn pid_after(op: &OnPty, marker: &str) -> i32 {
    let mut from = 0;
    loop {
        let at = op.expect_after(from, format!("{marker}="));
        let end = op.expect_after(at, "\r\n");
        if let Ok(pid) = op.output()[at..end - 2].trim().parse() {
            return pid;
        }
        from = at;
    }
}
