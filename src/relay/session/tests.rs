//! The relay's sessions over `tokio::io::duplex`: no TLS, no sockets, and
//! the timers under paused time.

use std::collections::BTreeMap;

use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::DuplexStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

use super::*;
use crate::KeyPair;
use crate::protocol::{DenyCode, DeviceFrame, Run};
use crate::relay::registry::{self, Registry};

type Client = WebSocketStream<DuplexStream>;

/// A hub over a registry in a temporary directory, with `alice` and `bob`
/// admitted as operators and one enrolled device.
struct Rig {
    hub: Arc<Hub>,
    alice: KeyPair,
    bob: KeyPair,
    device: KeyPair,
    dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob, device) = (KeyPair::generate().0, KeyPair::generate().0, KeyPair::generate().0);
    registry::add_operator(dir.path(), "alice", &alice.public_key()).unwrap();
    registry::add_operator(dir.path(), "bob", &bob.public_key()).unwrap();
    let (token, _) = registry::new_token(dir.path(), chrono::Duration::hours(1)).unwrap();
    let pk = device.public_key();
    registry::enroll(dir.path(), &pk.device_id(), &pk.to_string(), "laptop", Some(&token)).unwrap();
    let (stop, stopped) = watch::channel(false);
    let hub = Arc::new(Hub::new(dir.path().to_path_buf(), Registry::load(dir.path()).unwrap(), stopped));
    Rig { hub, alice, bob, device, dir, _stop: stop }
}

/// A session on the relay's end of a pipe; the peer's end.
async fn connect(hub: &Arc<Hub>, role: Role) -> Client {
    let (relay_end, peer_end) = tokio::io::duplex(256 << 10);
    let ws = WebSocketStream::from_raw_socket(relay_end, WsRole::Server, Some(protocol::ws_config())).await;
    tokio::spawn(session(hub.clone(), ws, role));
    WebSocketStream::from_raw_socket(peer_end, WsRole::Client, None).await
}

async fn send(ws: &mut Client, frame: &ToRelay) {
    ws.send(Message::text(serde_json::to_string(frame).unwrap())).await.unwrap();
}

/// The next frame from the relay, or `None` when it closed (with its code).
async fn recv(ws: &mut Client) -> Result<FromRelay, Option<CloseCode>> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(protocol::decode(&t).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// `key`'s hello for `role`, signed over `nonce`.
fn hello(role: Role, key: &KeyPair, nonce: &str, enroll_token: Option<String>) -> ToRelay {
    let public_key = key.public_key().to_string();
    let id = match role {
        Role::Device => key.public_key().device_id(),
        Role::Operator => key.public_key().fingerprint(),
    };
    let sig = key.sign(&protocol::hello_bytes(role, nonce, &id, &public_key));
    ToRelay::Hello {
        role,
        id,
        public_key,
        version: "test".into(),
        sig: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig),
        enroll_token,
        name: Some("new-host".into()),
    }
}

async fn challenge(ws: &mut Client) -> String {
    match recv(ws).await {
        Ok(FromRelay::Challenge { nonce, .. }) => nonce,
        other => panic!("expected challenge, got {other:?}"),
    }
}

/// Connects as `key` on `role` and returns the connection after `hello_ack`.
async fn greeted(hub: &Arc<Hub>, role: Role, key: &KeyPair) -> Client {
    let mut ws = connect(hub, role).await;
    let nonce = challenge(&mut ws).await;
    send(&mut ws, &hello(role, key, &nonce, None)).await;
    match recv(&mut ws).await {
        Ok(FromRelay::HelloAck { .. }) => ws,
        other => panic!("expected hello_ack, got {other:?}"),
    }
}

/// The rig's device, Alice and Bob, each past `hello_ack`.
async fn everyone(rig: &Rig) -> (Client, Client, Client) {
    let device = greeted(&rig.hub, Role::Device, &rig.device).await;
    let alice = greeted(&rig.hub, Role::Operator, &rig.alice).await;
    let bob = greeted(&rig.hub, Role::Operator, &rig.bob).await;
    (device, alice, bob)
}

