//! `support revoke`

use std::process::ExitCode;

use super::Ctx;
use super::out::outln;
use crate::Error;

/// Withdraw the grant now. Exits 0 whether or not one was in force.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub(crate) fn run(ctx: &Ctx, _args: Args) -> Result<ExitCode, Error> {
    let revoked = crate::consent_change::revoke(
        &ctx.paths,
        ctx.now,
        None,
        || super::client::tell_consent_changed(&ctx.paths),
        &mut |r| ctx.audit(r),
    )?;
    outln!("{}", revoked.message)?;
    if revoked.told {
        outln!("The daemon was told; it stops any running task.")?;
    }
    Ok(ExitCode::SUCCESS)
}
