//! What ran under a grant (issue 14 item 5): the audit records of one
//! grant's span, from its `consent.granted` to what ended it
//! (`consent.revoked`, `consent.expired`, or the next `consent.granted`,
//! which replaced it), put together for the owner.
//!
//! A span also takes in the end records (`task.stopped`,
//! `action.finished`, `task.aborted`) of tasks started under the grant
//! that were written after it ended: a revoke stops its tasks, and their
//! ends are recorded just after the revoke. Denials carry no grant id
//! (most are refused before any grant is looked at), so a denial belongs to
//! the grant in whose span it was written.
//!
//! Whether the span verifies: [`summarize`] checks, from the records it is
//! given, that their `seq` runs without a gap and that each `prev` is the
//! mac of the record before it, the span's first record included (so the
//! record before the span must be among them, or the span must start the
//! log). It cannot check the MACs without `audit.key`; [`load`] can: it
//! reads the log with [`crate::audit::list`], which checks each record's
//! MAC and link under the key, and the span verifies only if every record
//! of it does ([`Chain::macs_checked`] says which check was made).
//!
//! `render.rs` turns a summary into text for people, as `support audit` does.

mod render;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::audit::{self, AuditError, Event, Listed, Record};
use crate::paths::Paths;

/// How a grant ended, as `support summary --json` writes it (`ended`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// The owner withdrew it (`consent.revoked`).
    Revoked,
    /// It ran out (`consent.expired`, or a revoke of a grant that had already expired).
    Expired,
    /// A new grant replaced it (the next `consent.granted`).
    Replaced,
    /// No end is on record: it is in force, or it ran out while no daemon recorded it.
    NotEnded,
}

/// One action started under the grant (`action.started`), with its end
/// when that is on record (`action.finished`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ActionRun {
    /// The operator's request id.
    pub request_id: Option<String>,
    /// The task (`t-` and 16 hex digits).
    pub task_id: String,
    /// The owner's name for the operator.
    pub operator: Option<String>,
    /// The catalogue action.
    pub action: Option<String>,
    /// The action's tier, 1 to 4.
    pub tier: Option<u8>,
    /// The parameters as recorded (long values as head, length and SHA-256).
    pub params: BTreeMap<String, String>,
    /// ok, failed, timeout, cancelled; `aborted` when a daemon that died
    /// left it (`task.aborted`); `None` while no end is on record.
    pub status: Option<String>,
    /// The last command's exit code.
    pub exit_code: Option<i64>,
    /// Milliseconds from the start to the end.
    pub duration_ms: Option<u64>,
    /// Bytes of output delivered.
    pub output_bytes: Option<u64>,
    /// Why it ended, where the exit code does not say it.
    pub reason: Option<String>,
    /// Who stopped it, when someone did (owner, operator, revoke, expiry, tier_lowered, shutdown, trust_removed).
    pub stopped_by: Option<String>,
    /// When it started: the `action.started` record's time, RFC 3339 UTC.
    pub started_at: String,
}

/// A refusal written during the grant's span (`action.denied`, or a
/// window of them counted in `action.denied.aggregated`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Denial {
    /// The record's seq.
    pub seq: u64,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// The operator's name, or an untrusted key's fingerprint.
    pub operator: Option<String>,
    /// The action asked for.
    pub action: Option<String>,
    /// The denial code (DESIGN §7).
    pub code: Option<String>,
    /// The denial's message.
    pub reason: Option<String>,
    /// How many refusals the record stands for (1, or an aggregated window's count).
    pub count: u64,
}

/// A task stopped during the grant (`task.stopped`, `task.aborted`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stop {
    /// When, RFC 3339 UTC.
    pub at: String,
    /// The task.
    pub task_id: Option<String>,
    /// Its action.
    pub action: Option<String>,
    /// Its operator.
    pub operator: Option<String>,
    /// Who or what stopped it: owner, operator, revoke, expiry,
    /// tier_lowered, shutdown, trust_removed; `aborted` for a task a dead daemon left.
    pub by: String,
}