fn run_for(operator: &KeyPair, device: &KeyPair, request_id: &str) -> ToRelay {
    let device_id = device.public_key().device_id();
    ToRelay::Run(Run::signed(operator, request_id, &device_id, "disk-usage", BTreeMap::new(), chrono::Utc::now()))
}

fn denied(request_id: &str) -> ToRelay {
    ToRelay::Answer(DeviceFrame::denied(request_id, DenyCode::NoConsent, "no"))
}

#[tokio::test]
async fn challenge_hello_and_hello_ack_for_a_device_and_an_operator() {
    let rig = rig();
    let mut device = greeted(&rig.hub, Role::Device, &rig.device).await;
    let _alice = greeted(&rig.hub, Role::Operator, &rig.alice).await;
    let listed = rig.hub.list();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), listed[0].online), ("laptop", true), "online as soon as acked");
    device.close(None).await.unwrap();
    while rig.hub.list()[0].online {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_new_device_enrolls_once_with_its_token() {
    let rig = rig();
    let newcomer = KeyPair::generate().0;
    let (token, _) = registry::new_token(rig.dir.path(), chrono::Duration::hours(1)).unwrap();
    let mut ws = connect(&rig.hub, Role::Device).await;
    let nonce = challenge(&mut ws).await;
    send(&mut ws, &hello(Role::Device, &newcomer, &nonce, Some(token.clone()))).await;
    let id = newcomer.public_key().device_id();
    assert_eq!(recv(&mut ws).await.unwrap(), FromRelay::HelloAck { id: id.clone(), name: "new-host".into() });
    assert!(Registry::load(rig.dir.path()).unwrap().0.devices.contains_key(&id));

    let stranger = KeyPair::generate().0;
    let mut ws = connect(&rig.hub, Role::Device).await;
    let nonce = challenge(&mut ws).await;
    send(&mut ws, &hello(Role::Device, &stranger, &nonce, Some(token))).await;
    assert!(matches!(recv(&mut ws).await, Ok(FromRelay::Error { code: RelayCode::Unauthorized, .. })));
}

/// What a case is, the endpoint, the frame sent for the nonce, the code expected.
type HelloCase<'a> = (&'a str, Role, Box<dyn Fn(&str) -> ToRelay + 'a>, RelayCode);

#[tokio::test]
async fn bad_hellos_get_an_error_and_a_policy_close() {
    let rig = rig();
    let stranger = KeyPair::generate().0;
    let cases: Vec<HelloCase<'_>> = vec![
        (
            "signed over another nonce",
            Role::Device,
            Box::new(|_| hello(Role::Device, &rig.device, "other", None)),
            RelayCode::Unauthorized,
        ),
        (
            "an unregistered operator",
            Role::Operator,
            Box::new(|n| hello(Role::Operator, &stranger, n, None)),
            RelayCode::Unauthorized,
        ),
        (
            "a device not enrolled, no token",
            Role::Device,
            Box::new(|n| hello(Role::Device, &stranger, n, None)),
            RelayCode::Unauthorized,
        ),
        (
            "an operator hello on the device endpoint",
            Role::Device,
            Box::new(|n| hello(Role::Operator, &rig.alice, n, None)),
            RelayCode::BadFrame,
        ),
        ("not a hello", Role::Operator, Box::new(|_| ToRelay::ListDevices {}), RelayCode::BadFrame),
    ];
    for (what, role, frame, want) in cases {
        let mut ws = connect(&rig.hub, role).await;
        let nonce = challenge(&mut ws).await;
        send(&mut ws, &frame(&nonce)).await;
        match recv(&mut ws).await {
            Ok(FromRelay::Error { code, request_id: None, .. }) => assert_eq!(code, want, "{what}"),
            other => panic!("{what}: expected an error, got {other:?}"),
        }
        assert_eq!(recv(&mut ws).await.unwrap_err(), Some(CloseCode::Policy), "{what}");
    }
    assert_eq!(rig.hub.metrics.handshakes_failed("unauthorized"), 3);
    assert_eq!(rig.hub.metrics.handshakes_failed("bad_hello"), 2);
}

