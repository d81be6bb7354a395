//! The audit witness end to end: a real relay and real daemons on loopback,
//! heartbeats every 100 ms (`SUPPORT_HEARTBEAT_MS`), and a live device's
//! audit log tampered with in each way SECURITY.md names.

mod common;

use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::desk::Desk;
use common::net::{Device, Relay};
use common::{Home, Run};
use serde_json::Value;
use support::dial;
use support::protocol::{self, FromRelay, ToRelay};

/// A daemon in `home` linked to `relay` (enrolling with `token` if given),
/// heartbeating every 100 ms; waits until it is connected.
fn daemon(home: Home, relay: &Relay, token: Option<String>) -> Device {
    std::fs::create_dir_all(&home.path).unwrap();
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(home.path.with_extension("daemon.log")).unwrap();
    let mut cmd = home.cmd(&["daemon", "--relay", &relay.url(), "--relay-ca", relay.ca().to_str().unwrap()]);
    if let Some(t) = token {
        cmd.args(["--enroll", &t]);
    }
    let child = cmd
        .env("SUPPORT_LOG", "debug")
        .env(support::daemon::HEARTBEAT_ENV, "100")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Device::spawned(home, child, true)
}

/// The heads a relay may have witnessed last of a daemon that was at
/// `seq` and then stopped: its `daemon.stopped` record may or may not have
/// gone out in a heartbeat before the link closed.
fn stopped_head(seq: u64) -> std::ops::RangeInclusive<u64> {
    seq..=seq + 1
}

/// Stops the daemon and starts it again in the same home (a new hello).
fn restart(device: Device, relay: &Relay) -> Device {
    let Device { home, mut proc, .. } = device;
    proc.term();
    daemon(home, relay, None)
}

fn lines(device: &Device) -> u64 {
    std::fs::read_to_string(device.home.file("audit.jsonl")).unwrap_or_default().lines().count() as u64
}

/// Waits (at most 20 s) until the daemon says the relay witnessed its whole log.
fn wait_witnessed_all(device: &Device) -> u64 {
    let want = lines(device);
    let s = device.wait_until("witnessed", |s| s["daemon"]["link"]["witnessed_seq"].as_u64() == Some(want));
    s["daemon"]["link"]["witnessed_seq"].as_u64().unwrap()
}

/// The relay's listing of `device_id` (`support relay devices --json`).
fn entry(relay: &Relay, device_id: &str) -> Value {
    let list = relay.admin(&["devices", "--json"]).code(0).json();
    list.as_array().unwrap().iter().find(|d| d["device_id"] == device_id).cloned().unwrap_or(Value::Null)
}