/// Whether the grant's span of the audit chain verifies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Chain {
    /// Every record from `first_seq` to `last_seq` is in place (and, with
    /// `macs_checked`, sealed with the log's key), the first linked to the one before it.
    pub ok: bool,
    /// The span's first record (its `consent.granted`).
    pub first_seq: u64,
    /// The span's last record.
    pub last_seq: u64,
    /// The MACs were checked under `audit.key` ([`load`]), not only the links ([`summarize`]).
    pub macs_checked: bool,
    /// What is wrong, naming the first bad seq; `None` when `ok`.
    pub error: Option<String>,
}

/// What ran under one grant. Times are RFC 3339 UTC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GrantSummary {
    /// `g-` and hex.
    pub grant_id: String,
    /// The grant's tier, 1 to 4.
    pub tier: Option<u8>,
    /// When it was granted (its `consent.granted` record).
    pub granted_at: String,
    /// When it was to end (the `expires_at` its record names).
    pub ends_at: Option<String>,
    /// When it ended: the ending record's time (for a grant whose expiry
    /// `support revoke` was first to see, its `ends_at`); `None` with [`Ending::NotEnded`].
    pub ended_at: Option<String>,
    /// How it ended.
    pub ended: Ending,
    /// Who ended it: `owner` (revoked, or replaced by a new grant), `expiry`.
    pub by: Option<String>,
    /// The grant that replaced it, with [`Ending::Replaced`].
    pub replaced_by: Option<String>,
    /// The owner's reason for the grant.
    pub reason: Option<String>,
    /// The grant's scope in words (operators, only, at most N actions).
    pub scope: Option<String>,
    /// Who acted: the operators of its actions, in the order they first acted.
    pub operators: Vec<String>,
    /// Every action started under it, in order.
    pub actions: Vec<ActionRun>,
    /// The refusals in its span.
    pub denials: Vec<Denial>,
    /// The tasks stopped under it.
    pub stops: Vec<Stop>,
    /// Whether its span of the chain verifies.
    pub chain: Chain,
}

/// Why there is no summary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SummaryError {
    /// No `consent.granted` record names this grant id.
    #[error("no grant {0} in the audit log; `support audit` lists the grants (consent.granted)")]
    UnknownGrant(String),
    /// The log holds no grant at all (with `--last`).
    #[error("no grant in the audit log yet; `support allow` grants one")]
    NoGrant,
    /// The log could not be read.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// One line of the log as the span is cut from it.
struct Entry<'a> {
    /// `None`: the line is not a record.
    record: Option<&'a Record>,
    /// Whether its MAC and link verified under the key; `None`: not checked.
    verified: Option<bool>,
}

/// Summarises grant `grant` (`None`: the last grant in the log) from
/// `records`, the log's records in order (all of them, or at least from
/// the record before the grant's `consent.granted` to the end). The span's
/// chain is checked for links only ([`Chain::macs_checked`] false); use
/// [`load`] to check the MACs too.
///
/// # Errors
/// [`SummaryError::UnknownGrant`] when no `consent.granted` names `grant`;
/// [`SummaryError::NoGrant`] when `grant` is `None` and none is in `records`.
pub fn summarize(records: &[Record], grant: Option<&str>) -> Result<GrantSummary, SummaryError> {
    let entries: Vec<Entry<'_>> = records.iter().map(|r| Entry { record: Some(r), verified: None }).collect();
    summarize_entries(&entries, grant)
}

/// [`summarize`] over the log as [`crate::audit::list`] read it, each
/// record's MAC checked under the key.
///
/// # Errors
/// As [`summarize`].
pub fn summarize_listed(listed: &[Listed], grant: Option<&str>) -> Result<GrantSummary, SummaryError> {
    let entries: Vec<Entry<'_>> =
        listed.iter().map(|l| Entry { record: l.record.as_ref(), verified: Some(l.verified) }).collect();
    summarize_entries(&entries, grant)
}

/// Reads the audit log under `paths` and summarises grant `grant`
/// (`None`: the last), its span's MACs checked under `audit.key`. This is
/// what `support summary`, `support revoke`, the daemon at expiry and the
/// console call. It reads the whole log (as `support audit --limit 0` does).
///
/// # Errors
/// [`SummaryError::Audit`] when the log or its key cannot be read; else as [`summarize`].
pub fn load(paths: &Paths, grant: Option<&str>) -> Result<GrantSummary, SummaryError> {
    let listing = audit::list(paths, 0)?;
    summarize_listed(&listing.records, grant)
}

