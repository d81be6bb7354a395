//! An interactive session's operator frames (`input`, `resize`): how they
//! are made, signed and checked.
//!
//! A session is an accepted `run` of the `shell` action without `cmd`
//! (docs/PROTOCOL.md, "Interactive sessions"). What the pty writes comes
//! back as the device's `terminal` answers, signed and chained like every
//! answer ([`super::answer`]). What the operator types and its window size
//! go the other way, in [`SessionInput`] frames that the operator key
//! signs over
//!
//! ```text
//! "support-input-v1\n"
//!   || JSON{device_id, request_id, nonce, seq}
//!   || "\n"
//!   || the frame's JSON without sig
//! ```
//!
//! (compact JSON, fields in that order; `nonce` is the signed `run`'s, so a
//! frame is bound to one session of one device, and `seq` counts 0, 1, ...
//! over both kinds). The device takes a frame only if it verifies with the
//! key that signed the session's `run`, names that session, and carries
//! exactly the next `seq` ([`InputCheck`]); any other frame is refused and
//! changes nothing, so a replayed, reordered, altered or foreign frame
//! never reaches the shell and the frames after it still do.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

use super::Run;
use crate::identity::{KeyPair, PublicKey};

/// The context that starts the signed bytes of a [`SessionInput`].
pub const INPUT_CONTEXT: &[u8] = b"support-input-v1\n";

/// The most bytes of keystrokes in one `input` frame (before base64).
pub const MAX_INPUT_BYTES: usize = 4096;

/// The largest window side, in cells, a `resize` (or a session's start) may give.
pub const MAX_CELLS: u16 = 1000;

/// An operator's frame about its running session, for the device it names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SessionInput {
    /// Bytes typed, for the pty's input, as they are (raw mode: Ctrl-C is 0x03).
    Input {
        /// The device running the session.
        device_id: String,
        /// The session's request.
        request_id: String,
        /// 0, 1, ... per session, over `input` and `resize` together.
        seq: u64,
        /// The bytes, base64 (standard, padded); at most [`MAX_INPUT_BYTES`] decoded.
        data: String,
        /// The operator key's Ed25519 signature over [`input_bytes`], base64url.
        sig: String,
    },
    /// The operator's window has a new size.
    Resize {
        /// The device running the session.
        device_id: String,
        /// The session's request.
        request_id: String,
        /// As for `input`.
        seq: u64,
        /// Columns, 1 to [`MAX_CELLS`].
        cols: u16,
        /// Rows, 1 to [`MAX_CELLS`].
        rows: u16,
        /// As for `input`.
        sig: String,
    },
}

/// What a checked frame asks of the pty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keys {
    /// Write these bytes to the pty.
    Data(Vec<u8>),
    /// Set the pty's window size.
    Size {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
}

#[derive(Serialize)]
struct Header<'a> {
    device_id: &'a str,
    request_id: &'a str,
    nonce: &'a str,
    seq: u64,
}

/// The bytes a [`SessionInput`]'s signature covers (see the module docs);
/// `content` is the frame's JSON without `sig`.
pub fn input_bytes(device_id: &str, request_id: &str, nonce: &str, seq: u64, content: &[u8]) -> Vec<u8> {
    let mut out = INPUT_CONTEXT.to_vec();
    serde_json::to_writer(&mut out, &Header { device_id, request_id, nonce, seq }).expect("plain data serializes");
    out.push(b'\n');
    out.extend_from_slice(content);
    out
}

impl SessionInput {
    /// The device it is for.
    pub fn device_id(&self) -> &str {
        match self {
            SessionInput::Input { device_id, .. } | SessionInput::Resize { device_id, .. } => device_id,
        }
    }

    /// The session's request.
    pub fn request_id(&self) -> &str {
        match self {
            SessionInput::Input { request_id, .. } | SessionInput::Resize { request_id, .. } => request_id,
        }
    }

    /// Its `seq`.
    pub fn seq(&self) -> u64 {
        match self {
            SessionInput::Input { seq, .. } | SessionInput::Resize { seq, .. } => *seq,
        }
    }

    /// The frame's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            SessionInput::Input { .. } => "input",
            SessionInput::Resize { .. } => "resize",
        }
    }

    fn sig_mut(&mut self) -> &mut String {
        match self {
            SessionInput::Input { sig, .. } | SessionInput::Resize { sig, .. } => sig,
        }
    }

    fn sig(&self) -> &str {
        match self {
            SessionInput::Input { sig, .. } | SessionInput::Resize { sig, .. } => sig,
        }
    }

    /// Its JSON without `sig`: what the signature covers after the header.
    pub fn content(&self) -> Vec<u8> {
        let mut bare = self.clone();
        bare.sig_mut().clear();
        serde_json::to_vec(&bare).expect("frames are plain data and always serialize")
    }

    /// Signs `keys` as frame `seq` of the session `run` (which `key` signed).
    pub fn signed(key: &KeyPair, run: &Run, seq: u64, keys: &Keys) -> SessionInput {
        let (device_id, request_id) = (run.device_id.clone(), run.request_id.clone());
        let mut frame = match keys {
            Keys::Data(bytes) => {
                SessionInput::Input { device_id, request_id, seq, data: STANDARD.encode(bytes), sig: String::new() }
            }
            Keys::Size { cols, rows } => {
                SessionInput::Resize { device_id, request_id, seq, cols: *cols, rows: *rows, sig: String::new() }
            }
        };
        let bytes = input_bytes(&run.device_id, &run.request_id, &run.nonce, seq, &frame.content());
        *frame.sig_mut() = URL_SAFE_NO_PAD.encode(key.sign(&bytes));
        frame
    }
}

