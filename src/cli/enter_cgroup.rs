//! `support __enter-cgroup` (hidden): how the daemon starts a task's
//! command inside the task's cgroup, before the command runs a single
//! instruction of its own (`daemon::tree::enter_and_exec`).

use std::ffi::OsString;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::daemon::tree::NotRun;

/// Enter a cgroup, then exec a command in place (for the daemon only).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The cgroup's `cgroup.procs`.
    procs: PathBuf,
    /// The program, its argv[0], and its arguments.
    #[arg(last = true, required = true, num_args = 2..)]
    command: Vec<OsString>,
}

/// Returns only on failure: 126 when the cgroup could not be entered
/// (nothing ran), 127 when the exec failed, as a shell would.
pub(crate) fn run(args: Args) -> ExitCode {
    let [program, argv0, rest @ ..] = args.command.as_slice() else { return ExitCode::from(2) };
    let why = crate::daemon::tree::enter_and_exec(&args.procs, program, argv0, rest);
    // The task's stderr: the operator and the owner see why.
    let _ = writeln!(std::io::stderr(), "support: {why}");
    ExitCode::from(match why {
        NotRun::Cgroup(..) => 126,
        NotRun::Exec(..) => 127,
    })
}
