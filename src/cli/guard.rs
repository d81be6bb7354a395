//! The CLI's side of the escalation guard: `allow` and `trust add` ask
//! [`inside_task`] (the evidence checks, in `daemon::guard`) whether they
//! run inside one of support's tasks, and refuse on the record if so.

use super::Ctx;
use crate::Error;
use crate::audit::Record;
pub(crate) use crate::daemon::guard::inside_task;
pub(crate) use crate::text::brief as short;

/// Audits `record` (which should say what was asked and `evidence`), then
/// returns the refusal for `command` (exit 4). The refusal stands when
/// the record cannot be written; the message then says so.
pub(crate) fn refuse(ctx: &Ctx, command: &str, evidence: &str, record: Record) -> Error {
    let mut message = format!(
        "{command} refused: it was run from inside a support task ({evidence}). \
         Only the owner, outside support's tasks, may grant or widen access."
    );
    if let Err(e) = ctx.audit(record) {
        message.push_str(&format!(" The refusal could not be recorded: {}", crate::ErrorChain(&e)));
    }
    Error::Refused(message)
}