/// Why an operator's session frame was refused. Each message names the
/// check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// For another device or session.
    #[error("`{kind}` frame for {what}, not this session")]
    Foreign {
        /// The frame's type.
        kind: &'static str,
        /// What it names instead.
        what: String,
    },
    /// Missing or not verifying with the key that signed the session's `run`.
    #[error("`{kind}` frame {seq}: the signature does not verify with the session's operator key")]
    Signature {
        /// The frame's type.
        kind: &'static str,
        /// Its seq.
        seq: u64,
    },
    /// Not the next in the session (replayed, reordered or after a dropped one).
    #[error("`{kind}` frame {got}: frame {expected} is due (replayed, reordered or one was dropped)")]
    Order {
        /// The frame's type.
        kind: &'static str,
        /// The seq due.
        expected: u64,
        /// The seq received.
        got: u64,
    },
    /// Signed, but its content breaks a limit.
    #[error("`{kind}` frame {seq}: {why}")]
    Content {
        /// The frame's type.
        kind: &'static str,
        /// Its seq.
        seq: u64,
        /// What is wrong.
        why: String,
    },
}

/// The device's side: checks each operator frame of one session in turn.
#[derive(Debug)]
pub struct InputCheck {
    key: PublicKey,
    device_id: String,
    request_id: String,
    nonce: String,
    next: u64,
}

impl InputCheck {
    /// A check of the frames of the session `run` (verified already) on the device `device_id`.
    ///
    /// # Errors
    /// When `run.operator` is not a public key (the gate has checked it, so never in practice).
    pub fn new(device_id: &str, run: &Run) -> Result<InputCheck, String> {
        let key: PublicKey = run.operator.parse().map_err(|e| format!("the run's operator key: {e}"))?;
        Ok(InputCheck {
            key,
            device_id: device_id.into(),
            request_id: run.request_id.clone(),
            nonce: run.nonce.clone(),
            next: 0,
        })
    }

