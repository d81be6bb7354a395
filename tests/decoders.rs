//! Every decoder of untrusted input (issue 18 item 2), fed arbitrary
//! bytes and mutated valid encodings (bytes flipped, inserted, deleted):
//! none may panic, each gives a clean error or a value, and a valid
//! encoding decodes and round-trips where the type has an encoder. The
//! AFL++ targets in `fuzz/` call the same functions for much longer.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hyper::{HeaderMap, Method, StatusCode, Uri};
use proptest::prelude::*;
use support::audit::{Event, Record};
use support::consent::{self, Consent, Grant, Tier};
use support::control_api::TaskView;
use support::daemon::control_request::{Refused, Route, check_head};
use support::protocol::{self, DeviceFrame, FrameError, FromRelay, Role, Run, Stream, ToRelay};
use support::transcript::Transcript;
use support::{Catalogue, KeyPair, Paths, Secret};

#[path = "decoders/console_request.rs"]
mod console_request;

const PORT: u16 = 41_234;
const SECRET: &str = "decoder-test-secret";
const NONCE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn now() -> DateTime<Utc> {
    "2026-12-01T12:00:00Z".parse().unwrap()
}

/// One edit of a valid encoding: flip, insert or delete a byte at a
/// position taken modulo the length.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
    ];
    prop::collection::vec(edit, 1..6)
}

fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        match *e {
            Edit::Flip(i, b) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] ^= b;
            }
            Edit::Insert(i, b) => bytes.insert(i % (bytes.len() + 1), b),
            Edit::Delete(i) if !bytes.is_empty() => {
                bytes.remove(i % bytes.len());
            }
            _ => {}
        }
    }
    bytes
}

fn run() -> Run {
    let (key, _) = KeyPair::generate();
    let params = BTreeMap::from([("unit".to_string(), "cups".to_string())]);
    Run::signed(&key, "r-0123456789abcdef", "d-0123456789", "service-status", params, now())
}

fn to_relay_frames() -> Vec<String> {
    let answers = [
        DeviceFrame::accepted("r-1", "t-0123456789abcdef"),
        DeviceFrame::output("r-1", 3, Stream::Stderr, "héllo ⏎\n".into()),
        DeviceFrame::denied("r-1", support::DenyCode::TierInsufficient, "tier 1 < 2"),
    ];
    let mut frames = vec![
        protocol::encode(&ToRelay::Run(run())),
        protocol::encode(&ToRelay::Cancel { device_id: "d-1".into(), request_id: "r-1".into() }),
        protocol::encode(&ToRelay::ListDevices {}),
        r#"{"type":"heartbeat","tier":2,"expires_at":"2026-12-01T13:00:00Z","running_tasks":0,"audit_head":{"seq":3,"mac":"m"},"uptime_s":5,"version":"0.1.0"}"#.to_string(),
    ];
    frames.extend(answers.iter().cloned().map(|a| protocol::encode(&ToRelay::Answer(a))));
    frames
}

fn from_relay_frames() -> Vec<String> {
    vec![
        protocol::encode(&FromRelay::Challenge { nonce: NONCE.into(), version: "0.1.0".into() }),
        protocol::encode(&FromRelay::HelloAck { id: "d-1".into(), name: "laptop".into(), witnessed_seq: Some(4) }),
        protocol::encode(&FromRelay::Run(run())),
        protocol::encode(&FromRelay::Cancel { request_id: "r-1".into() }),
        protocol::encode(&FromRelay::Witnessed { seq: None, alert: None }),
        r#"{"type":"error","code":"DEVICE_OFFLINE","message":"off","request_id":"r-1"}"#.to_string(),
        r#"{"type":"devices","devices":[{"device_id":"d-1","name":"n","online":false,"last_heartbeat":null,"tier":null,"expires_at":null}]}"#.to_string(),
    ]
}

/// Decodes `bytes` as a frame `T`; a frame that decodes re-encodes to itself.
fn frame_round_trip<T>(bytes: &[u8]) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Ok(text) = std::str::from_utf8(bytes) else { return Ok(()) };
    match protocol::decode::<T>(text) {
        Ok(frame) => prop_assert_eq!(protocol::decode::<T>(&protocol::encode(&frame)).unwrap(), frame),
        Err(FrameError::Malformed(why)) => prop_assert!(why.len() <= 200),
        Err(FrameError::TooLarge(n)) => prop_assert!(n > protocol::MAX_FRAME_BYTES),
        Err(e) => prop_assert!(false, "unexpected {e}"),
    }
    Ok(())
}

