//! Desktop notifications against a private `dbus-daemon` and a stand-in
//! notification server that records every `Notify` call: a task's start
//! (operator and action), the warning before a grant ends, the end with the
//! summary's gist; Stop from a notification kills the task's tree through
//! the path of `support stop`; an `ActionInvoked` for an id that is not
//! ours, or from a sender that does not own the service, does nothing; a
//! daemon with no bus runs tasks all the same. And `support summary`,
//! `support revoke`'s summary.

mod common;
#[path = "common/notify_server.rs"]
mod notify_server;

use std::process::Child;

use common::lab::survivors;
use common::net::{Device, Relay};
use common::tree_run::{linked_device, run_tree};
use common::{Run, wait_pids};
use notify_server::{Bus, NotifyServer};

/// A daemon linked to `relay` in a home with the test catalogue, trusting
/// `key` as `desk`, with `env` on top of its environment.
fn device(relay: &Relay, key: &support::KeyPair, env: &[(&str, &str)]) -> Device {
    let device = linked_device(relay, env);
    device.trust("desk", key);
    device
}

fn records(device: &Device) -> Vec<serde_json::Value> {
    let out = device.home.run(&["audit", "--json", "--limit", "0"]);
    out.code(0);
    out.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_grant_s_tasks_warning_and_end_are_notified_and_stop_from_a_notification_kills_the_tree() {
    let bus = Bus::start();
    let server = NotifyServer::start(&bus, &["actions", "body", "body-markup"]);
    let relay = Relay::start("127.0.0.1:0");
    let (key, key_path) = relay.operator("desk");
    // The warning 10 s before the end of a 20 s grant stands for 5 minutes before a longer one.
    let device =
        device(&relay, &key, &[("DBUS_SESSION_BUS_ADDRESS", &bus.address), ("SUPPORT_GRANT_WARNING_MS", "10000")]);
    device.home.run(&["allow", "--tier", "1", "--duration", "20s", "--reason", "printer"]).code(0);
    let grant_id = device.home.status()["grant_id"].as_str().expect("a grant").to_string();

    let (pids_a, pids_b) = (device.home.path.with_extension("a.pids"), device.home.path.with_extension("b.pids"));
    let mut a = run_tree(&relay, &key_path, &device, &pids_a);
    let note_a = server
        .wait_for("of task A", |n| n.summary == "Support started tree" && n.body.contains(&*pids_a.to_string_lossy()));
    let pids_a = wait_pids(&pids_a, 10);
    let b = run_tree(&relay, &key_path, &device, &pids_b);
    let note_b = server
        .wait_for("of task B", |n| n.summary == "Support started tree" && n.body.contains(&*pids_b.to_string_lossy()));
    let pids_b = wait_pids(&pids_b, 10);
    assert_eq!(note_a.app_name, "support");
    assert!(note_a.body.starts_with("desk runs tree (tier 1, task t-"), "{note_a:#?}");
    assert_eq!(note_a.actions, ["stop", "Stop", "console", "Open console"]);
    assert_eq!(note_a.urgency, Some(1));

    // Attacks on the action path: an id the daemon never sent, a key it
    // never offered, and task A's id from a sender that is not the server.
    server.invoke(note_a.id + 1000, "stop");
    server.invoke(note_a.id, "rm-rf");
    server.forge(note_a.id, "stop");
    // Then the owner clicks Stop on task B's notification.
    server.invoke(note_b.id, "stop");
    let out_b = Run::from(b.wait_with_output_timeout());
    assert_eq!(survivors(&pids_b), Vec::<i32>::new(), "task B's tree is gone\n{}", device.log());
    out_b.says("stopped by the owner");
    assert_eq!(survivors(&pids_a).len(), 10, "task A runs on after the forged and foreign actions\n{}", device.log());
    let stops: Vec<_> = records(&device).into_iter().filter(|r| r["event"] == "task.stopped").collect();
    assert_eq!(stops.len(), 1, "{stops:#?}");
    assert_eq!(stops[0]["by"], "owner", "the path of `support stop`");
    assert!(note_b.body.contains(stops[0]["task_id"].as_str().unwrap()), "{note_b:#?}");

    let warning = server.wait_for("of the warning", |n| n.summary.starts_with("Support ends in"));
    assert_eq!(warning.summary, "Support ends in 1 minute");
    assert_eq!(warning.actions, ["console", "Open console"]);
    let end = server.wait_for("of the end", |n| n.summary.starts_with("Support has ended"));
    assert_eq!(end.summary, "Support has ended: the grant expired");
    let _ = a.wait();
    assert_eq!(survivors(&pids_a), Vec::<i32>::new(), "expiry kills task A");
    assert!(end.body.starts_with(&format!("Grant {grant_id} (tier 1) expired at ")), "{end:#?}");
    assert!(end.body.contains("2 actions by desk (0 ok), 0 denied, 2 stopped; audit chain verifies."), "{end:#?}");
    // The daemon's log has the summary too.
    let log = device.log();
    assert!(log.contains(&format!("Grant {grant_id} (tier 1) expired at ")), "{log}");

    // `support summary` tells the same.
    let s = device.home.run(&["summary", "--json"]).code(0).json();
    assert_eq!(s["grant_id"], grant_id);
    assert_eq!(s["ended"], "expired");
    assert_eq!(s["reason"], "printer");
    let by: Vec<_> = s["stops"].as_array().unwrap().iter().map(|s| s["by"].as_str().unwrap().to_string()).collect();
    assert_eq!(by, ["owner", "expiry"]);
    assert_eq!(s["chain"]["ok"], true);
    device.home.run(&["summary", &grant_id]).code(0).says("2 actions:").says("stopped by owner").says("verifies.");

    // A revoke ends a grant too: the daemon waits for the revoke's record, written after it is told.
    device.home.run(&["allow", "--tier", "1", "--minutes", "10"]).code(0);
    device.home.run(&["revoke"]).code(0).says("No action ran.");
    let revoked = server.wait_for("of the revoke", |n| n.summary == "Support has ended: revoked");
    assert!(
        revoked.body.contains(") revoked by the owner at ") && revoked.body.contains(": 0 actions, 0 denied"),
        "{revoked:#?}"
    );
}

trait WaitTimeout {
    fn wait_with_output_timeout(self) -> std::process::Output;
}

impl WaitTimeout for Child {
    /// The operator's run ends once the task does (at most 30 s, or the test fails).
    fn wait_with_output_timeout(self) -> std::process::Output {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(self.wait_with_output()));
        rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the operator's run ended").unwrap()
    }
}

