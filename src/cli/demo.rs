//! `support demo`: the owner's side of the loop, for real, in a temporary
//! home: no grant, a grant, what it allows, a value that is refused, a
//! revoke, and the audit trail with its verification. Exits 0 only if
//! every step behaved as shown. (The relay and operator join the demo
//! once they exist.)

use std::path::Path;
use std::process::{Command, ExitCode};

use crate::Error;

/// Show grant, status, actions, revoke and the audit trail in a temporary home.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the temporary home afterwards and print where it is.
    #[arg(long)]
    keep: bool,
}

struct Step {
    args: &'static [&'static str],
    why: &'static str,
    exit: i32,
    expect: &'static str,
}

const STEPS: &[Step] = &[
    Step { args: &["status"], why: "A fresh machine: support is off.", exit: 0, expect: "OFF" },
    Step { args: &["actions"], why: "So nothing may run.", exit: 0, expect: "nothing may run" },
    Step {
        args: &["allow", "--tier", "4", "--minutes", "30"],
        why: "Raw shell needs an explicit --yes.",
        exit: 2,
        expect: "--yes",
    },
    Step {
        args: &["allow", "--tier", "1", "--minutes", "30", "--reason", "demo: slow laptop"],
        why: "The owner grants diagnostics for 30 minutes.",
        exit: 0,
        expect: "Granted tier 1",
    },
    Step { args: &["status"], why: "Support is on, and says until when.", exit: 0, expect: "ON" },
    Step { args: &["actions"], why: "What the grant allows.", exit: 0, expect: "system-info" },
    Step {
        args: &["policy", "render", "journal-tail", "unit=; rm -rf ~"],
        why: "A value that fails its type never reaches a command.",
        exit: 2,
        expect: "INVALID_PARAMS",
    },
    Step {
        args: &["policy", "render", "journal-tail", "unit=cups.service", "lines=20"],
        why: "A valid one lands in one argv element each; no shell.",
        exit: 0,
        expect: "\"cups.service\"",
    },
    Step { args: &["revoke"], why: "The owner revokes.", exit: 0, expect: "Revoked" },
    Step { args: &["status"], why: "Off again.", exit: 0, expect: "OFF" },
    Step { args: &["audit"], why: "Every step is on the record.", exit: 0, expect: "consent.revoked" },
    Step { args: &["audit", "--verify"], why: "And the record's chain verifies.", exit: 0, expect: "ok: 2 records" },
];

pub(crate) fn run(args: Args) -> Result<ExitCode, Error> {
    let exe = std::env::current_exe().map_err(|e| Error::Failed(format!("cannot find the support binary: {e}")))?;
    let tmp = tempfile::Builder::new()
        .prefix("support-demo-")
        .tempdir()
        .map_err(|e| Error::Failed(format!("cannot make a temporary home: {e}")))?;
    let home = tmp.path().join("home");
    println!("support demo: a temporary home at {}\n", home.display());
    let mut failed = Vec::new();
    for step in STEPS {
        let (code, out) = run_step(&exe, &home, step.args)?;
        println!("# {}\n$ support {}", step.why, shown(step.args));
        print!("{out}");
        let ok = code == step.exit && out.contains(step.expect);
        if !ok {
            println!("!! expected exit {} and output containing {:?}; got exit {code}", step.exit, step.expect);
            failed.push(shown(step.args));
        }
        println!();
    }
    if args.keep {
        println!("The home is kept at {}", tmp.keep().display());
    }
    if failed.is_empty() {
        println!("demo: every step behaved as shown.");
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Error::Failed(format!("demo: {} step(s) did not behave as shown: {}", failed.len(), failed.join("; "))))
    }
}

fn shown(args: &[&str]) -> String {
    shlex::try_join(args.iter().copied()).unwrap_or_else(|_| args.join(" "))
}

fn run_step(exe: &Path, home: &Path, args: &[&str]) -> Result<(i32, String), Error> {
    let out = Command::new(exe)
        .arg("--home")
        .arg(home)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .map_err(|e| Error::Failed(format!("cannot run {}: {e}", exe.display())))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code().unwrap_or(-1), text))
}
