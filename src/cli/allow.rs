//! `support allow --tier N (--minutes M | --duration D) [--yes] [--reason TEXT]
//! [--operator NAME]... [--only ACTION[,ACTION...]] [--max-actions K]`

use std::process::ExitCode;
use std::time::Duration;

use super::Ctx;
use super::out::outln;
use crate::Error;
use crate::audit::{Event, Record};
use crate::consent::{self, Grant, Tier};

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
    /// Only this operator you trust (`support trust list`) may act under
    /// the grant; repeat (or separate with commas) for several. Default: every one you trust.
    #[arg(long = "operator", value_name = "NAME", value_delimiter = ',')]
    operators: Vec<String>,
    /// Only these actions of the catalogue may run (`support actions --all`),
    /// separated by commas. Default: every action of the tier.
    #[arg(long, value_name = "ACTION[,ACTION...]", value_delimiter = ',')]
    only: Vec<String>,
    /// At most K actions start under the grant (1 or more). Default: no limit.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    max_actions: Option<u32>,
    /// Print the grant made as one JSON object (`grant`, as `consent.json`
    /// holds it, and `daemon_told`).
    #[arg(long)]
    json: bool,
}

impl Args {
    /// The scope flags as given, for the exact command line to repeat.
    fn scope_words(&self) -> Vec<String> {
        let mut words = Vec::new();
        for op in &self.operators {
            words.extend(["--operator".to_string(), op.clone()]);
        }
        if !self.only.is_empty() {
            words.extend(["--only".to_string(), self.only.join(",")]);
        }
        if let Some(k) = self.max_actions {
            words.extend(["--max-actions".to_string(), k.to_string()]);
        }
        words
    }
}

/// Checks `--operator` against the operators the owner trusts and `--only`
/// against the catalogue at `tier`, before anything is written.
///
/// # Errors
/// [`Error::Usage`] naming the unknown names and the valid ones; trust
/// and catalogue file errors as they come.
fn check_scope(ctx: &Ctx, args: &Args) -> Result<(), Error> {
    if !args.operators.is_empty() {
        let trusted: Vec<String> = crate::trust::list(&ctx.paths)?.into_iter().map(|o| o.name).collect();
        let unknown: Vec<&String> = args.operators.iter().filter(|o| !trusted.contains(o)).collect();
        if !unknown.is_empty() {
            let valid = if trusted.is_empty() {
                format!("you trust no operator yet: {}", ctx.command_line(&["trust", "add", "NAME", "PUBKEY"]))
            } else {
                format!("the operators you trust: {}", trusted.join(", "))
            };
            return Err(Error::Usage(format!("--operator {}: not an operator you trust; {valid}", names(&unknown))));
        }
    }
    if !args.only.is_empty() {
        let catalogue = crate::policy::Catalogue::load(&ctx.paths)?;
        let actions = catalogue.actions();
        let (within, above): (Vec<_>, Vec<_>) = actions.iter().partition(|a| a.tier <= args.tier);
        let unknown: Vec<&String> = args.only.iter().filter(|n| !within.iter().any(|a| &a.name == *n)).collect();
        if !unknown.is_empty() {
            let too_high: Vec<String> = above
                .iter()
                .filter(|a| unknown.contains(&&a.name))
                .map(|a| format!("`{}` needs tier {}", a.name, a.tier.get()))
                .collect();
            let too_high = if too_high.is_empty() { String::new() } else { format!(" ({})", too_high.join(", ")) };
            let valid: Vec<&str> = within.iter().map(|a| a.name.as_str()).collect();
            return Err(Error::Usage(format!(
                "--only {}: no such action at tier {}{too_high}; the actions of tier {} and below: {}",
                names(&unknown),
                args.tier.get(),
                args.tier.get(),
                valid.join(", ")
            )));
        }
    }
    Ok(())
}

/// Names as the user typed them, made printable, comma-separated.
fn names(list: &[&String]) -> String {
    list.iter().map(|n| super::printable(n)).collect::<Vec<_>>().join(", ")
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
        let scope = args.scope_words();
        words.extend(scope.iter().map(String::as_str));
        words.push("--yes");
        return Err(Error::Usage(format!(
            "tier {} lets support do {}. If you mean that, confirm with:\n  {}",
            args.tier,
            args.tier.allows(),
            ctx.command_line(&words)
        )));
    }
    check_scope(ctx, &args)?;
    let listed = |l: Vec<String>| (!l.is_empty()).then_some(l);
    let grant = Grant::new(args.tier, duration, args.reason, ctx.now)
        .and_then(|g| g.scoped(listed(args.operators), listed(args.only), args.max_actions))
        .map_err(Error::Usage)?;

    // The record comes first: a grant that cannot be audited is not made.
    crate::consent_change::grant(&ctx.paths, &grant, None, &mut |r| ctx.audit(r))?;
    // A lower tier than before stops the tasks above it now.
    let told = super::client::tell_consent_changed(&ctx.paths);
    if args.json {
        super::print_json(&serde_json::json!({ "grant": grant, "daemon_told": told }))?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("Granted tier {}: {}.", grant.tier, grant.tier.allows())?;
    if let Some(scope) = grant.scope_words() {
        outln!("Scope: {scope}.")?;
    }
    outln!(
        "Ends {} (in {}). Revoke any time: {}",
        super::human(grant.expires_at),
        humantime::format_duration(duration),
        ctx.command_line(&["revoke"])
    )?;
    if told {
        outln!("The daemon was told.")?;
    }
    Ok(ExitCode::SUCCESS)
}