fn hello(role: Role) -> String {
    let (key, _) = KeyPair::generate();
    let public_key = key.public_key().to_string();
    let id = match role {
        Role::Device => key.public_key().device_id(),
        Role::Operator => key.public_key().fingerprint(),
    };
    let sig = key.sign(&protocol::hello_bytes(role, NONCE, &id, &public_key));
    protocol::encode(&ToRelay::Hello {
        role,
        id,
        public_key,
        version: "0.1.0".into(),
        sig: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig),
        enroll_token: None,
        name: Some("laptop".into()),
    })
}

fn grant() -> Grant {
    Grant::new(Tier::new(2).unwrap(), Duration::from_secs(3600), Some("printer".into()), now())
        .unwrap()
        .scoped(Some(vec!["alice".into()]), Some(vec!["service-status".into()]), Some(4))
        .unwrap()
}

fn task() -> TaskView {
    TaskView {
        task_id: "t-0123456789abcdef".into(),
        request_id: "r-1".into(),
        action: "service-status".into(),
        tier: 1,
        agent: true,
        interactive: false,
        params: BTreeMap::from([("unit".into(), "cups".into())]),
        operator: "alice".into(),
        grant_id: "g-1".into(),
        started_at: "2026-12-01T12:00:00Z".into(),
        pid: Some(42),
        start_ticks: None,
        cgroup: None,
        boot_id: "b".into(),
    }
}

fn trusted_file() -> String {
    let (key, _) = KeyPair::generate();
    format!(
        "[[operator]]\nname = \"alice\"\npublic_key = \"{}\"\nadded_at = \"2026-11-22T10:00:00Z\"\n",
        key.public_key()
    )
}

const POLICY: &str = "[[action]]\nname = \"printer-queue\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"Lists the print queue\"\nargv = [\"lpstat\", \"-o\"]\n";

/// A request head from its parts, as hyper would hand it over; `None`
/// where hyper would have refused it before the daemon saw it.
fn head(method: &str, target: &str, headers: &[(String, Vec<u8>)]) -> Option<(Method, Uri, HeaderMap)> {
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let uri: Uri = target.parse().ok()?;
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).ok()?,
            hyper::header::HeaderValue::from_bytes(value).ok()?,
        );
    }
    Some((method, uri, map))
}

fn good_headers() -> Vec<(String, Vec<u8>)> {
    vec![
        ("host".into(), format!("127.0.0.1:{PORT}").into_bytes()),
        ("authorization".into(), format!("Bearer {SECRET}").into_bytes()),
    ]
}

/// What may hold of any head `check_head` admits.
fn admitted_is_sound(method: &Method, map: &HeaderMap, route: &Route) -> Result<(), TestCaseError> {
    let hosts: Vec<_> = map.get_all(hyper::header::HOST).iter().collect();
    prop_assert_eq!(hosts.len(), 1);
    let host = hosts[0].to_str().unwrap();
    let loopback = [format!("127.0.0.1:{PORT}"), format!("localhost:{PORT}"), format!("[::1]:{PORT}")];
    prop_assert!(loopback.iter().any(|h| h == host), "{}", host);
    prop_assert!(!map.contains_key(hyper::header::ORIGIN));
    let bearer = format!("Bearer {SECRET}");
    prop_assert_eq!(map.get(hyper::header::AUTHORIZATION).unwrap().as_bytes(), bearer.as_bytes());
    let post = matches!(route, Route::Stop(_) | Route::StopAll | Route::ConsentChanged | Route::ConsoleLogin);
    prop_assert_eq!(*method == Method::POST, post);
    Ok(())
}

fn transcript_lines(body: &[u8], cuts: &[usize]) -> (u64, String) {
    let mut t = Transcript::new(true);
    let mut at = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    cuts.sort_unstable();
    for c in cuts {
        t.push(Stream::Stdout, &body[at..c]);
        at = c;
    }
    t.push(Stream::Stdout, &body[at..]);
    t.finish();
    (t.total(), t.digest())
}

