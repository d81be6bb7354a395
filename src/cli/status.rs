//! `support status [--json]`

use std::process::ExitCode;

use serde_json::{Value, json};

use super::out::outln;
use super::{Ctx, paint, printable};
use crate::Error;
use crate::consent::{self, Consent, Grant, Off};
use crate::control_api::StatusView;

/// Show the grant in force, the daemon, and where files live.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One JSON object: enabled, tier, granted_at, expires_at, remaining_seconds,
    /// reason, grant_id, granted_by, off_reason, operators, only, max_actions
    /// (null: unscoped), actions_used, daemon (null or {pid, connected, relay,
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
    // Asked to re-read the grant first, the daemon answers for the file as it is now, as read below.
    let answer = super::client::Client::find(&ctx.paths)
        .and_then(|c| c.call::<crate::control_api::ConsentChanged>("POST", "/v1/consent/changed"));
    match answer {
        Ok(s) => Seen::Up(Box::new(s.status)),
        Err(Error::DaemonUnreachable(_)) => Seen::Down,
        Err(e) => Seen::Unreadable {
            pid: crate::daemon::read_info(&ctx.paths).map(|i| i.pid),
            why: crate::ErrorChain(&e).to_string(),
        },
    }
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Result<ExitCode, Error> {
    let daemon = daemon_status(ctx);
    let consent = as_enforced(consent::read(&ctx.paths, ctx.now), &daemon);
    let used = match &consent {
        Consent::Live(g) => actions_used(ctx, g, &daemon),
        Consent::Off(_) => None,
    };
    if args.json {
        super::print_json(&status_json(ctx, &consent, used, &daemon))?;
        return Ok(ExitCode::SUCCESS);
    }
    match &consent {
        Consent::Live(g) => {
            let left = humantime::format_duration(std::time::Duration::from_secs(g.remaining(ctx.now).as_secs()));
            outln!("support is {} at tier {}: {}.", paint("ON", "32"), g.tier, g.tier.allows())?;
            outln!("  until   {} ({left} left)", super::human(g.expires_at))?;
            outln!("  grant   {} by {} at {}", g.grant_id, printable(&g.granted_by.user), super::human(g.granted_at))?;
            if let Some(r) = &g.reason {
                outln!("  reason  {}", printable(r))?;
            }
            if let Some(scope) = g.scope_words() {
                outln!("  scope   {}", printable(&scope))?;
            }
            if let Some(max) = g.max_actions {
                match used {
                    Some(n) => outln!("  budget  {n} of {max} action(s) started, {} left", max.saturating_sub(n))?,
                    None => outln!("  budget  {max} action(s); how many started cannot be counted (audit log)")?,
                }
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
            let since = |at: &Option<String>| {
                at.as_deref().map(|t| format!(" since {}", super::human_text(t))).unwrap_or_default()
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
                    super::human_text(&r.ts)
                )?;
            }
            for t in &d.tasks {
                outln!("  {}", super::tasks::running_line(ctx, t))?;
            }
            if let Some(e) = &l.last_error {
                let next = l.next_attempt_at.as_deref().map(|t| format!(" (next attempt {})", super::human_text(t)));
                let next = next.unwrap_or_default();
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

/// The grant as the file has it, unless a running daemon holds support
/// off: the daemon enforces the grant, so status never says ON while it refuses.
fn as_enforced(file: Consent, daemon: &Seen) -> Consent {
    match (file, daemon) {
        (Consent::Live(_), Seen::Up(d)) if !d.consent.enabled => {
            Consent::Off(Off::HeldOff(d.consent.off_reason.clone().unwrap_or_default()))
        }
        (file, _) => file,
    }
}

/// The actions started under `grant`: as the running daemon counts them,
/// else as the audit log holds them (the daemon counts the same way at its
/// start); `None` when neither can say.
fn actions_used(ctx: &Ctx, grant: &Grant, daemon: &Seen) -> Option<u32> {
    match daemon {
        Seen::Up(d) if d.consent.grant_id.as_deref() == Some(grant.grant_id.as_str()) => {
            d.consent.scope.as_ref().and_then(|s| s.actions_used)
        }
        _ => consent::actions_started(&ctx.paths, grant).ok(),
    }
}

fn status_json(ctx: &Ctx, consent: &Consent, used: Option<u32>, daemon: &Seen) -> Value {
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
            "operators": g.operators,
            "only": g.only,
            "max_actions": g.max_actions,
            "actions_used": used,
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
            "operators": null,
            "only": null,
            "max_actions": null,
            "actions_used": null,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control_api::ConsentView;

    fn daemon_saying(enabled: bool) -> Seen {
        let view = serde_json::json!({
            "pid": 1, "version": "0", "device_id": "d-1", "started_at": "2026-11-22T10:00:00Z",
            "uptime_seconds": 1, "control_port": null, "connected": false, "relay": null,
            "link": {"relay": null, "connected": false, "since": null, "last_error": null, "attempts": 0, "next_attempt_at": null},
            "running_tasks": 0, "tasks": [],
            "consent": ConsentView {
                enabled,
                tier: None,
                grant_id: None,
                expires_at: None,
                off_reason: (!enabled).then(|| "expired at 2026-11-22T10:01:00Z".into()),
                ..ConsentView::default()
            },
        });
        Seen::Up(Box::new(serde_json::from_value(view).unwrap()))
    }

    #[test]
    fn status_is_never_on_while_the_daemon_holds_support_off() {
        let g = Grant::new(crate::Tier::FIXES, std::time::Duration::from_secs(60), None, chrono::Utc::now()).unwrap();
        let live = || Consent::Live(g.clone());
        assert_eq!(as_enforced(live(), &Seen::Down), live());
        assert_eq!(as_enforced(live(), &daemon_saying(true)), live());
        let held = as_enforced(live(), &daemon_saying(false));
        assert_eq!(held, Consent::Off(Off::HeldOff("expired at 2026-11-22T10:01:00Z".into())));
        let Consent::Off(off) = held else { unreachable!() };
        assert_eq!(off.reason(), "the daemon holds support off: expired at 2026-11-22T10:01:00Z");
        // An off file stays off, whatever the daemon last saw.
        let none = Consent::Off(Off::NoGrant);
        assert_eq!(as_enforced(none.clone(), &daemon_saying(true)), none);
    }
}
