//! The device's answers ([`DeviceFrame`]): how they are made, and the
//! device's signature on them, so that the relay cannot alter, drop,
//! reorder, replay, splice or forge what an operator is shown.
//!
//! # The signed bytes of an answer
//!
//! Every frame a device sends about a request (`accepted`, `output`,
//! `result`, `denied`) carries `index` (its place: 0, 1, ... per request),
//! `dropped` (answers the device left out since it signed the previous one,
//! normally 0) and
//! `sig`, the device key's Ed25519 signature over
//!
//! ```text
//! "support-answer-v1\n"
//!   || JSON{device_id, request_id, nonce, index, dropped, prev}
//!   || "\n"
//!   || the frame's JSON without index, dropped and sig
//! ```
//!
//! Both JSON texts are compact (no spaces) with the fields in exactly the
//! order given (the frame's as [`DeviceFrame`] declares them, `type`
//! first), as serde_json writes them. `index` and `dropped` are numbers;
//! `nonce` is the signed `run`'s; `prev` is 64 lowercase hex digits: the
//! SHA-256 of the previous answer's signed bytes, and for answer 0 the
//! SHA-256 of the run's own signed bytes ([`Run::signed_bytes`]), which
//! ties the first answer to the exact command the operator signed.
//!
//! So a signature covers the device (its key, and its id in the bytes),
//! the command (request id, nonce, run digest), the answer's place and
//! everything before it (the chain of digests), and the answer itself.
//! The context string keeps it from passing as a `run` or `hello`
//! signature. An answer is signed when the link actually sends it, so the
//! answers an operator receives are consecutive even when the offline
//! queue had to drop output; the next answer sent says how many in
//! `dropped`, under the signature.
//!
//! docs/PROTOCOL.md has a worked example, checked by this module's tests.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest::{Context, SHA256, digest};
use serde::Serialize;

use super::{DenyCode, DeviceFrame, Run, Stream, TaskResult};
use crate::identity::{KeyPair, PublicKey};

/// The context that starts the signed bytes of an answer.
pub const ANSWER_CONTEXT: &[u8] = b"support-answer-v1\n";

#[derive(Serialize)]
struct Header<'a> {
    device_id: &'a str,
    request_id: &'a str,
    nonce: &'a str,
    index: u64,
    dropped: u64,
    prev: &'a str,
}

/// The bytes an answer's signature covers (see the module docs): the
/// context, the header JSON, a newline, then `content` (the frame's JSON
/// without `index`, `dropped` and `sig`).
pub fn answer_bytes(
    device_id: &str,
    request_id: &str,
    nonce: &str,
    index: u64,
    dropped: u64,
    prev: &[u8; 32],
    content: &[u8],
) -> Vec<u8> {
    let prev = hex::encode(prev);
    let header = Header { device_id, request_id, nonce, index, dropped, prev: &prev };
    let mut out = Vec::with_capacity(ANSWER_CONTEXT.len() + 200 + content.len());
    out.extend_from_slice(ANSWER_CONTEXT);
    serde_json::to_writer(&mut out, &header).expect("strings and numbers always serialize");
    out.push(b'\n');
    out.extend_from_slice(content);
    out
}

/// The SHA-256 of `run`'s signed bytes: what answer 0 names as `prev`.
pub fn run_digest(run: &Run) -> [u8; 32] {
    sha256(&run.signed_bytes())
}

/// Whether a count is 0: `index` and `dropped` are left out of the JSON then.
pub(super) fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    digest(&SHA256, bytes).as_ref().try_into().expect("SHA-256 is 32 bytes")
}

impl DeviceFrame {
    /// An `accepted` frame, not yet signed (the link signs it when it sends it).
    pub fn accepted(request_id: &str, task_id: &str) -> DeviceFrame {
        DeviceFrame::Accepted {
            request_id: request_id.into(),
            task_id: task_id.into(),
            index: 0,
            dropped: 0,
            sig: String::new(),
        }
    }

