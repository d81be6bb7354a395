//! `support service install|status|uninstall|unit`: the daemon as a
//! systemd service in one command, as `tailscale up` or `cloudflared
//! service install` do it. The unit is `contrib/systemd/support-daemon.service`
//! (embedded) with `ExecStart` set to this binary; `--user` (the default)
//! installs it for this user (`~/.config/systemd/user`), `--system` as a
//! system service that runs as this user (`/etc/systemd/system`, root
//! needed; `User=` the owner, so no lingering session is needed). The relay
//! settings go to `daemon.toml` (0600), which `support daemon` reads.
//!
//! Without systemd (no `/run/systemd/system`, sd_booted(3)) nothing is
//! installed: it says so and prints the foreground command (exit 1).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::Ctx;
use super::out::outln;
use crate::Error;

/// The user unit, as shipped.
const USER_UNIT: &str = include_str!("../../contrib/systemd/support-daemon.service");

/// The unit's name.
const UNIT: &str = "support-daemon.service";

/// Run support's daemon as a systemd service.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write daemon.toml and the unit, then enable and start it (where systemd runs).
    Install(InstallArgs),
    /// Whether the service runs, restarts or failed, and since when.
    Status(ScopeArgs),
    /// Stop, disable and remove the unit (daemon.toml, grants and the audit log stay).
    Uninstall(ScopeArgs),
    /// Print the unit that `install` writes.
    Unit(ScopeArgs),
}

/// `--user` or `--system`.
#[derive(Debug, clap::Args)]
pub struct ScopeArgs {
    /// For this user (the default): ~/.config/systemd/user, `systemctl --user`.
    #[arg(long, conflicts_with = "system")]
    user: bool,
    /// As a system service running as this user: /etc/systemd/system (needs root).
    #[arg(long)]
    system: bool,
    /// One JSON object (`status` only).
    #[arg(long)]
    json: bool,
}

/// `service install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    scope: ScopeArgs,
    /// The relay: wss://HOST:PORT; repeat for the relays of a cluster.
    #[arg(long, value_name = "URL")]
    relay: Vec<String>,
    /// The relay's CA certificate (PEM), or `system`.
    #[arg(long, value_name = "PEM|system", conflicts_with = "relay_fingerprint")]
    relay_ca: Option<String>,
    /// The relay certificate's SHA-256 (as `support relay serve` prints it).
    #[arg(long, value_name = "SHA256")]
    relay_fingerprint: Option<String>,
    /// A one-time enrolment token (`support relay enroll-token`).
    #[arg(long, value_name = "TOKEN")]
    enroll: Option<String>,
}

/// Where the unit goes and how systemctl is called.
struct Scope {
    system: bool,
    /// The owner the daemon runs as (`User=` of a system unit).
    user: String,
}

impl Scope {
    fn of(args: &ScopeArgs) -> Scope {
        // Under sudo, the owner is who ran sudo: the daemon is theirs.
        let user = std::env::var("SUDO_USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(crate::paths::current_user);
        Scope { system: args.system, user }
    }

    fn unit_path(&self) -> Result<PathBuf, Error> {
        if self.system {
            return Ok(PathBuf::from("/etc/systemd/system").join(UNIT));
        }
        let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from(std::env::var_os("HOME").ok_or_else(|| Error::Usage("HOME is not set".into()))?)
                .join(".config"),
        };
        Ok(config.join("systemd/user").join(UNIT))
    }

    /// `systemctl [--user] ARGS`, its output captured.
    fn systemctl(&self, args: &[&str]) -> Result<std::process::Output, Error> {
        let mut cmd = std::process::Command::new("systemctl");
        if !self.system {
            cmd.arg("--user");
        }
        cmd.args(args).output().map_err(|e| Error::Failed(format!("cannot run systemctl: {e}")))
    }

    /// Runs `systemctl ARGS`, failing with what it said.
    fn must(&self, args: &[&str]) -> Result<(), Error> {
        let out = self.systemctl(args)?;
        if out.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&out.stderr);
        Err(Error::Failed(format!("systemctl {} failed: {}", args.join(" "), super::printable(said.trim()))))
    }

    /// The unit for this binary: `ExecStart` at `exe`; a system unit runs as the owner.
    fn render(&self, exe: &Path) -> String {
        let mut unit = String::new();
        for line in USER_UNIT.lines() {
            if line.starts_with("ExecStart=") {
                unit.push_str(&format!("ExecStart={} daemon\n", exe.display()));
                if self.system {
                    unit.push_str(&format!("User={}\n", self.user));
                }
            } else if self.system && line == "WantedBy=default.target" {
                unit.push_str("WantedBy=multi-user.target\n");
            } else if line.starts_with('#') && unit.is_empty() {
                // The install notes at the top are for the file as shipped.
            } else {
                unit.push_str(line);
                unit.push('\n');
            }
        }
        format!("# Written by `support service install{}`.\n{unit}", if self.system { " --system" } else { "" })
    }
}

