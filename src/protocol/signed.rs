//! The exact bytes that are signed: an operator's `run`, and a peer's
//! `hello`. Each starts with a context string of its own, so that no
//! signature can pass as another kind.
//!
//! # The signed bytes of `run`
//!
//! ```text
//! "support-run-v1\n" || JSON{request_id, device_id, action, params, issued_at, nonce, operator}
//! ```
//!
//! The JSON is compact (no spaces), with the fields in exactly that order
//! and `params` keys sorted bytewise (a JSON object of strings). Every
//! field but `sig` is covered, so a signed command cannot be replayed
//! against another device, action, parameter or time. The context string
//! keeps a `run` signature from ever verifying as any other message.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Role, Run};
use crate::identity::KeyPair;

/// The context that starts the signed bytes of a [`Run`].
pub const RUN_CONTEXT: &[u8] = b"support-run-v1\n";

#[derive(Serialize)]
struct Unsigned<'a> {
    request_id: &'a str,
    device_id: &'a str,
    action: &'a str,
    params: &'a BTreeMap<String, String>,
    issued_at: &'a str,
    nonce: &'a str,
    operator: &'a str,
}

impl Run {
    /// A command signed by `key`, issued at `issued_at`, with a fresh nonce.
    pub fn signed(
        key: &KeyPair,
        request_id: &str,
        device_id: &str,
        action: &str,
        params: BTreeMap<String, String>,
        issued_at: DateTime<Utc>,
    ) -> Run {
        let mut run = Run {
            request_id: request_id.into(),
            device_id: device_id.into(),
            action: action.into(),
            params,
            issued_at: crate::time::rfc3339_millis(issued_at),
            nonce: crate::random_hex(16),
            operator: key.public_key().to_string(),
            sig: String::new(),
        };
        run.sign(key);
        run
    }

    /// (Re)computes `sig` over the current fields.
    pub fn sign(&mut self, key: &KeyPair) {
        self.sig = URL_SAFE_NO_PAD.encode(key.sign(&self.signed_bytes()));
    }

    /// The bytes the signature covers (see the module docs).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = Unsigned {
            request_id: &self.request_id,
            device_id: &self.device_id,
            action: &self.action,
            params: &self.params,
            issued_at: &self.issued_at,
            nonce: &self.nonce,
            operator: &self.operator,
        };
        let mut out = RUN_CONTEXT.to_vec();
        serde_json::to_writer(&mut out, &unsigned).expect("strings always serialize");
        out
    }
}

impl Role {
    /// The context that starts the signed bytes of this role's `hello`.
    pub fn hello_context(self) -> &'static [u8] {
        match self {
            Role::Device => b"support-hello-device-v1\n",
            Role::Operator => b"support-hello-operator-v1\n",
        }
    }
}

/// The bytes a peer signs to answer `challenge {nonce}`:
/// `context || nonce || "\n" || id || "\n" || public_key`.
///
/// The nonce is fresh per connection, so a `hello` cannot be replayed on
/// another; the role's context keeps a device's proof from passing as an
/// operator's, and neither can pass as a `run` signature.
pub fn hello_bytes(role: Role, nonce: &str, id: &str, public_key: &str) -> Vec<u8> {
    let mut out = role.hello_context().to_vec();
    for (i, part) in [nonce, id, public_key].into_iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        out.extend_from_slice(part.as_bytes());
    }
    out
}
