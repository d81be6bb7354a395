//! `support revoke`

use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::Ctx;
use super::out::outln;
use crate::control_api::TaskList;
use crate::{Error, ErrorChain};

/// Withdraw the grant now. Exits 0 whether or not one was in force.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print one JSON object: `revoked` (the grant that ended, or null),
    /// `message`, `daemon_told`, and `summary` (as `support summary --json`, or null).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Result<ExitCode, Error> {
    let revoked = crate::consent_change::revoke(
        &ctx.paths,
        ctx.now,
        None,
        || super::client::tell_consent_changed(&ctx.paths),
        &mut |r| ctx.audit(r),
    )?;
    if args.json {
        if let (Some(id), true) = (&revoked.ended, revoked.told) {
            wait_for_tasks_to_end(ctx, id);
        }
        let summary = revoked.ended.as_deref().and_then(|id| crate::summary::load(&ctx.paths, Some(id)).ok());
        super::print_json(&serde_json::json!({
            "revoked": revoked.ended,
            "message": revoked.message,
            "daemon_told": revoked.told,
            "summary": summary,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{}", revoked.message)?;
    if revoked.told {
        outln!("The daemon was told; it stops any running task.")?;
    }
    if let Some(id) = revoked.ended {
        if revoked.told {
            wait_for_tasks_to_end(ctx, &id);
        }
        print_summary(ctx, &id)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `revoke` waits for the daemon to stop the grant's tasks, so
/// that their ends are in the summary it prints (a tree killed with
/// SIGKILL is gone well within this).
const STOP_WAIT: Duration = Duration::from_secs(3);

/// Waits until the daemon lists no task of grant `id`, at most [`STOP_WAIT`].
fn wait_for_tasks_to_end(ctx: &Ctx, id: &str) {
    let Ok(client) = super::client::Client::find(&ctx.paths) else { return };
    let deadline = Instant::now() + STOP_WAIT;
    while Instant::now() < deadline {
        match client.call::<TaskList>("GET", "/v1/tasks") {
            Ok(list) if list.tasks.iter().any(|t| t.grant_id == id) => std::thread::sleep(Duration::from_millis(25)),
            _ => return,
        }
    }
}

/// Prints what ran under grant `id` after a blank line. The grant is
/// revoked whatever happens here: a summary that cannot be made is a warning.
fn print_summary(ctx: &Ctx, id: &str) -> Result<(), Error> {
    match crate::summary::load(&ctx.paths, Some(id)) {
        Ok(s) => outln!("\nWhat ran under it:\n{}", s.render().trim_end()),
        Err(e) => outln!("\nNo summary of the grant: {}", ErrorChain(&e)),
    }
}