/// Waits (at most 20 s) for an audit alert against `device_id`; returns it.
fn wait_alert(relay: &Relay, device: &Device) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let alert = entry(relay, &device.device_id)["audit_alert"].clone();
        if !alert.is_null() {
            return alert;
        }
        assert!(Instant::now() < deadline, "no audit alert\n{}", device.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn operator(relay: &Relay, key: &std::path::Path, args: &[&str]) -> Run {
    Run::from(relay.operator_cli(key, args).env("COLUMNS", "200").output().unwrap())
}

/// Three grants: three records written by the CLI, witnessed with the daemon's own.
fn grow(device: &Device) {
    for reason in ["first", "second", "third"] {
        device.home.run(&["allow", "--tier", "1", "--minutes", "5", "--reason", reason]).code(0);
    }
    wait_witnessed_all(device);
}

fn keep_lines(path: &std::path::Path, n: usize) {
    let text = std::fs::read_to_string(path).unwrap();
    let keep: usize = text.split_inclusive('\n').take(n).map(str::len).sum();
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(keep as u64).unwrap();
}

/// Rewrites the log in place with its lines changed by `change`.
fn rewrite_lines(d: &Device, change: fn(&mut Vec<&str>)) {
    let path = d.home.file("audit.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    change(&mut lines);
    let out: String = lines.iter().map(|l| format!("{l}\n")).collect();
    // Over the old bytes, then cut: a heartbeat read in between never sees
    // an empty file (which is the "missing" case, not this one).
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all(out.as_bytes()).unwrap();
    f.set_len(out.len() as u64).unwrap();
}

#[test]
fn each_tampering_of_a_live_log_is_flagged_at_the_next_heartbeat() {
    let relay = Relay::start("127.0.0.1:0");
    type Tamper = fn(&Device);
    let cases: [(&str, Tamper, &str); 7] = [
        ("truncate", |d| keep_lines(&d.home.file("audit.jsonl"), 2), "truncated"),
        (
            "edit a middle record",
            |d| {
                let path = d.home.file("audit.jsonl");
                let text = std::fs::read_to_string(&path).unwrap();
                let edited = text.replace("\"reason\":\"second\"", "\"reason\":\"SECOND\"");
                assert_ne!(edited, text);
                std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all(edited.as_bytes()).unwrap();
            },
            "rewritten",
        ),
        (
            "delete a middle record",
            |d| {
                rewrite_lines(d, |l| {
                    l.remove(2);
                })
            },
            "rewritten",
        ),
        ("swap two records", |d| rewrite_lines(d, |l| l.swap(1, 2)), "rewritten"),
        ("delete the log", |d| std::fs::remove_file(d.home.file("audit.jsonl")).unwrap(), "missing"),
        ("delete audit.key", |d| std::fs::remove_file(d.home.file("audit.key")).unwrap(), "missing"),
        (
            "delete both",
            |d| {
                std::fs::remove_file(d.home.file("audit.jsonl")).unwrap();
                std::fs::remove_file(d.home.file("audit.key")).unwrap();
            },
            "missing",
        ),
    ];
    for (i, (what, tamper, kind)) in cases.into_iter().enumerate() {
        let device = daemon(Home::new(), &relay, Some(relay.token()));
        grow(&device);
        let witnessed = lines(&device);
        assert!(entry(&relay, &device.device_id)["audit_alert"].is_null(), "{what}: no alert before");
        tamper(&device);
        let alert = wait_alert(&relay, &device);
        assert_eq!(alert["kind"], kind, "{what}: {alert}");
        assert_eq!(alert["witnessed_seq"].as_u64(), Some(witnessed), "{what}: {alert}");
        assert!(alert["detected_at"].is_string() && alert["detail"].is_string(), "{what}: {alert}");
        assert_eq!(relay.metric("devices_audit_alert"), i as u64 + 1, "{what}");
        // The owner hears of it too.
        let s = device.wait_until("told of the alert", |s| s["daemon"]["link"]["audit_alert"]["kind"] == kind);
        assert_eq!(s["daemon"]["link"]["audit_alert"]["witnessed_seq"].as_u64(), Some(witnessed));
        device.home.run(&["status"]).code(0).says("the relay FLAGS this audit log").says(kind);
    }
    let metrics = relay.metrics();
    for (kind, n) in [("truncated", 1), ("rewritten", 3), ("missing", 3)] {
        assert!(metrics.contains(&format!("audit_alerts_total{{kind=\"{kind}\"}} {n}")), "{metrics}");
    }
}

#[test]
fn a_fresh_chain_after_both_files_go_is_recorded_and_the_alert_outlives_reconnects() {
    let relay = Relay::start("127.0.0.1:0");
    let (key, key_path) = relay.operator("desk");
    let device = daemon(Home::new(), &relay, Some(relay.token()));
    device.trust("desk", &key);
    grow(&device);
    let witnessed = lines(&device);
    let Device { home, mut proc, .. } = device;
    proc.term();
    std::fs::remove_file(home.file("audit.jsonl")).unwrap();
    std::fs::remove_file(home.file("audit.key")).unwrap();
    // The daemon starts a new chain, and says first that it is one.
    let device = daemon(home, &relay, None);
    let first = device.home.run(&["audit", "--json", "--limit", "0"]).code(0).stdout.clone();
    let oldest: Value = serde_json::from_str(first.lines().last().unwrap()).unwrap();
    assert_eq!(oldest["event"], "audit.reset", "{first}");
    assert!(device.log().contains("audit.reset"), "the daemon says so on stderr:\n{}", device.log());
    device.home.run(&["status"]).code(0).says("this chain began at").says("after the old log and key were removed");
    // The relay saw the chain fall short of what it witnessed, at the hello.
    let alert = wait_alert(&relay, &device);
    assert_eq!(alert["kind"], "truncated", "{alert}");
    assert!(stopped_head(witnessed).contains(&alert["witnessed_seq"].as_u64().unwrap()), "{alert}");
    // The new chain is consistent, and grows: the alert still stands, after
    // reconnects and a relay restart, until the admin clears it.
    grow(&device);
    let device = restart(device, &relay);
    let relay = relay.restart();
    device.wait_until("reconnected", |s| s["daemon"]["connected"] == true);
    wait_witnessed_all(&device);
    assert_eq!(entry(&relay, &device.device_id)["audit_alert"], alert);
    let listed = operator(&relay, &key_path, &["devices", "--json"]).code(0).json();
    assert_eq!(listed[0]["audit_alert"], alert, "{listed}");
    // Both tables show it.
    operator(&relay, &key_path, &["devices"]).code(0).says("ALERT truncated");
    relay.admin(&["devices"]).code(0).says("ALERT truncated");
    // Cleared: the witnessed head stays, and later tampering is flagged anew.
    relay.admin(&["clear-alert", &device.device_id]).code(0).says("cleared the truncated audit alert");
    assert!(entry(&relay, &device.device_id)["audit_alert"].is_null());
    relay.admin(&["clear-alert", "d-nosuchdevice"]).code(2);
    grow(&device);
    assert!(entry(&relay, &device.device_id)["audit_alert"].is_null(), "a consistent chain is not flagged");
    keep_lines(&device.home.file("audit.jsonl"), 1);
    assert_eq!(wait_alert(&relay, &device)["kind"], "truncated");
}

#[test]
fn a_log_cut_while_the_daemon_was_down_is_flagged_at_the_next_hello() {
    let relay = Relay::start("127.0.0.1:0");
    let device = daemon(Home::new(), &relay, Some(relay.token()));
    grow(&device);
    let witnessed = lines(&device);
    let Device { home, mut proc, .. } = device;
    proc.term();
    keep_lines(&home.file("audit.jsonl"), 1);
    let device = daemon(home, &relay, None);
    let alert = wait_alert(&relay, &device);
    assert_eq!(alert["kind"], "truncated", "{alert}");
    assert!(stopped_head(witnessed).contains(&alert["witnessed_seq"].as_u64().unwrap()), "{alert}");
}

#[test]
fn an_untouched_log_is_never_flagged_over_heartbeats_reconnects_and_relay_restarts() {
    let relay = Relay::start("127.0.0.1:0");
    let (key, key_path) = relay.operator("desk");
    let mut device = daemon(Home::new(), &relay, Some(relay.token()));
    device.trust("desk", &key);
    let mut relay = relay;
    for round in 0..3 {
        grow(&device);
        device = restart(device, &relay);
        wait_witnessed_all(&device);
        if round == 1 {
            relay = relay.restart();
            device.wait_until("reconnected", |s| s["daemon"]["connected"] == true);
            wait_witnessed_all(&device);
        }
        assert!(entry(&relay, &device.device_id)["audit_alert"].is_null(), "round {round}");
    }
    // Many heartbeats: `last_heartbeat` (to the second) takes 4 values,
    // so at least 3 s of heartbeats every 100 ms pass without an alert.
    let mut heard = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while heard.len() < 4 {
        let e = entry(&relay, &device.device_id);
        assert!(e["audit_alert"].is_null(), "{e}\n{}", device.log());
        heard.insert(e["last_heartbeat"].as_str().unwrap_or_default().to_string());
        assert!(Instant::now() < deadline, "only {} heartbeats heard", heard.len());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(entry(&relay, &device.device_id)["audit_alert"].is_null());
    let listed = operator(&relay, &key_path, &["devices", "--json"]).code(0).json();
    assert!(listed[0]["audit_alert"].is_null(), "{listed}");
    assert_eq!(relay.metric("devices_audit_alert"), 0);
    assert!(!relay.metrics().contains("audit_alerts_total{"), "no alert counted");
    let seq = wait_witnessed_all(&device);
    device.home.run(&["status"]).code(0).says(&format!("the relay witnessed this chain up to seq {seq}"));
    operator(&relay, &key_path, &["devices"]).code(0).says(" ok");
}

#[test]
fn an_operator_the_owner_does_not_trust_sees_no_grant_and_no_audit_state() {
    alert_only_to_the_trusted(&Desk::one());
}

#[test]
fn an_operator_on_another_relay_of_the_cluster_sees_the_audit_alert_only_if_trusted() {
    alert_only_to_the_trusted(&Desk::across());
}

/// A cut log flagged by the device's relay, as the operators' relay shows it.
fn alert_only_to_the_trusted(relays: &Desk) {
    let relay = relays.operator();
    let (key, trusted) = relays.add_operator("desk");
    let (_, stranger) = relays.add_operator("mallory");
    let device = daemon(Home::new(), &relays.device, Some(relays.device.token()));
    device.trust("desk", &key);
    device.allow(4);
    wait_witnessed_all(&device);
    keep_lines(&device.home.file("audit.jsonl"), 1);
    let alert = wait_alert(&relays.device, &device);
    assert_eq!(alert["kind"], "truncated", "{alert}");
    assert_eq!(wait_alert(relay, &device), alert, "the operators' relay shows the device relay's alert");
    let full = operator(relay, &trusted, &["devices", "--json"]).code(0).json();
    assert_eq!(full[0]["tier"], 4, "{full}");
    assert!(full[0]["audit_head"].is_object() && full[0]["audit_alert"].is_object(), "{full}");
    let bare = operator(relay, &stranger, &["devices", "--json"]).code(0).json();
    let d = &bare[0];
    assert_eq!((d["device_id"].as_str(), d["online"].as_bool()), (Some(device.device_id.as_str()), Some(true)));
    for field in ["tier", "expires_at", "running_tasks", "audit_head", "audit_alert", "last_heartbeat", "version"] {
        assert!(d[field].is_null(), "{field} shown to an operator the owner does not trust: {bare}");
    }
    // The relay's admin sees everything.
    assert_eq!(entry(relay, &device.device_id)["tier"], 4);
}

/// A device of our own making: what the relay does with its heartbeats.
async fn fake_device(relay: &Relay, key: &support::KeyPair, token: Option<String>) -> (dial::Ws, dial::Welcome) {
    let url: dial::RelayUrl = relay.url().parse().unwrap();
    let hello = dial::DeviceHello { enroll_token: token.map(support::Secret::new), name: Some("fake".into()) };
    dial::connect(&url, relay.client_tls(), protocol::Role::Device, key, hello).await.unwrap()
}

fn beat(seq: u64, witness: Option<protocol::WitnessProof>) -> ToRelay {
    ToRelay::Heartbeat(protocol::Heartbeat {
        tier: None,
        expires_at: None,
        running_tasks: 0,
        audit_head: Some(protocol::AuditHead { seq, mac: format!("{seq:064x}") }),
        uptime_s: 1,
        version: "x".into(),
        scope: None,
        witness,
        trusted_operators: Vec::new(),
    })
}

async fn witnessed(ws: &mut dial::Ws) -> (Option<u64>, Option<protocol::AuditAlert>) {
    match dial::recv(ws, Duration::from_secs(10)).await.unwrap() {
        FromRelay::Witnessed { seq, alert } => (seq, alert),
        other => panic!("not witnessed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_ack_names_only_the_witnessed_seq_and_a_heartbeat_without_proof_is_flagged() {
    let relay = Relay::start("127.0.0.1:0");
    let token = tokio::task::block_in_place(|| relay.token());
    let (key, _) = support::KeyPair::generate();
    let (mut ws, welcome) = fake_device(&relay, &key, Some(token)).await;
    assert_eq!(welcome.witnessed_seq, None, "nothing witnessed yet");
    dial::send(&mut ws, &beat(5, None)).await.unwrap();
    assert_eq!(witnessed(&mut ws).await, (Some(5), None), "the first head is taken as it comes");
    drop(ws);
    // A new connection: hello_ack names seq 5, never its mac.
    let (mut ws, welcome) = fake_device(&relay, &key, None).await;
    assert_eq!(welcome.witnessed_seq, Some(5));
    let mac5 = format!("{:064x}", 5);
    let proof = |seq, mac: Option<String>| protocol::WitnessProof {
        seq,
        mac,
        verified_seq: 7,
        chain: protocol::ChainState::Verified,
    };
    dial::send(&mut ws, &beat(7, Some(proof(5, Some(mac5))))).await.unwrap();
    assert_eq!(witnessed(&mut ws).await, (Some(7), None), "a proof of seq 5 passes");
    // No proof of seq 7: unproven, and the alert is what the listing shows.
    dial::send(&mut ws, &beat(8, None)).await.unwrap();
    let (seq, alert) = witnessed(&mut ws).await;
    let alert = alert.expect("an alert");
    assert_eq!((seq, alert.kind, alert.witnessed_seq), (Some(8), protocol::AlertKind::Unproven, 7));
    // A later proof that passes does not clear it.
    dial::send(&mut ws, &beat(9, Some(proof(8, Some(format!("{:064x}", 8)))))).await.unwrap();
    assert_eq!(witnessed(&mut ws).await.1.map(|a| a.kind), Some(protocol::AlertKind::Unproven));
    let id = key.public_key().device_id();
    let listed = tokio::task::block_in_place(|| entry(&relay, &id));
    assert_eq!(listed["audit_alert"]["kind"], "unproven", "{listed}");
}
