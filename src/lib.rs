//! `support`: a consent-gated remote support agent.
//!
//! The owner of a machine grants a support team a tier of actions for a
//! while (`support allow --tier 2 --minutes 60`); the daemon runs only
//! catalogued actions within that grant, and every step is written to a
//! hash-chained audit log before it runs. `../shared/DESIGN.md` is the
//! contract; README.md is the user's guide; SECURITY.md the threat model.
//!
//! # Layout
//!
//! - [`paths`]: where every file lives; safe create/open (modes, no links, owner check).
//! - [`consent`]: the grant: tiers, read/write/remove, expiry; `consent_change`: the owner's
//!   grant and revocation with their records, one path for the CLI and the console.
//! - [`policy`]: the action catalogue: load, validate, render argv from typed params.
//! - [`audit`]: the hash-chained audit log: append, verify, recover, list, prove a witnessed head.
//! - [`identity`]: Ed25519 key pairs, public keys, fingerprints, device ids, signatures.
//! - [`protocol`]: every relay frame, both directions; the signed bytes (`run`, `hello`, the device's
//!   answers, with the chain that checks them; an interactive session's operator frames); size
//!   limits; the audit witness's frames.
//! - [`daemon`]: admitting a command (the gate, then register, then launch), the replay cache, a running task, the executor, how
//!   its commands' ends add up to a result (with a reason), and
//!   the tree kill, consent enforcement (supervised), audit-record building, unverified denials counted, its
//!   files, the agent host client, the escalation guard's evidence, the loopback control API (TCP and
//!   `control.sock`), the relay link: one file each (see its docs).
//! - [`relay`]: the relay server: HTTP and upgrade, hello, the hub, sessions, presence, admin socket, metrics,
//!   registry, the audit witness.
//! - [`tls`]: rustls configs: the relay's certificate, clients pinning the relay.
//! - [`dial`]: a client's connection to the relay (daemon link and operator).
//! - [`operator`]: the operator client: devices (each key checked against its id), run (every answer
//!   checked against the device key), cancel.
//! - [`transcript`]: a task's output as lines for people, agent JSON summarised; the digest (daemon and operator).
//! - [`trust`]: the operators the owner trusts.
//! - [`clock`]: the daemon's wall and monotonic clocks, one seam a test can step.
//! - [`recording`]: interactive sessions as asciicast v2 files: the writer (0600, capped, digest), a bounded
//!   reader, the listing, retention.
//! - [`summary`]: what ran under a grant, from its span of the audit log (`support summary`).
//! - [`control_api`]: the loopback control API's requests and answers, typed; the daemon and the CLI share them.
//! - `text`: making untrusted text printable (terminal, table, record); `time`: RFC 3339, the one format of every instant (wire, files, and people: `time::human`).
//! - [`Secret`]: a secret string whose `Debug` and `Display` print `***`.
//! - `cli`: one module per subcommand; [`cli::Cli`] is the parsed command line.
//! - [`Error`]: what every command returns; `main` maps it to an exit code
//!   and prints it with [`ErrorChain`], each cause once.
//!
//! `consent`, `policy`, `audit`, `identity`, `trust` and `daemon::gate` do no network I/O.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod cli;
pub mod clock;
pub mod consent;
mod consent_change;
pub mod control_api;
pub mod daemon;
pub mod dial;
mod error;
pub mod identity;
pub mod operator;
pub mod paths;
pub mod policy;
pub mod protocol;
pub mod recording;
pub mod relay;
mod secret;
pub mod summary;
mod text;
mod time;
pub mod tls;
pub mod transcript;
pub mod trust;

pub use audit::{AuditError, AuditLog, Event, Record};
pub use clock::Clock;
pub use consent::{Consent, Grant, Off, Tier};
pub use daemon::{Daemon, DaemonError};
pub use error::{Error, ErrorChain};
pub use identity::{KeyPair, PublicKey};
pub use paths::{FileError, Paths};
pub use policy::{Action, Catalogue, ParamError, PolicyError};
pub use protocol::{DenyCode, DeviceFrame, Run, Status, StoppedBy, TaskResult};
pub use secret::Secret;
pub use trust::TrustError;

use ring::rand::SecureRandom;

/// Fills `buf` from the operating system's random source.
///
/// # Panics
/// Only if the kernel's random source fails (`getrandom`), in which case
/// no secret, key or id could be made safely anyway.
pub(crate) fn fill_random(buf: &mut [u8]) {
    ring::rand::SystemRandom::new().fill(buf).expect("the OS random source (getrandom) failed");
}

/// Resolves when `stop` turns true (or its sender is gone): every spawned
/// task selects on it wherever it can block.
pub(crate) async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Locks `m`, taking the data even if a holder panicked: every lock here
/// guards plain data that a panic cannot leave half-changed in a way that matters.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `n` random bytes as lowercase hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    fill_random(&mut buf);
    hex::encode(buf)
}