    /// An `output` frame, not yet signed.
    pub fn output(request_id: &str, seq: u64, stream: Stream, data: String) -> DeviceFrame {
        DeviceFrame::Output {
            request_id: request_id.into(),
            seq,
            stream,
            data,
            index: 0,
            dropped: 0,
            sig: String::new(),
        }
    }

    /// A `terminal` frame of `bytes`, not yet signed.
    pub fn terminal(request_id: &str, seq: u64, bytes: &[u8]) -> DeviceFrame {
        DeviceFrame::Terminal {
            request_id: request_id.into(),
            seq,
            data: base64::engine::general_purpose::STANDARD.encode(bytes),
            index: 0,
            dropped: 0,
            sig: String::new(),
        }
    }

    /// A `denied` frame, not yet signed.
    pub fn denied(request_id: &str, code: DenyCode, message: &str) -> DeviceFrame {
        DeviceFrame::Denied {
            request_id: request_id.into(),
            code,
            message: message.into(),
            index: 0,
            dropped: 0,
            sig: String::new(),
        }
    }

    /// The `result` frame for `result`, not yet signed.
    pub fn result(request_id: &str, result: &TaskResult) -> DeviceFrame {
        DeviceFrame::Result {
            request_id: request_id.into(),
            status: result.status,
            exit_code: result.exit_code,
            duration_ms: result.duration_ms,
            truncated: result.truncated,
            output_sha256: result.output_sha256.clone(),
            output_bytes: result.output_bytes,
            cancelled_by: result.cancelled_by,
            reason: result.reason.clone(),
            index: 0,
            dropped: 0,
            sig: String::new(),
        }
    }

    /// The request this frame answers.
    pub fn request_id(&self) -> &str {
        match self {
            DeviceFrame::Accepted { request_id, .. }
            | DeviceFrame::Output { request_id, .. }
            | DeviceFrame::Terminal { request_id, .. }
            | DeviceFrame::Result { request_id, .. }
            | DeviceFrame::Denied { request_id, .. } => request_id,
        }
    }

    /// The frame's `type`, e.g. `output`.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceFrame::Accepted { .. } => "accepted",
            DeviceFrame::Output { .. } => "output",
            DeviceFrame::Terminal { .. } => "terminal",
            DeviceFrame::Result { .. } => "result",
            DeviceFrame::Denied { .. } => "denied",
        }
    }

    /// Its `index`, `dropped` and `sig`.
    pub fn proof(&self) -> (u64, u64, &str) {
        match self {
            DeviceFrame::Accepted { index, dropped, sig, .. }
            | DeviceFrame::Output { index, dropped, sig, .. }
            | DeviceFrame::Terminal { index, dropped, sig, .. }
            | DeviceFrame::Result { index, dropped, sig, .. }
            | DeviceFrame::Denied { index, dropped, sig, .. } => (*index, *dropped, sig),
        }
    }

    fn proof_mut(&mut self) -> (&mut u64, &mut u64, &mut String) {
        match self {
            DeviceFrame::Accepted { index, dropped, sig, .. }
            | DeviceFrame::Output { index, dropped, sig, .. }
            | DeviceFrame::Terminal { index, dropped, sig, .. }
            | DeviceFrame::Result { index, dropped, sig, .. }
            | DeviceFrame::Denied { index, dropped, sig, .. } => (index, dropped, sig),
        }
    }

    /// The frame's canonical content: its JSON without `index`, `dropped`
    /// and `sig` (those three are left out of the JSON when zero or empty).
    pub fn content(&self) -> Vec<u8> {
        let mut bare = self.clone();
        let (index, dropped, sig) = bare.proof_mut();
        (*index, *dropped) = (0, 0);
        sig.clear();
        serde_json::to_vec(&bare).expect("frames are plain data and always serialize")
    }
}

/// The device's side of one request's answers: what the next one is
/// signed over. Made from the `run` as the device received it.
#[derive(Debug)]
pub struct Chain {
    device_id: String,
    request_id: String,
    nonce: String,
    next: u64,
    prev: [u8; 32],
    dropped: u64,
}

