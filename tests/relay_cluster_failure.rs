//! Relays of a cluster when something fails (issue 15), on a real
//! `nats-server -js` on an ephemeral loopback port: NATS killed and started
//! again while a cross-relay task runs; a relay killed with SIGKILL, whose
//! devices go offline on the others once their presence expires (set short
//! by `SUPPORT_RELAY_PRESENCE_TTL_S`); and the per-operator caps, which
//! only the operator's own relay enforces.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::desk::Desk;
use common::nats::{Nats, clustered_relay_with};
use common::net::{Device, Relay};
use support::operator::Outcome;
use support::protocol::{DeviceFrame, FromRelay, RelayCode, Status, ToRelay};
use support::relay::cluster::PRESENCE_TTL_ENV;

/// A tier-1 diagnostic that sleeps 30 s.
const SLOW: &str = "[[action]]\nname = \"slow\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"sleeps\"\n\
                    argv = [\"sleep\", \"30\"]\ntimeout_s = 60\n";

/// The tasks the owner sees running (`support tasks --json`).
fn running(device: &Device) -> Vec<serde_json::Value> {
    device.home.run(&["tasks", "--json"]).json()["tasks"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_while_a_cross_relay_task_runs_ends_the_operators_wait_and_the_cluster_recovers_by_itself() {
    let mut relays = tokio::task::block_in_place(Desk::across);
    let (key_path, device) = tokio::task::block_in_place(|| {
        let (key, key_path) = relays.add_operator("desk");
        let device = Device::enrolled_with(&relays.device, SLOW);
        device.trust("desk", &key);
        device.allow(1);
        relays.wait_online(&device.device_id);
        (key_path, device)
    });
    let id = device.device_id.clone();
    let mut desk = relays.operator().session(&key_path).await;
    let run = desk.command(&id, "slow", BTreeMap::new());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let on_frame = |f: &DeviceFrame| {
        if matches!(f, DeviceFrame::Accepted { .. }) {
            let _ = tx.take().map(|t| t.send(()));
        }
    };
    let nats = relays.nats().unwrap();
    let kill = async {
        rx.await.unwrap();
        tokio::task::block_in_place(|| nats.kill());
    };
    let followed = tokio::time::timeout(Duration::from_secs(15), desk.run(&run, on_frame, std::future::pending()));
    let (outcome, ()) = tokio::join!(followed, kill);
    // Told at once, not left waiting for a result that core NATS may have lost.
    match outcome.expect("the operator was left waiting").unwrap() {
        Outcome::Relay { code: RelayCode::ClusterUnavailable, message } => {
            assert!(message.contains("lost its cluster") && message.contains("audit log"), "{message}");
        }
        other => panic!("expected CLUSTER_UNAVAILABLE, got {other:?}"),
    }
    tokio::task::block_in_place(|| {
        relays.wait_cluster(false);
        // The task goes on on the device, where its owner sees it, and ends with the grant.
        let tasks = running(&device);
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        assert_eq!(tasks[0]["action"], "slow", "{tasks:?}");
        device.home.run(&["revoke"]).code(0);
        device.wait_until("the task ended with the grant", |s| s["daemon"]["running_tasks"] == 0);
        assert_eq!(running(&device), Vec::<serde_json::Value>::new());
        let audit = device.home.run(&["audit", "--json", "--limit", "20"]).stdout;
        assert!(
            audit.lines().any(|l| l.contains("\"action.finished\"") && l.contains("\"slow\"")),
            "the end is on the owner's record: {audit}"
        );
        relays.nats().unwrap().up();
        relays.wait_cluster(true);
    });
    // Nothing of the orphaned task reaches the operator; new requests cross again by themselves.
    tokio::task::block_in_place(|| device.allow(1));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let run = desk.command(&id, "system-info", BTreeMap::new());
        match desk.run(&run, |_| {}, std::future::pending()).await {
            Ok(Outcome::Finished(DeviceFrame::Result { status: Status::Ok, .. })) => break,
            other => assert!(Instant::now() < deadline, "not cross-relay again: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let run = desk.command(&id, "slow", BTreeMap::new());
    common::net::cancel_once_accepted(&mut desk, &run).await;
}

/// Waits (`within` at most) until `relay` lists `device_id` with `online`; returns how long it took.
fn wait_listed_online(relay: &Relay, device_id: &str, online: bool, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let listed = relay.admin(&["devices", "--json"]).code(0).json();
        let d = listed.as_array().unwrap().iter().find(|d| d["device_id"] == device_id).cloned().unwrap_or_default();
        if d["online"] == online {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{device_id} never online={online}: {listed}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_with_sigkill_has_its_devices_offline_on_the_others_once_their_presence_expires() {
    const TTL_S: u64 = 3;
    let ttl = Duration::from_secs(TTL_S);
    let nats = Nats::start();
    let env = [(PRESENCE_TTL_ENV, "3")];
    let (mut a, b) = (clustered_relay_with(&nats, &[], &env), clustered_relay_with(&nats, &[], &env));
    let (key, key_path) = b.operator("desk");
    let device = tokio::task::block_in_place(|| {
        let device = Device::enrolled(&a);
        device.trust("desk", &key);
        device.allow(1);
        wait_listed_online(&b, &device.device_id, true, Duration::from_secs(15));
        device
    });
    let id = device.device_id.clone();
    // Kept online by its relay past several expiries, with heartbeats 30 s apart.
    let kept = Instant::now();
    while kept.elapsed() < 2 * ttl {
        tokio::task::block_in_place(|| wait_listed_online(&b, &id, true, Duration::ZERO));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url: support::dial::RelayUrl = b.url().parse().unwrap();
    let key = support::KeyPair::load(&key_path).unwrap();
    let mut desk = support::operator::Session::connect(&url, b.client_tls(), key).await.unwrap();
    let run = desk.command(&id, "system-info", BTreeMap::new());
    assert!(matches!(desk.run(&run, |_| {}, std::future::pending()).await.unwrap(), Outcome::Finished(_)));

    // Relay A dies without a word: no release, no goodbye; its presence entry just stops being written.
    a.proc.0.kill().unwrap();
    let _ = a.proc.0.wait();
    let killed = Instant::now();
    let offline = tokio::task::block_in_place(|| wait_listed_online(&b, &id, false, ttl + Duration::from_secs(5)));
    // Written at most a third of the expiry before the kill: offline no sooner than two thirds after.
    assert!(offline >= ttl * 2 / 3 - Duration::from_millis(300), "offline after {offline:?}: not by expiry");
    assert!(killed.elapsed() <= ttl + Duration::from_secs(3), "offline only after {:?}", killed.elapsed());
    let run = desk.command(&id, "system-info", BTreeMap::new());
    match desk.run(&run, |_| {}, std::future::pending()).await.unwrap() {
        Outcome::Relay { code, message } => assert_eq!(code, RelayCode::DeviceOffline, "{message}"),
        other => panic!("expected DEVICE_OFFLINE, got {other:?}"),
    }
    // The presence bucket itself forgets it: `devices` from a machine with no relay running.
    let elsewhere = tempfile::tempdir().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = std::process::Command::new(common::bin())
            .args(["relay", "--state"])
            .arg(elsewhere.path().join("relay"))
            .args(["--cluster", &nats.url(), "devices", "--json"])
            .env(PRESENCE_TTL_ENV, "3")
            .output()
            .unwrap();
        let listed = common::Run::from(out).code(0).json();
        if listed.as_array().unwrap().iter().any(|d| d["device_id"] == id.as_str() && d["online"] == false) {
            break;
        }
        assert!(Instant::now() < deadline, "the bucket still holds it: {listed}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A value that is not whole seconds from 1 to 3600 stops the relay from starting.
    let out = std::process::Command::new(common::bin())
        .args(["relay", "--state"])
        .arg(elsewhere.path().join("relay"))
        .args(["--cluster", &nats.url(), "devices"])
        .env(PRESENCE_TTL_ENV, "0")
        .output()
        .unwrap();
    common::Run::from(out).code(1).says(PRESENCE_TTL_ENV);
}

/// Sends `n` runs for `device_id` on `session` at once; how many the relay refused `BUSY`.
async fn burst(session: &mut support::operator::Session, device_id: &str, n: usize) -> usize {
    let runs: Vec<support::Run> = (0..n).map(|_| session.command(device_id, "system-info", BTreeMap::new())).collect();
    for run in &runs {
        session.send_raw(&support::protocol::encode(&ToRelay::Run(run.clone()))).await.unwrap();
    }
    let (mut ended, mut busy) = (0, 0);
    while ended < n {
        match session.recv(Duration::from_secs(10)).await.unwrap() {
            FromRelay::Error { code, request_id: Some(_), .. } => {
                ended += 1;
                busy += usize::from(code == RelayCode::Busy);
            }
            FromRelay::Answer(DeviceFrame::Denied { .. } | DeviceFrame::Result { .. }) => ended += 1,
            _ => {}
        }
    }
    busy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_run_rate_is_its_own_relays_not_the_device_relays() {
    let nats = Nats::start();
    let strict = ["--max-runs-per-second", "1"];
    // A holds the device and would allow one run a second; B allows the default; C one a second.
    let a = clustered_relay_with(&nats, &strict, &[]);
    let b = clustered_relay_with(&nats, &[], &[]);
    let c = clustered_relay_with(&nats, &strict, &[]);
    let (_, key_path) = a.operator("desk");
    let device = tokio::task::block_in_place(|| {
        let device = Device::enrolled(&a);
        wait_listed_online(&b, &device.device_id, true, Duration::from_secs(15));
        wait_listed_online(&c, &device.device_id, true, Duration::from_secs(15));
        device
    });
    let session = async |relay: &Relay| {
        let url: support::dial::RelayUrl = relay.url().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let key = support::KeyPair::load(&key_path).unwrap();
            match support::operator::Session::connect(&url, relay.client_tls(), key).await {
                Ok(s) => return s,
                Err(e) => assert!(Instant::now() < deadline, "never admitted: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Denied by the device (no grant), each still a routed run.
    let mut on_b = session(&b).await;
    assert_eq!(burst(&mut on_b, &device.device_id, 6).await, 0, "B's rate, not A's, applies to B's operator");
    let mut on_c = session(&c).await;
    // Of six at once, four over a burst of two; two or more, however slow the machine.
    assert!(burst(&mut on_c, &device.device_id, 6).await >= 2, "C's own rate (a burst of 2) applies on C");
    let mut on_a = session(&a).await;
    assert!(burst(&mut on_a, &device.device_id, 6).await >= 2, "and A's to A's own operators");
}

/// A device of our own making on `relay`, enrolled with `token`: it reads
/// what the relay sends and answers nothing, so every run sent to it stays
/// in flight until the test answers it.
async fn silent_device(relay: &Relay, key: &support::KeyPair, token: String) -> support::dial::Ws {
    use support::dial::{self, DeviceHello};
    let url: dial::RelayUrl = relay.url().parse().unwrap();
    let hello = DeviceHello { enroll_token: Some(support::Secret::new(token)), name: Some("silent".into()) };
    dial::connect(&url, relay.client_tls(), support::protocol::Role::Device, key, hello).await.unwrap().0
}

/// The next `run` the relay hands the device; other frames are skipped.
async fn next_run(ws: &mut support::dial::Ws) -> support::Run {
    loop {
        match support::dial::recv(ws, Duration::from_secs(10)).await.expect("the run never reached the device") {
            FromRelay::Run(run) => return run,
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_in_flight_cap_holds_for_a_device_on_another_relay() {
    use support::relay::MAX_INFLIGHT_PER_OPERATOR;
    let nats = Nats::start();
    // The run rate out of the way (bursts of 2000), so only the in-flight cap can refuse.
    let a = clustered_relay_with(&nats, &[], &[]);
    let b = clustered_relay_with(&nats, &["--max-runs-per-second", "1000"], &[]);
    let (_, key_path) = b.operator("desk");
    let key = support::KeyPair::generate().0;
    let token = tokio::task::block_in_place(|| a.token());
    let mut device = silent_device(&a, &key, token).await;
    let id = key.public_key().device_id();
    tokio::task::block_in_place(|| wait_listed_online(&b, &id, true, Duration::from_secs(15)));
    let url: support::dial::RelayUrl = b.url().parse().unwrap();
    let mut desk =
        support::operator::Session::connect(&url, b.client_tls(), support::KeyPair::load(&key_path).unwrap())
            .await
            .unwrap();
    let send = async |desk: &mut support::operator::Session| {
        let run = desk.command(&id, "system-info", BTreeMap::new());
        desk.send_raw(&support::protocol::encode(&ToRelay::Run(run.clone()))).await.unwrap();
        run.request_id
    };
    // Read as they come, so no queue on the way fills up and refuses one.
    let (sent, held) = tokio::join!(
        async {
            let mut sent = std::collections::HashSet::new();
            for _ in 0..MAX_INFLIGHT_PER_OPERATOR {
                sent.insert(send(&mut desk).await);
            }
            sent
        },
        async {
            let mut held = Vec::new();
            while held.len() < MAX_INFLIGHT_PER_OPERATOR {
                held.push(next_run(&mut device).await.request_id);
            }
            held
        }
    );
    // Each reached the device across the relays: all of them are in flight.
    assert_eq!(held.iter().cloned().collect::<std::collections::HashSet<_>>(), sent);
    // One more: refused by B, the operator's relay, and never delivered.
    let over = send(&mut desk).await;
    let refusal = loop {
        match desk.recv(Duration::from_secs(10)).await.unwrap() {
            FromRelay::Error { code, request_id: Some(r), message } => break (code, r, message),
            FromRelay::Forwarded { .. } | FromRelay::Answer(_) => continue,
            other => panic!("expected BUSY for the run over the cap, got {other:?}"),
        }
    };
    assert_eq!((refusal.0, refusal.1.as_str()), (RelayCode::Busy, over.as_str()), "{}", refusal.2);
    assert!(refusal.2.contains(&format!("at most {MAX_INFLIGHT_PER_OPERATOR}")), "{}", refusal.2);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), next_run(&mut device)).await.is_err(),
        "the run over the cap reached the device"
    );
    // The device ends one (its answer crosses back from A): that place frees, and only that one.
    let denied = DeviceFrame::Denied {
        request_id: held[0].clone(),
        code: support::protocol::DenyCode::NoConsent,
        message: "no grant".into(),
        index: 0,
        dropped: 0,
        sig: String::new(),
    };
    support::dial::send(&mut device, &ToRelay::Answer(denied)).await.unwrap();
    loop {
        match desk.recv(Duration::from_secs(10)).await.unwrap() {
            FromRelay::Answer(DeviceFrame::Denied { request_id, .. }) if request_id == held[0] => break,
            _ => continue,
        }
    }
    let again = send(&mut desk).await;
    assert_eq!(next_run(&mut device).await.request_id, again, "a freed place takes a run again");
    let over = send(&mut desk).await;
    match desk.recv(Duration::from_secs(10)).await.unwrap() {
        FromRelay::Error { code: RelayCode::Busy, request_id: Some(r), .. } => assert_eq!(r, over),
        other => panic!("expected BUSY once the cap is full again, got {other:?}"),
    }
}