#[test]
fn a_daemon_with_no_bus_runs_tasks_says_so_once_and_revoke_prints_the_summary() {
    let relay = Relay::start("127.0.0.1:0");
    let (key, key_path) = relay.operator("desk");
    let runtime = tempfile::tempdir().unwrap();
    for (name, env) in [
        ("unreachable", vec![("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")]),
        ("unset", vec![("XDG_RUNTIME_DIR", runtime.path().to_str().unwrap())]),
    ] {
        let device = device(&relay, &key, &env);
        device.home.run(&["allow", "--tier", "1", "--minutes", "10"]).code(0);
        let pidfile = device.home.path.with_extension("pids");
        let out = relay
            .operator_cli(&key_path, &["run", &device.device_id, "mark", &format!("pidfile={}", pidfile.display())])
            .output()
            .unwrap();
        Run::from(out).code(0);
        assert!(pidfile.exists(), "{name}: the task ran");
        let revoke = device.home.run(&["revoke"]);
        revoke
            .code(0)
            .says("Revoked grant")
            .says("What ran under it:")
            .says("1 action:")
            .says("mark")
            .says("ok (exit 0)");
        let log = device.log();
        assert_eq!(log.matches("no desktop notifications").count(), 1, "{name}: said once\n{log}");
        device
            .home
            .run(&["summary", "g-0000000000000000"])
            .code(2)
            .says("no grant g-0000000000000000 in the audit log");
    }
}
