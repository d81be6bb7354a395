//! The daemon with its stderr on a full disk (`/dev/full`: every write
//! fails with ENOSPC) and verbose logs: no log write may panic or stop
//! enforcement. A grant still ends its running task on time, and commands,
//! refused or run, leave no task behind to fill the table (`BUSY`).

mod common;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Home;
use common::net::{Device, Relay, add_policy};
use support::operator::Outcome;
use support::protocol::{DenyCode, DeviceFrame, Status, StoppedBy};

/// `slow` sleeps 30 s; `quick` exits at once (both tier 1).
const POLICY: &str = r#"
[[action]]
name = "slow"
tier = 1
kind = "diagnostic"
description = "sleeps"
argv = ["sleep", "30"]
timeout_s = 60

[[action]]
name = "quick"
tier = 1
kind = "diagnostic"
description = "says hello"
argv = ["echo", "hello"]
timeout_s = 10
"#;

/// A daemon enrolled to `relay`, logging at debug level into `/dev/full`.
fn device_on_a_full_disk(relay: &Relay) -> Device {
    let home = Home::new();
    add_policy(&home, POLICY);
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full exists (Linux)");
    let child = home
        .cmd(&["daemon", "--relay", &relay.url(), "--relay-ca", relay.ca().to_str().unwrap()])
        .args(["--enroll", &relay.token()])
        .env("SUPPORT_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(full)
        .spawn()
        .unwrap();
    Device::spawned(home, child, true)
}

fn no_cancel() -> std::future::Pending<()> {
    std::future::pending()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_still_ends_its_running_task_on_time_when_logs_cannot_be_written() {
    // Lifted: the relay's own run limit is not what is tested here.
    let relay = Relay::start_with("127.0.0.1:0", &["--max-runs-per-second", "1000000"]);
    let (key, key_path) = relay.operator("desk");
    let device = tokio::task::block_in_place(|| {
        let d = device_on_a_full_disk(&relay);
        d.trust("desk", &key);
        d
    });
    let mut desk = relay.session(&key_path).await;
    let granted = Instant::now();
    tokio::task::block_in_place(|| {
        device.home.run(&["allow", "--tier", "1", "--duration", "3s"]).code(0);
    });
    let run = desk.command(&device.device_id, "slow", BTreeMap::new());
    let outcome = tokio::time::timeout(Duration::from_secs(20), desk.run(&run, |_| {}, no_cancel()))
        .await
        .expect("the task ends within 20 s")
        .unwrap();
    let took = granted.elapsed();
    match outcome {
        Outcome::Finished(DeviceFrame::Result { status, cancelled_by, .. }) => {
            assert_eq!(status, Status::Cancelled);
            assert_eq!(cancelled_by, Some(StoppedBy::Expiry));
        }
        other => panic!("{other:?}"),
    }
    assert!(took < Duration::from_secs(6), "a 3 s grant ended its task after {took:?}");
    // The daemon lives on, enforcing: the next grant's task ends too.
    tokio::task::block_in_place(|| {
        device.home.run(&["allow", "--tier", "1", "--duration", "2s"]).code(0);
    });
    let run = desk.command(&device.device_id, "slow", BTreeMap::new());
    let outcome = tokio::time::timeout(Duration::from_secs(20), desk.run(&run, |_| {}, no_cancel())).await.unwrap();
    assert!(
        matches!(outcome, Ok(Outcome::Finished(DeviceFrame::Result { cancelled_by: Some(StoppedBy::Expiry), .. }))),
        "{outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_runs_leave_no_phantom_task_when_logs_cannot_be_written() {
    // Lifted: the relay's own run limit is not what is tested here.
    let relay = Relay::start_with("127.0.0.1:0", &["--max-runs-per-second", "1000000"]);
    let (key, key_path) = relay.operator("desk");
    let (_, stranger_path) = relay.operator("stranger");
    let device = tokio::task::block_in_place(|| {
        let d = device_on_a_full_disk(&relay);
        d.trust("desk", &key);
        d
    });
    let id = device.device_id.clone();
    let mut desk = relay.session(&key_path).await;
    let mut stranger = relay.session(&stranger_path).await;
    let denied = |o: Outcome| match o {
        Outcome::Denied { code, .. } => code,
        other => panic!("expected a denial, got {other:?}"),
    };
    let run = desk.command(&id, "quick", BTreeMap::new());
    assert_eq!(denied(desk.run(&run, |_| {}, no_cancel()).await.unwrap()), DenyCode::NoConsent);
    tokio::task::block_in_place(|| device.allow(1));
    // Twice the table's size (8) of each: refused for trust, signature and
    // parameters, and run to their end.
    for _ in 0..16 {
        let run = stranger.command(&id, "quick", BTreeMap::new());
        assert_eq!(denied(stranger.run(&run, |_| {}, no_cancel()).await.unwrap()), DenyCode::UntrustedOperator);
        let mut run = desk.command(&id, "quick", BTreeMap::new());
        run.action = "slow".into();
        assert_eq!(denied(desk.run(&run, |_| {}, no_cancel()).await.unwrap()), DenyCode::BadSignature);
        let run = desk.command(&id, "quick", BTreeMap::from([("x".to_string(), "1".to_string())]));
        assert_eq!(denied(desk.run(&run, |_| {}, no_cancel()).await.unwrap()), DenyCode::InvalidParams);
        let run = desk.command(&id, "quick", BTreeMap::new());
        match desk.run(&run, |_| {}, no_cancel()).await.unwrap() {
            Outcome::Finished(DeviceFrame::Result { status: Status::Ok, .. }) => {}
            other => panic!("a quick action after refusals: {other:?}"),
        }
    }
    let status = tokio::task::block_in_place(|| device.home.status());
    assert_eq!(status["daemon"]["running_tasks"], 0, "{status}");
    let tasks = tokio::task::block_in_place(|| device.home.run(&["tasks", "--json"]).code(0).json());
    assert_eq!(tasks["tasks"].as_array().map(Vec::len), Some(0), "{tasks}");
}
