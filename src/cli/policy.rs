//! `support policy check [PATH]` and `support policy render ACTION [NAME=VALUE ...]`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use super::Ctx;
use super::out::outln;
use crate::Error;
use crate::policy::Catalogue;

/// Check or try the action catalogue.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate a catalogue file as a policy.d addition (default: the catalogue in force). Exit 2 on errors.
    Check {
        /// A TOML catalogue file.
        path: Option<PathBuf>,
        /// Print one JSON object: `ok`, `path` (or null), `actions` (their names).
        #[arg(long)]
        json: bool,
    },
    /// Print the exact argv an action would run with these parameters; runs nothing.
    Render {
        /// The action's name.
        action: String,
        /// Parameters as NAME=VALUE.
        params: Vec<String>,
    },
}

pub(crate) fn run(ctx: &Ctx, command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Check { path: Some(path), json } => {
            let mut cat = Catalogue::default_only()?;
            cat.merge_file(&path)?;
            if json {
                return checked(Some(&path), &cat);
            }
            outln!(
                "ok: {} is valid; with the default catalogue it makes {} actions",
                path.display(),
                cat.actions().len()
            )?;
        }
        Command::Check { path: None, json } => {
            let cat = Catalogue::load(&ctx.paths)?;
            if json {
                return checked(None, &cat);
            }
            outln!(
                "ok: the catalogue in force has {} actions (default + {})",
                cat.actions().len(),
                ctx.paths.policy_dir().join("*.toml").display()
            )?;
        }
        Command::Render { action, params } => {
            let cat = Catalogue::load(&ctx.paths)?;
            let action = cat.get(&action)?;
            let params = parse_params(&params)?;
            let rendered = action.render(&params).map_err(crate::PolicyError::from)?;
            for argv in &rendered.commands {
                outln!("{}", serde_json::to_string(argv).expect("strings serialise"))?;
            }
            if let Some(stdin) = &rendered.stdin {
                outln!("stdin: {} bytes", stdin.len())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `policy check --json`: the catalogue passed.
fn checked(path: Option<&std::path::Path>, cat: &Catalogue) -> Result<ExitCode, Error> {
    let names: Vec<String> = cat.actions().into_iter().map(|a| a.name.clone()).collect();
    super::print_json(&serde_json::json!({ "ok": true, "path": path, "actions": names }))?;
    Ok(ExitCode::SUCCESS)
}

/// `NAME=VALUE` words into a map; the value may hold `=`.
///
/// # Errors
/// [`Error::Usage`] for a word without `=` or a repeated name.
pub(crate) fn parse_params(words: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for w in words {
        let (k, v) = w.split_once('=').ok_or_else(|| Error::Usage(format!("`{w}`: give parameters as NAME=VALUE")))?;
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(Error::Usage(format!("parameter `{k}` is given twice")));
        }
    }
    Ok(out)
}
