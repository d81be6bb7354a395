//! Grants scoped to who and what (`allow --operator/--only/--max-actions`)
//! through the real binary and a real relay: each denial on the record, the
//! budget counted across a daemon restart and shown to operators. (The
//! in-process daemon's tests are in `grant_lab.rs`: a daemon in the test
//! process reaps and kills the children of the process, so no binary runs beside it.)

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Home;
use common::lab::records;
use common::net::{Device, Relay};
use support::audit::Event;
use support::operator::Outcome;
use support::protocol::DenyCode;

fn no_cancel() -> std::future::Pending<()> {
    std::future::pending()
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect()
}

#[test]
fn scope_flags_are_checked_against_trust_and_catalogue_and_shown() {
    let h = Home::new();
    h.run(&["allow", "--tier", "1", "--minutes", "5", "--operator", "alice"]).code(2).says("trust add");
    h.run(&["trust", "add", "alice", &common::new_public_key()]).code(0);
    h.run(&["trust", "add", "bob", &common::new_public_key()]).code(0);
    for (args, needles) in [
        (&["--operator", "mallory"][..], &["not an operator you trust", "alice, bob"][..]),
        (&["--only", "memory,format-disk"], &["--only format-disk: no such action", "disk-usage", "memory"]),
        (&["--only", "restart-user-service"], &["`restart-user-service` needs tier 2"]),
        (&["--max-actions", "0"], &["--max-actions"]),
    ] {
        let mut all = vec!["allow", "--tier", "1", "--minutes", "5"];
        all.extend(args);
        let r = h.run(&all);
        r.code(2);
        for n in needles {
            r.says(n);
        }
    }
    assert_eq!(h.status()["enabled"], false, "nothing was granted");
    // Tier 4 still needs --yes, and the command to repeat keeps the scope.
    h.run(&["allow", "--tier", "4", "--minutes", "5", "--only", "shell", "--max-actions", "1"])
        .code(2)
        .says("--only shell --max-actions 1 --yes");
    h.run(&["allow", "--tier", "2", "--minutes", "5"]).code(0);
    let unscoped = h.status();
    for f in ["operators", "only", "max_actions"] {
        assert!(unscoped[f].is_null(), "{f}: {unscoped}");
    }
    assert_eq!(unscoped["actions_used"], 0);
    let args = ["allow", "--tier", "2", "--minutes", "5", "--operator", "alice", "--only", "memory,disk-usage"];
    h.run(&[&args[..], &["--max-actions", "3"]].concat()).code(0).says("Scope: operators alice; only memory");
    let s = h.status();
    assert_eq!(names(&s["operators"]), ["alice"]);
    assert_eq!(names(&s["only"]), ["memory", "disk-usage"]);
    assert_eq!((s["max_actions"].as_u64(), s["actions_used"].as_u64()), (Some(3), Some(0)), "{s}");
    h.run(&["status"]).code(0).says("scope   operators alice; only memory, disk-usage").says("0 of 3 action(s)");
    let mut shown = names(&serde_json::Value::Array(
        h.run(&["actions", "--json"]).code(0).json().as_array().unwrap().iter().map(|a| a["name"].clone()).collect(),
    ));
    shown.sort();
    assert_eq!(shown, ["disk-usage", "memory"], "`actions` shows only what the scope allows");
    let paths = support::Paths::under(h.path.clone());
    let granted = records(&paths).into_iter().rfind(|r| r.event == Event::ConsentGranted).unwrap();
    let detail = granted.detail.unwrap();
    assert!(detail.contains("operators alice; only memory, disk-usage; at most 3 actions"), "{detail}");
}

