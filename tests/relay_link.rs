//! The link end to end: a real relay, real daemons and real operators on
//! ephemeral loopback ports with rcgen certificates.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use common::desk::Desk;
use common::net::{Device, Relay, add_policy, raw_ws};
use common::{Home, Run};
use futures_util::{SinkExt as _, StreamExt as _};
use support::KeyPair;
use support::dial::{self, DeviceHello, DialError, RelayUrl};
use support::operator::Outcome;
use support::protocol::{self, DenyCode, DeviceFrame, FromRelay, RelayCode, Role, Status, StoppedBy, ToRelay};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A tier-1 diagnostic and a tier-2 fix that each sleep 30 s.
fn slow_policy() -> String {
    [("slow", 1, "diagnostic"), ("slow-fix", 2, "fix")]
        .map(|(name, tier, kind)| {
            format!(
                "[[action]]\nname = \"{name}\"\ntier = {tier}\nkind = \"{kind}\"\ndescription = \"sleeps\"\n\
                 argv = [\"sleep\", \"30\"]\ntimeout_s = 60\n"
            )
        })
        .join("\n")
}

fn no_cancel() -> std::future::Pending<()> {
    std::future::pending()
}

/// Waits (at most 10 s) until the relay lists its one device at `tier`,
/// as the device's heartbeat reported it; returns the entry.
fn wait_relay_tier(relay: &Relay, tier: u8) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let list = relay.admin(&["devices", "--json"]).code(0).json();
        if list[0]["tier"] == tier {
            return list[0].clone();
        }
        assert!(std::time::Instant::now() < deadline, "the grant never reached the relay: {list}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn operator_run(relay: &Relay, key: &std::path::Path, args: &[&str]) -> Run {
    Run::from(relay.operator_cli(key, args).output().unwrap())
}

