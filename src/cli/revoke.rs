//! `support revoke`

use std::process::ExitCode;

use super::Ctx;
use super::out::outln;
use crate::audit::{Event, Record};
use crate::consent::{self, Consent, Off};
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
    Ok(ExitCode::SUCCESS)
}
