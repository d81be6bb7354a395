//! `support revoke`

use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::Ctx;
use super::out::outln;
use crate::audit::{Event, Record};
use crate::consent::{self, Consent, Off};
use crate::control_api::TaskList;
use crate::{Error, ErrorChain};

/// Withdraw the grant now. Exits 0 whether or not one was in force.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub(crate) fn run(ctx: &Ctx, _args: Args) -> Result<ExitCode, Error> {
    let before = consent::read(&ctx.paths, ctx.now);
    // Consent goes first: an audit failure must never leave a grant standing.
    let removed = consent::remove(&ctx.paths)?;
    // The daemon stops running tasks now, not at its next look.
    let told = super::client::tell_consent_changed(&ctx.paths);
    let mut record = Record::new(Event::ConsentRevoked);
    let ended = match &before {
        Consent::Live(g) | Consent::Off(Off::Expired(g)) => Some(g.grant_id.clone()),
        Consent::Off(_) => None,
    };
    let message = match &before {
        Consent::Live(g) => {
            record.grant_id = Some(g.grant_id.clone());
            record.tier = Some(g.tier.get());
            format!(
                "Revoked grant {} (tier {}, {}). Support can do nothing now.",
                g.grant_id,
                g.tier.get(),
                g.tier.name()
            )
        }
        Consent::Off(Off::Expired(g)) => {
            record.grant_id = Some(g.grant_id.clone());
            record.detail = Some("the grant had already expired".into());
            format!("The grant {} had already expired; its file is removed.", g.grant_id)
        }
        Consent::Off(off) if removed => {
            record.detail = Some(format!("removed a consent file that was not in force ({})", off.reason()));
            format!("No grant was in force ({}); the file is removed.", off.reason())
        }
        Consent::Off(_) => {
            record.detail = Some("no grant was in force".into());
            "No grant was in force; nothing to revoke.".to_string()
        }
    };
    ctx.audit(record).map_err(|e| {
        Error::Failed(format!("the grant is revoked, but the audit record could not be written: {}", ErrorChain(&e)))
    })?;
    outln!("{message}")?;
    if told {
        outln!("The daemon was told; it stops any running task.")?;
    }
    if let Some(id) = ended {
        if told {
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
