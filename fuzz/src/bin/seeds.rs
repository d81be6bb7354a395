//! Writes the seed corpus under `corpus/<target>/` (run from `fuzz/`):
//! real encodings made by the crate's own encoders and signers, the
//! catalogue the crate ships, and the agent fixtures under
//! `tests/fixtures/agents`. Signed seeds use fresh keys, so a rerun
//! changes those files' bytes but not their shapes.

use std::collections::BTreeMap;
use std::path::Path;

use support::audit::{Event, Record};
use support::consent::{Grant, Tier};
use support::protocol::{
    self, AuditHead, DeviceEntry, DeviceFrame, FromRelay, GrantScope, Heartbeat, RelayCode, Role, Run, Status, Stream,
    TaskResult, ToRelay,
};
use support::{KeyPair, Paths};
use support_fuzz::{CONSOLE_PORT, CONTROL_PORT, CONTROL_SECRET, HELLO_NONCE, now};

/// Base64url without padding (RFC 4648 §5), as the wire has signatures.
fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn put(target: &str, name: &str, bytes: impl AsRef<[u8]>) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("the corpus dir");
    std::fs::write(dir.join(name), bytes).expect("a seed");
}

fn result() -> TaskResult {
    TaskResult {
        status: Status::Ok,
        exit_code: Some(0),
        duration_ms: 12,
        truncated: false,
        output_bytes: 6,
        output_sha256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
        cancelled_by: None,
        reason: None,
    }
}

fn frames() {
    let (key, _) = KeyPair::generate();
    let params = BTreeMap::from([("unit".to_string(), "cups".to_string())]);
    let run = Run::signed(&key, "r-0123456789abcdef", "d-0123456789", "service-status", params, now());
    let heartbeat = Heartbeat {
        tier: Some(2),
        expires_at: Some("2026-12-01T13:00:00Z".into()),
        running_tasks: 1,
        audit_head: Some(AuditHead { seq: 7, mac: "bWFj".into() }),
        uptime_s: 60,
        version: "0.1.0".into(),
        scope: Some(GrantScope {
            operators: Some(vec!["alice".into()]),
            only: None,
            max_actions: Some(3),
            actions_used: Some(1),
        }),
        witness: None,
        trusted_operators: vec!["alice".into()],
    };
    let answers = [
        DeviceFrame::accepted("r-1", "t-0123456789abcdef"),
        DeviceFrame::output("r-1", 0, Stream::Stdout, "hello\n".into()),
        DeviceFrame::denied("r-1", support::DenyCode::NoConsent, "no live grant"),
        DeviceFrame::result("r-1", &result()),
    ];
    let to: Vec<ToRelay> = [
        ToRelay::Run(run.clone()),
        ToRelay::Heartbeat(heartbeat),
        ToRelay::Cancel { device_id: "d-0123456789".into(), request_id: "r-1".into() },
        ToRelay::ListDevices {},
    ]
    .into_iter()
    .chain(answers.iter().cloned().map(ToRelay::Answer))
    .collect();
    for (i, f) in to.iter().enumerate() {
        put("frame_to_relay", &format!("{i:02}-{}", f.kind()), protocol::encode(f));
    }
    let entry = DeviceEntry {
        device_id: "d-0123456789".into(),
        name: "laptop".into(),
        online: true,
        last_heartbeat: Some("2026-12-01T12:00:00Z".into()),
        tier: Some(1),
        expires_at: None,
        running_tasks: Some(0),
        audit_head: None,
        version: Some("0.1.0".into()),
        scope: None,
        audit_alert: None,
        public_key: Some(key.public_key().to_string()),
    };
    let from: Vec<FromRelay> = [
        FromRelay::Challenge { nonce: HELLO_NONCE.into(), version: "0.1.0".into() },
        FromRelay::HelloAck { id: "d-0123456789".into(), name: "laptop".into(), witnessed_seq: Some(3) },
        FromRelay::Error { code: RelayCode::DeviceOffline, message: "offline".into(), request_id: Some("r-1".into()) },
        FromRelay::Run(run),
        FromRelay::Cancel { request_id: "r-1".into() },
        FromRelay::Forwarded { request_id: "r-1".into() },
        FromRelay::Devices { devices: vec![entry] },
        FromRelay::Witnessed { seq: Some(3), alert: None },
    ]
    .into_iter()
    .chain(answers.into_iter().map(FromRelay::Answer))
    .collect();
    for (i, f) in from.iter().enumerate() {
        put("frame_from_relay", &format!("{i:02}"), protocol::encode(f));
    }
}