fn denied(o: Outcome) -> DenyCode {
    match o {
        Outcome::Denied { code, .. } => code,
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn finished(o: Outcome) {
    assert!(matches!(o, Outcome::Finished(_)), "expected a result, got {o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_scope_denial_over_the_relay_is_recorded_and_the_budget_survives_a_restart() {
    let relay = Relay::start("127.0.0.1:0");
    let (desk_key, desk_path) = relay.operator("desk");
    let (bob_key, bob_path) = relay.operator("bob");
    let device = tokio::task::block_in_place(|| {
        let d = Device::enrolled(&relay);
        d.trust("desk", &desk_key);
        d.trust("bob", &bob_key);
        let grant = ["allow", "--tier", "1", "--minutes", "10", "--operator", "desk", "--only", "system-info,memory"];
        d.home.run(&[&grant[..], &["--max-actions", "2"]].concat()).code(0);
        d
    });
    let id = device.device_id.clone();
    let mut desk = relay.session(&desk_path).await;
    let mut bob = relay.session(&bob_path).await;
    let none = BTreeMap::new;
    let run = bob.command(&id, "memory", none());
    assert_eq!(denied(bob.run(&run, |_| {}, no_cancel()).await.unwrap()), DenyCode::OperatorNotGranted);
    let run = desk.command(&id, "disk-usage", none());
    assert_eq!(denied(desk.run(&run, |_| {}, no_cancel()).await.unwrap()), DenyCode::ActionNotGranted);
    let run = desk.command(&id, "memory", none());
    finished(desk.run(&run, |_| {}, no_cancel()).await.unwrap());
    // The heartbeat carries the scope, so operators see what is left.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let listed = desk.devices().await.unwrap();
        let scope = listed[0].scope.clone().unwrap_or_default();
        if scope.actions_used == Some(1) {
            assert_eq!(scope.max_actions, Some(2));
            assert_eq!(scope.operators.as_deref(), Some(&["desk".to_string()][..]));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the scope never reached the relay: {listed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The budget is on the record, so a restarted daemon knows one action is spent.
    let device = tokio::task::block_in_place(|| {
        let Device { home, mut proc, .. } = device;
        proc.term();
        let restarted = Device::start(home, &relay.url(), &["--relay-ca", relay.ca().to_str().unwrap()], true);
        assert_eq!(restarted.home.status()["actions_used"], 1);
        restarted
    });
    let run = desk.command(&id, "system-info", none());
    finished(desk.run(&run, |_| {}, no_cancel()).await.unwrap());
    let run = desk.command(&id, "memory", none());
    assert_eq!(denied(desk.run(&run, |_| {}, no_cancel()).await.unwrap()), DenyCode::BudgetExhausted);

    tokio::task::block_in_place(|| {
        let s = device.home.status();
        assert_eq!((s["max_actions"].as_u64(), s["actions_used"].as_u64()), (Some(2), Some(2)), "{s}");
        device.home.run(&["status"]).code(0).says("2 of 2 action(s) started, 0 left");
        let paths = support::Paths::under(device.home.path.clone());
        let all = records(&paths);
        let grant_id = s["grant_id"].as_str().unwrap();
        let started = all.iter().filter(|r| r.event == Event::ActionStarted && r.grant_id.as_deref() == Some(grant_id));
        assert_eq!(started.count(), 2);
        for (code, operator, action) in [
            ("OPERATOR_NOT_GRANTED", "bob", "memory"),
            ("ACTION_NOT_GRANTED", "desk", "disk-usage"),
            ("BUDGET_EXHAUSTED", "desk", "memory"),
        ] {
            let r = all.iter().find(|r| r.code.as_deref() == Some(code)).unwrap_or_else(|| panic!("no {code}"));
            assert_eq!(r.event, Event::ActionDenied);
            assert_eq!((r.operator.as_deref(), r.action.as_deref()), (Some(operator), Some(action)), "{r:?}");
        }
        // And the device list shows the budget spent (after the next heartbeat).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = relay.operator_cli(&desk_path, &["devices"]).env("COLUMNS", "200").output().unwrap();
            let table = String::from_utf8_lossy(&out.stdout).into_owned();
            if table.contains("2/2 actions used") {
                assert!(table.contains("for desk; only system-info, memory"), "{table}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the table never showed the budget:\n{table}");
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}