/// Whether systemd is the init system here (sd_booted(3)).
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

pub(crate) fn run(ctx: &Ctx, command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Install(a) => install(ctx, a),
        Command::Status(a) => status(&Scope::of(&a), a.json),
        Command::Uninstall(a) => uninstall(&Scope::of(&a)),
        Command::Unit(a) => {
            super::out::raw(Scope::of(&a).render(&exe()?).as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// This binary, as the unit runs it.
fn exe() -> Result<PathBuf, Error> {
    std::env::current_exe().map_err(|e| Error::Failed(format!("cannot tell where this binary is: {e}")))
}

fn install(ctx: &Ctx, a: InstallArgs) -> Result<ExitCode, Error> {
    let scope = Scope::of(&a.scope);
    let wrote = write_daemon_toml(ctx, &a)?;
    if let Some(path) = &wrote {
        eprintln!("Wrote {} (0600): the relay settings `support daemon` reads.", path.display());
    }
    let foreground = ctx.command_line(&["daemon"]);
    if !systemd_runs() {
        eprintln!("systemd is not running on this machine (no /run/systemd/system): no service was installed.");
        eprintln!("Run the daemon in the foreground instead (it stops with the terminal):\n  {foreground}");
        return Err(Error::Failed("cannot install a service without systemd".into()));
    }
    let unit = scope.unit_path()?;
    if let Some(dir) = unit.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::Failed(format!("cannot make {}: {e}", dir.display())))?;
    }
    std::fs::write(&unit, scope.render(&exe()?))
        .map_err(|e| Error::Failed(format!("cannot write {}: {e}", unit.display())))?;
    eprintln!("Wrote {}.", unit.display());
    scope.must(&["daemon-reload"])?;
    scope.must(&["enable", "--now", UNIT])?;
    let ctl = if scope.system { "systemctl" } else { "systemctl --user" };
    eprintln!("Enabled and started {UNIT} ({ctl} status {UNIT}; `support service status`).");
    if !scope.system && !lingers(&scope.user) {
        eprintln!(
            "It runs while you are logged in; to keep it running after you log out: loginctl enable-linger {}",
            scope.user
        );
    }
    outln!("{}", unit.display())?;
    Ok(ExitCode::SUCCESS)
}

/// Whether logind keeps this user's manager running without a session.
fn lingers(user: &str) -> bool {
    std::process::Command::new("loginctl")
        .args(["show-user", user, "--property=Linger", "--value"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "yes")
}

/// Writes the relay settings given into `daemon.toml` (0600), keeping the
/// keys it already has that were not given. `None` when none was given.
fn write_daemon_toml(ctx: &Ctx, a: &InstallArgs) -> Result<Option<PathBuf>, Error> {
    if a.relay.is_empty() {
        if a.relay_ca.is_some() || a.relay_fingerprint.is_some() || a.enroll.is_some() {
            return Err(Error::Usage("--relay-ca, --relay-fingerprint and --enroll need --relay URL".into()));
        }
        return Ok(None);
    }
    for url in &a.relay {
        let _: crate::dial::RelayUrl = url.parse().map_err(|e: crate::dial::DialError| Error::Usage(e.to_string()))?;
    }
    let relay_ca = a.relay_ca.as_deref().map(super::operator_profile::absolute_ca);
    let trust = crate::tls::RelayTrust::from_flags(relay_ca.as_deref(), a.relay_fingerprint.as_deref())
        .map_err(|e| Error::Usage(crate::ErrorChain(&e).to_string()))?;
    trust.client_config().map_err(|e| Error::Usage(crate::ErrorChain(&e).to_string()))?;
    let path = ctx.paths.daemon_config();
    let mut table = match crate::paths::read_secret(&path, 64 * 1024)? {
        Some(bytes) => String::from_utf8(bytes)
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .ok_or_else(|| Error::Usage(format!("{}: not a TOML file; fix or remove it first", path.display())))?,
        None => toml::Table::new(),
    };
    for key in ["relay", "relay_ca", "relay_fingerprint", "enroll"] {
        table.remove(key);
    }
    let relay = match a.relay.as_slice() {
        [one] => toml::Value::String(one.clone()),
        many => toml::Value::Array(many.iter().cloned().map(toml::Value::String).collect()),
    };
    table.insert("relay".into(), relay);
    if let Some(ca) = relay_ca {
        table.insert("relay_ca".into(), toml::Value::String(ca));
    }
    if let Some(fp) = &a.relay_fingerprint {
        table.insert("relay_fingerprint".into(), toml::Value::String(fp.clone()));
    }
    if let Some(token) = &a.enroll {
        table.insert("enroll".into(), toml::Value::String(token.clone()));
    }
    crate::paths::ensure_dir(&ctx.paths.config_dir)?;
    crate::paths::write_atomic(&path, table.to_string().as_bytes())?;
    Ok(Some(path))
}

/// What systemd says of the unit.
fn status(scope: &Scope, json: bool) -> Result<ExitCode, Error> {
    if !systemd_runs() {
        let said = "not installed: systemd is not running on this machine (run `support daemon` in the foreground)";
        if json {
            super::print_json(&serde_json::json!({ "state": "no-systemd", "message": said }))?;
        } else {
            outln!("{said}")?;
        }
        return Ok(ExitCode::from(3));
    }
    let props = "LoadState,ActiveState,SubState,NRestarts,ExecMainStatus,Result,StateChangeTimestamp";
    let out = scope.systemctl(&["show", UNIT, &format!("--property={props}")])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |k: &str| {
        text.lines().find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('='))).unwrap_or("").to_string()
    };
    let (load, active, sub, restarts) = (get("LoadState"), get("ActiveState"), get("SubState"), get("NRestarts"));
    let since = get("StateChangeTimestamp");
    let when = state_change(scope).map_or_else(|| super::printable(&since), super::human);
    let state = match (load.as_str(), active.as_str(), sub.as_str()) {
        ("not-found", ..) => "not-installed",
        (_, "active", _) => "running",
        (_, "activating", "auto-restart") => "restarting",
        (_, "failed", _) => "failed",
        _ => "stopped",
    };
    let line = match state {
        "not-installed" => "not installed (support service install)".to_string(),
        "running" => format!("running since {when}"),
        "restarting" => format!(
            "restarting: it crashed {restarts} time(s) in a row, last exit status {} (since {when})",
            get("ExecMainStatus")
        ),
        "failed" => format!(
            "failed after {restarts} restart(s) in a row ({}, exit status {}), since {when}",
            get("Result"),
            get("ExecMainStatus")
        ),
        _ => format!("stopped since {when}"),
    };
    if json {
        super::print_json(&serde_json::json!({
            "state": state, "since": since, "restarts": restarts.parse::<u64>().ok(),
            "exit_status": get("ExecMainStatus").parse::<i64>().ok(), "result": get("Result"), "message": line,
        }))?;
    } else {
        outln!("{UNIT}: {line}")?;
    }
    Ok(if state == "running" { ExitCode::SUCCESS } else { ExitCode::from(3) })
}

