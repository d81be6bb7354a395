//! One function per decoder of untrusted input, each called by the AFL++
//! binary of the same name in `src/bin/` (and by `seeds`, which writes the
//! seed corpus). Each asserts what must hold for any input: no panic, a
//! clean error, and a round trip where the type has an encoder.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use support::control_api::TaskView;
use support::protocol::{self, FromRelay, Role, ToRelay};
use support::{Catalogue, Consent, Paths};

mod console;
pub use console::{CONSOLE_PORT, CSRF, SID, TOKEN, console_request};

/// The nonce every `hello` seed is signed over.
pub const HELLO_NONCE: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";
/// The control API's port and secret for the request target.
pub const CONTROL_PORT: u16 = 41_234;
/// The bearer secret the request target's daemon holds.
pub const CONTROL_SECRET: &str = "fuzz-secret-0123456789abcdef";
/// The audit key (32 bytes, base64url) the audit target's log is sealed with.
pub const AUDIT_KEY: &str = "ZnV6ei1hdWRpdC1rZXktMzItYnl0ZXMtbG9uZy0hISE";

/// "Now" for the consent decoder: inside the seeds' grants.
pub fn now() -> DateTime<Utc> {
    "2026-12-01T12:00:00Z".parse().expect("a literal time")
}

/// A relay frame a peer sends: decode, and decode(encode(x)) == x.
pub fn frame_to_relay(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(frame) = protocol::decode::<ToRelay>(text) {
        let again: ToRelay = protocol::decode(&protocol::encode(&frame)).expect("an encoded frame decodes");
        assert_eq!(again, frame);
        if let ToRelay::Run(run) = &frame {
            let _ = run.check_shape();
        }
    }
}

/// A relay frame the relay sends: decode, and decode(encode(x)) == x.
pub fn frame_from_relay(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(frame) = protocol::decode::<FromRelay>(text) {
        let again: FromRelay = protocol::decode(&protocol::encode(&frame)).expect("an encoded frame decodes");
        assert_eq!(again, frame);
    }
}

/// The `hello`: the first byte picks the endpoint, the rest is the frame.
pub fn hello(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return };
    let role = if first & 1 == 0 { Role::Device } else { Role::Operator };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if let Ok(proven) = support::relay::prove_hello(role, HELLO_NONCE, text) {
        let key: support::PublicKey = proven.public_key.parse().expect("a proven key parses");
        let id = match role {
            Role::Device => key.device_id(),
            Role::Operator => key.fingerprint(),
        };
        assert_eq!(proven.id, id);
    }
}

/// A control API request head, parsed by httparse as hyper does, then
/// checked; a request that passes must have named this port on loopback,
/// carried no Origin and the right secret.
pub fn control_request(data: &[u8]) {
    let Some((method, uri, map, _)) = parse_head(data) else { return };
    let secret = support::Secret::new(CONTROL_SECRET);
    let checked = support::daemon::control_request::check_head(&method, &uri, &map, CONTROL_PORT, &secret);
    if checked.is_ok() {
        let host = map.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
        let p = CONTROL_PORT;
        assert!([format!("127.0.0.1:{p}"), format!("localhost:{p}"), format!("[::1]:{p}")].iter().any(|h| h == host));
        assert_eq!(map.get_all(http::header::HOST).iter().count(), 1);
        assert!(!map.contains_key(http::header::ORIGIN));
        let auth = map.get(http::header::AUTHORIZATION).expect("an admitted request carries the secret");
        assert_eq!(auth.as_bytes(), format!("Bearer {CONTROL_SECRET}").as_bytes());
    }
}

/// A request head as hyper takes it (httparse, then the `http` types; at
/// most 32 headers): method, target, headers and the head's length in
/// bytes (the body follows). `None` where hyper would refuse it first.
pub(crate) fn parse_head(data: &[u8]) -> Option<(http::Method, http::Uri, http::HeaderMap, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = req.parse(data) else { return None };
    let method = http::Method::from_bytes(req.method?.as_bytes()).ok()?;
    let uri = req.path?.parse::<http::Uri>().ok()?;
    let mut map = http::HeaderMap::new();
    for h in req.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        map.append(name, http::HeaderValue::from_bytes(h.value).ok()?);
    }
    Some((method, uri, map, len))
}

