//! A relay that misbehaves on purpose (the man in the middle of
//! `common/mitm.rs`, between the real `support operator` and the real
//! relay) alters, drops, reorders, replays, splices and substitutes what
//! the devices and the relay say to one-shot commands. Each time the
//! operator must exit 1, name the check that failed, and print nothing of
//! the forged answer.

mod common;
#[path = "common/mitm.rs"]
mod mitm;

use std::sync::{Arc, Mutex};

use common::net::{Device, Relay};
use common::{Run, bin};
use mitm::{Mitm, Sends, Tamper};
use serde_json::Value;

/// What the man in the middle does to the frames of one connection.
#[derive(Clone, Debug, PartialEq)]
enum Mode {
    /// Passes everything; keeps each request's `result` frame.
    Honest,
    /// Changes a byte of the first output.
    AlterByte,
    /// Leaves out the first output.
    DropOutput,
    /// Sends the second output before the first.
    SwapOutputs,
    /// Answers with the `result` of an earlier request, relabelled.
    ReplayResult,
    /// Sends the run to device `B` instead: its answers come back to the operator.
    OtherDevice { from: String, to: String },
    /// Hands over device `to`'s key as device `of`'s.
    SubstituteKey { of: String, key: String },
    /// Drops the run and says the device is offline.
    LieOffline,
    /// Lets the run run, hides every answer to it, sends the same run
    /// again and passes on only the device's (signed) `REPLAY` denial.
    Redeliver,
}

#[derive(Default)]
struct Shared {
    mode: Option<Mode>,
    /// The `result` frames seen in honest mode, as they came.
    results: Vec<Value>,
}

/// One connection's tamperer: the mode as the connection opened.
struct Forger {
    mode: Mode,
    shared: Arc<Mutex<Shared>>,
    held: Option<Value>,
    sent_run: Option<Value>,
    outputs: u32,
}

impl Tamper for Forger {
    fn on_operator(&mut self, mut v: Value) -> Sends {
        if v["type"] == "run" {
            match &self.mode {
                Mode::OtherDevice { from, to } if v["device_id"] == from.as_str() => {
                    v["device_id"] = to.as_str().into()
                }
                Mode::LieOffline => {
                    return Sends::down(
                        serde_json::json!({"type": "error", "code": "DEVICE_OFFLINE", "message": "the device is gone", "request_id": v["request_id"]}),
                    );
                }
                _ => {}
            }
            self.sent_run = Some(v.clone());
        }
        Sends::up(v)
    }

    fn on_relay(&mut self, mut v: Value) -> Sends {
        let mut out = Sends::none();
        match (&self.mode, v["type"].as_str().unwrap_or("")) {
            (Mode::Honest, "result") => {
                self.shared.lock().unwrap().results.push(v.clone());
                out.down.push(v);
            }
            (Mode::AlterByte, "output") if self.outputs == 0 => {
                self.outputs += 1;
                v["data"] = v["data"].as_str().unwrap().replace("one", "onE").into();
                out.down.push(v);
            }
            (Mode::DropOutput, "output") if self.outputs == 0 => self.outputs += 1,
            (Mode::SwapOutputs, "output") if self.outputs == 0 => {
                self.outputs += 1;
                self.held = Some(v);
            }
            (Mode::SwapOutputs, "output") if self.outputs == 1 => {
                self.outputs += 1;
                out.down.push(v);
                out.down.extend(self.held.take());
            }
            (Mode::ReplayResult, "result") => {
                let mut old = self.shared.lock().unwrap().results.first().cloned().expect("an honest result first");
                old["request_id"] = v["request_id"].clone();
                out.down.push(old);
            }
            (Mode::Redeliver, "accepted" | "output") => {}
            (Mode::Redeliver, "result") => out.up.push(self.sent_run.take().expect("the run went up first")),
            (Mode::SubstituteKey { of, key }, "devices") => {
                for d in v["devices"].as_array_mut().unwrap() {
                    if d["device_id"] == of.as_str() {
                        d["public_key"] = key.as_str().into();
                    }
                }
                out.down.push(v);
            }
            _ => out.down.push(v),
        }
        out
    }
}

/// The man in the middle, and the mode its next connection takes.
struct Forgery {
    mitm: Mitm,
    shared: Arc<Mutex<Shared>>,
}

impl Forgery {
    async fn start(relay: Arc<Relay>) -> Forgery {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = shared.clone();
        let mitm = Mitm::start(relay, move || {
            let mode = state.lock().unwrap().mode.clone().unwrap_or(Mode::Honest);
            Box::new(Forger { mode, shared: state.clone(), held: None, sent_run: None, outputs: 0 })
        })
        .await;
        Forgery { mitm, shared }
    }

    fn mode(&self, mode: Mode) {
        self.shared.lock().unwrap().mode = Some(mode);
    }

    /// `support operator ARGS` through the man in the middle.
    fn operator(&self, key: &std::path::Path, args: &[&str]) -> Run {
        Run::from(self.mitm.operator_cli(key, args).output().unwrap())
    }
}

