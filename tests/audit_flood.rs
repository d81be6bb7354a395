//! Operators the owner never trusted, flooding a device with commands
//! through the real relay, cannot fill the owner's audit log: their
//! denials are counted in windows, a trusted operator's denial is still a
//! record of its own, and the chain verifies.

mod common;

use std::collections::BTreeMap;

use common::Home;
use common::net::{Device, Relay};
use support::operator::{Outcome, Session};
use support::protocol::DenyCode;

/// Strangers sending at once, and the commands each sends per half of the burst.
const STRANGERS: usize = 4;
const PER_HALF: usize = 250;

/// Sends `n` commands from `session`, one after another; each must come back `UNTRUSTED_OPERATOR`.
async fn flood(mut session: Session, device_id: String, n: usize) -> Session {
    for _ in 0..n {
        let run = session.command(&device_id, "system-info", BTreeMap::new());
        match session.run(&run, |_| {}, std::future::pending()).await.unwrap() {
            Outcome::Denied { code: DenyCode::UntrustedOperator, .. } => {}
            other => panic!("a stranger's command: {other:?}"),
        }
    }
    session
}

/// The home's audit records, oldest first (`support audit --json` lists newest first).
fn records(home: &Home) -> Vec<serde_json::Value> {
    let out = home.run(&["audit", "--json", "--limit", "0"]);
    let mut all: Vec<serde_json::Value> =
        out.code(0).stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    all.reverse();
    all
}

/// Each stranger's half of the burst, all at once.
async fn burst(sessions: Vec<Session>, device_id: &str) -> Vec<Session> {
    let mut set = tokio::task::JoinSet::new();
    for s in sessions {
        set.spawn(flood(s, device_id.to_string(), PER_HALF));
    }
    set.join_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_untrusted_commands_cost_a_handful_of_records() {
    // The relay's own per-connection run limit would stop the burst short of the device: lifted here,
    // because what is tested is the device's side (a relay that does not limit is the threat).
    let relay = Relay::start_with("127.0.0.1:0", &["--max-runs-per-second", "1000000"]);
    let (desk_key, desk_path) = relay.operator("desk");
    let stranger_paths: Vec<_> = (0..STRANGERS).map(|i| relay.operator(&format!("stranger{i}")).1).collect();
    let mut device = tokio::task::block_in_place(|| {
        let d = Device::enrolled(&relay);
        d.trust("desk", &desk_key);
        d
    });
    let id = device.device_id.clone();
    let before = tokio::task::block_in_place(|| records(&device.home)).len();
    let mut strangers = Vec::new();
    for p in &stranger_paths {
        strangers.push(relay.session(p).await);
    }
    let strangers = burst(strangers, &id).await;
    // A trusted operator's denial in the middle of it (no grant yet).
    let mut desk = relay.session(&desk_path).await;
    let run = desk.command(&id, "system-info", BTreeMap::new());
    match desk.run(&run, |_| {}, std::future::pending()).await.unwrap() {
        Outcome::Denied { code: DenyCode::NoConsent, .. } => {}
        other => panic!("desk's command: {other:?}"),
    }
    burst(strangers, &id).await;
    // Shutdown writes the open window's summary.
    tokio::task::block_in_place(|| device.proc.term());
    let records = tokio::task::block_in_place(|| records(&device.home));
    let new: Vec<&serde_json::Value> = records[before..].iter().collect();
    let shown = || new.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n");
    assert!(new.len() <= 10, "{} records for 2,001 denials:\n{}", new.len(), shown());
    let counted: u64 = new
        .iter()
        .filter(|r| r["event"] == "action.denied.aggregated")
        .map(|r| {
            let detail = r["detail"].as_str().unwrap();
            detail.split_once(" denied").and_then(|(n, _)| n.parse::<u64>().ok()).expect(detail)
        })
        .sum();
    assert_eq!(counted, (2 * STRANGERS * PER_HALF) as u64, "{}", shown());
    let desk_denial: Vec<_> = new.iter().filter(|r| r["event"] == "action.denied" && r["operator"] == "desk").collect();
    assert_eq!(desk_denial.len(), 1, "{}", shown());
    assert_eq!(desk_denial[0]["code"], "NO_CONSENT");
    assert_eq!(desk_denial[0]["request_id"], run.request_id.as_str());
    tokio::task::block_in_place(|| {
        device.home.run(&["audit", "--verify"]).code(0);
        // The owner's table shows the count (a burst over 10 s would be two windows, so no number here).
        device.home.run(&["audit"]).code(0).says(" × denied UNTRUSTED_OPERATOR");
    });
}