impl Chain {
    /// The chain of the answers to `run`, on the device `device_id`.
    pub fn new(device_id: &str, run: &Run) -> Chain {
        Chain {
            device_id: device_id.into(),
            request_id: run.request_id.clone(),
            nonce: run.nonce.clone(),
            next: 0,
            prev: run_digest(run),
            dropped: 0,
        }
    }

    /// An answer was left out (never signed): the next one signed says so.
    pub fn left_out(&mut self) {
        self.dropped += 1;
    }

    /// Signs `frame` as the next answer: sets its `index`, `dropped` and `sig`.
    pub fn sign(&mut self, key: &KeyPair, frame: &mut DeviceFrame) {
        let content = frame.content();
        let bytes =
            answer_bytes(&self.device_id, &self.request_id, &self.nonce, self.next, self.dropped, &self.prev, &content);
        let (index, dropped, sig) = frame.proof_mut();
        (*index, *dropped) = (self.next, self.dropped);
        *sig = URL_SAFE_NO_PAD.encode(key.sign(&bytes));
        self.prev = sha256(&bytes);
        self.next += 1;
        self.dropped = 0;
    }
}

/// Why an answer (or the key to check it with) was not accepted. Each
/// message names the check that failed and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerError {
    /// The relay handed over no usable key for the device, or one that
    /// does not derive the device id asked for.
    #[error("the key the relay handed over for device {device_id} {why}; it cannot be the device's key")]
    Key {
        /// The device id asked for.
        device_id: String,
        /// What is wrong with the key.
        why: String,
    },
    /// The signature is missing or does not verify.
    #[error("answer {index} of request {request_id}: the signature does not verify with the device key of {device_id}")]
    Signature {
        /// The answer's place.
        index: u64,
        /// The request followed.
        request_id: String,
        /// The device asked.
        device_id: String,
    },
    /// An answer out of place.
    #[error(
        "request {request_id}: expected answer {expected}, got answer {got} (an answer was dropped, reordered or repeated on the way)"
    )]
    Order {
        /// The request followed.
        request_id: String,
        /// The index due.
        expected: u64,
        /// The index received.
        got: u64,
    },
    /// A signed answer where none of its kind may come.
    #[error("answer {index} of request {request_id} is `{kind}`, but {expected}")]
    Sequence {
        /// The request followed.
        request_id: String,
        /// The answer's place.
        index: u64,
        /// Its type.
        kind: &'static str,
        /// What was due.
        expected: &'static str,
    },
    /// The `result` does not describe the output received.
    #[error("result of request {request_id}: the device says {said}, but the output received is {got}")]
    Output {
        /// The request followed.
        request_id: String,
        /// The result's `output_bytes` and `output_sha256`.
        said: String,
        /// The same of what arrived.
        got: String,
    },
}

/// The device key for `device_id`, from `public_key` as the relay handed
/// it over, checked to derive that id ([`PublicKey::device_id`]).
///
/// # Errors
/// [`AnswerError::Key`] when it is missing, does not parse, or derives another id.
pub fn device_key(device_id: &str, public_key: Option<&str>) -> Result<PublicKey, AnswerError> {
    let refuse = |why: String| AnswerError::Key { device_id: device_id.into(), why };
    let text = public_key.ok_or_else(|| refuse("is missing".into()))?;
    let key: PublicKey = text.parse().map_err(|e| refuse(format!("does not parse ({e})")))?;
    let derived = key.device_id();
    if derived != device_id {
        return Err(refuse(format!("({key}) derives device id {derived}")));
    }
    Ok(key)
}

/// Where a request's answers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing yet: `accepted` or `denied` is due.
    Start,
    /// Accepted: `output` or `result` is due.
    Running,
    /// `result` or `denied` came: nothing more.
    Done,
}