fn summarize_entries(entries: &[Entry<'_>], grant: Option<&str>) -> Result<GrantSummary, SummaryError> {
    let is_grant = |e: &Entry<'_>, id: Option<&str>| {
        e.record.is_some_and(|r| r.event == Event::ConsentGranted && (id.is_none() || r.grant_id.as_deref() == id))
    };
    let start = entries.iter().rposition(|e| is_grant(e, grant)).ok_or_else(|| match grant {
        Some(id) => SummaryError::UnknownGrant(crate::text::brief(id)),
        None => SummaryError::NoGrant,
    })?;
    let granted = entries[start].record.expect("is_grant saw a record");
    let id = granted.grant_id.clone().unwrap_or_default();
    let ours = |r: &Record| r.grant_id.as_deref() == Some(id.as_str());
    let mut summary = GrantSummary {
        grant_id: id.clone(),
        tier: granted.tier,
        granted_at: granted.ts.clone(),
        ends_at: None,
        ended_at: None,
        ended: Ending::NotEnded,
        by: None,
        replaced_by: None,
        reason: granted.reason.clone(),
        scope: None,
        operators: Vec::new(),
        actions: Vec::new(),
        denials: Vec::new(),
        stops: Vec::new(),
        chain: Chain { ok: false, first_seq: granted.seq, last_seq: granted.seq, macs_checked: false, error: None },
    };
    // `allow` writes "expires_at T" or "expires_at T; SCOPE".
    if let Some(rest) = granted.detail.as_deref().and_then(|d| d.strip_prefix("expires_at ")) {
        let (at, scope) = rest.split_once("; ").map_or((rest, None), |(a, s)| (a, Some(s)));
        summary.ends_at = Some(at.to_string());
        summary.scope = scope.map(str::to_string);
    }
    let mut last = start;
    let mut ended = false;
    for (i, entry) in entries.iter().enumerate().skip(start + 1) {
        let Some(r) = entry.record else { continue };
        if !ended {
            last = i;
            match r.event {
                Event::ConsentRevoked if ours(r) => {
                    let already = r.detail.as_deref().is_some_and(|d| d.contains("already expired"));
                    summary.ended = if already { Ending::Expired } else { Ending::Revoked };
                    summary.by = Some(if already { "expiry" } else { "owner" }.into());
                    // An expiry first seen by `revoke` ended when the grant ran out, not at the revoke.
                    summary.ended_at =
                        if already { summary.ends_at.clone() } else { None }.or_else(|| Some(r.ts.clone()));
                    ended = true;
                }
                Event::ConsentExpired if ours(r) => {
                    summary.ended = Ending::Expired;
                    summary.by = Some("expiry".into());
                    summary.ended_at = Some(r.ts.clone());
                    ended = true;
                }
                Event::ConsentGranted => {
                    summary.ended = Ending::Replaced;
                    summary.by = Some("owner".into());
                    summary.replaced_by.clone_from(&r.grant_id);
                    summary.ended_at = Some(r.ts.clone());
                    ended = true;
                }
                Event::ActionDenied => summary.denials.push(denial(r, 1)),
                Event::ActionDeniedAggregated => {
                    let count = r.detail.as_deref().and_then(|d| d.split(' ').next()?.parse().ok()).unwrap_or(1);
                    summary.denials.push(denial(r, count));
                }
                _ => {}
            }
            if r.event == Event::ActionStarted && ours(r) {
                summary.actions.push(started(r));
            }
        }
        // Tasks' ends come after the grant's end when it stopped them.
        if ours(r) && matches!(r.event, Event::ActionFinished | Event::TaskStopped | Event::TaskAborted) {
            last = last.max(i);
            task_end(&mut summary, r);
        }
    }
    for a in &summary.actions {
        if let Some(op) = &a.operator
            && !summary.operators.contains(op)
        {
            summary.operators.push(op.clone());
        }
    }
    summary.chain = chain(entries, start, last);
    Ok(summary)
}

