//! The listings and look-ups of `support relay …` admin commands:
//! `operators`, `tokens`, and a device named by id or name.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::print_json;
use super::table::{Listing, Wrap};
use crate::Error;
use crate::identity::PublicKey;
use crate::relay::registry::Registry;
use crate::text::printable;

/// The id of the enrolled device `given` names (its id, or its unique
/// name) in `registry`.
///
/// # Errors
/// As [`super::device_name::resolve`].
pub(crate) fn resolve_enrolled(registry: &Registry, given: &str) -> Result<String, Error> {
    super::device_name::resolve(given, registry.devices.iter().map(|(id, d)| (id.as_str(), d.name.as_str()))).map_err(
        |e| match e {
            Error::Usage(m) => Error::Usage(m.replace("support operator devices", "support relay devices")),
            e => e,
        },
    )
}

/// One operator as `relay operators --json` shows it.
#[derive(Serialize)]
struct OperatorView<'a> {
    name: &'a str,
    public_key: &'a str,
    /// `SHA256:…`, as `operator keygen` prints it; `null` for a key that does not parse.
    fingerprint: Option<String>,
    added_at: &'a str,
}

/// `support relay operators [--json]`.
///
/// # Errors
/// [`Error::Stdout`] when stdout cannot be written.
pub(crate) fn print_operators(registry: &Registry, json: bool) -> Result<ExitCode, Error> {
    let views: Vec<OperatorView> = registry
        .operators
        .iter()
        .map(|(name, o)| OperatorView {
            name,
            public_key: &o.public_key,
            fingerprint: o.public_key.parse::<PublicKey>().ok().map(|k| k.fingerprint()),
            added_at: &o.added_at,
        })
        .collect();
    if json {
        print_json(&serde_json::to_value(&views).unwrap_or_default())?;
        return Ok(ExitCode::SUCCESS);
    }
    if views.is_empty() {
        super::out::outln!("no operators admitted (support relay add-operator NAME KEY)")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Listing::new(&[("operator", Wrap::Words), ("fingerprint", Wrap::Text), ("added", Wrap::Instant)]);
    for v in &views {
        table.row([
            printable(v.name),
            v.fingerprint.clone().unwrap_or_else(|| "(malformed key)".into()),
            when(crate::time::parse_rfc3339(v.added_at)),
        ]);
    }
    table.print()?;
    Ok(ExitCode::SUCCESS)
}

/// One enrolment token as `relay tokens --json` shows it: never the
/// token, which the relay does not have (only its hash).
#[derive(Serialize)]
struct TokenView<'a> {
    /// The first hex digits of the token's SHA-256.
    id: &'a str,
    /// RFC 3339 UTC, `null` in registries written before it was recorded.
    created_at: Option<String>,
    expires_at: String,
    used: bool,
    used_at: Option<String>,
    used_by: Option<&'a str>,
}

/// `support relay tokens [--json]`: tokens not yet expired at `now`, used or not.
///
/// # Errors
/// [`Error::Stdout`] when stdout cannot be written.
pub(crate) fn print_tokens(registry: &Registry, now: DateTime<Utc>, json: bool) -> Result<ExitCode, Error> {
    let rfc = |t: Option<DateTime<Utc>>| t.map(crate::time::rfc3339);
    let views: Vec<TokenView> = registry
        .tokens
        .iter()
        .filter(|t| t.expires_at > now)
        .map(|t| TokenView {
            id: t.id(),
            created_at: rfc(t.created_at),
            expires_at: crate::time::rfc3339(t.expires_at),
            used: t.used_at.is_some(),
            used_at: rfc(t.used_at),
            used_by: t.used_by.as_deref(),
        })
        .collect();
    if json {
        print_json(&serde_json::to_value(&views).unwrap_or_default())?;
        return Ok(ExitCode::SUCCESS);
    }
    if views.is_empty() {
        super::out::outln!("no enrolment tokens (support relay enroll-token makes one)")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Listing::new(&[
        ("token id", Wrap::Words),
        ("created", Wrap::Instant),
        ("expires", Wrap::Instant),
        ("used", Wrap::Text),
    ]);
    for (v, t) in views.iter().zip(registry.tokens.iter().filter(|t| t.expires_at > now)) {
        let used = match (t.used_at, v.used_by) {
            (Some(at), by) => format!("{} by {}", when(Some(at)), printable(by.unwrap_or("?"))),
            (None, _) => "no".into(),
        };
        table.row([v.id.to_string(), when(t.created_at), when(Some(t.expires_at)), used]);
    }
    table.print()?;
    Ok(ExitCode::SUCCESS)
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(super::human).unwrap_or_else(|| "-".into())
}