fn hellos() {
    for (role, first) in [(Role::Device, 0u8), (Role::Operator, 1u8)] {
        let (key, _) = KeyPair::generate();
        let public_key = key.public_key().to_string();
        let id = match role {
            Role::Device => key.public_key().device_id(),
            Role::Operator => key.public_key().fingerprint(),
        };
        let sig = key.sign(&protocol::hello_bytes(role, HELLO_NONCE, &id, &public_key));
        let hello = ToRelay::Hello {
            role,
            id,
            public_key,
            version: "0.1.0".into(),
            sig: base64url(&sig),
            enroll_token: (role == Role::Device).then(|| "tok-0123456789".into()),
            name: (role == Role::Device).then(|| "laptop".into()),
        };
        let mut bytes = vec![first];
        bytes.extend_from_slice(protocol::encode(&hello).as_bytes());
        put("hello", &format!("{role:?}").to_lowercase(), bytes);
    }
}

fn control_requests() {
    let p = CONTROL_PORT;
    let auth = format!("Authorization: Bearer {CONTROL_SECRET}\r\n");
    let heads = [
        ("status", format!("GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n{auth}\r\n")),
        ("task", format!("GET /v1/tasks/t-0123456789abcdef HTTP/1.1\r\nHost: localhost:{p}\r\n{auth}\r\n")),
        ("stop", format!("POST /v1/tasks/t-01/stop HTTP/1.1\r\nHost: [::1]:{p}\r\n{auth}Content-Length: 0\r\n\r\n")),
        (
            "stop-all",
            format!("POST /v1/tasks/stop HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n{auth}Content-Length: 2\r\n\r\n{{}}"),
        ),
        ("consent", format!("POST /v1/consent/changed HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n{auth}\r\n")),
        ("events", format!("GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n{auth}\r\n")),
        ("absolute", format!("GET http://127.0.0.1:{p}/v1/tasks HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n{auth}\r\n")),
        ("origin", format!("GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nOrigin: http://evil\r\n{auth}\r\n")),
        ("no-secret", format!("GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n")),
        ("two-hosts", format!("GET /v1/status HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nHost: a\r\n{auth}\r\n")),
        (
            "too-large",
            format!("POST /v1/tasks/stop HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n{auth}Content-Length: 99999999\r\n\r\n"),
        ),
    ];
    for (name, head) in heads {
        put("control_request", name, head);
    }
}