#[tokio::test]
async fn a_run_reaches_its_device_and_the_answer_only_the_operator_who_asked() {
    let rig = rig();
    let (mut device, mut alice, mut bob) = everyone(&rig).await;
    send(&mut alice, &run_for(&rig.alice, &rig.device, "req-1")).await;
    match recv(&mut device).await.unwrap() {
        FromRelay::Run(run) => {
            assert_eq!((run.request_id.as_str(), run.operator), ("req-1", rig.alice.public_key().to_string()))
        }
        other => panic!("expected the run at the device, got {other:?}"),
    }
    send(&mut device, &ToRelay::Answer(DeviceFrame::accepted("req-1", "t-1"))).await;
    send(&mut device, &denied("req-1")).await;
    assert!(matches!(recv(&mut alice).await, Ok(FromRelay::Answer(DeviceFrame::Accepted { .. }))));
    assert!(matches!(recv(&mut alice).await, Ok(FromRelay::Answer(DeviceFrame::Denied { .. }))));
    // Bob's next frame is the answer to his own question, not Alice's answers.
    send(&mut bob, &ToRelay::ListDevices {}).await;
    assert!(matches!(recv(&mut bob).await, Ok(FromRelay::Devices { .. })));
    // Done: a late answer for it goes nowhere.
    send(&mut device, &denied("req-1")).await;
    send(&mut alice, &ToRelay::ListDevices {}).await;
    assert!(matches!(recv(&mut alice).await, Ok(FromRelay::Devices { .. })));
}

#[tokio::test]
async fn a_run_for_an_offline_device_or_signed_by_another_key_is_refused() {
    let rig = rig();
    let mut alice = greeted(&rig.hub, Role::Operator, &rig.alice).await;
    send(&mut alice, &run_for(&rig.alice, &rig.device, "req-1")).await;
    assert!(matches!(recv(&mut alice).await, Ok(FromRelay::Error { code: RelayCode::DeviceOffline, .. })));
    let _device = greeted(&rig.hub, Role::Device, &rig.device).await;
    send(&mut alice, &run_for(&rig.bob, &rig.device, "req-2")).await;
    assert!(matches!(recv(&mut alice).await, Ok(FromRelay::Error { code: RelayCode::Unauthorized, .. })));
}

#[tokio::test]
async fn only_the_operator_who_asked_may_cancel() {
    let rig = rig();
    let (mut device, mut alice, mut bob) = everyone(&rig).await;
    send(&mut alice, &run_for(&rig.alice, &rig.device, "req-1")).await;
    assert!(matches!(recv(&mut device).await, Ok(FromRelay::Run(_))));
    let device_id = rig.device.public_key().device_id();
    let cancel = ToRelay::Cancel { device_id, request_id: "req-1".into() };
    send(&mut bob, &cancel).await;
    match recv(&mut bob).await {
        Ok(FromRelay::Error { code: RelayCode::BadFrame, request_id, .. }) => {
            assert_eq!(request_id.as_deref(), Some("req-1"))
        }
        other => panic!("expected BAD_FRAME for bob's cancel, got {other:?}"),
    }
    send(&mut alice, &cancel).await;
    assert_eq!(recv(&mut alice).await.unwrap(), FromRelay::Forwarded { request_id: "req-1".into() });
    // The only cancel the device sees is Alice's.
    assert_eq!(recv(&mut device).await.unwrap(), FromRelay::Cancel { request_id: "req-1".into() });
}

#[tokio::test]
async fn a_device_may_not_send_an_operators_frames() {
    let rig = rig();
    let mut device = greeted(&rig.hub, Role::Device, &rig.device).await;
    send(&mut device, &ToRelay::ListDevices {}).await;
    assert!(matches!(recv(&mut device).await, Ok(FromRelay::Error { code: RelayCode::BadFrame, .. })));
}

