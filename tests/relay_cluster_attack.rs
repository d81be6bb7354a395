//! Whoever can publish on the cluster's NATS (SECURITY.md, "From whom"),
//! with the relays' own access, since that is the trust boundary: a real
//! `nats-server -js` (its payload cap raised so that a message over
//! `MAX_ROUTED_BYTES` gets through to the relays), two relays, a real
//! daemon on relay A and an operator on relay B, and an attacker with a
//! plain NATS client. It reads everything routed; it replays, alters and
//! forges requests on the device's subject and answers on the operator's;
//! it admits its own key to the relays through the registry bucket; and it
//! sends oversized messages and garbage. Nothing it sends runs on the
//! device, no answer it makes passes the operator's checks, and the relays
//! go on serving.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Home;
use common::nats::{Nats, clustered_relay};
use common::net::{Device, Relay, add_policy};
use futures_util::StreamExt as _;
use support::dial::DialError;
use support::operator::{Outcome, Session};
use support::protocol::{self, DenyCode, DeviceFrame, FromRelay};
use support::relay::cluster::{ClusterConfig, MAX_ROUTED_BYTES, NatsRegistry, connect};

/// A tier-1 diagnostic that sleeps 30 s.
const SLOW: &str = "[[action]]\nname = \"slow\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"sleeps\"\n\
                    argv = [\"sleep\", \"30\"]\ntimeout_s = 60\n";

