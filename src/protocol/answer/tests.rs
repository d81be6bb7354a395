use std::collections::BTreeMap;

use super::*;
use crate::protocol::{Status, Stream};

/// A key pair from a fixed 32-byte seed (a PKCS#8 v1 document, RFC 8410).
fn seeded(seed: u8) -> KeyPair {
    let mut der = hex::decode("302e020100300506032b657004220420").unwrap();
    der.extend((0..32).map(|i| seed.wrapping_add(i)));
    KeyPair::from_pkcs8(&der).unwrap()
}

fn run_for(device: &KeyPair, operator: &KeyPair, request_id: &str, nonce: &str) -> Run {
    let mut run = Run {
        request_id: request_id.into(),
        device_id: device.public_key().device_id(),
        action: "disk-usage".into(),
        params: BTreeMap::new(),
        issued_at: "2026-12-01T10:00:00.000Z".into(),
        nonce: nonce.into(),
        operator: operator.public_key().to_string(),
        sig: String::new(),
    };
    run.sign(operator);
    run
}

fn accepted(r: &str) -> DeviceFrame {
    DeviceFrame::Accepted {
        request_id: r.into(),
        task_id: "t-0123456789abcdef".into(),
        index: 0,
        dropped: 0,
        sig: String::new(),
    }
}

fn output(r: &str, seq: u64, data: &str) -> DeviceFrame {
    DeviceFrame::Output {
        request_id: r.into(),
        seq,
        stream: Stream::Stdout,
        data: data.into(),
        index: 0,
        dropped: 0,
        sig: String::new(),
    }
}

fn result(r: &str, text: &str) -> DeviceFrame {
    DeviceFrame::Result {
        request_id: r.into(),
        status: Status::Ok,
        exit_code: Some(0),
        duration_ms: 12,
        truncated: false,
        output_sha256: hex::encode(sha256(text.as_bytes())),
        output_bytes: text.len() as u64,
        cancelled_by: None,
        reason: None,
        index: 0,
        dropped: 0,
        sig: String::new(),
    }
}

/// The device's signed answers to `run`: accepted, one output per chunk, result.
fn answers(device: &KeyPair, run: &Run, chunks: &[&str]) -> Vec<DeviceFrame> {
    let mut chain = Chain::new(&device.public_key().device_id(), run);
    let r = run.request_id.as_str();
    let mut frames = vec![accepted(r)];
    frames.extend(chunks.iter().enumerate().map(|(i, c)| output(r, i as u64, c)));
    frames.push(result(r, &chunks.concat()));
    for f in &mut frames {
        chain.sign(device, f);
    }
    frames
}

fn check_all(key: PublicKey, run: &Run, frames: &[DeviceFrame]) -> Result<(), AnswerError> {
    let mut check = AnswerCheck::new(key, run);
    frames.iter().try_for_each(|f| check.check(f))
}

#[test]
fn honest_answers_verify_and_survive_the_wire() {
    let (device, operator) = (seeded(1), seeded(100));
    let run = run_for(&device, &operator, "r-1", "00112233445566778899aabbccddeeff");
    let frames = answers(&device, &run, &["one\n", "two\n"]);
    // Through JSON and back, as the relay carries them.
    let wire: Vec<DeviceFrame> =
        frames.iter().map(|f| serde_json::from_str(&crate::protocol::encode(f)).unwrap()).collect();
    assert_eq!(wire, frames);
    assert_eq!(check_all(device.public_key(), &run, &wire), Ok(()));
    assert_eq!(frames.iter().map(|f| f.proof().0).collect::<Vec<_>>(), [0, 1, 2, 3]);
}

