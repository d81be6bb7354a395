//! `support actions [--all] [--json]`

use std::process::ExitCode;

use serde_json::{Value, json};

use super::Ctx;
use super::out::outln;
use super::table::{Listing, Wrap};
use crate::Error;
use crate::consent::{self, Consent};
use crate::policy::{Action, Catalogue};

/// List what support may do under the grant in force.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The whole catalogue, whatever the grant.
    #[arg(long)]
    all: bool,
    /// One JSON array of actions.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Result<ExitCode, Error> {
    let catalogue = Catalogue::load(&ctx.paths)?;
    let consent = consent::read(&ctx.paths, ctx.now);
    // What the grant allows: its tier, and its `--only` when scoped.
    let allowed = |a: &Action| consent.live().is_some_and(|g| a.tier <= g.tier && g.allows_action(&a.name));
    let live_tier = consent.live().map(|g| g.tier);
    let shown: Vec<Action> = catalogue.actions().into_iter().filter(|a| args.all || allowed(a)).collect();
    if args.json {
        let list: Vec<Value> = shown.iter().map(|a| action_json(a, allowed(a))).collect();
        super::print_json(&Value::Array(list))?;
        return Ok(ExitCode::SUCCESS);
    }
    match (&consent, args.all) {
        (Consent::Off(off), false) => {
            outln!("support is off ({}): nothing may run.", off.reason())?;
            outln!("`{}` shows the whole catalogue.", ctx.command_line(&["actions", "--all"]))?;
            return Ok(ExitCode::SUCCESS);
        }
        (Consent::Live(g), false) => {
            outln!("Under the grant in force (tier {}, {}), support may run:", g.tier.get(), g.tier.name())?
        }
        (_, true) => outln!("The whole catalogue{}:", if live_tier.is_some() { " (* = allowed now)" } else { "" })?,
    }
    let mut table = Listing::new(&[
        ("action", Wrap::Words),
        ("tier", Wrap::Words),
        ("kind", Wrap::Words),
        ("parameters", Wrap::Text),
        ("description", Wrap::Text),
    ]);
    for a in &shown {
        let name = if args.all && allowed(a) { format!("{} *", a.name) } else { a.name.clone() };
        let params: Vec<String> = a
            .params
            .iter()
            .map(|p| {
                let optional = if p.required && p.default.is_none() { "" } else { "?" };
                format!("{}{optional}: {}", p.name, p.type_label())
            })
            .collect();
        table.row([
            name,
            a.tier.get().to_string(),
            a.kind.to_string(),
            params.iter().map(|p| super::printable(p)).collect::<Vec<_>>().join("\n"),
            super::printable(&a.description),
        ]);
    }
    table.print()?;
    Ok(ExitCode::SUCCESS)
}

fn action_json(a: &Action, allowed: bool) -> Value {
    json!({
        "name": a.name,
        "tier": a.tier.get(),
        "kind": a.kind.as_str(),
        "description": a.description,
        "allowed": allowed,
        "params": a.params.iter().map(|p| json!({
            "name": p.name,
            "type": p.type_label(),
            "required": p.required && p.default.is_none(),
            "default": p.default,
            "max_len": p.max_len,
            "description": p.description,
        })).collect::<Vec<_>>(),
        "commands": a.commands,
        "timeout_s": a.timeout_s,
        "max_output_bytes": a.max_output_bytes,
        "source": a.source,
    })
}
