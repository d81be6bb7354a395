//! The challenge and `hello`: how a device or operator proves its key,
//! and how a device enrolls.
//!
//! The relay sends `challenge {nonce}`; the peer answers `hello` with its
//! id, public key and an Ed25519 signature over the nonce and a
//! role-specific context ([`protocol::hello_bytes`]). An operator's key
//! must be registered by the relay's admin (`support relay add-operator`);
//! a device's id must be pinned to its key, or it brings a live one-time
//! token and is pinned now.

use base64::Engine as _;
use chrono::Utc;

use super::hub::Hub;
use super::registry::{self, Enroll};
use crate::identity::PublicKey;
use crate::protocol::{self, FromRelay, RelayCode, Role, ToRelay};

/// Who passed `hello`.
pub(crate) struct Who {
    /// The device id, or the operator key's fingerprint.
    pub(crate) id: String,
    /// The device's enrolled name, or the operator's registered name.
    pub(crate) name: String,
    /// The proven public key (`ed25519:…`).
    pub(crate) key: String,
}

/// A failed `hello`: the metric's reason, and the code and message sent.
#[derive(Debug)]
pub struct Refusal(pub &'static str, pub RelayCode, pub String);

/// A `hello` whose signature verifies over the nonce for its role, and
/// whose id belongs to its key; the registry is not consulted yet.
#[derive(Debug)]
pub struct Proven {
    /// The device id, or the operator key's fingerprint.
    pub id: String,
    /// The proven key, `ed25519:…` as [`PublicKey`] prints it.
    pub public_key: String,
    /// A device's one-time enrollment token, if it brought one.
    pub enroll_token: Option<String>,
    /// A device's host name as it said it (not yet made printable).
    pub name: Option<String>,
}

const NOT_ENROLLED: &str = "this device is not enrolled: start the daemon with --enroll TOKEN";
const BAD_TOKEN: &str = "the enrollment token is unknown, used or expired";
const OTHER_KEY: &str = "this device id is pinned to another key";
const CANNOT_WRITE: &str = "the relay cannot write its registry";

/// The first frame of every WebSocket, with a fresh nonce.
pub(crate) fn challenge() -> (String, FromRelay) {
    let nonce = crate::random_hex(32);
    (nonce.clone(), FromRelay::Challenge { nonce, version: env!("CARGO_PKG_VERSION").into() })
}

fn unauthorized(message: &str) -> Refusal {
    Refusal("unauthorized", RelayCode::Unauthorized, message.to_string())
}

/// Decodes the `hello` in `text` (one frame within [`protocol::MAX_HELLO_BYTES`]
/// as the socket read it) sent on the `role` endpoint, and checks its
/// signature over `nonce` ([`protocol::hello_bytes`]) and that its id is
/// its key's (an operator's fingerprint, a device's id). No I/O.
///
/// # Errors
/// `bad_hello` / `BAD_FRAME` for anything but a `hello` of this role;
/// `unauthorized` / `UNAUTHORIZED` for a key, signature or id that fails.
pub fn prove_hello(role: Role, nonce: &str, text: &str) -> Result<Proven, Refusal> {
    let bad = |m: String| Refusal("bad_hello", RelayCode::BadFrame, m);
    let frame = protocol::decode::<ToRelay>(text).map_err(|e| bad(e.to_string()))?;
    let ToRelay::Hello { role: said, id, public_key, sig, enroll_token, name, .. } = frame else {
        return Err(bad("the first frame must be hello".into()));
    };
    if said != role {
        return Err(bad(format!("hello says {said:?} on the {} endpoint", role.path())));
    }
    let key: PublicKey = public_key.parse().map_err(|_| unauthorized("malformed public key"))?;
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&sig)
        .map_err(|_| unauthorized("malformed signature"))?;
    key.verify(&protocol::hello_bytes(role, nonce, &id, &public_key), &sig)
        .map_err(|_| unauthorized("the hello signature does not verify"))?;
    match role {
        Role::Operator if id != key.fingerprint() => Err(unauthorized("an operator's id is its key's fingerprint")),
        Role::Device if id != key.device_id() => Err(unauthorized("the device id does not belong to this key")),
        _ => Ok(Proven { id, public_key: key.to_string(), enroll_token, name }),
    }
}

/// Checks the `hello` in `text` against the `nonce` sent on the `role`
/// endpoint ([`prove_hello`]), then against the registry, enrolling a new
/// device whose token is live.
pub(crate) async fn authenticate(hub: &Hub, role: Role, nonce: &str, text: &str) -> Result<Who, Refusal> {
    let Proven { id, public_key, enroll_token, name } = prove_hello(role, nonce, text)?;
    match role {
        Role::Operator => {
            let registry = hub.registry();
            let name = registry.0.operator_named(&public_key).ok_or_else(|| {
                unauthorized("this operator key is not registered on the relay (support relay add-operator NAME KEY)")
            })?;
            Ok(Who { id, name: name.to_string(), key: public_key })
        }
        Role::Device => {
            if let Some(d) = hub.registry().0.devices.get(&id) {
                return if d.public_key == public_key {
                    Ok(Who { id, name: d.name.clone(), key: public_key })
                } else {
                    Err(unauthorized(OTHER_KEY))
                };
            }
            enroll(hub, id, public_key, name, enroll_token).await
        }
    }
}

/// Pins a device that is not in the registry yet, if its token is live.
async fn enroll(
    hub: &Hub,
    id: String,
    public_key: String,
    name: Option<String>,
    token: Option<String>,
) -> Result<Who, Refusal> {
    // Only a live token may touch the registry on disk: a stranger's
    // hello is refused from the cached copy (re-read when the file changes).
    let now = Utc::now();
    let live = token
        .as_deref()
        .map(registry::token_hash)
        .is_some_and(|hash| hub.registry().0.tokens.iter().any(|t| t.sha256 == hash && t.is_live(now)));
    if !live {
        return Err(unauthorized(if token.is_none() { NOT_ENROLLED } else { BAD_TOKEN }));
    }
    let name = crate::text::display_name(name.as_deref().unwrap_or(""), 64, "unnamed");
    let outcome = match hub.store.enroll(&id, &public_key, &name, token.as_deref()).await {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::error!(error = %crate::ErrorChain(&e), "cannot enroll");
            return Err(unauthorized(CANNOT_WRITE));
        }
    };
    match outcome {
        Enroll::Pinned => {
            tracing::info!(device_id = %id, name = %name, "device enrolled");
            Ok(Who { id, name, key: public_key })
        }
        Enroll::Known => Ok(Who { id, name, key: public_key }),
        Enroll::OtherKey => Err(unauthorized(OTHER_KEY)),
        Enroll::BadToken if token.is_none() => Err(unauthorized(NOT_ENROLLED)),
        Enroll::BadToken => Err(unauthorized(BAD_TOKEN)),
    }
}
