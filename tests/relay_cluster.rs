//! Relays sharing one registry over a real `nats-server -js` on an
//! ephemeral loopback port (issue 15): a token enrols one device across
//! the cluster even when relays take it at the same moment; an admin
//! change made through any relay's state directory takes effect on every
//! relay; the relays read the registry again by themselves after NATS restarts.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nats::{Nats, clustered_relay};
use common::net::{Device, Relay};
use common::{Home, Run, new_public_key};
use support::protocol::{FromRelay, RelayCode};
use support::relay::cluster::{ClusterConfig, NatsRegistry, connect};
use support::relay::registry::Enroll;

async fn registry(nats: &Nats) -> Arc<NatsRegistry> {
    let config = ClusterConfig { url: nats.url(), creds: None, ca: None };
    Arc::new(NatsRegistry::open(connect(&config).await.unwrap(), &config.url).await.unwrap())
}

/// The link's last error as `support status` reports it, once it says `want`.
fn wait_link_error(device: &Device, want: &str) {
    device.wait_until(want, |s| {
        s["daemon"]["connected"] == false
            && s["daemon"]["link"]["last_error"].as_str().is_some_and(|e| e.contains(want))
    });
}

/// An operator session on `relay` with the key in `path`, once the relay admits it (15 s at most).
async fn admitted(relay: &Relay, path: &std::path::Path) -> support::operator::Session {
    let url: support::dial::RelayUrl = relay.url().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let key = support::KeyPair::load(path).unwrap();
        match support::operator::Session::connect(&url, relay.client_tls(), key).await {
            Ok(s) => return s,
            Err(e) => assert!(Instant::now() < deadline, "the relay never admitted the operator: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (10 s at most) for the relay to end `session` as its admin removed it.
async fn told_removed(session: &mut support::operator::Session) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match session.recv(deadline.saturating_duration_since(Instant::now())).await {
            Ok(FromRelay::Error { code: RelayCode::Unauthorized, message, .. }) => {
                assert!(message.contains("removed"), "{message}");
                return;
            }
            Ok(other) => assert!(Instant::now() < deadline, "still served; last frame {other:?}"),
            Err(e) => panic!("the session ended without being told why: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_relays_taking_one_token_at_once_exactly_one_enrols_its_device() {
    let nats = Nats::start();
    let (a, b) = (registry(&nats).await, registry(&nats).await);
    const ROUNDS: usize = 10;
    const CONTENDERS: usize = 8;
    for round in 0..ROUNDS {
        let (token, _) = a.new_token(chrono::Duration::minutes(10)).await.unwrap();
        let tasks: Vec<_> = (0..CONTENDERS)
            .map(|i| {
                let relay = if i % 2 == 0 { a.clone() } else { b.clone() };
                let token = token.clone();
                tokio::spawn(async move {
                    let id = format!("d-{round}-{i}");
                    relay.enroll(&id, &new_public_key(), "host", Some(&token)).await.unwrap()
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.unwrap());
        }
        let pinned = outcomes.iter().filter(|o| **o == Enroll::Pinned).count();
        assert_eq!(pinned, 1, "round {round}: {outcomes:?}");
        assert_eq!(outcomes.iter().filter(|o| **o == Enroll::BadToken).count(), CONTENDERS - 1, "{outcomes:?}");
    }
    let r = b.read_registry().await.unwrap();
    assert_eq!(r.devices.len(), ROUNDS, "one device per token");
    assert!(r.tokens.iter().all(|t| t.used_by.is_some()), "every token is spent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_nats_admit_the_same_peers_and_a_removal_through_either_ends_sessions_on_the_other() {
    let nats = Nats::start();
    let (a, b) = (clustered_relay(&nats), clustered_relay(&nats));
    let (_key, key_path) = a.operator("desk");
    // A token made through B enrols a device at A, once for the whole cluster.
    let token = b.token();
    let ca = a.ca();
    let device = Device::start(Home::new(), &a.url(), &["--relay-ca", ca.to_str().unwrap(), "--enroll", &token], true);
    let tokens = a.admin(&["tokens", "--json"]).code(0).json();
    assert_eq!(tokens[0]["used_by"], device.device_id.as_str(), "{tokens}");
    let stranger =
        Device::start(Home::new(), &b.url(), &["--relay-ca", b.ca().to_str().unwrap(), "--enroll", &token], false);
    wait_link_error(&stranger, "UNAUTHORIZED");

    // Admitted through A's state directory, the operator is admitted by B, which lists the device enrolled at A.
    let mut session = admitted(&b, &key_path).await;
    let listed = session.devices().await.unwrap();
    assert!(listed.iter().any(|d| d.device_id == device.device_id), "{listed:?}");

    a.admin(&["remove-operator", "desk"]).code(0).says("every relay of the cluster");
    told_removed(&mut session).await;
    let key = support::KeyPair::load(&key_path).unwrap();
    let url: support::dial::RelayUrl = b.url().parse().unwrap();
    assert!(support::operator::Session::connect(&url, b.client_tls(), key).await.is_err(), "refused from now on");

    // Removed through B's state directory, the device connected to A is cut off.
    b.admin(&["remove-device", &device.device_id]).code(0);
    wait_link_error(&device, "UNAUTHORIZED");
    assert_eq!(a.admin(&["devices", "--json"]).code(0).json(), serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_nats_restarts_a_relay_reads_the_registry_again_and_removals_still_reach_it() {
    let mut nats = Nats::start();
    let relay = clustered_relay(&nats);
    let (_desk, desk_path) = relay.operator("desk");
    let mut desk = admitted(&relay, &desk_path).await;
    nats.stop();
    // NATS down: the operator already connected is still served.
    assert!(desk.devices().await.is_ok());
    nats.up();
    // An operator added after the restart is admitted; a removal still ends a session.
    let (_late, late_path) = relay.operator("late");
    let _late = admitted(&relay, &late_path).await;
    relay.admin(&["remove-operator", "desk"]).code(0);
    told_removed(&mut desk).await;
}

/// A tier-1 diagnostic that sleeps 30 s (for a cancel).
const SLOW: &str = "[[action]]\nname = \"slow\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"sleeps\"\n\
                    argv = [\"sleep\", \"30\"]\ntimeout_s = 60\n";

/// Waits (15 s at most) until `relay` lists `device_id` online.
fn wait_online(relay: &Relay, device_id: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let listed = relay.admin(&["devices", "--json"]).code(0).json();
        if listed.as_array().unwrap().iter().any(|d| d["device_id"] == device_id && d["online"] == true) {
            return;
        }
        assert!(Instant::now() < deadline, "{device_id} never online on {}: {listed}", relay.addr);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_on_one_relay_of_three_runs_cancels_and_is_denied_on_a_device_held_by_another() {
    use support::operator::Outcome;
    use support::protocol::DenyCode;
    let nats = Nats::start();
    let (a, b, c) = (clustered_relay(&nats), clustered_relay(&nats), clustered_relay(&nats));
    let (key, key_path) = b.operator("desk");
    let (device, other) = tokio::task::block_in_place(|| {
        let home = Home::new();
        common::net::add_policy(&home, SLOW);
        let ca = a.ca();
        let device = Device::start(home, &a.url(), &["--relay-ca", ca.to_str().unwrap(), "--enroll", &a.token()], true);
        device.trust("desk", &key);
        let other = Device::enrolled(&c);
        (device, other)
    });
    let id = device.device_id.clone();
    tokio::task::block_in_place(|| {
        wait_online(&b, &id);
        wait_online(&b, &other.device_id);
    });
    let mut desk = admitted(&b, &key_path).await;
    // A denial, signed by the device, passes through unchanged: the operator checks it.
    let run = desk.command(&id, "system-info", Default::default());
    match desk.run(&run, |_| {}, std::future::pending()).await.unwrap() {
        Outcome::Denied { code, .. } => assert_eq!(code, DenyCode::NoConsent),
        other => panic!("expected NO_CONSENT, got {other:?}"),
    }
    tokio::task::block_in_place(|| device.allow(1));
    // The CLI on B runs a diagnostic on the device held by A, streamed and signed as on one relay.
    tokio::task::block_in_place(|| {
        let out = Run::from(b.operator_cli(&key_path, &["run", &id, "system-info"]).output().unwrap());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        out.code(0).says("ok ·");
        assert!(out.stdout.starts_with(host.trim()), "{}", out.stdout);
    });
    // A cancel from B stops the task on A.
    let run = desk.command(&id, "slow", Default::default());
    common::net::cancel_once_accepted(&mut desk, &run).await;
    // A device of relay C that never trusted the operator: its denial comes back too.
    let run = desk.command(&other.device_id, "system-info", Default::default());
    assert!(matches!(desk.run(&run, |_| {}, std::future::pending()).await.unwrap(), Outcome::Denied { .. }));
    assert!(b.metric("commands_routed_total") >= 3 && a.metric("commands_routed_total") >= 3);
    assert!(b.metrics().contains("cluster_connected 1"));
    // `devices` from a machine with no relay running reads the cluster's presence.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["relay", "--state"])
        .arg(elsewhere.path().join("relay"))
        .args(["--cluster", &nats.url(), "devices", "--json"])
        .output()
        .unwrap();
    let listed = Run::from(out).code(0).json();
    let held = listed.as_array().unwrap().iter().find(|d| d["device_id"] == id.as_str()).unwrap();
    assert_eq!((held["online"].as_bool(), held["tier"].as_u64()), (Some(true), Some(1)), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_relay_holding_a_device_dies_the_device_is_back_through_another_within_the_backoff() {
    let nats = Nats::start();
    let mut a = clustered_relay(&nats);
    let b = common::nats::clustered_relay_like(&nats, &a);
    let c = clustered_relay(&nats);
    let (key, key_path) = c.operator("desk");
    let device = tokio::task::block_in_place(|| {
        let ca = a.ca();
        let (a_url, b_url) = (a.url(), b.url());
        let flags = ["--relay-ca", ca.to_str().unwrap(), "--relay", &b_url, "--enroll", &a.token()];
        let device = Device::start(Home::new(), &a_url, &flags, true);
        device.trust("desk", &key);
        device.allow(1);
        wait_online(&c, &device.device_id);
        device
    });
    assert_eq!(device.home.status()["daemon"]["link"]["relay"], a.url().as_str(), "the first relay first");
    let mut desk = admitted(&c, &key_path).await;
    let run = desk.command(&device.device_id, "system-info", Default::default());
    assert!(matches!(
        desk.run(&run, |_| {}, std::future::pending()).await.unwrap(),
        support::operator::Outcome::Finished(_)
    ));

    // Relay A dies without a word; the device's link moves on to B.
    let killed = Instant::now();
    a.proc.0.kill().unwrap();
    let _ = a.proc.0.wait();
    let b_url = b.url();
    tokio::task::block_in_place(|| {
        device.wait_until("back through B", |s| {
            s["daemon"]["connected"] == true && s["daemon"]["link"]["relay"] == b_url.as_str()
        });
    });
    let back = killed.elapsed();
    // The first wait of the backoff is 1 s ± 30 %; a second on top for the reconnect itself.
    assert!(back < Duration::from_millis(2300), "back after {back:?}");
    // Reachable again from the operator on C, before A's presence entry has expired.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let run = desk.command(&device.device_id, "system-info", Default::default());
        match desk.run(&run, |_| {}, std::future::pending()).await {
            Ok(support::operator::Outcome::Finished(_)) => break,
            other => assert!(Instant::now() < deadline, "not reachable through B: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/healthz` of `relay`: its `status`.
fn health(relay: &Relay) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(relay.ca())
        .arg(format!("https://{}/healthz", relay.addr))
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    body["status"].as_str().unwrap_or_default().to_string()
}

/// Waits (20 s at most) until `relay`'s `/healthz` says `want`.
fn wait_health(relay: &Relay, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while health(relay) != want {
        assert!(Instant::now() < deadline, "/healthz never said {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_nats_a_relay_serves_its_own_peers_refuses_cross_relay_requests_and_recovers_by_itself() {
    use support::operator::Outcome;
    let mut nats = Nats::start();
    let (a, b) = (clustered_relay(&nats), clustered_relay(&nats));
    let (key, key_path) = a.operator("desk");
    let device = tokio::task::block_in_place(|| {
        let device = Device::enrolled(&a);
        device.trust("desk", &key);
        device.allow(1);
        wait_online(&b, &device.device_id);
        device
    });
    let id = device.device_id.clone();
    let (mut here, mut there) = (admitted(&a, &key_path).await, admitted(&b, &key_path).await);
    let finished = |o: Outcome| matches!(o, Outcome::Finished(_));
    let run = there.command(&id, "system-info", Default::default());
    assert!(finished(there.run(&run, |_| {}, std::future::pending()).await.unwrap()));

    nats.stop();
    tokio::task::block_in_place(|| {
        wait_health(&a, "degraded");
        wait_health(&b, "degraded");
    });
    assert!(b.metrics().contains("cluster_connected 0"));
    let run = there.command(&id, "system-info", Default::default());
    match there.run(&run, |_| {}, std::future::pending()).await.unwrap() {
        Outcome::Relay { code, message } => {
            assert_eq!(code, RelayCode::ClusterUnavailable, "{message}");
            assert!(message.contains("cannot reach its cluster"), "{message}");
        }
        other => panic!("expected CLUSTER_UNAVAILABLE, got {other:?}"),
    }
    // The device and the operator on the same relay do not need NATS.
    let run = here.command(&id, "system-info", Default::default());
    assert!(finished(here.run(&run, |_| {}, std::future::pending()).await.unwrap()));

    nats.up();
    tokio::task::block_in_place(|| {
        wait_health(&a, "ok");
        wait_health(&b, "ok");
    });
    let run = there.command(&id, "system-info", Default::default());
    assert!(finished(there.run(&run, |_| {}, std::future::pending()).await.unwrap()), "cross-relay again");
}

/// A device's connection to `relay` with `key`, enrolling with `token` the first time.
async fn raw_device(relay: &Relay, key: &support::KeyPair, token: Option<String>) -> support::dial::Ws {
    use support::dial::{self, DeviceHello};
    let url: support::dial::RelayUrl = relay.url().parse().unwrap();
    let hello = DeviceHello { enroll_token: token.map(support::Secret::new), name: Some("twice".into()) };
    dial::connect(&url, relay.client_tls(), support::protocol::Role::Device, key, hello).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_connected_to_two_relays_belongs_to_its_newest_connection_cluster_wide() {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let nats = Nats::start();
    let (a, b) = (clustered_relay(&nats), clustered_relay(&nats));
    let key = support::KeyPair::generate().0;
    let token = tokio::task::block_in_place(|| a.token());
    let mut stale = raw_device(&a, &key, Some(token)).await;
    let id = key.public_key().device_id();
    tokio::task::block_in_place(|| wait_online(&b, &id));
    let _newest = raw_device(&b, &key, None).await;
    // Relay A ends its connection as replaced, though the newer one is on B.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stale.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.reason.to_string()),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    });
    let reason = closed.await.expect("relay A kept the stale connection");
    assert_eq!(reason.as_deref(), Some("replaced by a newer connection"));
    // Both relays list it online, held by B.
    tokio::task::block_in_place(|| {
        wait_online(&a, &id);
        wait_online(&b, &id);
    });
}

#[test]
fn a_single_relays_registry_moves_into_the_cluster_once_and_never_over_what_is_there() {
    let nats = Nats::start();
    let mut relay = Relay::start("127.0.0.1:0");
    relay.operator("desk");
    let device = Device::enrolled(&relay);
    let url = nats.url();
    relay.admin(&["migrate", "--to", &url]).code(1).says("stop it first");
    relay.proc.term();
    relay.admin(&["migrate", "--to", &url]).code(0).says("records written").says("cluster = ");
    relay.admin(&["migrate", "--to", &url]).code(0).says("0 records written");
    let operators = relay.admin(&["--cluster", &url, "operators", "--json"]).code(0).json();
    assert_eq!(operators[0]["name"], "desk", "{operators}");
    let devices = relay.admin(&["--cluster", &url, "devices", "--json"]).code(0).json();
    assert_eq!(devices[0]["device_id"], device.device_id.as_str(), "{devices}");
    // Renamed in the cluster: the file's old name is a conflict, left as the cluster has it.
    relay.admin(&["--cluster", &url, "rename-device", &device.device_id, "moved"]).code(0);
    relay.admin(&["migrate", "--to", &url]).code(1).says("another value for device.");
    let devices = relay.admin(&["--cluster", &url, "devices", "--json"]).code(0).json();
    assert_eq!(devices[0]["name"], "moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_removed_through_one_relay_tells_an_operator_on_another_that_its_request_is_gone() {
    use support::operator::Outcome;
    use support::protocol::DeviceFrame;
    let nats = Nats::start();
    let (a, b) = (clustered_relay(&nats), clustered_relay(&nats));
    let (key, key_path) = b.operator("desk");
    let device = tokio::task::block_in_place(|| {
        let home = Home::new();
        common::net::add_policy(&home, SLOW);
        let ca = a.ca();
        let device = Device::start(home, &a.url(), &["--relay-ca", ca.to_str().unwrap(), "--enroll", &a.token()], true);
        device.trust("desk", &key);
        device.allow(1);
        wait_online(&b, &device.device_id);
        device
    });
    let id = device.device_id.clone();
    let mut desk = admitted(&b, &key_path).await;
    let run = desk.command(&id, "slow", Default::default());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let on_frame = |f: &DeviceFrame| {
        if matches!(f, DeviceFrame::Accepted { .. }) {
            let _ = tx.take().map(|t| t.send(()));
        }
    };
    let state = a.state.clone();
    let remove = async move {
        rx.await.unwrap();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(common::bin())
                .args(["relay", "--state"])
                .arg(&state)
                .args(["remove-device", &id])
                .output()
                .unwrap()
        });
        Run::from(out.await.unwrap()).code(0);
    };
    let (outcome, ()) = tokio::join!(desk.run(&run, on_frame, std::future::pending()), remove);
    match outcome.unwrap() {
        Outcome::Relay { code, message } => {
            assert_eq!(code, RelayCode::DeviceOffline, "{message}");
            assert!(message.contains("removed"), "{message}");
        }
        other => panic!("expected DEVICE_OFFLINE for the request in flight, got {other:?}"),
    }
    tokio::task::block_in_place(|| wait_link_error(&device, "UNAUTHORIZED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_devices_and_three_operators_on_three_relays_list_and_reach_every_device_as_on_one_relay() {
    use support::operator::Outcome;
    use support::protocol::DenyCode;
    let nats = Nats::start();
    let relays = [clustered_relay(&nats), clustered_relay(&nats), clustered_relay(&nats)];
    let names = ["ann", "ben", "cat"];
    let keys: Vec<_> = names.iter().zip(&relays).map(|(name, relay)| relay.operator(name)).collect();
    // Two devices per relay; device k trusts operators k and k + 1 (mod 3), so each operator is trusted by four.
    let trusts = |k: usize, op: usize| op == k % 3 || op == (k + 1) % 3;
    let devices: Vec<Device> = tokio::task::block_in_place(|| {
        let devices: Vec<Device> = (0..6)
            .map(|k| {
                let device = Device::enrolled(&relays[k / 2]);
                for (op, (key, _)) in keys.iter().enumerate().filter(|(op, _)| trusts(k, *op)) {
                    device.trust(names[op], key);
                }
                device.allow(1);
                device
            })
            .collect();
        for relay in &relays {
            for d in &devices {
                wait_online(relay, &d.device_id);
            }
        }
        devices
    });
    for (op, (_, path)) in keys.iter().enumerate() {
        let mut session = admitted(&relays[op], path).await;
        // Every device, online, and what its owner lets this operator see of it: as one relay lists them.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let listed = session.devices().await.unwrap();
            let as_one_relay = listed.len() == devices.len()
                && devices.iter().enumerate().all(|(k, d)| {
                    listed
                        .iter()
                        .any(|e| e.device_id == d.device_id && e.online && (e.tier == Some(1)) == trusts(k, op))
                });
            if as_one_relay {
                break;
            }
            assert!(Instant::now() < deadline, "{} lists {listed:?}", names[op]);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every device reached: run by the four that trust it, refused (signed) by the two that do not.
        for (k, d) in devices.iter().enumerate() {
            let run = session.command(&d.device_id, "system-info", Default::default());
            match (session.run(&run, |_| {}, std::future::pending()).await.unwrap(), trusts(k, op)) {
                (Outcome::Finished(_), true) => {}
                (Outcome::Denied { code: DenyCode::UntrustedOperator, .. }, false) => {}
                (other, trusted) => panic!("{} on device {k} (trusted: {trusted}): {other:?}", names[op]),
            }
        }
    }
    for relay in &relays {
        assert!(relay.metric("commands_routed_total") >= 6, "{}", relay.metrics());
    }
}
