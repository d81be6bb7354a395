//! `support audit [--limit N] [--json] [--verify]`

use std::process::ExitCode;

use super::out::outln;
use super::table::{Listing, Wrap};
use super::{Ctx, printable};
use crate::Error;
use crate::audit::{self, Record};

/// List the audit log, newest first, or verify its whole chain.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Show at most N records (0: all).
    #[arg(long, value_name = "N", default_value_t = 50)]
    limit: usize,
    /// Print one record per line, as stored; with --verify, one object
    /// (`ok`, `records`, `head`: `{seq, mac}` or null).
    #[arg(long)]
    json: bool,
    /// Check the whole chain; exit 1 naming the first bad seq.
    #[arg(long, conflicts_with = "limit")]
    verify: bool,
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Result<ExitCode, Error> {
    if args.verify {
        let v = audit::verify(&ctx.paths)?;
        if args.json {
            let head = (v.records > 0).then(|| serde_json::json!({ "seq": v.head.seq, "mac": v.head.mac }));
            super::print_json(&serde_json::json!({ "ok": true, "records": v.records, "head": head }))?;
            return Ok(ExitCode::SUCCESS);
        }
        outln!("ok: {} records", v.records)?;
        if v.records > 0 {
            outln!("head: seq {} mac {}", v.head.seq, v.head.mac)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let listing = audit::list(&ctx.paths, args.limit)?;
    let newest: Vec<_> = listing.records.iter().rev().collect();
    if args.json {
        for listed in newest {
            match &listed.record {
                Some(r) => outln!("{}", serde_json::to_string(r).expect("records serialise"))?,
                None => outln!("{}", serde_json::json!({ "unreadable": true, "verified": false }))?,
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if listing.total == 0 {
        outln!("No audit records yet ({}).", ctx.paths.audit().display())?;
        return Ok(ExitCode::SUCCESS);
    }
    // Six columns, not eight: the mark rides with the seq and the action
    // with its event, so an 80-column terminal keeps every name whole.
    let mut table = Listing::new(&[
        ("time", Wrap::Instant),
        ("seq", Wrap::Words),
        ("event", Wrap::Words),
        ("tier", Wrap::Words),
        ("operator", Wrap::Words),
        ("outcome", Wrap::Text),
    ]);
    let mut broken = 0;
    for listed in &newest {
        let mark = if listed.verified { "✓" } else { "✗" };
        broken += usize::from(!listed.verified);
        let row = match &listed.record {
            Some(r) => vec![
                time(r),
                format!("{mark} {}", r.seq),
                match &r.action {
                    Some(action) => format!("{} {}", r.event.as_str(), printable(action)),
                    None => r.event.as_str().into(),
                },
                r.tier.map(|t| t.to_string()).unwrap_or_default(),
                printable(r.operator.as_deref().unwrap_or("")),
                printable(&outcome(r)),
            ],
            None => vec!["?".into(), format!("{mark} ?"), "(unreadable record)".into()],
        };
        table.row(row);
    }
    table.print()?;
    outln!("{} of {} records, newest first.", newest.len(), listing.total)?;
    if broken > 0 {
        outln!("{broken} shown do not verify (✗); run `support audit --verify` for the first break.")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn time(r: &Record) -> String {
    super::human_text(&r.ts)
}

/// The one-cell summary of how a record ended, and through what the
/// owner made the change when not the CLI (`via console`).
fn outcome(r: &Record) -> String {
    let ended = ending(r);
    match &r.via {
        Some(via) if ended.is_empty() => format!("via {}", printable(via)),
        Some(via) => format!("{ended} (via {})", printable(via)),
        None => ended,
    }
}

fn ending(r: &Record) -> String {
    if r.event == crate::audit::Event::ActionDeniedAggregated
        && let (Some(code), Some(count)) = (&r.code, r.detail.as_deref().and_then(|d| d.split(' ').next()))
    {
        return format!("{count} × denied {code}");
    }
    if let Some(code) = &r.code {
        return format!("denied {code}");
    }
    if let Some(status) = &r.status {
        // A task's reason (`action.finished`) says why it ended without an exit code.
        return match (r.exit_code, &r.reason) {
            (Some(c), _) => format!("{status} (exit {c})"),
            (None, Some(why)) if status != "ok" => format!("{status}: {}", printable(why)),
            (None, _) => status.clone(),
        };
    }
    if let Some(by) = &r.by {
        return format!("by {by}");
    }
    r.detail.clone().or_else(|| r.reason.clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::outcome;
    use crate::audit::{Event, Record};

    #[test]
    fn a_task_that_ended_without_an_exit_code_says_why() {
        let mut r = Record::new(Event::ActionFinished);
        r.status = Some("failed".into());
        r.reason = Some("the agent host answered 403 Forbidden: \u{1b}[31mno".into());
        assert_eq!(outcome(&r), "failed: the agent host answered 403 Forbidden: ?[31mno");
        r.exit_code = Some(2);
        assert_eq!(outcome(&r), "failed (exit 2)");
        let mut ok = Record::new(Event::ActionFinished);
        ok.status = Some("ok".into());
        ok.reason = Some("ignored".into());
        assert_eq!(outcome(&ok), "ok");
    }
}