fn denial(r: &Record, count: u64) -> Denial {
    Denial {
        seq: r.seq,
        at: r.ts.clone(),
        operator: r.operator.clone(),
        action: r.action.clone(),
        code: r.code.clone(),
        reason: r.reason.clone().or_else(|| r.detail.clone()),
        count,
    }
}

fn started(r: &Record) -> ActionRun {
    ActionRun {
        request_id: r.request_id.clone(),
        task_id: r.task_id.clone().unwrap_or_default(),
        operator: r.operator.clone(),
        action: r.action.clone(),
        tier: r.tier,
        params: r.params.clone().unwrap_or_default(),
        status: None,
        exit_code: None,
        duration_ms: None,
        output_bytes: None,
        reason: None,
        stopped_by: None,
        started_at: r.ts.clone(),
    }
}

/// Puts a task's end record on its action (and on the stops).
fn task_end(summary: &mut GrantSummary, r: &Record) {
    let action = summary.actions.iter_mut().find(|a| r.task_id.as_deref() == Some(a.task_id.as_str()));
    match r.event {
        Event::ActionFinished => {
            if let Some(a) = action {
                a.status.clone_from(&r.status);
                a.exit_code = r.exit_code;
                a.duration_ms = r.duration_ms;
                a.output_bytes = r.output_bytes;
                a.reason.clone_from(&r.reason);
                a.stopped_by = a.stopped_by.take().or_else(|| r.by.clone());
            }
        }
        Event::TaskStopped | Event::TaskAborted => {
            let by = if r.event == Event::TaskAborted { "aborted".into() } else { r.by.clone().unwrap_or_default() };
            if let Some(a) = action {
                a.stopped_by = Some(by.clone());
                if r.event == Event::TaskAborted {
                    a.status = Some("aborted".into());
                }
            }
            summary.stops.push(Stop {
                at: r.ts.clone(),
                task_id: r.task_id.clone(),
                action: r.action.clone(),
                operator: r.operator.clone(),
                by,
            });
        }
        _ => {}
    }
}

/// Checks entries `first..=last` in place: each a record, `seq` one more
/// than the one before, `prev` its mac, and (when checked) verified.
fn chain(entries: &[Entry<'_>], first: usize, last: usize) -> Chain {
    let seq_of = |i: usize| entries[i].record.map(|r| r.seq);
    let first_seq = seq_of(first).unwrap_or(0);
    let mut out = Chain {
        ok: true,
        first_seq,
        last_seq: seq_of(last).unwrap_or(first_seq),
        macs_checked: entries[first..=last].iter().all(|e| e.verified.is_some()),
        error: None,
    };
    let mut prev: Option<&Record> = first.checked_sub(1).and_then(|i| entries[i].record);
    for (i, entry) in entries.iter().enumerate().take(last + 1).skip(first) {
        let why = match (entry.record, prev) {
            (None, _) => Some((prev.map_or(0, |p| p.seq + 1), "a line that is not a record".to_string())),
            (Some(r), _) if entry.verified == Some(false) => {
                Some((r.seq, "its mac or its link to the record before it does not verify".into()))
            }
            (Some(r), None) if i == 0 => (r.seq != 1 || r.prev != audit::GENESIS_PREV)
                .then(|| (r.seq, "the log's first record is not seq 1 after the genesis prev".into())),
            (Some(r), None) => Some((r.seq, "the record before it is not readable".into())),
            (Some(r), Some(p)) if r.seq != p.seq + 1 => {
                Some((r.seq, format!("seq {} follows seq {} (a record was deleted, inserted or moved)", r.seq, p.seq)))
            }
            (Some(r), Some(p)) if r.prev != p.mac => {
                Some((r.seq, format!("prev does not match the mac of seq {} (the chain was altered)", p.seq)))
            }
            _ => None,
        };
        if let Some((seq, why)) = why {
            out.ok = false;
            out.error = Some(format!("seq {seq}: {why}"));
            return out;
        }
        prev = entry.record;
    }
    out
}

#[cfg(test)]
mod tests;