/// What the console receives from the page (`assets/app.js`) in Chromium:
/// the login link, the page, reads, the three changes, and the refusals
/// `tests/console.rs` sends; `$SID`, `$CSRF` and `$TOKEN` stand for the
/// session table's secrets (`support_fuzz::console_request`).
fn console_requests() {
    let p = CONSOLE_PORT;
    let browser = "Connection: keep-alive\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0.0.0 Safari/537.36\r\n\
                   Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-GB,en;q=0.9\r\n";
    let host = format!("Host: 127.0.0.1:{p}\r\n");
    let cookie = "Cookie: support_console=$SID\r\n";
    let read = format!("{host}{browser}Accept: */*\r\nSec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: cors\r\n{cookie}");
    let change = |path: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\n{host}{browser}Content-Length: {}\r\nContent-Type: application/json\r\n\
             X-CSRF-Token: $CSRF\r\nOrigin: http://127.0.0.1:{p}\r\nSec-Fetch-Site: same-origin\r\n{cookie}\r\n{body}",
            body.len()
        )
    };
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\n{read}\r\n");
    let seeds = [
        ("login", format!("GET /console/login?token=$TOKEN HTTP/1.1\r\n{host}{browser}Sec-Fetch-Site: none\r\n\r\n")),
        ("root", format!("GET /console HTTP/1.1\r\n{host}\r\n")),
        ("page", format!("GET /console/ HTTP/1.1\r\n{host}{browser}Accept: text/html\r\n{cookie}\r\n")),
        ("page-signed-out", format!("GET /console/ HTTP/1.1\r\n{host}\r\n")),
        ("app-js", get("/console/app.js")),
        ("app-css", get("/console/app.css")),
        ("session", get("/console/api/session")),
        ("status", get("/console/api/status")),
        ("events", get("/console/api/events").replace("Accept: */*", "Accept: text/event-stream")),
        ("audit", get("/console/api/audit")),
        ("audit-page", get("/console/api/audit?before=120&limit=50&event=action.started&operator=al%20ice")),
        ("audit-grant", get("/console/api/audit?grant=g-0123456789abcdef&limit=9999")),
        ("summary", get("/console/api/summary")),
        ("summary-grant", get("/console/api/summary?grant=g-0123456789abcdef")),
        ("allow", change("/console/api/allow", r#"{"tier":2,"minutes":30,"reason":"printer","confirm":false}"#)),
        ("allow-tier4", change("/console/api/allow", r#"{"tier":4,"minutes":480,"confirm":true}"#)),
        ("allow-unconfirmed", change("/console/api/allow", r#"{"tier":3,"minutes":10}"#)),
        ("allow-bad", change("/console/api/allow", r#"{"tier":9,"minutes":0,"x":1}"#)),
        ("revoke", change("/console/api/revoke", "{}")),
        ("stop", change("/console/api/tasks/t-0123456789abcdef/stop", "{}")),
        ("login-unknown", format!("GET /console/login?token=made-up HTTP/1.1\r\n{host}\r\n")),
        ("rebinding", get("/console/api/status").replace(&host, "Host: evil.example:41235\r\n")),
        ("two-hosts", get("/console/api/status").replace(&host, &format!("{host}{host}"))),
        ("no-cookie", get("/console/api/status").replace(cookie, "")),
        ("cross-site-read", get("/console/api/audit").replace("same-origin", "cross-site")),
        ("wrong-method", format!("POST /console/api/status HTTP/1.1\r\n{read}\r\n")),
        ("not-found", get("/console/api/nothing")),
        (
            "other-origin",
            change("/console/api/revoke", "{}").replace(&format!("http://127.0.0.1:{p}"), "http://127.0.0.1:8080"),
        ),
        ("no-origin", change("/console/api/revoke", "{}").replace(&format!("Origin: http://127.0.0.1:{p}\r\n"), "")),
        ("wrong-csrf", change("/console/api/revoke", "{}").replace("$CSRF", "$CSRFx")),
        ("no-csrf", change("/console/api/revoke", "{}").replace("X-CSRF-Token: $CSRF\r\n", "")),
        (
            "form-post",
            change("/console/api/revoke", "a=1").replace("application/json", "application/x-www-form-urlencoded"),
        ),
        (
            "other-port-cookie",
            change("/console/api/revoke", "{}")
                .replace(cookie, "Cookie: support_console=planted; support_console=$SID\r\n"),
        ),
    ];
    for (name, request) in seeds {
        put("console_request", name, request);
    }
}

fn consents() {
    let grant =
        Grant::new(Tier::new(2).expect("tier 2"), std::time::Duration::from_secs(3600), Some("printer".into()), now())
            .expect("a grant");
    put("consent", "plain", serde_json::to_vec_pretty(&grant).expect("json"));
    let scoped = grant
        .clone()
        .scoped(Some(vec!["alice".into()]), Some(vec!["service-status".into()]), Some(5))
        .expect("a scope");
    put("consent", "scoped", serde_json::to_vec(&scoped).expect("json"));
    let t4 =
        Grant::new(Tier::new(4).expect("tier 4"), std::time::Duration::from_secs(60), None, now()).expect("a grant");
    put("consent", "tier4", serde_json::to_vec(&t4).expect("json"));
}

fn policies() {
    let shipped = std::fs::read("../policy/default.toml").expect("the shipped catalogue");
    put("policy", "default", &shipped);
    put(
        "policy",
        "local",
        "[[action]]\nname = \"printer-queue\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"Lists the print queue\"\nargv = [\"lpstat\", \"-o\"]\n",
    );
}

fn trusted() {
    let (a, _) = KeyPair::generate();
    let (b, _) = KeyPair::generate();
    let text = format!(
        "[[operator]]\nname = \"alice\"\npublic_key = \"{}\"\nadded_at = \"2026-11-22T10:00:00Z\"\n\n\
         [[operator]]\nname = \"bob.smith\"\npublic_key = \"{}\"\nadded_at = \"2026-11-23T10:00:00Z\"\n",
        a.public_key(),
        b.public_key()
    );
    put("trusted_operators", "two", text);
    put("trusted_operators", "empty", "");
}

fn tasks() {
    let task = support::control_api::TaskView {
        task_id: "t-0123456789abcdef".into(),
        request_id: "r-1".into(),
        action: "service-status".into(),
        tier: 1,
        agent: false,
        params: BTreeMap::from([("unit".into(), "cups".into())]),
        operator: "alice".into(),
        grant_id: "g-0123456789abcdef".into(),
        started_at: "2026-12-01T12:00:00Z".into(),
        pid: Some(4242),
        start_ticks: Some(123_456),
        cgroup: Some("/sys/fs/cgroup/user.slice/support/t-0123456789abcdef".into()),
        boot_id: "0b9a6f0e-6f7a-4c55-9d0e-1a2b3c4d5e6f".into(),
    };
    put("tasks_json", "one", serde_json::to_vec_pretty(&vec![task]).expect("json"));
    put("tasks_json", "none", "[]\n");
}

fn audit() {
    let dir = std::env::temp_dir().join(format!("support-seeds-{}", std::process::id()));
    let paths = Paths::under(dir.join("h"));
    paths.ensure_dirs().expect("a home");
    support_fuzz::write_audit_key(&paths);
    let mut log = support::AuditLog::open(&paths).expect("a log");
    let mut granted = Record::new(Event::ConsentGranted);
    granted.tier = Some(2);
    granted.reason = Some("printer".into());
    log.append(granted).expect("a record");
    put("audit_recovery", "one", std::fs::read(paths.audit()).expect("the log"));
    let mut started = Record::new(Event::ActionStarted);
    started.action = Some("service-status".into());
    log.append_batch(vec![started, Record::new(Event::DaemonStarted)]).expect("records");
    let whole = std::fs::read(paths.audit()).expect("the log");
    put("audit_recovery", "three", &whole);
    put("audit_recovery", "torn", &whole[..whole.len() - 40]);
    put("audit_recovery", "empty", "");
    let _ = std::fs::remove_dir_all(dir);
}

fn agents() {
    for agent in ["claude", "codex", "host"] {
        let dir = Path::new("../tests/fixtures/agents").join(agent);
        let mut names: Vec<_> = std::fs::read_dir(&dir).expect("fixtures").flatten().map(|e| e.path()).collect();
        names.sort();
        for path in names.into_iter().filter(|p| p.extension().is_some_and(|e| e == "jsonl")) {
            let text = std::fs::read(&path).expect("a fixture");
            // Small seeds fuzz faster: the first 8 KiB, cut at a line end.
            let mut end = text.len().min(8 << 10);
            if end < text.len() {
                end = text[..end].iter().rposition(|&b| b == b'\n').map_or(end, |i| i + 1);
            }
            let mut seed = vec![0x40, 0x00];
            seed.extend_from_slice(&text[..end]);
            let stem = path.file_stem().expect("a name").to_string_lossy().into_owned();
            put("transcript", &format!("{agent}-{stem}"), seed);
        }
    }
}

/// `seeds [GROUP...]`: every group, or only those named.
fn main() {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let groups: [(&str, fn()); 10] = [
        ("frames", frames),
        ("hellos", hellos),
        ("control_requests", control_requests),
        ("console_requests", console_requests),
        ("consents", consents),
        ("policies", policies),
        ("trusted", trusted),
        ("tasks", tasks),
        ("audit", audit),
        ("agents", agents),
    ];
    for (name, write) in groups {
        if only.is_empty() || only.iter().any(|o| o == name) {
            write();
        }
    }
}
