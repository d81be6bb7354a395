use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;

use super::*;
use crate::KeyPair;

#[test]
fn the_signature_covers_every_field_but_itself() {
    let (key, _) = KeyPair::generate();
    let params = BTreeMap::from([("unit".to_string(), "cups".to_string())]);
    let run = Run::signed(&key, "r1", "d-00", "service-status", params, Utc::now());
    let verifies = |r: &Run| {
        let sig = URL_SAFE_NO_PAD.decode(&r.sig).unwrap();
        key.public_key().verify(&r.signed_bytes(), &sig).is_ok()
    };
    assert!(verifies(&run));
    let bytes = run.signed_bytes();
    assert!(bytes.starts_with(RUN_CONTEXT));
    assert!(!String::from_utf8_lossy(&bytes).contains(&run.sig));
    type Change = Box<dyn Fn(&mut Run)>;
    let changes: Vec<Change> = vec![
        Box::new(|r| r.request_id.push('x')),
        Box::new(|r| r.device_id.push('x')),
        Box::new(|r| r.action.push('x')),
        Box::new(|r| {
            r.params.insert("unit".into(), "sshd".into());
        }),
        Box::new(|r| {
            r.params.insert("lines".into(), "5".into());
        }),
        Box::new(|r| r.issued_at.push('x')),
        Box::new(|r| r.nonce.push('x')),
        Box::new(|r| r.operator.push('x')),
    ];
    for change in changes {
        let mut altered = run.clone();
        change(&mut altered);
        assert!(!verifies(&altered), "{altered:?}");
    }
}

#[test]
fn frames_reject_unknown_fields_and_types() {
    let ok = r#"{"type":"denied","request_id":"r","code":"NO_CONSENT","message":"m"}"#;
    assert!(matches!(serde_json::from_str::<DeviceFrame>(ok), Ok(DeviceFrame::Denied { .. })));
    let extra = r#"{"type":"denied","request_id":"r","code":"NO_CONSENT","message":"m","x":1}"#;
    assert!(serde_json::from_str::<DeviceFrame>(extra).is_err());
    assert!(serde_json::from_str::<DeviceFrame>(r#"{"type":"exec","request_id":"r"}"#).is_err());
    let result = DeviceFrame::result(
        "r",
        &TaskResult {
            status: Status::Cancelled,
            exit_code: None,
            duration_ms: 5,
            truncated: false,
            output_bytes: 0,
            output_sha256: String::new(),
            cancelled_by: Some(StoppedBy::TierLowered),
            reason: None,
        },
    );
    let text = serde_json::to_string(&result).unwrap();
    assert!(text.contains(r#""cancelled_by":"tier_lowered""#), "{text}");
    assert_eq!(serde_json::from_str::<DeviceFrame>(&text).unwrap(), result);
}

#[test]
fn direction_enums_carry_device_answers_and_refuse_strangers() {
    let denied = r#"{"type":"denied","request_id":"r","code":"NO_CONSENT","message":"m"}"#;
    assert!(matches!(decode::<ToRelay>(denied), Ok(ToRelay::Answer(DeviceFrame::Denied { .. }))));
    assert!(matches!(decode::<FromRelay>(denied), Ok(FromRelay::Answer(DeviceFrame::Denied { .. }))));
    let bad = [
        r#"{"type":"denied","request_id":"r","code":"NO_CONSENT","message":"m","x":1}"#,
        r#"{"type":"exec","cmd":"sh"}"#,
        r#"{"type":"list_devices","all":true}"#,
        r#"{"type":"cancel","device_id":"d","request_id":"r","extra":1}"#,
        r#"{"type":"run"}"#,
        r#"not json"#,
        r#"[1,2]"#,
        r#"{"request_id":"r"}"#,
    ];
    for text in bad {
        assert!(matches!(decode::<ToRelay>(text), Err(FrameError::Malformed(_))), "{text}");
    }
    let (key, _) = KeyPair::generate();
    let run = Run::signed(&key, "r1", "d-00", "disk-usage", BTreeMap::new(), Utc::now());
    let text = encode(&ToRelay::Run(run.clone()));
    assert_eq!(decode::<ToRelay>(&text).unwrap(), ToRelay::Run(run.clone()));
    let extra = text.replacen('{', r#"{"shell":"rm -rf /","#, 1);
    assert!(decode::<ToRelay>(&extra).is_err(), "{extra}");
    assert_eq!(decode::<FromRelay>(&encode(&FromRelay::Run(run.clone()))).unwrap(), FromRelay::Run(run.clone()));
    for frame in [ToRelay::Run(run), ToRelay::ListDevices {}, decode::<ToRelay>(denied).unwrap()] {
        assert!(encode(&frame).starts_with(&format!(r#"{{"type":"{}""#, frame.kind())), "{frame:?}");
    }
    let big = format!(r#"{{"type":"list_devices","pad":"{}"}}"#, "x".repeat(MAX_FRAME_BYTES));
    assert!(matches!(decode::<ToRelay>(&big), Err(FrameError::TooLarge(_))));
}

#[test]
fn hello_signatures_are_bound_to_role_nonce_and_key() {
    let (key, _) = KeyPair::generate();
    let pk = key.public_key().to_string();
    let id = key.public_key().device_id();
    let sig = key.sign(&hello_bytes(Role::Device, "n1", &id, &pk));
    let ok = |role, nonce: &str| key.public_key().verify(&hello_bytes(role, nonce, &id, &pk), &sig).is_ok();
    assert!(ok(Role::Device, "n1"));
    assert!(!ok(Role::Operator, "n1"));
    assert!(!ok(Role::Device, "n2"));
}

/// docs/PROTOCOL.md section 4's `hello` bytes, built here from the
/// strings of its example: each part on a line of its own (no part can
/// run into the next), the role's context first, no newline at the end.
#[test]
fn hello_bytes_are_the_documented_lines() {
    let doc = include_str!("../../docs/PROTOCOL.md");
    let (nonce, id, pk) = (
        "7a7c3d5fe44817f6cb25fa8d8a4e35c7b6a8e2ca6a4fdaa6ee1a4faae76c04dc",
        "SHA256:wyrVmJB7qOeBhKGyDd9eT6nDNabzTZ/9PzhzbVade5c",
        "ed25519:AIwgGtZml7ZTWA9V9BTXhoz6af_uLZBgoFQxuD3UyFc",
    );
    let operator = String::from_utf8(hello_bytes(Role::Operator, nonce, id, pk)).unwrap();
    assert!(doc.contains(&format!("```\n{operator}\n```")), "docs/PROTOCOL.md lacks:\n{operator}");
    let device = hello_bytes(Role::Device, nonce, id, pk);
    assert_eq!(device, [b"support-hello-device-v1\n" as &[u8], &operator.as_bytes()[26..]].concat());
}

/// One version for the paths and every signed context: bumping one
/// without the others would make `support version` lie.
#[test]
fn the_protocol_version_is_the_one_in_the_paths_and_the_signed_contexts() {
    let v = format!("v{PROTOCOL_VERSION}");
    for role in [Role::Device, Role::Operator] {
        assert!(role.path().starts_with(&format!("/{v}/")), "{}", role.path());
    }
    for context in [RUN_CONTEXT, answer::ANSWER_CONTEXT, session::INPUT_CONTEXT] {
        assert!(context.ends_with(format!("-{v}\n").as_bytes()), "{}", String::from_utf8_lossy(context));
    }
}