/// One output line, then (after a pause, so that it is a frame of its own) another.
const TWO_LINES: &str = "echo one; sleep 0.3; echo two";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_forges_answers_is_caught_and_nothing_forged_is_shown() {
    let relay = Relay::start("127.0.0.1:0");
    let (key, key_path) = relay.operator("desk");
    let (a, b) = tokio::task::block_in_place(|| {
        let devices = [Device::enrolled(&relay), Device::enrolled(&relay)];
        for d in &devices {
            d.trust("desk", &key);
            d.allow(4);
        }
        let [a, b] = devices;
        (a, b)
    });
    let relay = Arc::new(relay);
    let mitm = Forgery::start(relay.clone()).await;
    let shell = |mode: Mode| {
        mitm.mode(mode);
        tokio::task::block_in_place(|| mitm.operator(&key_path, &["shell", &a.device_id, "--", TWO_LINES]))
    };

    // An honest relay (through the man in the middle, passing all) still works.
    let honest = shell(Mode::Honest);
    honest.code(0);
    assert_eq!(honest.stdout, "one\ntwo\n", "{}", honest.stderr);

    let forged = |r: &Run, check: &str, not_shown: &[&str]| {
        r.code(1).says(check);
        for text in not_shown {
            assert!(
                !r.stdout.contains(text) && !r.stderr.contains(text),
                "{text:?} was shown:\n{}\n{}",
                r.stdout,
                r.stderr
            );
        }
    };
    // A byte of output altered: answer 1 (the first output) fails its signature.
    let r = shell(Mode::AlterByte);
    forged(&r, "answer 1 of request", &["onE", "two"]);
    r.says(&format!("the signature does not verify with the device key of {}", a.device_id));
    // A frame dropped; two swapped.
    let r = shell(Mode::DropOutput);
    forged(&r, "expected answer 1, got answer 2", &["two"]);
    let r = shell(Mode::SwapOutputs);
    forged(&r, "expected answer 1, got answer 2", &["two"]);
    // The result of an earlier request, relabelled as this one's.
    let r = shell(Mode::ReplayResult);
    forged(&r, "answer 3 of request", &[" · "]);
    r.says("the signature does not verify");
    assert!(r.stdout.starts_with("one\ntwo\n"), "verified output is shown: {}", r.stdout);
    // The run sent to device B: B's (signed) denial is not A's answer.
    let r = shell(Mode::OtherDevice { from: a.device_id.clone(), to: b.device_id.clone() });
    forged(&r, "answer 0 of request", &["BAD_SIGNATURE", "denied"]);
    r.says(&format!("device key of {}", a.device_id));
    // B's key handed over as A's: refused before anything is sent, and in the device list.
    let b_key = tokio::task::block_in_place(|| device_key_of(&relay, &b.device_id));
    let substitute = Mode::SubstituteKey { of: a.device_id.clone(), key: b_key };
    let r = shell(substitute.clone());
    forged(&r, &format!("the key the relay handed over for device {}", a.device_id), &["one"]);
    r.says(&format!("derives device id {}", b.device_id));
    mitm.mode(substitute);
    let r = tokio::task::block_in_place(|| mitm.operator(&key_path, &["devices"]));
    r.code(1).says(&format!("derives device id {}", b.device_id));
    // The command run, its answers hidden, and delivered again: the device's
    // signed REPLAY is not shown as "nothing ran" (exit 4) but as a doubt (exit 1).
    let r = shell(Mode::Redeliver);
    r.code(1).says("denied: REPLAY").says("the device got it more than once");
    assert!(!r.stdout.contains("one"), "{}", r.stdout);
    // The relay's own refusal is shown as the relay's.
    let r = shell(Mode::LieOffline);
    r.code(3).says("relay error (not from the device): DEVICE_OFFLINE");
}

/// The public key the relay pinned for `device_id`.
fn device_key_of(relay: &Relay, device_id: &str) -> String {
    let list = relay.admin(&["devices", "--json"]).code(0).json();
    let entry = list.as_array().unwrap().iter().find(|d| d["device_id"] == device_id).unwrap().clone();
    entry["public_key"].as_str().unwrap().to_string()
}

/// Regression (issue 12, item 5): escape sequences in device output
/// reached the operator's terminal raw whenever stdout was not a tty at
/// the moment (a pipe into `less -R`, a log `cat` later). Now output is
/// printable everywhere, as on the owner's side, unless `--raw`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_output_is_printable_unless_raw() {
    let relay = Relay::start("127.0.0.1:0");
    let (key, key_path) = relay.operator("desk");
    let device = tokio::task::block_in_place(|| {
        let d = Device::enrolled(&relay);
        d.trust("desk", &key);
        d.allow(4);
        d
    });
    let shell = |extra: &[&str]| {
        let mut c = std::process::Command::new(bin());
        c.args(["operator", "--relay", &relay.url(), "--relay-fingerprint", &relay.fingerprint, "--key"]);
        c.arg(&key_path).args(["shell", &device.device_id]).args(extra);
        c.args(["--", r"printf 'a\033]0;owned\007b\033[2J\tc\n'; printf 'e\033[31mrr\n' >&2"]);
        tokio::task::block_in_place(|| Run::from(c.output().unwrap()))
    };
    let r = shell(&[]);
    r.code(0);
    assert_eq!(r.stdout, "a?]0;owned?b?[2J\tc\n");
    assert!(r.stderr.contains("e?[31mrr\n") && !r.stderr.contains('\x1b'), "{}", r.stderr);
    let r = shell(&["--raw"]);
    r.code(0);
    assert_eq!(r.stdout, "a\x1b]0;owned\x07b\x1b[2J\tc\n");
    assert!(r.stderr.contains("e\x1b[31mrr\n"), "{}", r.stderr);
}