/// An operator session on `relay` with the key in `path`, once the relay admits it (15 s at most).
async fn admitted(relay: &Relay, path: &std::path::Path) -> Session {
    let url: support::dial::RelayUrl = relay.url().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match Session::connect(&url, relay.client_tls(), support::KeyPair::load(path).unwrap()).await {
            Ok(s) => return s,
            Err(e) => assert!(Instant::now() < deadline, "never admitted: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The device's audit records of `event` (`action.started`, `action.denied`…).
fn records(device: &Device, event: &str) -> Vec<serde_json::Value> {
    let out = device.home.run(&["audit", "--json", "--limit", "0"]);
    out.stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == event)
        .collect()
}

/// What the attacker heard on `support.relay.>` so far (subject, payload), waiting up to 5 s for `until`.
async fn heard(
    spy: &mut async_nats::Subscriber,
    log: &mut Vec<(String, String)>,
    until: impl Fn(&str, &str) -> bool,
) -> (String, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    if let Some(found) = log.iter().find(|(s, p)| until(s, p)) {
        return found.clone();
    }
    loop {
        let m = tokio::time::timeout_at(deadline, spy.next()).await.expect("never heard it").unwrap();
        let entry = (m.subject.to_string(), String::from_utf8_lossy(&m.payload).into_owned());
        log.push(entry.clone());
        if until(&entry.0, &entry.1) {
            return entry;
        }
    }
}

/// Sends `payload` on `subject` as a request from the attacker; the device relay's `Delivered` answer.
async fn ask(nats: &async_nats::Client, subject: &str, payload: Vec<u8>) -> serde_json::Value {
    let reply = tokio::time::timeout(Duration::from_secs(5), nats.request(subject.to_string(), payload.into()))
        .await
        .expect("the relay did not answer")
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

/// The device's answer to an envelope the attacker sent with `inbox` as its reply subject.
async fn device_answer(inbox: &mut async_nats::Subscriber) -> DeviceFrame {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), inbox.next()).await.expect("no answer").unwrap();
        if let Ok(FromRelay::Answer(f @ (DeviceFrame::Denied { .. } | DeviceFrame::Result { .. }))) =
            protocol::decode::<FromRelay>(&String::from_utf8_lossy(&m.payload))
        {
            return f;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_nats_access_reads_the_routes_but_cannot_run_forge_or_crash_anything() {
    let nats = Nats::start_with("max_payload: 4MB\n");
    let (mut a, mut b) = (clustered_relay(&nats), clustered_relay(&nats));
    let (key, key_path) = b.operator("desk");
    let device = tokio::task::block_in_place(|| {
        let home = Home::new();
        add_policy(&home, SLOW);
        let ca = a.ca();
        let device = Device::start(home, &a.url(), &["--relay-ca", ca.to_str().unwrap(), "--enroll", &a.token()], true);
        device.trust("desk", &key);
        device.allow(1);
        device
    });
    let id = device.device_id.clone();
    let attacker = async_nats::connect(nats.url()).await.unwrap();
    let mut spy = attacker.subscribe("support.relay.>").await.unwrap();
    let mut log = Vec::new();
    let mut desk = admitted(&b, &key_path).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        let run = desk.command(&id, "system-info", BTreeMap::new());
        match desk.run(&run, |_| {}, std::future::pending()).await.unwrap() {
            Outcome::Finished(f) => break (run, f),
            other => assert!(Instant::now() < deadline, "never reached across relays: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (run, result) = first;
    let started = records(&device, "action.started").len();

    // It reads everything routed: the signed request, and the device's answers.
    let (device_subject, envelope) =
        heard(&mut spy, &mut log, |s, p| s.contains(".device.") && p.contains(&run.request_id)).await;
    assert!(envelope.contains("\"system-info\""), "{envelope}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let (operator_subject, _) = heard(&mut spy, &mut log, |s, p| {
        s.contains(".operator.") && p.contains(&run.request_id) && p.contains("\"result\"")
    })
    .await;
    heard(&mut spy, &mut log, |s, p| s == operator_subject && p.contains(host.trim())).await;
    let inbox_subject = "attacker.inbox";
    let mut inbox = attacker.subscribe(inbox_subject).await.unwrap();
    let with_inbox = |mut e: serde_json::Value| {
        e["reply"] = inbox_subject.into();
        serde_json::to_vec(&e).unwrap()
    };
    let captured: serde_json::Value = serde_json::from_str(&envelope).unwrap();

    // A replay of the captured request: the device refuses it, signed, and runs nothing.
    assert_eq!(ask(&attacker, &device_subject, with_inbox(captured.clone())).await["error"], serde_json::Value::Null);
    match device_answer(&mut inbox).await {
        DeviceFrame::Denied { code, .. } => assert_eq!(code, DenyCode::Replay),
        other => panic!("a replay ran: {other:?}"),
    }
    // The request altered (another action, a fresh id): the signature no longer holds.
    let mut altered = captured.clone();
    altered["run"]["action"] = "memory".into();
    altered["run"]["request_id"] = protocol::new_request_id().into();
    assert_eq!(ask(&attacker, &device_subject, with_inbox(altered)).await["error"], serde_json::Value::Null);
    match device_answer(&mut inbox).await {
        DeviceFrame::Denied { code, .. } => assert_eq!(code, DenyCode::BadSignature),
        other => panic!("an altered request ran: {other:?}"),
    }
    // Its own key: refused by the relay; then admitted through the registry
    // bucket (as the relays' admin could), and still refused by the device.
    let (own, _) = support::KeyPair::generate();
    // A fresh request signed by the attacker's own key.
    let forge = || {
        support::Run::signed(&own, &protocol::new_request_id(), &id, "system-info", BTreeMap::new(), chrono::Utc::now())
    };
    let forged = forge();
    let envelope = |run: &support::Run| with_inbox(serde_json::json!({"kind": "run", "reply": "", "run": run}));
    let refused = ask(&attacker, &device_subject, envelope(&forged)).await;
    assert_eq!(refused["error"][0], "UNAUTHORIZED", "{refused}");
    let config = ClusterConfig { url: nats.url(), creds: None, ca: None };
    let registry = NatsRegistry::open(connect(&config).await.unwrap(), &config.url).await.unwrap();
    assert!(registry.add_operator("mallory", &own.public_key()).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let forged = forge();
        if ask(&attacker, &device_subject, envelope(&forged)).await["error"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "the relay never read the registry bucket's change");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match device_answer(&mut inbox).await {
        DeviceFrame::Denied { code, .. } => assert_eq!(code, DenyCode::UntrustedOperator),
        other => panic!("a key the owner never trusted ran a command: {other:?}"),
    }
    tokio::task::block_in_place(|| {
        assert_eq!(records(&device, "action.started").len(), started, "nothing the attacker sent ran");
        let denied = records(&device, "action.denied");
        for code in ["REPLAY", "BAD_SIGNATURE", "UNTRUSTED_OPERATOR"] {
            assert!(denied.iter().any(|r| r.to_string().contains(code)), "{code} not on record: {denied:?}");
        }
    });

    // Answers forged on the operator's subject: the device's real signed
    // result, moved onto a running request, fails the operator's check.
    let slow = desk.command(&id, "slow", BTreeMap::new());
    let (accepted_tx, accepted_rx) = tokio::sync::oneshot::channel();
    let mut accepted_tx = Some(accepted_tx);
    let on_frame = |f: &DeviceFrame| {
        if matches!(f, DeviceFrame::Accepted { .. }) {
            let _ = accepted_tx.take().map(|t| t.send(()));
        }
    };
    let mut moved: serde_json::Value =
        serde_json::from_str(&protocol::encode(&FromRelay::Answer(result.clone()))).unwrap();
    moved["request_id"] = slow.request_id.clone().into();
    let forge = async {
        accepted_rx.await.unwrap();
        attacker.publish(operator_subject.clone(), serde_json::to_vec(&moved).unwrap().into()).await.unwrap();
        attacker.flush().await.unwrap();
    };
    let followed = tokio::time::timeout(Duration::from_secs(15), desk.run(&slow, on_frame, std::future::pending()));
    let (outcome, ()) = tokio::join!(followed, forge);
    match outcome.expect("the forged answer was neither taken nor refused") {
        Err(DialError::Unverified(why)) => assert!(!why.to_string().is_empty()),
        other => panic!("a forged answer passed the operator's checks: {other:?}"),
    }
    tokio::task::block_in_place(|| {
        device.home.run(&["stop"]).code(0);
    });

    // Over the routed cap, and garbage, on both kinds of subject: dropped, and no relay falls.
    // A well-formed envelope over the cap is refused before it is parsed: the device hears nothing of it.
    let denials = tokio::task::block_in_place(|| records(&device, "action.denied").len());
    let mut padded = captured.clone();
    padded["run"]["params"]["pad"] = "x".repeat(MAX_ROUTED_BYTES).into();
    let refused = ask(&attacker, &device_subject, with_inbox(padded)).await;
    assert_eq!(refused["error"][0], "BAD_FRAME", "{refused}");
    let big = vec![b'{'; MAX_ROUTED_BYTES + 1];
    let conn_prefix = operator_subject.rsplit_once('.').unwrap().0.to_string();
    let garbage: Vec<Vec<u8>> = vec![
        big,
        vec![0xff, 0xfe, 0x00, 0x80],
        b"{\"kind\":\"run\"}".to_vec(),
        b"{\"kind\":\"cancel\",\"reply\":\"x\",\"operator_key\":\"k\",\"device_id\":\"d\",\"request_id\":\"r\"}"
            .to_vec(),
        "[".repeat(100_000).into_bytes(),
        Vec::new(),
    ];
    for g in &garbage {
        for subject in [device_subject.clone(), operator_subject.clone(), format!("{conn_prefix}.not-a-number")] {
            attacker.publish(subject, g.clone().into()).await.unwrap();
        }
    }
    attacker.flush().await.unwrap();
    for g in garbage.iter().skip(1) {
        let answer = ask(&attacker, &device_subject, g.clone()).await;
        assert!(answer["error"].is_array(), "{answer}");
    }
    assert!(a.proc.0.try_wait().unwrap().is_none() && b.proc.0.try_wait().unwrap().is_none(), "a relay fell");
    let mut desk = admitted(&b, &key_path).await;
    let run = desk.command(&id, "system-info", BTreeMap::new());
    assert!(matches!(desk.run(&run, |_| {}, std::future::pending()).await.unwrap(), Outcome::Finished(_)));
    let after = tokio::task::block_in_place(|| records(&device, "action.denied").len());
    assert_eq!(after, denials, "the oversized envelope reached the device");
    let logs: String = std::fs::read_dir(b.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("relay-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(logs.contains("larger than a frame; dropped"), "B dropped the oversized answer unread");
}
