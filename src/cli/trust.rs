//! `support trust add NAME PUBKEY` · `support trust remove NAME` · `support trust list [--json]`

use std::process::ExitCode;

use super::out::outln;
use super::table::{Listing, Wrap};
use super::{Ctx, printable};
use crate::Error;
use crate::audit::{Event, Record};
use crate::identity::PublicKey;
use crate::trust;

/// Manage the operators whose signed commands you accept.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Trust an operator's Ed25519 public key (`ed25519:` + 43 base64url characters).
    Add {
        /// A name for the operator: letters, digits, `.`, `_`, `-` (1 to 64).
        name: String,
        /// The key printed by `support operator keygen`.
        public_key: String,
    },
    /// Stop trusting an operator; any task they started stops now.
    Remove {
        /// The operator's name.
        name: String,
    },
    /// List the trusted operators.
    List {
        /// One JSON array.
        #[arg(long)]
        json: bool,
    },
}

fn record(event: Event, name: &str, key: &str) -> Record {
    let mut r = Record::new(event);
    r.operator = Some(name.into());
    r.detail = Some(key.parse::<PublicKey>().map(|k| k.fingerprint()).unwrap_or_else(|_| key.into()));
    r
}

pub(crate) fn run(ctx: &Ctx, command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Add { name, public_key } => {
            // Before anything else: a task must not add an operator (its own
            // key, say) to widen who may command, and every attempt is on the record.
            if let Some(evidence) = super::guard::inside_task(&ctx.paths) {
                let mut r = Record::new(Event::TrustRefused);
                let fingerprint = public_key.trim().parse::<PublicKey>().map(|k| k.fingerprint());
                if trust::valid_name(&name) {
                    r.operator = Some(name.clone());
                }
                r.detail = Some(format!(
                    "run inside a support task: {evidence}; asked to trust `{}` ({})",
                    super::guard::short(&name),
                    fingerprint.as_deref().unwrap_or("not a valid key")
                ));
                return Err(super::guard::refuse(ctx, "trust add", &evidence, r));
            }
            let key = trust::check_new(&ctx.paths, &name, &public_key)?;
            ctx.audit(record(Event::TrustAdded, &name, &key.to_string()))?;
            trust::add(&ctx.paths, &name, &public_key, ctx.now)?;
            outln!("Trusted `{name}` ({}).", key.fingerprint())?;
            outln!("Their signed commands run only within your grant: {}", ctx.command_line(&["status"]))?;
        }
        Command::Remove { name } => {
            // Withdrawing trust must work even when the audit log cannot be written.
            let op = trust::remove(&ctx.paths, &name)?;
            let audited = ctx.audit(record(Event::TrustRemoved, &op.name, &op.public_key));
            // Their running tasks stop now (after the record, so it comes
            // first in the log), whether or not it could be written.
            let told = super::client::tell_consent_changed(&ctx.paths);
            audited.map_err(|e| {
                Error::Failed(format!(
                    "`{name}` is no longer trusted, but the audit record could not be written: {}",
                    crate::ErrorChain(&e)
                ))
            })?;
            outln!("`{name}` is no longer trusted.")?;
            if told {
                outln!("Any task of theirs that was running is stopped (`task.stopped`, by: trust_removed).")?;
            }
        }
        Command::List { json } => {
            let ops = trust::list(&ctx.paths)?;
            if json {
                let list: Vec<_> = ops
                    .iter()
                    .map(|o| {
                        let fp = o.public_key.parse::<PublicKey>().map(|k| k.fingerprint()).unwrap_or_default();
                        serde_json::json!({"name": o.name, "public_key": o.public_key, "fingerprint": fp, "added_at": o.added_at})
                    })
                    .collect();
                super::print_json(&serde_json::Value::Array(list))?;
            } else if ops.is_empty() {
                outln!("No operators are trusted. Add one: {}", ctx.command_line(&["trust", "add", "NAME", "PUBKEY"]))?;
            } else {
                let mut table =
                    Listing::new(&[("operator", Wrap::Words), ("fingerprint", Wrap::Text), ("added", Wrap::Instant)]);
                for o in &ops {
                    let fp = o.public_key.parse::<PublicKey>().map(|k| k.fingerprint()).unwrap_or_default();
                    table.row([printable(&o.name), fp, super::human_text(&o.added_at)]);
                }
                table.print()?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