#[tokio::test(start_paused = true)]
async fn no_hello_within_5_s_is_refused_and_closed() {
    let rig = rig();
    let mut ws = connect(&rig.hub, Role::Device).await;
    challenge(&mut ws).await;
    let start = tokio::time::Instant::now();
    match recv(&mut ws).await {
        Ok(FromRelay::Error { code: RelayCode::Unauthorized, message, .. }) => assert!(message.contains("5 s")),
        other => panic!("expected the hello timeout, got {other:?}"),
    }
    assert_eq!(start.elapsed(), HELLO_TIMEOUT);
    assert_eq!(recv(&mut ws).await.unwrap_err(), Some(CloseCode::Policy));
    assert_eq!(rig.hub.metrics.handshakes_failed("hello_timeout"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_dropped_after_the_idle_timeout_and_a_ping_keeps_it() {
    let rig = rig();
    let mut alice = greeted(&rig.hub, Role::Operator, &rig.alice).await;
    let almost = IDLE_TIMEOUT - Duration::from_secs(5);
    tokio::time::sleep(almost).await;
    alice.send(Message::Ping(Vec::new().into())).await.unwrap();
    tokio::time::sleep(almost).await;
    send(&mut alice, &ToRelay::ListDevices {}).await;
    assert!(matches!(recv(&mut alice).await, Ok(FromRelay::Devices { .. })), "still served after 2 × {almost:?}");
    let start = tokio::time::Instant::now();
    assert_eq!(recv(&mut alice).await.unwrap_err(), Some(CloseCode::Policy));
    assert_eq!(start.elapsed(), IDLE_TIMEOUT);
}

/// Regression (issue 12, item 5): when Alice's connection drops, Bob
/// re-sending her `(device, request_id)` used to re-create the routing
/// entry and receive the rest of her task's output.
#[tokio::test]
async fn the_rest_of_an_orphaned_request_reaches_no_other_operator() {
    let rig = rig();
    let (mut device, mut alice, mut bob) = everyone(&rig).await;
    send(&mut alice, &run_for(&rig.alice, &rig.device, "req-1")).await;
    assert!(matches!(recv(&mut device).await, Ok(FromRelay::Run(_))));
    send(&mut device, &ToRelay::Answer(DeviceFrame::accepted("req-1", "t-1"))).await;
    assert!(matches!(recv(&mut alice).await, Ok(FromRelay::Answer(DeviceFrame::Accepted { .. }))));
    alice.close(None).await.unwrap();
    while recv(&mut alice).await.is_ok() {}
    while rig.hub.metrics_text().contains("operators_connected 2") {
        tokio::task::yield_now().await;
    }
    // Bob claims her request id: refused while her task runs.
    send(&mut bob, &run_for(&rig.bob, &rig.device, "req-1")).await;
    // (Before the fix the run went through and Bob heard nothing back, so this waits at most 5 s.)
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), recv(&mut bob)).await;
    match answer.expect("the relay routed Bob's claim on Alice's request id") {
        Ok(FromRelay::Error { code: RelayCode::BadFrame, request_id: Some(r), .. }) => assert_eq!(r, "req-1"),
        other => panic!("expected BAD_FRAME for the claimed request id, got {other:?}"),
    }
    // Nor may he cancel it. The device goes on answering her request: none of it reaches Bob.
    send(&mut bob, &ToRelay::Cancel { device_id: rig.device.public_key().device_id(), request_id: "req-1".into() })
        .await;
    assert!(matches!(recv(&mut bob).await, Ok(FromRelay::Error { code: RelayCode::BadFrame, .. })));
    let output = DeviceFrame::output("req-1", 0, crate::protocol::Stream::Stdout, "alice's secret".into());
    send(&mut device, &ToRelay::Answer(output)).await;
    send(&mut device, &denied("req-1")).await;
    send(&mut bob, &ToRelay::ListDevices {}).await;
    match recv(&mut bob).await {
        Ok(FromRelay::Devices { .. }) => {}
        other => panic!("bob received {other:?}"),
    }
    // Once the device ended it, the id is free again.
    send(&mut bob, &run_for(&rig.bob, &rig.device, "req-1")).await;
    assert!(matches!(recv(&mut device).await, Ok(FromRelay::Run(_))));
}
