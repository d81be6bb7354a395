//! `support status [--json]`

use std::process::ExitCode;

use serde_json::{Value, json};

use super::out::outln;
use super::{Ctx, paint, printable};
use crate::Error;
use crate::consent::{self, Consent};
use crate::control_api::StatusView;

/// Show the grant in force, the daemon, and where files live.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object: enabled, tier, granted_at, expires_at, remaining_seconds,
    /// reason, grant_id, granted_by, off_reason, daemon (null or {pid, connected, relay,
    /// running_tasks, tasks: [{task_id, action, tier, operator, started_at, agent, …}],
    /// link: {…, witnessed_seq, audit_alert}, device_id, started_at, control_port, version}),
    /// device_id, paths.
    #[arg(long)]
    json: bool,
}

/// What the daemon said of itself.
enum Seen {
    /// No daemon runs (or none answers).
    Down,
    /// Its status.
    Up(Box<StatusView>),
    /// It runs, but its answer could not be had or read: never shown as
    /// "not running", since its tasks may be running.
    Unreadable {
        /// From `daemon.json`, when readable.
        pid: Option<u32>,
        /// Why, for people.
        why: String,
    },
}

fn daemon_status(ctx: &Ctx) -> Seen {
    let answer = super::client::Client::find(&ctx.paths).and_then(|c| c.call::<StatusView>("GET", "/v1/status"));
    match answer {
        Ok(s) => Seen::Up(Box::new(s)),
        Err(Error::DaemonUnreachable(_)) => Seen::Down,
        Err(e) => Seen::Unreadable {
            pid: crate::daemon::read_info(&ctx.paths).map(|i| i.pid),
            why: crate::ErrorChain(&e).to_string(),
        },
    }
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Result<ExitCode, Error> {
    let consent = consent::read(&ctx.paths, ctx.now);
    let daemon = daemon_status(ctx);
    if args.json {
        super::print_json(&status_json(ctx, &consent, &daemon))?;
        return Ok(ExitCode::SUCCESS);
    }
    match &consent {
        Consent::Live(g) => {
            let left = humantime::format_duration(std::time::Duration::from_secs(g.remaining(ctx.now).as_secs()));
            outln!("support is {} at tier {}: {}.", paint("ON", "32"), g.tier, g.tier.allows())?;
            outln!("  until   {} ({left} left)", super::local(g.expires_at))?;
            outln!("  grant   {} by {} at {}", g.grant_id, printable(&g.granted_by.user), super::local(g.granted_at))?;
            if let Some(r) = &g.reason {
                outln!("  reason  {}", printable(r))?;
            }
            outln!("  revoke  {}", ctx.command_line(&["revoke"]))?;
        }
        Consent::Off(off) => {
            outln!("support is {}: {}. Nothing may run.", paint("OFF", "31"), printable(&off.reason()))?;
            outln!("  grant   {}", ctx.command_line(&["allow", "--tier", "1", "--minutes", "30"]))?;
        }
    }
    match &daemon {
        Seen::Up(d) => {
            let l = &d.link;
            let since = |at: &Option<String>| match at.as_deref().and_then(crate::time::parse_rfc3339) {
                Some(t) => format!(" since {}", super::local(t)),
                None => String::new(),
            };
            let relay = printable(d.relay.as_deref().unwrap_or("?"));
            let link = if d.connected {
                format!("connected to {relay}{}", since(&l.since))
            } else if d.relay.is_none() {
                "local only, no relay configured".to_string()
            } else {
                format!("NOT connected to {relay}{}", since(&l.since))
            };
            outln!("  daemon  running, pid {}, {link}, {} task(s) running", d.pid, d.running_tasks)?;
            outln!("  device  {}", printable(&d.device_id))?;
            match (&l.audit_alert, l.witnessed_seq) {
                (Some(a), _) => outln!(
                    "  audit   the relay {} this audit log: {} at witnessed seq {} ({})",
                    paint("FLAGS", "31"),
                    a.kind.as_str(),
                    a.witnessed_seq,
                    printable(&a.detail)
                )?,
                (None, Some(seq)) => outln!("  audit   the relay witnessed this chain up to seq {seq}")?,
                (None, None) if d.connected => outln!("  audit   the relay has not witnessed this chain yet")?,
                (None, None) => {}
            }
            if let Some(r) = crate::audit::first(&ctx.paths).filter(|r| r.event == crate::audit::Event::AuditReset) {
                let detail = printable(r.detail.as_deref().unwrap_or(""));
                outln!(
                    "  audit   {} this chain began at {} after the old log and key were removed: {detail}",
                    paint("WARNING", "31"),
                    printable(&r.ts)
                )?;
            }
            for t in &d.tasks {
                outln!("  {}", super::tasks::running_line(ctx, t))?;
            }
            if let Some(e) = &l.last_error {
                let next = match l.next_attempt_at.as_deref().and_then(crate::time::parse_rfc3339) {
                    Some(t) => format!(" (next attempt {})", super::local(t)),
                    None => String::new(),
                };
                outln!("  link    last error: {}{next}", printable(e))?;
            }
        }
        Seen::Unreadable { pid, why } => {
            let pid = pid.map(|p| format!(", pid {p}")).unwrap_or_default();
            outln!("  daemon  running{pid}, but its status cannot be read: {}", printable(why))?;
        }
        Seen::Down => outln!("  daemon  not running (start it with {})", ctx.command_line(&["daemon"]))?,
    }
    outln!("  home    {}", ctx.paths.home.display())?;
    Ok(ExitCode::SUCCESS)
}

fn status_json(ctx: &Ctx, consent: &Consent, daemon: &Seen) -> Value {
    let p = &ctx.paths;
    let paths = json!({
        "home": p.home,
        "config_dir": p.config_dir,
        "state_dir": p.state_dir,
        "consent": p.consent(),
        "audit": p.audit(),
        "policy_dir": p.policy_dir(),
        "secret": p.secret(),
        "trusted_operators": p.trusted_operators(),
    });
    let mut v = match consent {
        Consent::Live(g) => json!({
            "enabled": true,
            "tier": g.tier.get(),
            "tier_name": g.tier.name(),
            "granted_at": crate::time::rfc3339(g.granted_at),
            "expires_at": crate::time::rfc3339(g.expires_at),
            "remaining_seconds": g.remaining(ctx.now).as_secs(),
            "reason": g.reason,
            "grant_id": g.grant_id,
            "granted_by": g.granted_by,
            "off_reason": null,
        }),
        Consent::Off(off) => json!({
            "enabled": false,
            "tier": null,
            "tier_name": null,
            "granted_at": null,
            "expires_at": null,
            "remaining_seconds": 0,
            "reason": null,
            "grant_id": null,
            "granted_by": null,
            "off_reason": off.reason(),
        }),
    };
    v["daemon"] = match daemon {
        Seen::Up(d) => json!({
            "pid": d.pid,
            "connected": d.connected,
            "relay": d.relay,
            "link": d.link,
            "running_tasks": d.running_tasks,
            "tasks": d.tasks,
            "device_id": d.device_id,
            "started_at": d.started_at,
            "control_port": d.control_port,
            "version": d.version,
        }),
        Seen::Unreadable { pid, why } => json!({"pid": pid, "error": why}),
        Seen::Down => Value::Null,
    };
    v["device_id"] = match daemon {
        Seen::Up(d) => json!(d.device_id),
        _ => device_id(ctx).map_or(Value::Null, Value::from),
    };
    v["paths"] = paths;
    v
}

/// The device id from `device.key`, if the daemon made one.
fn device_id(ctx: &Ctx) -> Option<String> {
    crate::identity::KeyPair::load(&ctx.paths.device_key()).ok().map(|k| k.public_key().device_id())
}