#[test]
fn every_forgery_names_the_check_that_failed() {
    let (device, operator, other) = (seeded(1), seeded(100), seeded(50));
    let run = run_for(&device, &operator, "r-1", "00112233445566778899aabbccddeeff");
    let frames = answers(&device, &run, &["one\n", "two\n"]);
    let key = device.public_key();
    let sig_fail =
        |index| AnswerError::Signature { index, request_id: "r-1".into(), device_id: device.public_key().device_id() };
    // A byte of output altered.
    let mut altered = frames.clone();
    if let DeviceFrame::Output { data, .. } = &mut altered[1] {
        *data = "onE\n".into();
    }
    assert_eq!(check_all(key, &run, &altered), Err(sig_fail(1)));
    // A frame dropped; two swapped.
    let dropped = [&frames[..1], &frames[2..]].concat();
    assert_eq!(
        check_all(key, &run, &dropped),
        Err(AnswerError::Order { request_id: "r-1".into(), expected: 1, got: 2 })
    );
    let mut swapped = frames.clone();
    swapped.swap(1, 2);
    assert_eq!(
        check_all(key, &run, &swapped),
        Err(AnswerError::Order { request_id: "r-1".into(), expected: 1, got: 2 })
    );
    // The result of another request (another nonce), relabelled as this one's.
    let earlier = run_for(&device, &operator, "r-0", "ffeeddccbbaa99887766554433221100");
    let mut replayed = answers(&device, &earlier, &["one\n", "two\n"]);
    for f in &mut replayed {
        if let DeviceFrame::Result { request_id, .. } = f {
            *request_id = "r-1".into();
        }
    }
    let spliced = [&frames[..3], &replayed[3..]].concat();
    assert_eq!(check_all(key, &run, &spliced), Err(sig_fail(3)));
    // The same command answered by another device, or checked with another key.
    let theirs = answers(&other, &run, &["one\n", "two\n"]);
    assert_eq!(check_all(key, &run, &theirs), Err(sig_fail(0)));
    assert_eq!(check_all(other.public_key(), &run, &frames), Err(sig_fail(0)));
    // Unsigned.
    let mut unsigned = frames.clone();
    unsigned[0] = accepted("r-1");
    assert_eq!(check_all(key, &run, &unsigned), Err(sig_fail(0)));
    // A chain for another command (the relay altered the run on the way).
    let mut altered_run = run.clone();
    altered_run.action = "journal-tail".into();
    let for_altered = answers(&device, &altered_run, &["one\n"]);
    assert_eq!(check_all(key, &run, &for_altered), Err(sig_fail(0)));
}

#[test]
fn the_result_must_describe_the_output_unless_the_device_said_it_left_some_out() {
    let (device, operator) = (seeded(1), seeded(100));
    let run = run_for(&device, &operator, "r-1", "00112233445566778899aabbccddeeff");
    let id = device.public_key().device_id();
    let signed = |chain: &mut Chain, mut f: DeviceFrame| {
        chain.sign(&device, &mut f);
        f
    };
    // The device signs a result that does not match what it sent.
    let mut chain = Chain::new(&id, &run);
    let lying = vec![
        signed(&mut chain, accepted("r-1")),
        signed(&mut chain, output("r-1", 0, "one\n")),
        signed(&mut chain, result("r-1", "one\ntwo\n")),
    ];
    let err = check_all(device.public_key(), &run, &lying).unwrap_err();
    assert!(matches!(err, AnswerError::Output { .. }), "{err}");
    assert!(err.to_string().contains("8 bytes") && err.to_string().contains("4 bytes"), "{err}");
    // Output left out by the device's full queue, said under its signature.
    let mut chain = Chain::new(&id, &run);
    let mut frames = vec![signed(&mut chain, accepted("r-1")), signed(&mut chain, output("r-1", 0, "one\n"))];
    chain.left_out();
    frames.push(signed(&mut chain, result("r-1", "one\ntwo\n")));
    assert_eq!(frames[2].proof().1, 1);
    let mut check = AnswerCheck::new(device.public_key(), &run);
    frames.iter().try_for_each(|f| check.check(f)).unwrap();
    assert_eq!(check.dropped(), 1);
    // Output before accepted; anything after the end.
    let mut chain = Chain::new(&id, &run);
    let early = vec![signed(&mut chain, output("r-1", 0, "x"))];
    let err = check_all(device.public_key(), &run, &early).unwrap_err();
    assert!(matches!(err, AnswerError::Sequence { index: 0, kind: "output", .. }), "{err}");
    let mut chain = Chain::new(&id, &run);
    let late = vec![
        signed(&mut chain, accepted("r-1")),
        signed(&mut chain, result("r-1", "")),
        signed(&mut chain, output("r-1", 0, "x")),
    ];
    let err = check_all(device.public_key(), &run, &late).unwrap_err();
    assert!(matches!(err, AnswerError::Sequence { index: 2, .. }), "{err}");
}

