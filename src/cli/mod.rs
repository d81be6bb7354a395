//! The command line: one module per subcommand, each with its clap `Args`
//! and a `run` returning the exit code or an [`Error`]. Beside them:
//! `device_name` (a device named by id or name, for `operator` and
//! `relay`), `relay_admin` (the relay's admin listings), and the helpers
//! they share (`out`, `table`, `client`, `guard`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};

use crate::audit::{AuditLog, Record};
use crate::{Error, Paths};

mod actions;
mod allow;
mod audit;
mod client;
mod completions;
mod console;
mod daemon;
mod demo;
mod device_name;
mod enter_cgroup;
mod guard;
mod operator;
mod operator_profile;
mod out;
mod policy;
mod recordings;
mod relay;
mod relay_admin;
mod revoke;
mod service;
mod status;
mod summary;
pub(crate) mod table;
mod tasks;
mod terminal;
mod trust;
mod version;

/// support: let a support team help with this machine, only as far and as
/// long as you say, with every step on the record.
#[derive(Debug, Parser)]
#[command(name = "support", version, max_term_width = 100)]
pub struct Cli {
    /// Keep every file under DIR instead of the XDG config and state directories.
    #[arg(long, global = true, env = "SUPPORT_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Grant support a tier of actions for a while (replaces any earlier grant).
    Allow(allow::Args),
    /// Withdraw the grant now.
    Revoke(revoke::Args),
    /// Show the grant in force, the daemon, and where files live.
    Status(status::Args),
    /// List or verify the audit log.
    Audit(audit::Args),
    /// Show what ran under a grant (the last one by default).
    Summary(summary::Args),
    /// List what support may do under the grant in force.
    Actions(actions::Args),
    /// Check or try the action catalogue.
    #[command(subcommand)]
    Policy(policy::Command),
    /// Manage the operators whose signed commands you accept.
    #[command(subcommand)]
    Trust(trust::Command),
    /// Run the daemon in the foreground: it runs what operators send, within your grant.
    Daemon(daemon::Args),
    /// Install, check or remove the daemon as a systemd service.
    #[command(subcommand)]
    Service(service::Command),
    /// List the tasks the daemon is running.
    Tasks(tasks::TasksArgs),
    /// Stop a running task now (its whole process tree).
    Stop(tasks::StopArgs),
    /// Follow what the daemon does, live.
    Watch(tasks::WatchArgs),
    /// Open the owner's console in the browser: see and stop what support does.
    Console(console::Args),
    /// List the recordings of interactive shell sessions.
    Recordings(recordings::ListArgs),
    /// Replay a recorded interactive session in this terminal.
    Play(recordings::PlayArgs),
    /// Run the relay, or administer its registry (enroll tokens, operators, devices).
    Relay(relay::Args),
    /// The support side: keys, devices, run an action, cancel.
    Operator(operator::Args),
    /// The whole loop on this machine: relay, daemon, operator, grant, denials, audit.
    Demo(demo::Args),
    /// Show the version, the commit it was built from and the protocol version.
    Version(version::Args),
    /// Print the shell completion script for bash, zsh or fish.
    Completions(completions::CompletionsArgs),
    /// Write the man pages of every command into a directory.
    Man(completions::ManArgs),
    /// How the daemon starts a command inside its task's cgroup.
    #[command(name = "__enter-cgroup", hide = true)]
    EnterCgroup(enter_cgroup::Args),
}

/// What every subcommand gets.
pub(crate) struct Ctx {
    pub paths: Paths,
    /// `--home` as given, to repeat it in commands we print.
    pub home_flag: Option<PathBuf>,
    pub now: DateTime<Utc>,
}

impl Ctx {
    /// Opens the audit log and appends one record.
    pub fn audit(&self, record: Record) -> Result<Record, Error> {
        Ok(AuditLog::open(&self.paths)?.append(record)?)
    }

    /// `support [--home DIR] ARGS` with shell quoting, for messages.
    pub fn command_line(&self, args: &[&str]) -> String {
        let mut words = vec!["support".to_string()];
        if let Some(home) = &self.home_flag {
            words.push("--home".into());
            words.push(home.display().to_string());
        }
        words.extend(args.iter().map(|s| s.to_string()));
        shlex::try_join(words.iter().map(String::as_str)).unwrap_or_else(|_| words.join(" "))
    }
}

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the subcommand returns; `main` maps it to an exit code.
pub fn run(cli: Cli) -> Result<ExitCode, Error> {
    let command = match cli.command {
        // Before the home is resolved: it needs none, and runs in a task's environment.
        Command::EnterCgroup(a) => return Ok(enter_cgroup::run(a)),
        // Nor do these: they describe the binary.
        Command::Version(a) => return version::run(a),
        Command::Completions(a) => return completions::completions(a),
        Command::Man(a) => return completions::man(a),
        c => c,
    };
    let paths = Paths::resolve(cli.home.clone())?;
    let ctx = Ctx { paths, home_flag: cli.home, now: Utc::now() };
    match command {
        Command::Allow(a) => allow::run(&ctx, a),
        Command::Revoke(a) => revoke::run(&ctx, a),
        Command::Status(a) => status::run(&ctx, a),
        Command::Audit(a) => audit::run(&ctx, a),
        Command::Summary(a) => summary::run(&ctx, a),
        Command::Actions(a) => actions::run(&ctx, a),
        Command::Policy(c) => policy::run(&ctx, c),
        Command::Trust(c) => trust::run(&ctx, c),
        Command::Daemon(a) => daemon::run(&ctx, a),
        Command::Service(c) => service::run(&ctx, c),
        Command::Tasks(a) => tasks::tasks(&ctx, a),
        Command::Stop(a) => tasks::stop(&ctx, a),
        Command::Watch(a) => tasks::watch(&ctx, a),
        Command::Console(a) => console::run(&ctx, a),
        Command::Recordings(a) => recordings::list(&ctx, a),
        Command::Play(a) => recordings::play(&ctx, a),
        Command::Relay(a) => relay::run(&ctx, a),
        Command::Operator(a) => operator::run(&ctx.paths, a),
        Command::Demo(a) => demo::run(a),
        Command::EnterCgroup(a) => Ok(enter_cgroup::run(a)),
        Command::Version(a) => version::run(a),
        Command::Completions(a) => completions::completions(a),
        Command::Man(a) => completions::man(a),
    }
}

/// Colour only for a terminal, and never when `NO_COLOR` is set (no-color.org).
pub(crate) fn color() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal()
}

/// Wraps `text` in an ANSI colour (`32` green, `31` red, `33` yellow) when [`color`] allows.
pub(crate) fn paint(text: &str, code: &str) -> String {
    if color() { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
}

pub(crate) use crate::text::printable;
pub(crate) use crate::time::{human, human_text};

/// Prints a JSON value on one line of stdout.
///
/// # Errors
/// [`Error::Stdout`] when stdout cannot be written (see [`out`]).
pub(crate) fn print_json(value: &serde_json::Value) -> Result<(), Error> {
    out::line(format_args!("{value}"))
}
