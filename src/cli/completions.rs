//! `support completions SHELL` and `support man DIR`: shell completions
//! (`clap_complete`) and man pages (`clap_mangen`) made from the command
//! line's own definitions, so they cover every command as it is.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::CommandFactory as _;

use super::out::outln;
use crate::Error;

/// Print a shell's completion script.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// bash, zsh or fish (also elvish, powershell).
    #[arg(value_name = "SHELL")]
    shell: clap_complete::Shell,
}

/// Write a man page for `support` and for each of its subcommands.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Where to write them (made if missing): `support.1`, `support-allow.1`,
    /// `support-relay-serve.1`, ...
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

/// Prints the completion script for `args.shell` on stdout.
///
/// # Errors
/// [`Error::Stdout`] when stdout cannot be written.
pub(crate) fn completions(args: CompletionsArgs) -> Result<ExitCode, Error> {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut super::Cli::command(), "support", &mut script);
    super::out::raw(&script)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the man pages into `args.dir` and says how many.
///
/// # Errors
/// [`Error::Failed`] naming the directory when it cannot be made or written.
pub(crate) fn man(args: ManArgs) -> Result<ExitCode, Error> {
    let failed = |e: std::io::Error| Error::Failed(format!("cannot write man pages to {}: {e}", args.dir.display()));
    std::fs::create_dir_all(&args.dir).map_err(failed)?;
    let cmd = super::Cli::command();
    let pages = pages(&cmd);
    clap_mangen::generate_to(cmd, &args.dir).map_err(failed)?;
    outln!("wrote {pages} man pages to {}", args.dir.display())?;
    Ok(ExitCode::SUCCESS)
}

/// How many pages `clap_mangen::generate_to` writes for `cmd`: one for it
/// and one for each subcommand that is not hidden, all the way down.
fn pages(cmd: &clap::Command) -> usize {
    1 + cmd.get_subcommands().filter(|s| !s.is_hide_set()).map(pages).sum::<usize>()
}
