//! Audit records as the daemon writes them, built from a task or a
//! denial: pure functions, no I/O. A record never holds more than its cap,
//! and never anyone's unchecked text (see [`crate::text::safe_id`]).

use std::collections::BTreeMap;

use super::gate::Denial;
use crate::audit::{Event, Record};
use crate::control_api::TaskView;
use crate::protocol::{Run, TaskResult};

/// A record of `event` for task `t`: its ids, action, tier, parameters
/// (see [`recorded_params`]), operator and grant.
pub(super) fn task_record(event: Event, t: &TaskView) -> Record {
    let mut r = Record::new(event);
    r.task_id = Some(t.task_id.clone());
    r.request_id = Some(t.request_id.clone());
    r.action = Some(t.action.clone());
    r.tier = Some(t.tier);
    r.params = Some(recorded_params(&t.params));
    r.operator = Some(t.operator.clone());
    r.grant_id = Some(t.grant_id.clone());
    r
}

/// The longest parameter value an audit record holds as it is; a longer
/// one (an agent's prompt, up to 512 KiB) would break the record's 64 KiB
/// cap, so the record keeps its head, its length and its SHA-256.
pub const RECORDED_VALUE_BYTES: usize = 4096;

/// Parameters as an audit record holds them (see [`RECORDED_VALUE_BYTES`]).
pub(super) fn recorded_params(params: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    params.iter().map(|(k, v)| (k.clone(), recorded_value(v))).collect()
}

/// `v`, or its first KiB, its length and its SHA-256 when it is longer
/// than [`RECORDED_VALUE_BYTES`].
pub(super) fn recorded_value(v: &str) -> String {
    if v.len() <= RECORDED_VALUE_BYTES {
        return v.to_string();
    }
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, v.as_bytes()));
    format!("{}… [{} bytes, sha256 {digest}]", crate::text::head(v, 1024), v.len())
}

/// The commands for the record; an element over [`RECORDED_VALUE_BYTES`]
/// (an argv prompt) is cut as [`recorded_params`] cuts a value.
pub(super) fn render_argv(commands: &[Vec<String>]) -> String {
    commands
        .iter()
        .map(|argv| {
            let argv: Vec<String> = argv.iter().map(|e| recorded_value(e)).collect();
            shlex::try_join(argv.iter().map(String::as_str)).unwrap_or_else(|_| argv.join(" "))
        })
        .collect::<Vec<_>>()
        .join(" ; then ")
}

/// The `action.denied` record of `run`. Its ids go in only as safe
/// segments and its reason capped like a value. Its parameters go in only
/// when `trusted_shape` (its signature held and it names a catalogued
/// action), with plain names and a size a record can hold: anything else is
/// anyone's text and goes in as its size alone.
pub(super) fn denial_record(run: &Run, operator: Option<String>, trusted_shape: bool, denial: &Denial) -> Record {
    let mut r = Record::new(Event::ActionDenied);
    r.request_id = Some(crate::text::safe_id(&run.request_id));
    r.action = Some(crate::text::safe_id(&run.action));
    r.operator = operator;
    r.code = Some(denial.code.as_str().into());
    r.reason = Some(recorded_value(&denial.message));
    let bytes: usize = run.params.iter().map(|(k, v)| k.len() + v.len().min(RECORDED_VALUE_BYTES)).sum();
    let plain_names = run.params.keys().all(|k| crate::text::safe_id(k) == *k);
    if trusted_shape && plain_names && bytes <= 4 * RECORDED_VALUE_BYTES {
        r.params = Some(recorded_params(&run.params));
    } else if !run.params.is_empty() {
        let bytes: usize = run.params.iter().map(|(k, v)| k.len() + v.len()).sum();
        r.detail = Some(format!("{} parameters, {bytes} bytes, not recorded", run.params.len()));
    }
    r
}

/// Puts the command's nonce and `issued_at` on `record`, so that the
/// next daemon start knows the nonce was used (see `replay.rs`): for
/// `action.started`, and `action.denied` once the signature held. Both are
/// of the shape [`Run::check_shape`] allows, or the record keeps them out.
pub(super) fn carry_nonce(record: &mut Record, run: &Run) {
    if crate::text::safe_id(&run.nonce) == run.nonce && crate::time::parse_rfc3339(&run.issued_at).is_some() {
        record.nonce = Some(run.nonce.clone());
        record.issued_at = Some(run.issued_at.clone());
    }
}

/// The records of a task's end: `task.stopped` when someone stopped it,
/// then `action.finished` with its status, exit code, why when the exit
/// code does not say it (`reason`), duration, output size and digest, and
/// for an agent task the transcript's digest.
pub(super) fn end_records(info: &TaskView, result: &TaskResult, transcript_sha256: Option<String>) -> Vec<Record> {
    let mut records = Vec::new();
    if let Some(by) = result.cancelled_by {
        let mut r = task_record(Event::TaskStopped, info);
        r.by = Some(by.as_str().into());
        r.duration_ms = Some(result.duration_ms);
        r.transcript_sha256.clone_from(&transcript_sha256);
        records.push(r);
    }
    let mut r = task_record(Event::ActionFinished, info);
    r.status = Some(result.status.as_str().into());
    r.exit_code = result.exit_code.map(i64::from);
    r.duration_ms = Some(result.duration_ms);
    r.output_bytes = Some(result.output_bytes);
    r.output_sha256 = Some(result.output_sha256.clone());
    r.transcript_sha256 = transcript_sha256;
    r.by = result.cancelled_by.map(|b| b.as_str().into());
    r.reason.clone_from(&result.reason);
    if result.truncated {
        r.detail = Some("output truncated at the action's max_output_bytes".into());
    }
    records.push(r);
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_recorded_as_head_length_and_digest() {
        assert_eq!(recorded_value("short"), "short");
        let long = "é".repeat(RECORDED_VALUE_BYTES);
        let kept = recorded_value(&long);
        assert!(kept.len() < 1200 && kept.contains(&format!("… [{} bytes, sha256 ", long.len())), "{kept}");
        assert!(kept.starts_with("éé"));
    }
}