#[test]
fn diagnostics_round_trip_through_the_relay_with_real_output() {
    let relay = Relay::start("127.0.0.1:0");
    let (key, key_path) = relay.operator("desk");
    let device = Device::enrolled(&relay);
    device.trust("desk", &key);
    device.allow(1);
    let run = operator_run(&relay, &key_path, &["run", &device.device_id, "system-info"]);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    run.code(0).says("ok ·");
    assert!(run.stdout.starts_with(host.trim()), "stdout starts with this machine's host name: {}", run.stdout);
    // The relay lists it online with the grant it reported.
    let d = wait_relay_tier(&relay, 1);
    assert_eq!(d["device_id"], device.device_id.as_str());
    assert_eq!(d["online"], true);
    assert!(d["last_heartbeat"].is_string() && d["expires_at"].is_string(), "{d}");
    let listed = operator_run(&relay, &key_path, &["devices", "--json"]).code(0).json();
    assert_eq!(listed[0]["device_id"], device.device_id.as_str());
    assert!(relay.metric("commands_routed_total") >= 1);
    // A pin by fingerprint works as well as the CA file.
    let out = std::process::Command::new(common::bin())
        .args(["operator", "--relay", &relay.url(), "--relay-fingerprint", &relay.fingerprint, "--key"])
        .arg(&key_path)
        .args(["run", &device.device_id, "memory"])
        .output()
        .unwrap();
    Run::from(out).code(0).says("Mem");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_denial_code_comes_back_through_the_relay() {
    denials(Desk::one()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_denial_code_comes_back_from_a_device_on_another_relay_of_the_cluster() {
    denials(tokio::task::block_in_place(Desk::across)).await;
}

/// Each denial code, signed by the device, reaches an operator on `relays`' operator relay.
async fn denials(relays: Desk) {
    let relay = relays.operator();
    let (trusted_path, stranger_path, device) = tokio::task::block_in_place(|| {
        let (trusted, trusted_path) = relays.add_operator("desk");
        let (_, stranger_path) = relays.add_operator("stranger");
        let d = Device::enrolled(&relays.device);
        d.trust("desk", &trusted);
        relays.wait_online(&d.device_id);
        (trusted_path, stranger_path, d)
    });
    let id = device.device_id.clone();
    let mut desk = relay.session(&trusted_path).await;
    let no_params = BTreeMap::new;
    let denied = |o: Outcome| match o {
        Outcome::Denied { code, .. } => code,
        other => panic!("expected a denial, got {other:?}"),
    };
    // NO_CONSENT before any grant.
    let run = desk.command(&id, "system-info", no_params());
    assert_eq!(denied(desk.run(&run, |_| {}, no_cancel()).await.unwrap()), DenyCode::NoConsent);
    tokio::task::block_in_place(|| device.allow(1));
    // UNTRUSTED_OPERATOR: admitted by the relay, never trusted by the owner.
    let mut stranger = relay.session(&stranger_path).await;
    let run = stranger.command(&id, "system-info", no_params());
    assert_eq!(denied(stranger.run(&run, |_| {}, no_cancel()).await.unwrap()), DenyCode::UntrustedOperator);
    // BAD_SIGNATURE: a parameter altered after signing.
    let params =
        BTreeMap::from([("unit".to_string(), "cups.service".to_string()), ("lines".to_string(), "5".to_string())]);
    let mut run = desk.command(&id, "journal-tail", params);
    run.params.insert("unit".into(), "sshd.service".into());
    assert_eq!(denied(desk.run(&run, |_| {}, no_cancel()).await.unwrap()), DenyCode::BadSignature);
    // STALE_COMMAND: signed ten minutes ago.
    let key = KeyPair::load(&trusted_path).unwrap();
    let old = support::Run::signed(
        &key,
        &protocol::new_request_id(),
        &id,
        "system-info",
        no_params(),
        Utc::now() - chrono::Duration::minutes(10),
    );
    assert_eq!(denied(desk.run(&old, |_| {}, no_cancel()).await.unwrap()), DenyCode::StaleCommand);
    // REPLAY: a frame that ran, captured and sent again as it was.
    let run = desk.command(&id, "system-info", no_params());
    let captured = protocol::encode(&ToRelay::Run(run.clone()));
    assert!(matches!(
        desk.run(&run, |_| {}, no_cancel()).await.unwrap(),
        Outcome::Finished(DeviceFrame::Result { status: Status::Ok, .. })
    ));
    desk.send_raw(&captured).await.unwrap();
    assert_eq!(denied(desk.follow(&run, &mut |_| {}, no_cancel()).await.unwrap()), DenyCode::Replay);
    // UNKNOWN_ACTION.
    let run = desk.command(&id, "format-disk", no_params());
    assert_eq!(denied(desk.run(&run, |_| {}, no_cancel()).await.unwrap()), DenyCode::UnknownAction);
    // INVALID_PARAMS: a value that fails its type.
    let bad = BTreeMap::from([("unit".to_string(), "; rm -rf ~".to_string())]);
    let run = desk.command(&id, "journal-tail", bad);
    assert_eq!(denied(desk.run(&run, |_| {}, no_cancel()).await.unwrap()), DenyCode::InvalidParams);
    // TIER_INSUFFICIENT: a fix under a tier-1 grant.
    let run = desk.command(&id, "clear-print-queue", no_params());
    assert_eq!(denied(desk.run(&run, |_| {}, no_cancel()).await.unwrap()), DenyCode::TierInsufficient);
    // Each one is on the owner's record.
    let audit =
        tokio::task::block_in_place(|| device.home.run(&["audit", "--json", "--limit", "0"]).code(0).stdout.clone());
    for code in [
        "NO_CONSENT",
        "UNTRUSTED_OPERATOR",
        "BAD_SIGNATURE",
        "STALE_COMMAND",
        "REPLAY",
        "UNKNOWN_ACTION",
        "INVALID_PARAMS",
        "TIER_INSUFFICIENT",
    ] {
        assert!(audit.lines().any(|l| l.contains("action.denied") && l.contains(code)), "{code} missing from\n{audit}");
    }
    // The CLI says it too, with exit 4.
    tokio::task::block_in_place(|| {
        operator_run(relay, &trusted_path, &["run", &id, "clear-print-queue"]).code(4).says("TIER_INSUFFICIENT");
    });
}

#[test]
fn a_wrong_relay_certificate_is_refused_and_retried_with_backoff() {
    let relay = Relay::start("127.0.0.1:0");
    let other = tempfile::tempdir().unwrap();
    support::tls::Identity::self_signed(other.path(), &[]).unwrap();
    let wrong_ca = other.path().join("cert.pem");
    let device = Device::start(
        Home::new(),
        &relay.url(),
        &["--relay-ca", wrong_ca.to_str().unwrap(), "--enroll", &relay.token()],
        false,
    );
    // Between two attempts: while one is under way, no next attempt is scheduled yet.
    let status = device.wait_until("retried", |s| {
        let link = &s["daemon"]["link"];
        link["attempts"].as_u64() >= Some(2) && link["next_attempt_at"].is_string()
    });
    let link = &status["daemon"]["link"];
    assert_eq!(status["daemon"]["connected"], false);
    assert!(link["last_error"].as_str().unwrap().contains("certificate"), "{link}");
    assert!(link["next_attempt_at"].is_string(), "{link}");
    assert!(relay.metric("handshakes_failed_total{reason=\"alert\"}") >= 2, "{}", relay.metrics());
    // The first retry waits about a second (1 s ± 30 %), the next about two: not a tight loop.
    std::thread::sleep(Duration::from_millis(1000));
    let attempts = device.home.status()["daemon"]["link"]["attempts"].as_u64().unwrap();
    assert!(attempts <= 4, "retries must back off, got {attempts} attempts in about 2 s");
    // A wrong fingerprint is refused the same way.
    let wrong_fp = format!("sha256:{}", "00".repeat(32));
    let pinned = Device::start(Home::new(), &relay.url(), &["--relay-fingerprint", &wrong_fp], false);
    pinned.wait_until("refused", |s| {
        s["daemon"]["link"]["last_error"].as_str().is_some_and(|e| e.contains("certificate"))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_websockets_and_tls_1_2_are_refused() {
    let relay = Relay::start("127.0.0.1:0");
    // The daemon will not even try ws://.
    let home = Home::new();
    tokio::task::block_in_place(|| {
        home.run(&["daemon", "--relay", &format!("ws://{}", relay.addr), "--relay-ca", relay.ca().to_str().unwrap()])
            .code(2)
            .says("plain ws:// is refused");
    });
    // A plain-text WebSocket to the relay's port gets no upgrade.
    let tcp = tokio::net::TcpStream::connect(&relay.addr).await.unwrap();
    let plain = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(format!("ws://{}/v1/device", relay.addr), tcp),
    )
    .await
    .unwrap();
    assert!(plain.is_err(), "a plain WebSocket must not be upgraded");
    // A client that speaks only TLS 1.2 fails the handshake.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        let pem = std::fs::read(relay.ca()).unwrap();
        use rustls::pki_types::pem::PemObject as _;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            r.add(c.unwrap()).unwrap();
        }
        r
    };
    let tls12 = rustls::ClientConfig::builder_with_provider(support::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&relay.addr).await.unwrap();
    let handshake = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls12))
        .connect(support::tls::server_name("127.0.0.1").unwrap(), tcp)
        .await;
    assert!(handshake.is_err(), "TLS 1.2 must be refused");
    tokio::task::block_in_place(|| {
        let text = relay.metrics();
        assert!(relay.metric("handshakes_failed_total{reason=\"not_tls\"}") >= 1, "{text}");
        assert!(relay.metric("handshakes_failed_total{reason=\"incompatible\"}") >= 1, "{text}");
    });
}

async fn device_hello(relay: &Relay, key: &KeyPair, token: Option<String>) -> Result<dial::Welcome, DialError> {
    let url: RelayUrl = relay.url().parse().unwrap();
    let hello = DeviceHello { enroll_token: token.map(support::Secret::new), name: Some("test".into()) };
    dial::connect(&url, relay.client_tls(), Role::Device, key, hello).await.map(|(_, w)| w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_one_time_and_a_device_id_stays_pinned_to_its_key() {
    let relay = Relay::start("127.0.0.1:0");
    let token = relay.token();
    let (first, _) = KeyPair::generate();
    let welcome = device_hello(&relay, &first, Some(token.clone())).await.unwrap();
    assert_eq!(welcome.id, first.public_key().device_id());
    // Reconnecting needs no token: the key is pinned.
    device_hello(&relay, &first, None).await.unwrap();
    // The same token again, for another key.
    let (second, _) = KeyPair::generate();
    match device_hello(&relay, &second, Some(token)).await {
        Err(DialError::Refused { code: RelayCode::Unauthorized, message }) => {
            assert!(message.contains("used"), "{message}")
        }
        other => panic!("a reused token must be refused: {other:?}"),
    }
    // Another key claiming the pinned device id, properly signed by itself.
    let mut ws = raw_ws(&relay, "/v1/device").await;
    let nonce = match next_frame(&mut ws).await {
        FromRelay::Challenge { nonce, .. } => nonce,
        other => panic!("{other:?}"),
    };
    let id = first.public_key().device_id();
    let public_key = second.public_key().to_string();
    let sig = second.sign(&protocol::hello_bytes(Role::Device, &nonce, &id, &public_key));
    use base64::Engine as _;
    let hello = ToRelay::Hello {
        role: Role::Device,
        id,
        public_key,
        version: "test".into(),
        sig: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig),
        enroll_token: Some(relay.token()),
        name: None,
    };
    ws.send(Message::text(protocol::encode(&hello))).await.unwrap();
    assert!(matches!(next_frame(&mut ws).await, FromRelay::Error { code: RelayCode::Unauthorized, .. }));
    let registry = tokio::task::block_in_place(|| relay.admin(&["devices", "--json"]).code(0).json());
    assert_eq!(registry.as_array().unwrap().len(), 1, "{registry}");
}

async fn next_frame(ws: &mut dial::Ws) -> FromRelay {
    dial::recv(ws, Duration::from_secs(10)).await.unwrap()
}

/// The close code the relay sends next, skipping other frames.
async fn close_code(ws: &mut dial::Ws) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("the relay must close") {
            Some(Ok(Message::Close(f))) => return f.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_limits_hold() {
    let relay = Relay::start("127.0.0.1:0");
    let (_, key_path) = relay.operator("desk");
    // Garbage as the first frame: BAD_FRAME, then closed.
    let mut ws = raw_ws(&relay, "/v1/operator").await;
    next_frame(&mut ws).await;
    ws.send(Message::text("{not json")).await.unwrap();
    assert!(matches!(next_frame(&mut ws).await, FromRelay::Error { code: RelayCode::BadFrame, .. }));
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Policy));
    // After hello, garbage JSON and unknown types get BAD_FRAME and the connection lives on.
    let mut desk = relay.session(&key_path).await;
    for garbage in [
        "{not json",
        r#"{"type":"exec","cmd":"sh"}"#,
        r#"{"type":"list_devices","all":1}"#,
        r#"{"type":"heartbeat","tier":null,"expires_at":null,"running_tasks":0,"audit_head":null,"uptime_s":1,"version":"x"}"#,
    ] {
        desk.send_raw(garbage).await.unwrap();
        let run = desk.command("d-0000", "x", BTreeMap::new());
        match desk.follow(&run, &mut |_| {}, no_cancel()).await {
            Err(DialError::Refused { code: RelayCode::BadFrame, .. }) => {}
            other => panic!("{garbage}: {other:?}"),
        }
    }
    assert!(desk.devices().await.is_ok(), "the connection is still usable");
    // A frame over 1 MiB is closed with 1009.
    let mut ws = raw_ws(&relay, "/v1/operator").await;
    next_frame(&mut ws).await;
    let big = format!(r#"{{"type":"list_devices","pad":"{}"}}"#, "x".repeat(protocol::MAX_FRAME_BYTES));
    let _ = ws.send(Message::text(big)).await;
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Size));
    // No hello within 5 s: closed.
    let mut ws = raw_ws(&relay, "/v1/device").await;
    next_frame(&mut ws).await;
    let started = std::time::Instant::now();
    assert_eq!(close_code(&mut ws).await, Some(CloseCode::Policy));
    assert!(started.elapsed() >= Duration::from_secs(4), "closed after {:?}", started.elapsed());
    let text = tokio::task::block_in_place(|| relay.metrics());
    assert!(
        text.contains("frames_rejected_total{reason=\"too_large\"}")
            || text.contains("handshakes_failed_total{reason=\"too_large\"}"),
        "{text}"
    );
    assert!(text.contains("handshakes_failed_total{reason=\"hello_timeout\"} 1"), "{text}");
    // A browser's upgrade (with Origin) is refused.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(relay.ca())
        .args(["-H", "Origin: https://evil.example", "-H", "Connection: Upgrade", "-H", "Upgrade: websocket"])
        .args(["-H", "Sec-WebSocket-Version: 13", "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])
        .arg(format!("https://{}/v1/operator", relay.addr))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
}

#[test]
fn the_daemon_reconnects_after_the_relay_restarts() {
    let relay = Relay::start("127.0.0.1:0");
    let (key, key_path) = relay.operator("desk");
    let device = Device::start(
        Home::new(),
        &relay.url(),
        &["--relay-fingerprint", &relay.fingerprint, "--enroll", &relay.token()],
        true,
    );
    device.trust("desk", &key);
    device.allow(1);
    operator_run(&relay, &key_path, &["run", &device.device_id, "memory"]).code(0);
    let relay = relay.restart();
    device.wait_until("disconnected", |s| s["daemon"]["connected"] == false);
    device.wait_until("reconnected", |s| s["daemon"]["connected"] == true);
    operator_run(&relay, &key_path, &["run", &device.device_id, "memory"]).code(0).says("Mem");
    // While it is away, commands fail with DEVICE_OFFLINE (exit 3).
    let mut device = device;
    device.proc.term();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = operator_run(&relay, &key_path, &["run", &device.device_id, "memory"]);
        if r.code == 3 {
            r.says("DEVICE_OFFLINE");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never offline");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_only_their_own_requests_and_revoke_cancels_a_running_fix() {
    own_requests_and_revoke(Desk::one()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_on_another_relay_see_only_their_own_requests_and_revoke_cancels_a_running_fix() {
    own_requests_and_revoke(tokio::task::block_in_place(Desk::across)).await;
}

/// Two operators on `relays`' operator relay, one device on its device relay:
/// each sees only its own requests, a revoke ends a running fix, a cancel works.
async fn own_requests_and_revoke(relays: Desk) {
    let relay = relays.operator();
    let (a_path, b_path, device) = tokio::task::block_in_place(|| {
        let (a_key, a_path) = relays.add_operator("alice");
        let (b_key, b_path) = relays.add_operator("bob");
        let home = Home::new();
        add_policy(&home, &slow_policy());
        let d = Device::start(
            home,
            &relays.device.url(),
            &["--relay-ca", relays.device.ca().to_str().unwrap(), "--enroll", &relays.device.token()],
            true,
        );
        d.trust("alice", &a_key);
        d.trust("bob", &b_key);
        d.allow(2);
        relays.wait_online(&d.device_id);
        (a_path, b_path, d)
    });
    let id = device.device_id.clone();
    let mut alice = relay.session(&a_path).await;
    let mut bob = relay.session(&b_path).await;
    let run = alice.command(&id, "slow-fix", BTreeMap::new());
    let (accepted_tx, accepted_rx) = tokio::sync::oneshot::channel();
    let mut accepted_tx = Some(accepted_tx);
    let home = device.home.path.clone();
    let request_id = run.request_id.clone();
    let watcher = async {
        accepted_rx.await.unwrap();
        // Bob may not cancel Alice's request, and sees none of its frames.
        match bob.cancel(&id, &request_id).await {
            Err(DialError::Refused { code: RelayCode::BadFrame, .. }) => {}
            other => panic!("bob cancelled alice's request: {other:?}"),
        }
        bob.devices().await.unwrap();
        // The owner revokes while the fix runs.
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(common::bin()).arg("revoke").env("SUPPORT_HOME", home).output().unwrap()
        })
        .await
        .unwrap();
        assert!(out.status.success());
        std::future::pending::<()>().await
    };
    let follow = alice.run(
        &run,
        |f| {
            if matches!(f, DeviceFrame::Accepted { .. }) {
                let _ = accepted_tx.take().map(|t| t.send(()));
            }
        },
        no_cancel(),
    );
    let outcome = tokio::select! {
        o = follow => o.unwrap(),
        _ = watcher => unreachable!(),
    };
    match outcome {
        Outcome::Finished(DeviceFrame::Result { status, cancelled_by, .. }) => {
            assert_eq!(status, Status::Cancelled);
            assert_eq!(cancelled_by, Some(StoppedBy::Revoke));
        }
        other => panic!("{other:?}"),
    }
    // Nothing of Alice's reached Bob.
    match bob.recv(Duration::from_millis(300)).await {
        Err(DialError::Timeout(_)) => {}
        other => panic!("bob received {other:?}"),
    }
    // The CLI names how it ended, and an operator's own cancel works.
    tokio::task::block_in_place(|| device.allow(2));
    let mut alice2 = relay.session(&a_path).await;
    let run = alice2.command(&id, "slow", BTreeMap::new());
    common::net::cancel_once_accepted(&mut alice2, &run).await;
}

/// Reads of `/proc/PID/io`'s `syscr`: read syscalls the process made so far.
fn read_syscalls(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines().find_map(|l| l.strip_prefix("syscr: ")).unwrap().trim().parse().unwrap()
}

#[test]
fn an_idle_linked_daemon_under_a_grant_stays_idle() {
    // Reading the grant raises inotify access events; a watcher that took
    // them for changes re-read the file hundreds of times a second.
    let relay = Relay::start("127.0.0.1:0");
    let device = Device::enrolled(&relay);
    device.allow(1);
    // The daemon has seen the grant: its heartbeat carried it to the relay.
    wait_relay_tier(&relay, 1);
    let pid = device.proc.0.id();
    let before = read_syscalls(pid);
    std::thread::sleep(Duration::from_secs(2));
    let reads = read_syscalls(pid) - before;
    assert!(reads < 200, "{reads} read syscalls in 2 s of idling");
}

#[test]
fn a_second_relay_on_the_same_state_exits_1_before_saying_it_is_ready() {
    let relay = Relay::start("127.0.0.1:0");
    let out = std::process::Command::new(common::bin())
        .args(["relay", "--state"])
        .arg(&relay.state)
        .args(["serve", "--self-signed", "--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", relay.dir.path().join("no-such-notify-socket"))
        .output()
        .unwrap();
    let run = Run::from(out);
    run.code(1).says("another relay is running");
    assert!(!run.stdout.contains("listening on"), "{}", run.stdout);
}

/// `devices` asks the running relay, so a device acked a moment ago is online
/// (no wait for `live.json`); without the admin socket it says the snapshot's age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_devices_sees_a_device_the_moment_it_is_acked() {
    let relay = Relay::start("127.0.0.1:0");
    let token = tokio::task::block_in_place(|| relay.token());
    let (key, _) = KeyPair::generate();
    let url: RelayUrl = relay.url().parse().unwrap();
    let hello = DeviceHello { enroll_token: Some(support::Secret::new(token)), name: Some("test".into()) };
    let (_ws, _) = dial::connect(&url, relay.client_tls(), Role::Device, &key, hello).await.unwrap();
    let listed = tokio::task::block_in_place(|| relay.admin(&["devices", "--json"]).code(0).json());
    assert_eq!(listed[0]["device_id"], key.public_key().device_id(), "{listed}");
    assert_eq!(listed[0]["online"], true, "{listed}");
    std::fs::remove_file(support::paths::RelayPaths::new(&relay.state).admin_socket()).unwrap();
    tokio::task::block_in_place(|| {
        relay.admin(&["devices"]).code(0).says("snapshot from");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_serve_logs_enrolments_peers_and_refusals_at_info_by_default() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("relay");
    let log = dir.path().join("relay.log");
    let mut child = std::process::Command::new(common::bin())
        .args(["relay", "--state"])
        .arg(&state)
        .args(["serve", "--self-signed", "--listen", "127.0.0.1:0"])
        .env_remove("SUPPORT_LOG")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines.next().unwrap().unwrap().strip_prefix("listening on ").unwrap().to_string();
    let fingerprint = lines.next().unwrap().unwrap();
    let relay = Relay { dir, state, addr, fingerprint, proc: common::net::Proc(child) };
    let token = tokio::task::block_in_place(|| relay.token());
    let (key, _) = KeyPair::generate();
    device_hello(&relay, &key, Some(token)).await.unwrap();
    let (stranger, _) = KeyPair::generate();
    assert!(device_hello(&relay, &stranger, None).await.is_err());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.matches("peer left").count() >= 1 || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for needle in
        ["device enrolled", "peer authenticated", "peer left", "hello refused", "not enrolled", "conn{peer=127.0.0.1:"]
    {
        assert!(text.contains(needle), "{needle:?} missing from the relay's log:\n{text}");
    }
    assert!(!text.contains("DEBUG"), "the default level is info:\n{text}");
}

/// Run as root on a state directory another user owns (the relay's), the
/// admin commands name that user instead of advising a `chown` that would
/// lock the running relay out of its own files.
#[test]
fn an_admin_command_run_as_another_user_names_the_relays_user() {
    if !common::is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("relay");
    std::fs::create_dir(&state).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("a nobody user");
    nix::unistd::chown(&state, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["relay", "--state"])
        .arg(&state)
        .args(["enroll-token", "--ttl", "10m"])
        .output()
        .unwrap();
    let run = Run::from(out);
    run.code(1).says("sudo -u nobody support relay --state").says("enroll-token --ttl 10m");
    assert!(!run.stderr.contains("chown"), "{}", run.stderr);
    assert!(!state.join("registry.json").exists());
}