/// When the unit last changed state, from systemd's `unix` form of it
/// (`--timestamp=unix`, systemd 251 and later); `None` when systemd does
/// not give that form, or the unit never changed state.
fn state_change(scope: &Scope) -> Option<chrono::DateTime<chrono::Utc>> {
    let out =
        scope.systemctl(&["show", UNIT, "--property=StateChangeTimestamp", "--value", "--timestamp=unix"]).ok()?;
    out.status.success().then(|| unix_timestamp(&String::from_utf8_lossy(&out.stdout)))?
}

/// `@1764622682` (systemd.time(7), "seconds since the epoch") as an instant.
fn unix_timestamp(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(text.trim().strip_prefix('@')?.parse().ok()?, 0)
}

fn uninstall(scope: &Scope) -> Result<ExitCode, Error> {
    if !systemd_runs() {
        return Err(Error::Failed("systemd is not running on this machine: no service to uninstall".into()));
    }
    let unit = scope.unit_path()?;
    // Stopping it ends every running task, recorded as cancelled_by shutdown.
    let _ = scope.systemctl(&["disable", "--now", UNIT]);
    match std::fs::remove_file(&unit) {
        Ok(()) => eprintln!("Removed {}.", unit.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => eprintln!("{} was not there.", unit.display()),
        Err(e) => return Err(Error::Failed(format!("cannot remove {}: {e}", unit.display()))),
    }
    scope.must(&["daemon-reload"])?;
    eprintln!("daemon.toml, your grants and the audit log are kept.");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::unix_timestamp;

    #[test]
    fn systemd_unix_timestamps_read_as_instants() {
        let t = unix_timestamp("@1764622682\n").unwrap();
        assert_eq!(crate::time::human(t), "2025-12-01T20:58:02Z");
        for other in ["", "n/a", "Mon 2025-12-01 20:58:02 UTC", "@", "@x", "1764622682", "@-x"] {
            assert_eq!(unix_timestamp(other), None, "{other:?}");
        }
    }
}