    /// Checks `frame`: its session, signature, place and limits. Only a
    /// frame that passes moves the check on to the next `seq`.
    ///
    /// # Errors
    /// The first check that failed ([`InputError`]); the check is unchanged.
    pub fn check(&mut self, frame: &SessionInput) -> Result<Keys, InputError> {
        let (kind, seq) = (frame.kind(), frame.seq());
        if frame.device_id() != self.device_id || frame.request_id() != self.request_id {
            let what = format!(
                "device {} request {}",
                crate::text::safe_id(frame.device_id()),
                crate::text::safe_id(frame.request_id())
            );
            return Err(InputError::Foreign { kind, what });
        }
        let bytes = input_bytes(&self.device_id, &self.request_id, &self.nonce, seq, &frame.content());
        let sig = URL_SAFE_NO_PAD.decode(frame.sig()).map_err(|_| InputError::Signature { kind, seq })?;
        self.key.verify(&bytes, &sig).map_err(|_| InputError::Signature { kind, seq })?;
        if seq != self.next {
            return Err(InputError::Order { kind, expected: self.next, got: seq });
        }
        let content = |why: String| InputError::Content { kind, seq, why };
        let keys = match frame {
            SessionInput::Input { data, .. } => {
                let bytes = STANDARD.decode(data).map_err(|_| content("data is not base64".into()))?;
                if bytes.len() > MAX_INPUT_BYTES {
                    return Err(content(format!("over {MAX_INPUT_BYTES} bytes")));
                }
                Keys::Data(bytes)
            }
            SessionInput::Resize { cols, rows, .. } => {
                if !(1..=MAX_CELLS).contains(cols) || !(1..=MAX_CELLS).contains(rows) {
                    return Err(content(format!("{cols}x{rows} is outside 1 to {MAX_CELLS}")));
                }
                Keys::Size { cols: *cols, rows: *rows }
            }
        };
        self.next += 1;
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn session(key: &KeyPair) -> Run {
        Run::signed(key, "r-1", "d-dev", "shell", BTreeMap::new(), chrono::Utc::now())
    }

    #[test]
    fn frames_in_order_pass_and_every_forgery_is_refused_without_moving_the_check() {
        let key = KeyPair::generate().0;
        let run = session(&key);
        let mut check = InputCheck::new("d-dev", &run).unwrap();
        let f0 = SessionInput::signed(&key, &run, 0, &Keys::Data(b"ls\r".to_vec()));
        let f1 = SessionInput::signed(&key, &run, 1, &Keys::Size { cols: 100, rows: 40 });
        // Reordered: frame 1 before frame 0.
        assert!(matches!(check.check(&f1), Err(InputError::Order { expected: 0, got: 1, .. })));
        assert_eq!(check.check(&f0), Ok(Keys::Data(b"ls\r".to_vec())));
        // Replayed.
        assert!(matches!(check.check(&f0), Err(InputError::Order { expected: 1, got: 0, .. })));
        // Altered.
        let mut altered = f1.clone();
        if let SessionInput::Resize { cols, .. } = &mut altered {
            *cols = 101;
        }
        assert!(matches!(check.check(&altered), Err(InputError::Signature { .. })));
        // Foreign: another operator's key, another session's nonce, another device.
        let other = KeyPair::generate().0;
        assert!(matches!(
            check.check(&SessionInput::signed(&other, &run, 1, &Keys::Data(vec![1]))),
            Err(InputError::Signature { .. })
        ));
        let mut again = run.clone();
        again.nonce = "0123456789abcdef0123".into();
        assert!(matches!(
            check.check(&SessionInput::signed(&key, &again, 1, &Keys::Data(vec![1]))),
            Err(InputError::Signature { .. })
        ));
        let mut elsewhere = run.clone();
        elsewhere.device_id = "d-other".into();
        assert!(matches!(
            check.check(&SessionInput::signed(&key, &elsewhere, 1, &Keys::Data(vec![1]))),
            Err(InputError::Foreign { .. })
        ));
        // None of that moved it: frame 1 still passes.
        assert_eq!(check.check(&f1), Ok(Keys::Size { cols: 100, rows: 40 }));
        // A signed frame past a limit is refused too.
        let big = SessionInput::signed(&key, &run, 2, &Keys::Data(vec![b'x'; MAX_INPUT_BYTES + 1]));
        assert!(matches!(check.check(&big), Err(InputError::Content { .. })));
        let zero = SessionInput::signed(&key, &run, 2, &Keys::Size { cols: 0, rows: 10 });
        assert!(matches!(check.check(&zero), Err(InputError::Content { .. })));
    }

    #[test]
    fn terminal_answers_are_chained_and_a_relay_that_alters_one_is_caught() {
        use super::super::answer::{AnswerCheck, AnswerError, Chain};
        use super::super::{DeviceFrame, TaskResult};
        let (operator, device) = (KeyPair::generate().0, KeyPair::generate().0);
        let device_id = device.public_key().device_id();
        let run = Run::signed(&operator, "r-1", &device_id, "shell", BTreeMap::new(), chrono::Utc::now());
        let mut chain = Chain::new(&device_id, &run);
        let mut signed = |mut f: DeviceFrame| {
            chain.sign(&device, &mut f);
            f
        };
        let accepted = signed(DeviceFrame::accepted("r-1", "t-1"));
        let out = signed(DeviceFrame::terminal("r-1", 0, b"\x1b[1mhi\xff\r\n"));
        let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, b"\x1b[1mhi\xff\r\n"));
        let result = TaskResult {
            status: crate::Status::Failed,
            exit_code: Some(3),
            duration_ms: 5,
            truncated: false,
            output_bytes: 9,
            output_sha256: digest,
            cancelled_by: None,
            reason: None,
        };
        let end = signed(DeviceFrame::result("r-1", &result));
        let mut honest = AnswerCheck::new(device.public_key(), &run);
        for f in [&accepted, &out, &end] {
            honest.check(f).unwrap();
        }
        // One byte of the pty's output changed on the way.
        let mut altered = out.clone();
        if let DeviceFrame::Terminal { data, .. } = &mut altered {
            *data = base64::engine::general_purpose::STANDARD.encode(b"\x1b[1mhI\xff\r\n");
        }
        let mut check = AnswerCheck::new(device.public_key(), &run);
        check.check(&accepted).unwrap();
        assert!(matches!(check.check(&altered), Err(AnswerError::Signature { index: 1, .. })));
        // Left out: the result no longer follows.
        let mut check = AnswerCheck::new(device.public_key(), &run);
        check.check(&accepted).unwrap();
        assert!(matches!(check.check(&end), Err(AnswerError::Order { expected: 1, got: 2, .. })));
    }

    #[test]
    fn the_wire_form_is_one_tagged_object() {
        let key = KeyPair::generate().0;
        let run = session(&key);
        let f = SessionInput::signed(&key, &run, 0, &Keys::Data(b"a".to_vec()));
        let text = super::super::encode(&super::super::ToRelay::Session(f.clone()));
        assert!(
            text.starts_with(r#"{"type":"input","device_id":"d-dev","request_id":"r-1","seq":0,"data":"YQ==","#),
            "{text}"
        );
        assert_eq!(
            super::super::decode::<super::super::FromRelay>(&text).unwrap(),
            super::super::FromRelay::Session(f)
        );
    }
}
