//! `support summary [GRANT_ID | --last] [--json]`

use std::process::ExitCode;

use super::Ctx;
use super::out::outln;
use crate::Error;
use crate::summary::{self, SummaryError};

/// Show what ran under a grant: who acted, every action with its
/// parameters and end, the denials, the stops, and whether that span of
/// the audit chain verifies. Exit 2 for a grant the audit log does not
/// know; 1 when the log cannot be read.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The grant (`g-...`, as `support status` and `support audit` show it).
    #[arg(value_name = "GRANT_ID", conflicts_with = "last")]
    grant: Option<String>,
    /// The last grant (the default).
    #[arg(long)]
    last: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Result<ExitCode, Error> {
    let s = summary::load(&ctx.paths, args.grant.as_deref()).map_err(summary_error)?;
    if args.json {
        outln!("{}", serde_json::to_string(&s).expect("a summary serialises"))?;
    } else {
        super::out::line(format_args!("{}", s.render().trim_end()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A summary's failure as a command's: an unknown grant or an empty log
/// is the caller's input (exit 2), an unreadable log a failure (exit 1).
pub(crate) fn summary_error(e: SummaryError) -> Error {
    match e {
        SummaryError::Audit(e) => e.into(),
        other => Error::Usage(other.to_string()),
    }
}
