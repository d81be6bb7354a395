//! The relay's admin commands end to end, against a live relay and real
//! daemons: removing a device or an operator ends its live connection at
//! once, devices are addressed by name, tokens are listed but never shown,
//! and what a stranger may do before `hello` is bounded.

mod common;

use std::io::Read as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::net::{Device, Relay, raw_ws};
use common::{Home, Run};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

fn operator_run(relay: &Relay, key: &Path, args: &[&str]) -> Run {
    Run::from(relay.operator_cli(key, args).output().unwrap())
}

/// The link's last error as `support status` reports it, once it says `want`.
fn wait_link_error(device: &Device, want: &str) {
    device.wait_until(want, |s| {
        s["daemon"]["connected"] == false
            && s["daemon"]["link"]["last_error"].as_str().is_some_and(|e| e.contains(want))
    });
}

fn relay_devices(relay: &Relay) -> serde_json::Value {
    relay.admin(&["devices", "--json"]).code(0).json()
}

#[test]
fn a_removed_device_is_cut_off_at_once_and_comes_back_only_with_a_new_token() {
    let relay = Relay::start("127.0.0.1:0");
    let device = Device::enrolled(&relay);
    let id = device.device_id.clone();
    relay.admin(&["remove-device", &id]).code(0).says("its connection: 1 ended now");
    // Refused from now on: its old (used) token does not enroll it again.
    wait_link_error(&device, "UNAUTHORIZED");
    assert_eq!(relay_devices(&relay), serde_json::json!([]));
    assert!(device.log().contains("removed from the relay by its admin"), "the device was told why");
    relay.admin(&["remove-device", &id]).code(2).says("no device has the id or name");

    let Device { home, mut proc, .. } = device;
    proc.term();
    let ca = relay.ca();
    let again =
        Device::start(home, &relay.url(), &["--relay-ca", ca.to_str().unwrap(), "--enroll", &relay.token()], true);
    assert_eq!(again.device_id, id);
    assert_eq!(relay_devices(&relay)[0]["online"], true);
}

#[test]
fn devices_are_addressed_by_name_and_a_shared_name_lists_both() {
    let relay = Relay::start("127.0.0.1:0");
    let (key, key_path) = relay.operator("desk");
    let (anna, ben) = (Device::enrolled(&relay), Device::enrolled(&relay));
    for d in [&anna, &ben] {
        d.trust("desk", &key);
        d.allow(1);
    }
    relay.admin(&["rename-device", &anna.device_id, "laptop-anna"]).code(0);
    relay.admin(&["rename-device", &ben.device_id, "laptop ben"]).code(0);
    let listed = relay_devices(&relay);
    let names: Vec<&str> = listed.as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"laptop-anna") && names.contains(&"laptop ben"), "{listed}");

    let run = operator_run(&relay, &key_path, &["run", "laptop-anna", "system-info"]);
    run.code(0).says(&format!("laptop-anna is {}", anna.device_id)).says("ok ·");
    // The relay's own commands take the name too.
    relay.admin(&["rename-device", "laptop ben", "desk-ben"]).code(0);
    operator_run(&relay, &key_path, &["run", "desk-ben", "system-info"]).code(0);

    // Bad names are refused before anything changes.
    relay.admin(&["rename-device", &anna.device_id, "evil\u{1b}[2J"]).code(2).says("control or invisible");
    relay.admin(&["rename-device", &anna.device_id, &ben.device_id]).code(2).says("shape of a device id");

    relay.admin(&["rename-device", "desk-ben", "laptop-anna"]).code(0);
    for run in [
        operator_run(&relay, &key_path, &["run", "laptop-anna", "system-info"]),
        operator_run(&relay, &key_path, &["shell", "laptop-anna", "--", "true"]),
        operator_run(&relay, &key_path, &["cancel", "laptop-anna", "r-0"]),
        relay.admin(&["remove-device", "laptop-anna"]),
    ] {
        run.code(2).says("2 devices are named \"laptop-anna\"").says(&anna.device_id).says(&ben.device_id);
    }
    operator_run(&relay, &key_path, &["run", "nobody", "system-info"]).code(2).says("no device has the id or name");
    assert_eq!(relay_devices(&relay).as_array().unwrap().len(), 2, "nothing was removed");
}

