//! `support console [--no-open]`

use std::process::ExitCode;

use super::Ctx;
use super::client::Client;
use super::out::outln;
use crate::Error;
use crate::audit::{Event, Record};
use crate::control_api::ConsoleLogin;

/// Open the owner's console in the browser: the grant, the running tasks
/// and their transcripts live, Stop, Revoke, Allow, and the audit log.
///
/// It asks the daemon for a login link (usable once, within 60 s) and
/// opens it with `xdg-open`; the page trades it for a session cookie.
/// Refused from inside a support task. Exits 3 when no daemon runs.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the login link instead of opening a browser.
    #[arg(long)]
    no_open: bool,
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Result<ExitCode, Error> {
    // As `allow`: a task must not open the owner's console, from which
    // it could grant itself more (the daemon checks the asking process too).
    if let Some(evidence) = super::guard::inside_task(&ctx.paths) {
        let mut record = Record::new(Event::ConsoleRefused);
        record.reason = Some("login asked for from inside a task".into());
        record.detail = Some(format!("support console run inside a support task: {evidence}"));
        return Err(super::guard::refuse(ctx, "console", &evidence, record));
    }
    let client = Client::find(&ctx.paths)?;
    let login: ConsoleLogin = client.call("POST", "/v1/console/login")?;
    if args.no_open {
        outln!("Open this address in your browser (it works once, within 60 s):")?;
        outln!("  {}", login.url)?;
        return Ok(ExitCode::SUCCESS);
    }
    match crate::daemon::open_in_browser(&login.url) {
        Ok(()) => outln!(
            "The console opens in your browser. If it does not, run {}.",
            ctx.command_line(&["console", "--no-open"])
        )?,
        Err(why) => {
            outln!("Could not open a browser ({why}). Open this address yourself (it works once, within 60 s):")?;
            outln!("  {}", login.url)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
