//! `support allow --tier N (--minutes M | --duration D) [--yes] [--reason TEXT]`

use std::process::ExitCode;
use std::time::Duration;

use super::Ctx;
use super::out::outln;
use crate::audit::{Event, Record};
use crate::consent::{self, Grant, Tier};
use crate::{Error, ErrorChain};

/// Grant support a tier of actions for a while.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// 1 diagnostics, 2 fixes, 3 agent, 4 shell (each includes the ones below).
    #[arg(long, value_name = "N", value_parser = parse_tier, allow_negative_numbers = true)]
    tier: Tier,
    /// How long the grant lasts, in minutes (1 to 480).
    #[arg(long, value_name = "M", value_parser = parse_minutes, allow_negative_numbers = true, required_unless_present = "duration", conflicts_with = "duration")]
    minutes: Option<u64>,
    /// How long the grant lasts, e.g. 30s, 10m, 2h (1 second to 8 hours).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Confirm a grant of tier 3 (your AI agent) or 4 (raw shell).
    #[arg(long)]
    yes: bool,
    /// Why you grant it, shown in `support status` and the audit log.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

fn parse_tier(s: &str) -> Result<Tier, String> {
    s.parse::<u8>().ok().and_then(Tier::new).ok_or_else(|| format!("the tier is 1 to 4:\n{}", Tier::table()))
}

fn parse_minutes(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(m @ 1..=480) => Ok(m),
        _ => Err("minutes are 1 to 480 (8 hours); for less than a minute use --duration, e.g. 30s".into()),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e}; write e.g. 30s, 10m or 2h"))?;
    consent::check_duration(d)?;
    Ok(d)
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Result<ExitCode, Error> {
    let duration = match (args.minutes, args.duration) {
        (Some(m), _) => Duration::from_secs(m * 60),
        (None, Some(d)) => d,
        (None, None) => return Err(Error::Usage("give --minutes M or --duration D".into())),
    };
    // Before any other check: a task must not extend or raise its own
    // grant, at any tier or length, and every attempt is on the record.
    if let Some(evidence) = super::guard::inside_task(&ctx.paths) {
        let mut record = Record::new(Event::ConsentRefused);
        record.tier = Some(args.tier.get());
        record.detail = Some(format!(
            "run inside a support task: {evidence}; asked for tier {} for {}",
            args.tier,
            humantime::format_duration(duration)
        ));
        return Err(super::guard::refuse(ctx, "allow", &evidence, record));
    }
    if args.tier.needs_confirmation() && !args.yes {
        let tier = args.tier.get().to_string();
        let length = match args.minutes {
            Some(m) => ["--minutes".to_string(), m.to_string()],
            None => ["--duration".to_string(), humantime::format_duration(duration).to_string()],
        };
        let mut words = vec!["allow", "--tier", &tier, &length[0], &length[1]];
        if let Some(r) = &args.reason {
            words.extend(["--reason", r]);
        }
        words.push("--yes");
        return Err(Error::Usage(format!(
            "tier {} lets support do {}. If you mean that, confirm with:\n  {}",
            args.tier,
            args.tier.allows(),
            ctx.command_line(&words)
        )));
    }
    let grant = Grant::new(args.tier, duration, args.reason, ctx.now).map_err(Error::Usage)?;

    // The record comes first: a grant that cannot be audited is not made.
    let mut record = Record::new(Event::ConsentGranted);
    record.grant_id = Some(grant.grant_id.clone());
    record.tier = Some(grant.tier.get());
    record.reason.clone_from(&grant.reason);
    record.detail = Some(format!("expires_at {}", crate::time::rfc3339(grant.expires_at)));
    ctx.audit(record)?;
    if let Err(e) = consent::write(&ctx.paths, &grant) {
        // The rename may have landed before a later step failed: make sure no grant stands.
        let removed = consent::remove(&ctx.paths);
        let mut undo = Record::new(Event::ConsentRevoked);
        undo.grant_id = Some(grant.grant_id.clone());
        undo.detail = Some(match &removed {
            Ok(_) => "the grant could not be written and was withdrawn; no grant is in force".into(),
            Err(r) => format!("the grant could not be written, nor the consent file removed: {}", ErrorChain(r)),
        });
        let _ = ctx.audit(undo);
        return Err(match removed {
            Ok(_) => e.into(),
            Err(r) => Error::Failed(format!(
                "{}; and the consent file could not be removed ({}), so a grant may stand: remove {} by hand",
                ErrorChain(&e),
                ErrorChain(&r),
                ctx.paths.consent().display()
            )),
        });
    }
    // A lower tier than before stops the tasks above it now.
    let told = super::client::tell_consent_changed(&ctx.paths);
    outln!("Granted tier {}: {}.", grant.tier, grant.tier.allows())?;
    outln!(
        "Ends {} (in {}). Revoke any time: {}",
        super::local(grant.expires_at),
        humantime::format_duration(duration),
        ctx.command_line(&["revoke"])
    )?;
    if told {
        outln!("The daemon was told.")?;
    }
    Ok(ExitCode::SUCCESS)
}