#[test]
fn operators_and_tokens_are_listed_without_the_token_and_a_revoked_token_enrolls_nothing() {
    let relay = Relay::start("127.0.0.1:0");
    let (key, _) = relay.operator("alice");
    let ops = relay.admin(&["operators", "--json"]).code(0).json();
    assert_eq!(ops[0]["name"], "alice");
    assert_eq!(ops[0]["fingerprint"], key.public_key().fingerprint().as_str());
    relay.admin(&["operators"]).code(0).says("alice").says(&key.public_key().fingerprint());

    let used = relay.token();
    let device = Device::start(
        Home::new(),
        &relay.url(),
        &["--relay-ca", relay.ca().to_str().unwrap(), "--enroll", &used],
        true,
    );
    let spare = relay.token();
    let listing = relay.admin(&["tokens", "--json"]);
    let table = relay.admin(&["tokens"]);
    listing.code(0);
    table.code(0);
    for text in [&listing.stdout, &listing.stderr, &table.stdout, &table.stderr] {
        assert!(!text.contains(&used) && !text.contains(&spare), "a token itself is never shown: {text}");
        assert!(!text.contains(used.trim_start_matches("et-")), "nor its secret part");
    }
    let tokens = listing.json();
    let tokens = tokens.as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    let was_used = tokens.iter().find(|t| t["used"] == true).expect("the used token is listed as used");
    assert_eq!(was_used["used_by"], device.device_id.as_str());
    assert!(was_used["created_at"].is_string() && was_used["expires_at"].is_string());
    let unused = tokens.iter().find(|t| t["used"] == false).unwrap();
    let id = unused["id"].as_str().unwrap();
    table.says(id).says(&device.device_id);

    relay.admin(&["revoke-token", was_used["id"].as_str().unwrap()]).code(2).says("remove that device instead");
    relay.admin(&["revoke-token", id]).code(0).says("revoked");
    relay.admin(&["revoke-token", id]).code(2).says("no enrolment token has the id");
    assert_eq!(relay.admin(&["tokens", "--json"]).code(0).json().as_array().unwrap().len(), 1);
    let refused = Device::start(
        Home::new(),
        &relay.url(),
        &["--relay-ca", relay.ca().to_str().unwrap(), "--enroll", &spare],
        false,
    );
    wait_link_error(&refused, "unknown, used or expired");
    assert_eq!(relay_devices(&relay).as_array().unwrap().len(), 1);
}