fn agent_fixture(agent: &str, name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/agents/{agent}/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read(path).unwrap();
    text[..text.len().min(4096)].to_vec()
}

#[test]
fn valid_encodings_decode_and_round_trip() {
    for f in to_relay_frames() {
        let frame: ToRelay = protocol::decode(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(protocol::decode::<ToRelay>(&protocol::encode(&frame)).unwrap(), frame);
    }
    for f in from_relay_frames() {
        let frame: FromRelay = protocol::decode(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(protocol::decode::<FromRelay>(&protocol::encode(&frame)).unwrap(), frame);
    }
    for role in [Role::Device, Role::Operator] {
        let proven = support::relay::prove_hello(role, NONCE, &hello(role)).unwrap();
        assert!(proven.public_key.starts_with("ed25519:"));
        let other = if role == Role::Device { Role::Operator } else { Role::Device };
        let refused = support::relay::prove_hello(other, NONCE, &hello(role)).unwrap_err();
        assert_eq!(refused.0, "bad_hello");
        let refused = support::relay::prove_hello(role, "another nonce", &hello(role)).unwrap_err();
        assert_eq!((refused.0, refused.2.as_str()), ("unauthorized", "the hello signature does not verify"));
    }
    let g = grant();
    assert_eq!(consent::decode(&serde_json::to_vec(&g).unwrap(), now()), Consent::Live(g));
    assert_eq!(
        support::daemon::decode_tasks::<TaskView>(&serde_json::to_vec(&[task()]).unwrap()).unwrap(),
        vec![task()]
    );
    assert_eq!(support::trust::parse(trusted_file().as_bytes(), "t.toml".as_ref()).unwrap().len(), 1);
    let mut c = Catalogue::default_only().unwrap();
    c.merge_str(POLICY, "local.toml").unwrap();
    assert!(c.get("printer-queue").is_ok());
    let (method, uri, map) = head("GET", "/v1/tasks/t-1", &good_headers()).unwrap();
    let secret = Secret::new(SECRET);
    assert_eq!(check_head(&method, &uri, &map, PORT, &secret), Ok(Route::Task("t-1".into())));
}

#[test]
fn control_request_checks_refuse_in_their_documented_order() {
    let secret = Secret::new(SECRET);
    let check = |method: &str, target: &str, headers: &[(&str, &str)]| {
        let headers: Vec<(String, Vec<u8>)> =
            headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
        let (m, u, h) = head(method, target, &headers).unwrap();
        check_head(&m, &u, &h, PORT, &secret)
    };
    let host = format!("127.0.0.1:{PORT}");
    let auth = format!("Bearer {SECRET}");
    let ok = [("host", host.as_str()), ("authorization", auth.as_str())];
    assert!(matches!(
        check("GET", "/v1/status", &[("host", "evil:1"), ("origin", "x")]),
        Err(Refused::Host(StatusCode::FORBIDDEN, _))
    ));
    assert!(matches!(
        check("GET", "/v1/status", &[("host", &host), ("host", &host)]),
        Err(Refused::Host(StatusCode::BAD_REQUEST, _))
    ));
    assert!(matches!(
        check("GET", "https://127.0.0.1:41234/v1/status", &ok),
        Err(Refused::Host(StatusCode::BAD_REQUEST, _))
    ));
    assert_eq!(check("GET", "http://127.0.0.1:41234/v1/status", &ok), Ok(Route::Status));
    assert_eq!(check("GET", "/v1/status", &[("host", &host), ("origin", "null")]), Err(Refused::Origin));
    assert_eq!(
        check("GET", "/v1/status", &[("host", &host), ("authorization", "Bearer nope")]),
        Err(Refused::Unauthorized)
    );
    assert_eq!(check("GET", "/v1/nothing", &ok), Err(Refused::NotFound));
    assert_eq!(check("GET", "/v1/tasks/stop", &ok), Err(Refused::Method(Method::POST)));
    assert_eq!(check("POST", "/v1/status", &ok), Err(Refused::Method(Method::GET)));
    let big = [ok[0], ok[1], ("content-length", "65537")];
    assert_eq!(check("POST", "/v1/tasks/stop", &big), Err(Refused::TooLarge));
    let fits = [ok[0], ok[1], ("content-length", "65536")];
    assert_eq!(check("POST", "/v1/tasks/stop", &fits), Ok(Route::StopAll));
    assert_eq!(check("POST", "/v1/tasks/t-1/stop/", &ok), Ok(Route::Stop("t-1".into())));
    assert_eq!(check("POST", "/v1/consent/changed", &ok), Ok(Route::ConsentChanged));
    assert_eq!(check("POST", "/v1/console/login", &ok), Ok(Route::ConsoleLogin));
    assert_eq!(check("GET", "/v1/tasks/t-1", &ok), Ok(Route::Task("t-1".into())));
    assert_eq!(check("GET", "/v1/events", &[("host", "localhost:41234"), ok[1]]), Ok(Route::Events));
    assert_eq!(check("GET", "/v1/tasks", &[("host", "[::1]:41234"), ok[1]]), Ok(Route::Tasks));
}

#[test]
fn audit_recovery_survives_mutated_logs() {
    // Few cases: each writes and fsyncs a log.
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::under(dir.path().join("h"));
    let mut log = support::AuditLog::open(&paths).unwrap();
    for i in 0..3 {
        let mut r = Record::new(Event::ConsentGranted);
        r.tier = Some(1);
        r.reason = Some(format!("r{i}"));
        log.append(r).unwrap();
    }
    drop(log);
    let valid = std::fs::read(paths.audit()).unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 48, ..ProptestConfig::default() });
    runner
        .run(&edits(), |e| {
            let bytes = mutate(valid.clone(), &e);
            std::fs::write(paths.audit(), &bytes).unwrap();
            let verified = support::audit::verify(&paths);
            let mut log = support::AuditLog::open(&paths).unwrap();
            match log.append(Record::new(Event::DaemonStarted)) {
                // Recovery keeps only a sound chain: what it appended to verifies.
                Ok(written) => {
                    let after = support::audit::verify(&paths);
                    if verified.is_ok() || bytes.len() < valid.len() {
                        prop_assert!(after.is_ok() || verified.is_err(), "{after:?}");
                    }
                    prop_assert!(written.seq >= 1);
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
            std::fs::write(paths.audit(), &valid).unwrap();
            Ok(())
        })
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn frames_to_relay(bytes in prop::collection::vec(any::<u8>(), 0..512), pick in any::<usize>(), e in edits()) {
        frame_round_trip::<ToRelay>(&bytes)?;
        let valid = to_relay_frames();
        frame_round_trip::<ToRelay>(&mutate(valid[pick % valid.len()].clone().into_bytes(), &e))?;
    }

    #[test]
    fn frames_from_relay(bytes in prop::collection::vec(any::<u8>(), 0..512), pick in any::<usize>(), e in edits()) {
        frame_round_trip::<FromRelay>(&bytes)?;
        let valid = from_relay_frames();
        frame_round_trip::<FromRelay>(&mutate(valid[pick % valid.len()].clone().into_bytes(), &e))?;
    }

    #[test]
    fn malformed_frames_report_a_bounded_reason(
        kind in prop_oneof![Just("heartbeat"), Just("hello"), Just("error"), Just("nonsense")],
        field in prop_oneof![Just("tier"), Just("role"), Just("code"), Just("uptime_s")],
        prefix in "[a-z_]{0,190}",
        tail in "\\PC{0,40}",
    ) {
        // serde_json quotes a value of the wrong type or variant in its
        // message: the reason is cut, on a char boundary.
        let text = format!(r#"{{"type":"{kind}","{field}":"{prefix}{tail}"}}"#);
        frame_round_trip::<ToRelay>(text.as_bytes())?;
        frame_round_trip::<FromRelay>(text.as_bytes())?;
    }

    #[test]
    fn hellos(bytes in prop::collection::vec(any::<u8>(), 0..256), device in any::<bool>(), e in edits()) {
        let role = if device { Role::Device } else { Role::Operator };
        for text in [String::from_utf8_lossy(&bytes).into_owned(), String::from_utf8_lossy(&mutate(hello(role).into_bytes(), &e)).into_owned()] {
            match support::relay::prove_hello(role, NONCE, &text) {
                Ok(p) => {
                    let key: support::PublicKey = p.public_key.parse().unwrap();
                    prop_assert_eq!(p.id, if device { key.device_id() } else { key.fingerprint() });
                }
                Err(r) => prop_assert!(["bad_hello", "unauthorized"].contains(&r.0)),
            }
        }
    }

    #[test]
    fn control_requests(
        method in prop_oneof![Just("GET".to_string()), Just("POST".to_string()), "[A-Z]{1,8}"],
        target in prop_oneof![
            Just("/v1/status".to_string()), Just("/v1/tasks/stop".to_string()), Just("/v1/consent/changed".to_string()),
            "/v1/tasks/[a-z0-9-]{0,20}(/stop)?/?", "(http|https)://[a-z0-9.:\\[\\]]{1,24}/v1/[a-z/]{0,20}", "\\PC{0,40}",
        ],
        extra in prop::collection::vec(
            (prop_oneof![Just("host".to_string()), Just("origin".to_string()), Just("authorization".to_string()),
                Just("content-length".to_string()), "[a-z-]{1,12}"],
             prop::collection::vec(any::<u8>(), 0..40)),
            0..4),
        drop_host in any::<bool>(),
        drop_auth in any::<bool>(),
    ) {
        let mut headers = good_headers();
        if drop_auth { headers.remove(1); }
        if drop_host { headers.remove(0); }
        headers.extend(extra);
        let secret = Secret::new(SECRET);
        if let Some((m, u, h)) = head(&method, &target, &headers)
            && let Ok(route) = check_head(&m, &u, &h, PORT, &secret)
        {
            admitted_is_sound(&m, &h, &route)?;
        }
    }

    #[test]
    fn consent_files(bytes in prop::collection::vec(any::<u8>(), 0..512), e in edits()) {
        for b in [bytes, mutate(serde_json::to_vec_pretty(&grant()).unwrap(), &e)] {
            if let Consent::Live(g) = consent::decode(&b, now()) {
                prop_assert!(g.expires_at > now());
                prop_assert_eq!(consent::decode(&serde_json::to_vec(&g).unwrap(), now()), Consent::Live(g));
            }
        }
    }

    #[test]
    fn policy_files(text in "\\PC{0,300}", e in edits()) {
        let mutated = String::from_utf8_lossy(&mutate(POLICY.as_bytes().to_vec(), &e)).into_owned();
        for t in [text, mutated] {
            let mut c = Catalogue::default_only().unwrap();
            if c.merge_str(&t, "fuzz.toml").is_ok() {
                for a in c.actions() {
                    prop_assert!(c.get(&a.name).is_ok());
                }
            }
        }
    }

    #[test]
    fn trusted_operator_files(bytes in prop::collection::vec(any::<u8>(), 0..300), e in edits()) {
        for b in [bytes, mutate(trusted_file().into_bytes(), &e)] {
            if let Ok(ops) = support::trust::parse(&b, "t.toml".as_ref()) {
                for op in ops {
                    prop_assert!(op.public_key.parse::<support::PublicKey>().is_ok());
                }
            }
        }
    }

    #[test]
    fn tasks_files(bytes in prop::collection::vec(any::<u8>(), 0..300), e in edits()) {
        for b in [bytes, mutate(serde_json::to_vec_pretty(&[task()]).unwrap(), &e)] {
            if let Ok(tasks) = support::daemon::decode_tasks::<TaskView>(&b) {
                let again = support::daemon::decode_tasks::<TaskView>(&serde_json::to_vec(&tasks).unwrap()).unwrap();
                prop_assert_eq!(again, tasks);
            }
        }
    }

    #[test]
    fn agent_stream_json(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        pick in 0..3usize,
        e in edits(),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let fixture = match pick {
            0 => agent_fixture("claude", "sdk-messages.jsonl"),
            1 => agent_fixture("codex", "exec-events-shapes.jsonl"),
            _ => agent_fixture("host", "protocol-examples.jsonl"),
        };
        for body in [bytes, mutate(fixture, &e)] {
            prop_assert_eq!(transcript_lines(&body, &cuts), transcript_lines(&body, &[]));
        }
    }
}