#[test]
fn the_key_must_derive_the_device_id_asked_for() {
    let (a, b) = (seeded(1), seeded(2));
    let id = a.public_key().device_id();
    assert_eq!(device_key(&id, Some(&a.public_key().to_string())), Ok(a.public_key()));
    for (given, why) in [
        (None, "is missing".to_string()),
        (Some("ed25519:nope".to_string()), "does not parse".into()),
        (Some(b.public_key().to_string()), format!("derives device id {}", b.public_key().device_id())),
    ] {
        let err = device_key(&id, given.as_deref()).unwrap_err().to_string();
        assert!(err.contains(&id) && err.contains(&why), "{err}");
    }
}

/// The worked example in docs/PROTOCOL.md, computed here: every value the
/// document shows must be what this code produces.
#[test]
fn the_worked_example_in_protocol_md_is_what_the_code_signs() {
    let doc = include_str!("../../../docs/PROTOCOL.md");
    let (device, operator) = (seeded(1), seeded(100));
    let run = run_for(&device, &operator, "r-0123456789abcdef", "00112233445566778899aabbccddeeff");
    let frames = answers(&device, &run, &["hi\n"]);
    let id = device.public_key().device_id();
    let answer0 = answer_bytes(&id, &run.request_id, &run.nonce, 0, 0, &run_digest(&run), &frames[0].content());
    let answer1 = answer_bytes(&id, &run.request_id, &run.nonce, 1, 0, &sha256(&answer0), &frames[1].content());
    let values = [
        ("run on the wire", crate::protocol::encode(&crate::protocol::FromRelay::Run(run.clone()))),
        ("answer 0 on the wire", crate::protocol::encode(&frames[0])),
        ("device key", device.public_key().to_string()),
        ("device id", id.clone()),
        ("run digest", hex::encode(run_digest(&run))),
        ("answer 1 prev", hex::encode(sha256(&answer0))),
        ("answer 1 signed bytes (text)", String::from_utf8(answer1.clone()).unwrap()),
        ("answer 1 signed bytes (hex)", wrap_hex(&answer1)),
        ("answer 1 on the wire", crate::protocol::encode(&frames[1])),
    ];
    let mut missing = Vec::new();
    for (what, value) in &values {
        if !doc.contains(value.as_str()) {
            missing.push(format!("--- {what}:\n{value}"));
        }
    }
    assert!(missing.is_empty(), "docs/PROTOCOL.md lacks:\n{}", missing.join("\n"));
    assert_eq!(check_all(device.public_key(), &run, &frames), Ok(()));
}

/// Hex in lines of 64 digits (32 bytes), as the document shows it.
fn wrap_hex(bytes: &[u8]) -> String {
    bytes.chunks(32).map(hex::encode).collect::<Vec<_>>().join("\n")
}

/// Output that was not UTF-8 travels with U+FFFD in place of the bad
/// bytes, and the device's `result` hashes the bytes as they were: the
/// check takes that result, and says no answer was left out.
#[test]
fn a_result_over_output_that_was_not_utf8_is_taken_and_nothing_is_called_left_out() {
    let (device, operator) = (seeded(1), seeded(100));
    let run = run_for(&device, &operator, "r-1", "00112233445566778899aabbccddeeff");
    let id = device.public_key().device_id();
    let raw = b"ok \xff\n";
    let mut frames = vec![accepted("r-1"), output("r-1", 0, &String::from_utf8_lossy(raw)), output("r-1", 1, "more\n")];
    let mut last = result("r-1", "");
    if let DeviceFrame::Result { output_sha256, output_bytes, .. } = &mut last {
        let all = [raw as &[u8], b"more\n"].concat();
        (*output_sha256, *output_bytes) = (hex::encode(sha256(&all)), all.len() as u64);
    }
    frames.push(last);
    let mut chain = Chain::new(&id, &run);
    frames.iter_mut().for_each(|f| chain.sign(&device, f));
    let mut check = AnswerCheck::new(device.public_key(), &run);
    frames.iter().try_for_each(|f| check.check(f)).unwrap();
    assert_eq!(check.dropped(), 0);
    let honest = answers(&device, &run, &["one\n"]);
    let mut check = AnswerCheck::new(device.public_key(), &run);
    honest.iter().try_for_each(|f| check.check(f)).unwrap();
    assert_eq!(check.dropped(), 0, "an honest chain leaves nothing out");
}