#[test]
fn a_removed_operators_shell_ends_within_2_s_and_its_task_is_cancelled_on_the_device() {
    let relay = Relay::start("127.0.0.1:0");
    let (key, key_path) = relay.operator("alice");
    let (bob_key, bob_path) = relay.operator("bob");
    let device = Device::enrolled(&relay);
    device.trust("alice", &key);
    device.trust("bob", &bob_key);
    device.allow(4);
    let mut shell = relay
        .operator_cli(&key_path, &["shell", &device.device_id, "--", "sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let running = |s: &serde_json::Value| s["tasks"].as_array().is_some_and(|t| !t.is_empty());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !running(&device.home.run(&["tasks", "--json"]).json()) {
        assert!(Instant::now() < deadline, "the shell never started\n{}", device.log());
        std::thread::sleep(Duration::from_millis(20));
    }

    let removed_at = Instant::now();
    relay.admin(&["remove-operator", "alice"]).code(0).says("its open connections: 1 ended now");
    let status = loop {
        if let Some(status) = shell.try_wait().unwrap() {
            break status;
        }
        assert!(removed_at.elapsed() < Duration::from_secs(2), "the removed operator's shell is still running");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    shell.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("removed from the relay by its admin"), "the operator is told why: {stderr}");

    // The task is cancelled on the device, by the operator's side, on the record.
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(&device.home.run(&["tasks", "--json"]).json()) {
        assert!(Instant::now() < deadline, "the task outlived its operator's removal\n{}", device.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let audit = device.home.run(&["audit", "--json"]).code(0).stdout.clone();
    let stopped: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "task.stopped")
        .collect();
    assert_eq!(stopped.len(), 1, "{audit}");
    assert_eq!(stopped[0]["by"], "operator");
    // Alice cannot come back; bob was never touched.
    operator_run(&relay, &key_path, &["devices"]).code(4).says("not registered");
    operator_run(&relay, &bob_path, &["shell", &device.device_id, "--", "true"]).code(0);
    relay.admin(&["remove-operator", "alice"]).code(2).says("no operator named");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_hello_a_big_frame_is_closed_1009_and_strangers_past_the_bound_wait_unaccepted() {
    let relay = Relay::start_with("127.0.0.1:0", &["--max-unauthenticated", "4"]);
    let (key, key_path) = relay.operator("desk");
    let device = tokio::task::block_in_place(|| {
        let d = Device::enrolled(&relay);
        d.trust("desk", &key);
        d.allow(1);
        d
    });
    // An operator in before the flood: authenticated peers hold no place.
    let mut desk = relay.session(&key_path).await;

    let mut big = raw_ws(&relay, "/v1/device").await;
    assert!(matches!(big.next().await, Some(Ok(Message::Text(_)))), "the challenge");
    // 5 KiB: over the 4 KiB cap, yet one TLS record, which the relay reads
    // whole before it refuses, so no unread bytes turn its close into a reset.
    // (A 64 KiB frame refused on its header alone: the session's unit tests.)
    big.send(Message::text("x".repeat(5 << 10))).await.unwrap();
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(3), big.next()).await.expect("closed before the hello timeout") {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, 1009);
    drop(big);
    // Its place is given back (the gauge counts the scrape's own connection).
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.metric("unauthenticated_connections") > 1 {
        assert!(Instant::now() < deadline, "{}", relay.metrics());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut strangers = Vec::new();
    for _ in 0..4 {
        let mut ws = raw_ws(&relay, "/v1/operator").await;
        assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))), "the challenge");
        strangers.push(ws);
    }
    let held_since = Instant::now();
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", relay.proc.0.id())).unwrap().count();
    let fds_full = fds();
    // 32 more, each sending its ClientHello: none is accepted (no TLS answer,
    // no refusal, no descriptor in the relay); they wait in the kernel's backlog.
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (addr, tls) = (relay.addr.clone(), relay.client_tls());
        waiting.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            tokio_rustls::TlsConnector::from(tls).connect(support::tls::server_name("127.0.0.1").unwrap(), tcp).await
        });
    }
    // Those already in are served meanwhile.
    let run = desk.command(&device.device_id, "system-info", Default::default());
    let outcome = desk.run(&run, |_| {}, std::future::pending()).await.unwrap();
    assert!(matches!(outcome, support::operator::Outcome::Finished(_)), "{outcome:?}");
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.join_next()).await;
    assert!(
        early.is_err(),
        "a connection past the bound was answered: {:?}",
        early.map(|j| j.map(|r| r.map(|t| t.is_ok())))
    );
    assert!(fds() <= fds_full + 4, "the relay holds connections past the bound: {} fds, {fds_full} when full", fds());
    // The strangers never send hello: its timeout frees their places, and the
    // connections that waited are served then, TLS and the challenge.
    let served =
        tokio::time::timeout(Duration::from_secs(15), waiting.join_next()).await.expect("served once places free");
    let tls = served.unwrap().unwrap().expect("a connection that waited completes its TLS handshake");
    assert!(
        held_since.elapsed() >= support::relay::HELLO_TIMEOUT - Duration::from_millis(500),
        "{:?}",
        held_since.elapsed()
    );
    let url = format!("wss://{}/v1/device", relay.addr);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, tls, Some(support::protocol::ws_config())).await.unwrap();
    assert!(matches!(ws.next().await, Some(Ok(Message::Text(_)))), "the challenge");
    drop((ws, strangers, waiting));
    let deadline = Instant::now() + Duration::from_secs(10);
    let paused = loop {
        let n = relay.metric("accept_paused_total");
        if n > 0 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(paused >= 1, "{}", relay.metrics());
    assert!(relay.metrics().contains("unauthenticated_connections "));
    // Room again once the strangers have gone.
    tokio::task::block_in_place(|| {
        operator_run(&relay, &key_path, &["devices"]).code(0);
    });
}