/// `consent.json`: a live grant re-encodes to the same grant.
pub fn consent(data: &[u8]) {
    if let Consent::Live(grant) = support::consent::decode(data, now()) {
        assert!(grant.expires_at > now());
        let bytes = serde_json::to_vec(&grant).expect("a grant serialises");
        assert_eq!(support::consent::decode(&bytes, now()), Consent::Live(grant));
    }
}

/// A `policy.d` file merged over the default catalogue; every action it
/// leaves can be looked up again.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut catalogue = Catalogue::default_only().expect("the default catalogue loads");
    if catalogue.merge_str(text, "fuzz.toml").is_ok() {
        for action in catalogue.actions() {
            catalogue.get(&action.name).expect("a listed action is found");
        }
    }
}

/// `trusted_operators.toml`: every operator listed has a key that parses.
pub fn trusted_operators(data: &[u8]) {
    if let Ok(operators) = support::trust::parse(data, std::path::Path::new("trusted_operators.toml")) {
        for op in operators {
            op.public_key.parse::<support::PublicKey>().expect("a listed key parses");
        }
    }
}

/// `tasks.json`: the tasks re-encode to the same tasks.
pub fn tasks_json(data: &[u8]) {
    if let Ok(tasks) = support::daemon::decode_tasks::<TaskView>(data) {
        let bytes = serde_json::to_vec(&tasks).expect("tasks serialise");
        assert_eq!(support::daemon::decode_tasks::<TaskView>(&bytes).expect("re-encoded tasks decode"), tasks);
    }
}

/// A fresh home for the audit target, on tmpfs where there is one (one
/// per process; the log is rewritten for each input).
fn audit_home() -> &'static (PathBuf, Paths) {
    static HOME: OnceLock<(PathBuf, Paths)> = OnceLock::new();
    HOME.get_or_init(|| {
        let base =
            if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("support-fuzz-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let paths = Paths::under(dir.join("h"));
        paths.ensure_dirs().expect("the home's dirs");
        write_audit_key(&paths);
        (dir, paths)
    })
}

/// Writes [`AUDIT_KEY`] as the home's audit key (0600).
pub fn write_audit_key(paths: &Paths) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(paths.audit_key())
        .expect("the audit key file");
    std::io::Write::write_all(&mut f, format!("{AUDIT_KEY}\n").as_bytes()).expect("the audit key");
}

/// The audit log on recovery: the input is the log on disk; opening it
/// and appending a record (which cuts a torn tail, or refuses a bad one),
/// verifying and reading it back newest first must not panic, and an
/// append that succeeded leaves a log whose newest record is the one appended.
pub fn audit_recovery(data: &[u8]) {
    use support::audit::{Event, Record};
    let (_, paths) = audit_home();
    std::fs::write(paths.audit(), data).expect("the log file");
    let _ = support::audit::verify(paths);
    let _ = support::audit::newest_first(paths, |_| std::ops::ControlFlow::Continue(()));
    let Ok(mut log) = support::AuditLog::open(paths) else { return };
    let mut record = Record::new(Event::DaemonStarted);
    record.reason = Some("fuzz".into());
    if let Ok(written) = log.append(record) {
        let mut newest = None;
        support::audit::newest_first(paths, |r| {
            newest = Some(r);
            std::ops::ControlFlow::Break(())
        })
        .expect("a log just appended to reads back");
        assert_eq!(newest.map(|r| r.seq), Some(written.seq));
    }
}

/// Agent stream-JSON (Claude Code, Codex, an agent host) on stdout, cut
/// in two at a point the first two bytes pick: the lines are the same
/// wherever the cut falls.
pub fn transcript(data: &[u8]) {
    use support::protocol::Stream;
    use support::transcript::Transcript;
    if data.len() < 2 {
        return;
    }
    let cut = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let body = &data[2..];
    let cut = cut.min(body.len());
    let mut whole = Transcript::new(true);
    whole.push(Stream::Stdout, body);
    whole.finish();
    let mut split = Transcript::new(true);
    split.push(Stream::Stdout, &body[..cut]);
    split.push(Stream::Stdout, &body[cut..]);
    split.finish();
    assert_eq!(whole.total(), split.total());
    assert_eq!(whole.digest(), split.digest());
}
