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
    tokio::spawn(session(hub.clone(), relay_end, role, None));
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
    assert_eq!(
        recv(&mut ws).await.unwrap(),
        FromRelay::HelloAck { id: id.clone(), name: "new-host".into(), witnessed_seq: None }
    );
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

/// One frame as the relay wrote it (unmasked): the first byte (FIN and
/// opcode) and the payload.
async fn raw_frame(io: &mut DuplexStream) -> (u8, Vec<u8>) {
    use tokio::io::AsyncReadExt as _;
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await.unwrap();
    let len = match head[1] & 0x7f {
        126 => u64::from(io.read_u16().await.unwrap()),
        127 => io.read_u64().await.unwrap(),
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    io.read_exact(&mut payload).await.unwrap();
    (head[0], payload)
}

#[tokio::test]
async fn a_frame_larger_than_a_hello_before_hello_is_closed_1009_before_its_payload_arrives() {
    use tokio::io::AsyncWriteExt as _;
    let rig = rig();
    let (relay_end, mut peer) = tokio::io::duplex(256 << 10);
    tokio::spawn(session(rig.hub.clone(), relay_end, Role::Device, None));
    let (first, _) = raw_frame(&mut peer).await;
    assert_eq!(first, 0x81, "the challenge, a text frame");
    // The header of a 64 KiB masked text frame, and only 100 bytes of it:
    // the relay must refuse on the header, not wait for (and keep) the rest.
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(64u64 << 10).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(&[b'x'; 100]);
    peer.write_all(&frame).await.unwrap();
    let (op, payload) = tokio::time::timeout(Duration::from_secs(2), raw_frame(&mut peer))
        .await
        .expect("closed at once, long before the 5 s hello timeout");
    assert_eq!(op, 0x88, "a close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1009, "{}", String::from_utf8_lossy(&payload[2..]));
    assert_eq!(rig.hub.metrics.handshakes_failed("too_large"), 1);
}

#[test]
fn the_largest_valid_hello_fits_the_pre_hello_limit_with_room_to_spare() {
    let key = KeyPair::generate().0;
    // A host name of 64 bytes that JSON escapes at 6 bytes each, the longest
    // version string we would send, a token of the shape `enroll-token` makes.
    let worst_name: String = "\u{1}".repeat(64);
    let token = format!("et-{}", "A".repeat(43));
    let mut largest = 0;
    for role in [Role::Device, Role::Operator] {
        let ToRelay::Hello { role, id, public_key, sig, .. } = hello(role, &key, &"f".repeat(64), None) else {
            unreachable!()
        };
        let frame = ToRelay::Hello {
            role,
            id,
            public_key,
            version: "65535.65535.65535-rc.65535".into(),
            sig,
            enroll_token: Some(token.clone()),
            name: Some(worst_name.clone()),
        };
        largest = largest.max(protocol::encode(&frame).len());
    }
    assert!(largest * 3 <= protocol::MAX_HELLO_BYTES, "largest hello {largest} B vs {} B", protocol::MAX_HELLO_BYTES);
}

#[tokio::test]
async fn past_hello_the_full_frame_limit_applies_again() {
    let rig = rig();
    let (mut device, mut alice, _bob) = everyone(&rig).await;
    let mut run = run_for(&rig.alice, &rig.device, "req-big");
    if let ToRelay::Run(r) = &mut run {
        r.params.insert("note".into(), "y".repeat(200 << 10));
    }
    send(&mut alice, &run).await;
    match recv(&mut device).await {
        Ok(FromRelay::Run(r)) => assert_eq!(r.params["note"].len(), 200 << 10),
        other => panic!("a 200 KiB run should pass after hello, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn runs_past_the_rate_limit_are_busy_and_never_reach_the_device() {
    let rig = rig();
    let (mut device, mut alice, _bob) = everyone(&rig).await;
    let burst = 2 * crate::relay::RUNS_PER_SECOND;
    for i in 0..burst {
        send(&mut alice, &run_for(&rig.alice, &rig.device, &format!("req-{i}"))).await;
    }
    send(&mut alice, &run_for(&rig.alice, &rig.device, "req-over")).await;
    match recv(&mut alice).await {
        Ok(FromRelay::Error { code: RelayCode::Busy, request_id, message }) => {
            assert_eq!(request_id.as_deref(), Some("req-over"));
            assert!(message.contains("runs a second"), "{message}");
        }
        other => panic!("expected BUSY for the run over the burst, got {other:?}"),
    }
    for i in 0..burst {
        match recv(&mut device).await {
            Ok(FromRelay::Run(r)) => assert_eq!(r.request_id, format!("req-{i}")),
            other => panic!("expected run {i}, got {other:?}"),
        }
    }
    // The bucket refills at RUNS_PER_SECOND: one more after 1/RUNS_PER_SECOND s.
    tokio::time::sleep(Duration::from_secs(1) / crate::relay::RUNS_PER_SECOND).await;
    send(&mut alice, &run_for(&rig.alice, &rig.device, "req-later")).await;
    match recv(&mut device).await {
        Ok(FromRelay::Run(r)) => assert_eq!(r.request_id, "req-later", "req-over was never forwarded"),
        other => panic!("expected the later run, got {other:?}"),
    }
    assert_eq!(rig.hub.metrics.rejected_count("rate_limited"), 1);
}

#[tokio::test]
async fn a_removed_device_is_told_its_operators_hear_offline_and_it_cannot_come_back() {
    let rig = rig();
    let (mut device, mut alice, _bob) = everyone(&rig).await;
    send(&mut alice, &run_for(&rig.alice, &rig.device, "req-1")).await;
    assert!(matches!(recv(&mut device).await, Ok(FromRelay::Run(_))));
    let id = rig.device.public_key().device_id();
    assert!(registry::remove_device(rig.dir.path(), &id).unwrap());
    assert_eq!(rig.hub.evict_removed(), 1);
    match recv(&mut device).await {
        Ok(FromRelay::Error { code: RelayCode::Unauthorized, message, request_id: None }) => {
            assert!(message.contains("removed"), "{message}")
        }
        other => panic!("expected the removal error, got {other:?}"),
    }
    assert_eq!(recv(&mut device).await.unwrap_err(), Some(CloseCode::Policy));
    match recv(&mut alice).await {
        Ok(FromRelay::Error { code: RelayCode::DeviceOffline, request_id, .. }) => {
            assert_eq!(request_id.as_deref(), Some("req-1"))
        }
        other => panic!("expected DEVICE_OFFLINE for alice's request, got {other:?}"),
    }
    let mut again = connect(&rig.hub, Role::Device).await;
    let nonce = challenge(&mut again).await;
    send(&mut again, &hello(Role::Device, &rig.device, &nonce, None)).await;
    assert!(matches!(recv(&mut again).await, Ok(FromRelay::Error { code: RelayCode::Unauthorized, .. })));
    assert!(!rig.hub.list().iter().any(|d| d.device_id == id));
}

#[tokio::test]
async fn a_removed_operator_is_told_why_and_its_running_requests_are_cancelled() {
    let rig = rig();
    let (mut device, mut alice, mut bob) = everyone(&rig).await;
    send(&mut alice, &run_for(&rig.alice, &rig.device, "req-a")).await;
    send(&mut bob, &run_for(&rig.bob, &rig.device, "req-b")).await;
    for _ in 0..2 {
        assert!(matches!(recv(&mut device).await, Ok(FromRelay::Run(_))));
    }
    assert!(registry::remove_operator(rig.dir.path(), "alice").unwrap());
    assert_eq!(rig.hub.evict_removed(), 1);
    match recv(&mut alice).await {
        Ok(FromRelay::Error { code: RelayCode::Unauthorized, message, request_id: None }) => {
            assert!(message.contains("removed") && message.contains("1 running request"), "{message}")
        }
        other => panic!("expected the removal error, got {other:?}"),
    }
    assert_eq!(recv(&mut alice).await.unwrap_err(), Some(CloseCode::Policy));
    // Only alice's request is cancelled; bob's connection is untouched.
    assert_eq!(recv(&mut device).await.unwrap(), FromRelay::Cancel { request_id: "req-a".into() });
    // Her request id stays held until the device ends it: bob cannot claim it and hear the rest.
    send(&mut bob, &run_for(&rig.bob, &rig.device, "req-a")).await;
    match recv(&mut bob).await {
        Ok(FromRelay::Error { code: RelayCode::BadFrame, request_id, .. }) => {
            assert_eq!(request_id.as_deref(), Some("req-a"))
        }
        other => panic!("expected BAD_FRAME for the removed operator's request id, got {other:?}"),
    }
    send(&mut bob, &ToRelay::ListDevices {}).await;
    assert!(matches!(recv(&mut bob).await, Ok(FromRelay::Devices { .. })));
    send(&mut device, &denied("req-b")).await;
    assert!(matches!(recv(&mut bob).await, Ok(FromRelay::Answer(DeviceFrame::Denied { .. }))));
}

#[tokio::test]
async fn a_removed_operator_cannot_slip_a_run_in_while_its_session_ends() {
    let rig = rig();
    let mut device = greeted(&rig.hub, Role::Device, &rig.device).await;
    let key = rig.alice.public_key().to_string();
    let who = Who { id: rig.alice.public_key().fingerprint(), name: "alice".into(), key };
    let joined = rig.hub.join(Role::Operator, &who);
    assert!(rig.hub.still_admitted(Role::Operator, &who));
    assert!(registry::remove_operator(rig.dir.path(), "alice").unwrap());
    // A hello checked before the removal, joining after it, is caught here.
    assert!(!rig.hub.still_admitted(Role::Operator, &who));
    assert_eq!(rig.hub.evict_removed(), 1);
    let ToRelay::Run(run) = run_for(&rig.alice, &rig.device, "req-late") else { unreachable!() };
    match rig.hub.route_run(&who, joined.conn, run) {
        Some(FromRelay::Error { code: RelayCode::Unauthorized, .. }) => {}
        other => panic!("expected UNAUTHORIZED for a removed operator's run, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(100), recv(&mut device)).await.is_err(),
        "the device got nothing"
    );
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
