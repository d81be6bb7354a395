//! Removing an operator's trust ends the tasks they started, against a
//! real daemon and relay: `support trust remove` (the operator's run is
//! told why, another operator's task runs on), and a hand edit of
//! `trusted_operators.toml` picked up by the daemon's watcher, or a damaged
//! one, which trusts no one. Each task is the kill-resistant tree fixture
//! (it ignores SIGTERM, SIGHUP and SIGINT, forks away and calls setsid),
//! checked gone in `/proc`. No daemon runs in this test process (one that
//! did would reap the processes the tests start).

mod common;

use std::time::{Duration, Instant};

use common::lab::survivors;
use common::net::{Device, Relay};
use common::tree_run::{ended, linked_device, run_tree};
use common::wait_pids;

/// The longest a stop may take: SIGTERM, the grace, then SIGKILL and its
/// wait (`daemon::exec::TERM_GRACE`, `daemon::kill::KILL_LIMIT`).
const STOP_BOUND: Duration = Duration::from_secs(3 + 10);

/// A daemon linked to `relay`, with the test catalogue, trusting each
/// `(name, key)`, and a tier 1 grant.
fn device(relay: &Relay, operators: &[(&str, &support::KeyPair)]) -> Device {
    let device = linked_device(relay, &[]);
    for (name, key) in operators {
        device.trust(name, key);
    }
    device.allow(1);
    device
}

fn audit(device: &Device) -> Vec<serde_json::Value> {
    let out = device.home.run(&["audit", "--json", "--limit", "0"]).code(0).stdout.clone();
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn trust_remove_stops_that_operator_s_running_tree_at_once_and_tells_them_why() {
    let relay = Relay::start("127.0.0.1:0");
    let (desk, desk_path) = relay.operator("desk");
    let (other, other_path) = relay.operator("other");
    let device = device(&relay, &[("desk", &desk), ("other", &other)]);

    let (pids_desk, pids_other) =
        (device.home.path.with_extension("desk.pids"), device.home.path.with_extension("o.pids"));
    let desk_run = run_tree(&relay, &desk_path, &device, &pids_desk);
    let other_run = run_tree(&relay, &other_path, &device, &pids_other);
    let pids_desk = wait_pids(&pids_desk, 10);
    let pids_other = wait_pids(&pids_other, 10);

    let began = Instant::now();
    device.home.run(&["trust", "remove", "desk"]).code(0).says("no longer trusted").says("trust_removed");
    let out = ended(desk_run);
    let took = began.elapsed();
    assert_eq!(survivors(&pids_desk), Vec::<i32>::new(), "desk's whole tree is gone\n{}", device.log());
    assert!(took < STOP_BOUND, "stopped in {took:?}");
    out.says("cancelled: the owner no longer trusts your key");
    assert_eq!(survivors(&pids_other).len(), 10, "the other operator's task runs on\n{}", device.log());

    let records = audit(&device);
    let stops: Vec<_> = records.iter().filter(|r| r["event"] == "task.stopped").collect();
    assert_eq!(stops.len(), 1, "{stops:#?}");
    assert_eq!(stops[0]["by"], "trust_removed");
    assert_eq!(stops[0]["operator"], "desk");
    let finished = records.iter().find(|r| r["event"] == "action.finished").expect("action.finished");
    assert_eq!(finished["status"], "cancelled");
    assert_eq!(finished["by"], "trust_removed");
    let removed = records.iter().find(|r| r["event"] == "trust.removed").expect("trust.removed");
    assert!(stops[0]["seq"].as_u64() > removed["seq"].as_u64(), "the removal, then the stop: {records:#?}");

    // The other task ends with the grant, as before.
    device.home.run(&["revoke"]).code(0);
    ended(other_run).says("cancelled by revoke");
    assert_eq!(survivors(&pids_other), Vec::<i32>::new());
}

#[test]
fn a_hand_edit_of_the_trust_file_stops_the_removed_operator_s_tree_and_a_damaged_file_stops_every_task() {
    let relay = Relay::start("127.0.0.1:0");
    let (desk, desk_path) = relay.operator("desk");
    let device = device(&relay, &[("desk", &desk)]);
    let file = device.home.path.join("trusted_operators.toml");
    let trusted = std::fs::read_to_string(&file).expect("the trust file, in the home");

    let pids = device.home.path.with_extension("a.pids");
    let run = run_tree(&relay, &desk_path, &device, &pids);
    let pids = wait_pids(&pids, 10);
    // The owner deletes desk's entry in an editor; another operator stays.
    let bob = common::new_public_key();
    std::fs::write(
        &file,
        format!("[[operator]]\nname = \"bob\"\npublic_key = \"{bob}\"\nadded_at = \"2026-12-01T10:00:00Z\"\n"),
    )
    .unwrap();
    ended(run).says("cancelled: the owner no longer trusts your key");
    assert_eq!(survivors(&pids), Vec::<i32>::new(), "the whole tree is gone\n{}", device.log());
    let stop = audit(&device).into_iter().find(|r| r["event"] == "task.stopped").expect("task.stopped");
    assert_eq!(stop["by"], "trust_removed");
    // Its next command is refused.
    let pids_file = device.home.path.with_extension("b.pids");
    let refused = ended(run_tree(&relay, &desk_path, &device, &pids_file));
    assert_ne!(refused.code, 0);
    refused.says("UNTRUSTED_OPERATOR");
    assert!(!pids_file.exists(), "nothing ran");

    // Trusted again, desk's task runs; then a damaged file trusts no one.
    std::fs::write(&file, &trusted).unwrap();
    let pids = device.home.path.with_extension("c.pids");
    let run = run_tree(&relay, &desk_path, &device, &pids);
    let pids = wait_pids(&pids, 10);
    std::fs::write(&file, "[[operator]]\nname = \"desk\"\npublic_key = \"not a key\"\n").unwrap();
    ended(run).says("cancelled: the owner no longer trusts your key");
    assert_eq!(survivors(&pids), Vec::<i32>::new(), "fail closed\n{}", device.log());
}