/// The operator's side: checks each answer to one `run` in turn against
/// the device key, and the `result` against the output received.
pub struct AnswerCheck {
    key: PublicKey,
    device_id: String,
    request_id: String,
    nonce: String,
    next: u64,
    prev: [u8; 32],
    phase: Phase,
    received: u64,
    digest: Context,
    dropped: u64,
    replaced: bool,
}

impl AnswerCheck {
    /// A check of the answers to `run` (as the operator signed it), with
    /// the device's key (see [`device_key`]).
    pub fn new(key: PublicKey, run: &Run) -> AnswerCheck {
        AnswerCheck {
            key,
            device_id: run.device_id.clone(),
            request_id: run.request_id.clone(),
            nonce: run.nonce.clone(),
            next: 0,
            prev: run_digest(run),
            phase: Phase::Start,
            received: 0,
            digest: Context::new(&SHA256),
            dropped: 0,
            replaced: false,
        }
    }

    /// Answers the device said it left out so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Checks the next answer: its request, place, signature, kind, and
    /// for a `result` that it describes the output received (unless the
    /// device said it left output out, or the output held bytes that were
    /// not UTF-8, which the device sends as U+FFFD and hashes as they were).
    ///
    /// # Errors
    /// The first check that failed; the chain is then broken for good.
    pub fn check(&mut self, frame: &DeviceFrame) -> Result<(), AnswerError> {
        let (index, dropped, sig) = frame.proof();
        let request_id = self.request_id.clone();
        if frame.request_id() != request_id {
            // Only signed bytes could say which request it is; they do below.
            return Err(self.bad_signature(index));
        }
        if index != self.next {
            return Err(AnswerError::Order { request_id, expected: self.next, got: index });
        }
        let bytes =
            answer_bytes(&self.device_id, &self.request_id, &self.nonce, index, dropped, &self.prev, &frame.content());
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| self.bad_signature(index))?;
        self.key.verify(&bytes, &sig).map_err(|_| self.bad_signature(index))?;
        self.dropped += dropped;
        let sequence =
            |expected| AnswerError::Sequence { request_id: request_id.clone(), index, kind: frame.kind(), expected };
        self.phase = match (self.phase, frame) {
            (Phase::Start, DeviceFrame::Accepted { .. }) => Phase::Running,
            (Phase::Start, DeviceFrame::Denied { .. }) => Phase::Done,
            (Phase::Start, _) => return Err(sequence("the first answer must be `accepted` or `denied`")),
            (Phase::Running, DeviceFrame::Output { data, .. }) => {
                self.received += data.len() as u64;
                self.digest.update(data.as_bytes());
                self.replaced |= data.contains('\u{FFFD}');
                Phase::Running
            }
            (Phase::Running, DeviceFrame::Terminal { data, .. }) => {
                // Checked as signed; the digest is of the bytes the pty wrote.
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .map_err(|_| sequence("a `terminal` answer's data must be base64"))?;
                self.received += bytes.len() as u64;
                self.digest.update(&bytes);
                Phase::Running
            }
            (Phase::Running, DeviceFrame::Result { output_bytes, output_sha256, .. }) => {
                let got = hex::encode(self.digest.clone().finish());
                if (*output_bytes, output_sha256.as_str()) != (self.received, got.as_str())
                    && self.dropped == 0
                    && !self.replaced
                {
                    return Err(AnswerError::Output {
                        request_id,
                        said: format!("{output_bytes} bytes with SHA-256 {}", crate::text::brief(output_sha256)),
                        got: format!("{} bytes with SHA-256 {got}", self.received),
                    });
                }
                Phase::Done
            }
            (Phase::Running, _) => {
                return Err(sequence("after `accepted` only `output`, `terminal` or `result` may come"));
            }
            (Phase::Done, _) => return Err(sequence("the request had already ended")),
        };
        self.prev = sha256(&bytes);
        self.next += 1;
        Ok(())
    }

    fn bad_signature(&self, index: u64) -> AnswerError {
        AnswerError::Signature { index, request_id: self.request_id.clone(), device_id: self.device_id.clone() }
    }
}

#[cfg(test)]
mod tests;
