//! `support tasks`, `support stop`, `support watch`: the running daemon's
//! tasks, through the loopback control API.

use std::process::ExitCode;

use super::client::Client;
use super::out::outln;
use super::table::{Listing, Wrap};
use super::{Ctx, paint, printable};
use crate::Error;
use crate::audit::Record;
use crate::control_api::{StatusView, Stopped, StoppedAll, TaskDetail, TaskList, TaskView, WatchEvent};
use crate::protocol::TaskResult;
use crate::transcript::{Line, LineKind};

/// List the tasks the daemon is running, or show one with its transcript.
#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    /// A task, running or among the last 8 ended: its details and the last
    /// 200 lines of its transcript.
    #[arg(value_name = "TASK_ID")]
    task_id: Option<String>,
    /// One JSON object: {"tasks": [{task_id, request_id, action, tier, agent, params, operator, grant_id,
    /// started_at, pid, start_ticks}]}; with TASK_ID, {task, running, result, transcript: {total, sha256, lines}}.
    #[arg(long)]
    json: bool,
}

/// Stop a running task now: its whole process tree is killed.
///
/// With no TASK_ID, stops the agent task if one runs, else the one task
/// running (and refuses to guess when several run).
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The task to stop (from `support tasks`).
    #[arg(value_name = "TASK_ID", conflicts_with = "all")]
    task_id: Option<String>,
    /// Stop every running task.
    #[arg(long)]
    all: bool,
    /// Print one JSON object: `stopped`, a list of `{task_id, result}`
    /// (the task's result, as `support tasks --json` shows it, or null).
    #[arg(long)]
    json: bool,
}

/// Follow what the daemon does, live: grants, commands, output, stops.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Print the raw event stream: one JSON object per line.
    #[arg(long)]
    json: bool,
}

fn list(client: &Client) -> Result<Vec<TaskView>, Error> {
    Ok(client.call::<TaskList>("GET", "/v1/tasks")?.tasks)
}

fn task_id_arg(id: &str) -> Result<&str, Error> {
    let safe = id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if safe { Ok(id) } else { Err(Error::Usage(format!("`{}` is not a task id (see `support tasks`)", printable(id)))) }
}

fn show(ctx: &Ctx, client: &Client, id: &str, json: bool) -> Result<ExitCode, Error> {
    let path = format!("/v1/tasks/{}", task_id_arg(id)?);
    let Some(detail) = client.call_found::<TaskDetail>("GET", &path)? else {
        return Err(Error::Usage(format!("no task {id} is running or recently ended (see `support tasks`)")));
    };
    if json {
        super::print_json(&serde_json::to_value(&detail).unwrap_or_default())?;
        return Ok(ExitCode::SUCCESS);
    }
    if detail.running {
        outln!("{}", running_line(ctx, &detail.task))?;
    } else {
        let t = &detail.task;
        outln!(
            "task    {id}: {} for {}, ended: {}",
            printable(&t.action),
            printable(&t.operator),
            describe(detail.result.as_ref())
        )?;
    }
    let tr = &detail.transcript;
    let kept = tr.lines.len() as u64;
    if tr.total > kept {
        outln!("({} earlier lines are not kept)", tr.total - kept)?;
    }
    for line in &tr.lines {
        outln!("{}", render_line(id, line))?;
    }
    outln!("transcript: {} lines, sha256 {}", tr.total, printable(&tr.sha256))?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn tasks(ctx: &Ctx, args: TasksArgs) -> Result<ExitCode, Error> {
    let client = Client::find(&ctx.paths)?;
    if let Some(id) = &args.task_id {
        return show(ctx, &client, id, args.json);
    }
    if args.json {
        let tasks: TaskList = client.call("GET", "/v1/tasks")?;
        super::print_json(&serde_json::to_value(&tasks).unwrap_or_default())?;
        return Ok(ExitCode::SUCCESS);
    }
    let tasks = list(&client)?;
    if tasks.is_empty() {
        outln!("No task is running.")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Listing::new(&[
        ("task", Wrap::Words),
        ("action", Wrap::Words),
        ("tier", Wrap::Words),
        ("operator", Wrap::Words),
        ("started", Wrap::Instant),
        ("pid", Wrap::Words),
    ]);
    for t in &tasks {
        let started = super::human_text(&t.started_at);
        table.row([
            t.task_id.clone(),
            printable(&t.action),
            t.tier.to_string(),
            printable(&t.operator),
            started,
            t.pid.map(|p| p.to_string()).unwrap_or_default(),
        ]);
    }
    table.print()?;
    outln!("Stop one with: {}", ctx.command_line(&["stop", "TASK_ID"]))?;
    Ok(ExitCode::SUCCESS)
}

/// A running task in one line for the owner: the agent stands out, with
/// who drives it, since when, and how to stop it.
pub(crate) fn running_line(ctx: &Ctx, t: &TaskView) -> String {
    if t.agent {
        return agent_line(ctx, &t.task_id, &t.operator, &t.started_at);
    }
    let id = printable(&t.task_id);
    let stop = ctx.command_line(&["stop", &id]);
    format!(
        "task    {id}: {} (tier {}) for {} since {}; stop it: {stop}",
        printable(&t.action),
        t.tier,
        printable(&t.operator),
        since(&t.started_at)
    )
}

/// The agent task's line: "support is operating your agent: WHO since WHEN".
fn agent_line(ctx: &Ctx, task_id: &str, operator: &str, started_at: &str) -> String {
    let id = printable(task_id);
    let stop = ctx.command_line(&["stop", &id]);
    format!(
        "{} {} since {} (task {id}); stop it: {stop}",
        paint("support is operating your agent:", "1;33"),
        printable(operator),
        since(started_at)
    )
}

/// An RFC 3339 time as [`crate::time::human`] shows it, `?` when it is not one.
fn since(at: &str) -> String {
    crate::time::parse_rfc3339(at).map(super::human).unwrap_or_else(|| "?".into())
}

fn describe(result: Option<&TaskResult>) -> String {
    let Some(result) = result else { return "its end is not recorded yet".into() };
    let by = result.cancelled_by.map(|b| format!(" by {}", b.as_str())).unwrap_or_default();
    let how = match result.status {
        crate::protocol::Status::Failed => super::operator::failed_line(result.exit_code, result.reason.as_deref()),
        status => status.as_str().to_string(),
    };
    format!("{how}{by} after {} ms", result.duration_ms)
}

pub(crate) fn stop(ctx: &Ctx, args: StopArgs) -> Result<ExitCode, Error> {
    let client = Client::find(&ctx.paths)?;
    if args.all {
        let all: StoppedAll = client.call("POST", "/v1/tasks/stop")?;
        if args.json {
            super::print_json(&serde_json::to_value(&all).expect("a stop serialises"))?;
            return Ok(ExitCode::SUCCESS);
        }
        if all.stopped.is_empty() {
            outln!("No task was running.")?;
        }
        for s in all.stopped {
            outln!("Stopped {}: {}.", printable(&s.task_id), describe(s.result.as_ref()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let id = match args.task_id {
        Some(id) => id,
        None => {
            let tasks = list(&client)?;
            // The agent comes first: it is what the owner most often wants stopped.
            let agent: Vec<&TaskView> = tasks.iter().filter(|t| t.agent).collect();
            match (agent.as_slice(), tasks.as_slice()) {
                (_, []) if args.json => {
                    super::print_json(&serde_json::to_value(StoppedAll { stopped: Vec::new() }).expect("serialises"))?;
                    return Ok(ExitCode::SUCCESS);
                }
                (_, []) => {
                    outln!("No task is running.")?;
                    return Ok(ExitCode::SUCCESS);
                }
                ([one], _) => one.task_id.clone(),
                ([], [one]) => one.task_id.clone(),
                (_, many) => {
                    let ids: Vec<&str> = many.iter().map(|t| t.task_id.as_str()).collect();
                    return Err(Error::Usage(format!(
                        "{} tasks are running ({}); name one, or use --all",
                        many.len(),
                        ids.join(", ")
                    )));
                }
            }
        }
    };
    task_id_arg(&id)?;
    match client.call_found::<Stopped>("POST", &format!("/v1/tasks/{id}/stop"))? {
        Some(s) if args.json => {
            super::print_json(&serde_json::to_value(StoppedAll { stopped: vec![s] }).expect("a stop serialises"))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(s) => {
            outln!("Stopped {id}: {}.", describe(s.result.as_ref()))?;
            Ok(ExitCode::SUCCESS)
        }
        None => Err(Error::Usage(format!("no task {id} is running (see `support tasks`)"))),
    }
}

pub(crate) fn watch(ctx: &Ctx, args: WatchArgs) -> Result<ExitCode, Error> {
    let client = Client::find(&ctx.paths)?;
    if !args.json {
        eprintln!("Watching the daemon (pid {}); Ctrl-C to stop watching.", client.info().pid);
        // What the agent did before this watch began.
        for t in list(&client)?.into_iter().filter(|t| t.agent) {
            if let Ok(Some(detail)) = client.call_found::<TaskDetail>("GET", &format!("/v1/tasks/{}", t.task_id)) {
                outln!("{}", running_line(ctx, &detail.task))?;
                for line in &detail.transcript.lines {
                    outln!("{}", render_line(&t.task_id, line))?;
                }
            }
        }
    }
    // The stream stops at the first line stdout cannot take; that error is the command's.
    let mut failed = None;
    let mut sessions = Sessions::default();
    client.stream("/v1/events", |line| {
        let shown = if args.json {
            outln!("{line}")
        } else {
            match serde_json::from_str::<WatchEvent>(line) {
                Ok(event) => sessions
                    .show(&event)
                    .and_then(|()| render_event(ctx, &event).map_or(Ok(()), |text| outln!("{text}"))),
                // A daemon of another version: show what it is, never drop it silently.
                Err(_) => outln!("{}", unknown_event(line)),
            }
        };
        shown.map_err(|e| failed = Some(e)).is_ok()
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    if !args.json {
        eprintln!("The daemon ended the stream (it stopped).");
    }
    Ok(ExitCode::SUCCESS)
}

/// One transcript line (see [`crate::transcript`]) for people, its text made safe for the terminal.
pub(crate) fn render_line(task_id: &str, line: &Line) -> String {
    let at = crate::time::parse_rfc3339(&line.ts).map(super::human).unwrap_or_default();
    // The colour goes with the label, which the console shows the same.
    let colour = match line.kind {
        LineKind::Text => "36",
        LineKind::ToolUse => "33",
        LineKind::Error => "31",
        LineKind::Result => "32",
        _ => "2",
    };
    let label = if line.label().is_empty() { String::new() } else { paint(line.label(), colour) };
    let text = printable(&line.text);
    let sep = if label.is_empty() { "" } else { " " };
    format!("{at} [{task_id}] {label}{sep}{text}")
}

/// One event as a line for people; `None` for keep-alive pings.
fn render_event(ctx: &Ctx, event: &WatchEvent) -> Option<String> {
    let now = super::human(chrono::Utc::now());
    match event {
        WatchEvent::Status { status } => Some(status_line(ctx, status, &now)),
        WatchEvent::Audit { record } => Some(audit_line(ctx, record, &now)),
        WatchEvent::Transcript { task_id, line } => Some(render_line(&printable(task_id), line)),
        WatchEvent::Lagged { missed } => Some(format!("{now} ({missed} events missed: this terminal read too slowly)")),
        // Shown by `Sessions`, as the bytes came.
        WatchEvent::Terminal { .. } | WatchEvent::TerminalSize { .. } => None,
        WatchEvent::Ping => None,
    }
}

/// The interactive sessions `watch` is showing: each one's terminal
/// output goes to stdout as the pty wrote it (escape sequences and all, so
/// the owner sees what the operator sees), between a header at its first
/// output and a footer at its end.
#[derive(Default)]
struct Sessions {
    open: std::collections::BTreeSet<String>,
}

impl Sessions {
    fn show(&mut self, event: &WatchEvent) -> Result<(), Error> {
        use base64::Engine as _;
        match event {
            WatchEvent::Terminal { task_id, data } => {
                if self.open.insert(task_id.clone()) {
                    let id = printable(task_id);
                    outln!("\n{}", paint(&format!("──── interactive shell {id}: its terminal, live ────"), "1"))?;
                }
                let bytes = base64::engine::general_purpose::STANDARD.decode(data).unwrap_or_default();
                super::out::raw(&bytes)
            }
            WatchEvent::Audit { record } if record.event == crate::audit::Event::ActionFinished => {
                let Some(id) = record.task_id.as_ref().filter(|id| self.open.remove(*id)) else { return Ok(()) };
                let how = record.status.as_deref().map(printable).unwrap_or_default();
                let code = record.exit_code.map(|c| format!(", exit {c}")).unwrap_or_default();
                let id = printable(id);
                outln!("\n{}", paint(&format!("──── end of interactive shell {id} ({how}{code}) ────"), "1"))
            }
            _ => Ok(()),
        }
    }
}

/// An event this CLI cannot read: its `kind` and `event` names, and its size.
fn unknown_event(line: &str) -> String {
    let now = super::human(chrono::Utc::now());
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    let name = |key: &str| v[key].as_str().or_else(|| v["record"][key].as_str()).map(printable);
    let kind = name("kind").unwrap_or_else(|| "?".into());
    let event = name("event").map(|e| format!(" {e}")).unwrap_or_default();
    format!("{now} ({kind}{event}: an event this version of support cannot show; {} bytes)", line.len())
}

fn status_line(ctx: &Ctx, s: &StatusView, now: &str) -> String {
    let c = &s.consent;
    let consent = match (c.enabled, c.tier) {
        (true, Some(tier)) => {
            format!(
                "{} at tier {tier} until {}",
                paint("ON", "32"),
                super::human_text(c.expires_at.as_deref().unwrap_or("?"))
            )
        }
        _ => format!("{} ({})", paint("OFF", "31"), printable(c.off_reason.as_deref().unwrap_or("no grant"))),
    };
    let mut out = format!("{now} support is {consent}; {} task(s) running", s.running_tasks);
    for t in &s.tasks {
        out.push_str(&format!("\n{now} {}", running_line(ctx, t)));
    }
    out
}

fn audit_line(ctx: &Ctx, r: &Record, now: &str) -> String {
    let mut parts = vec![format!("{now} #{} {}", r.seq, r.event.as_str())];
    let fields = [
        ("action", &r.action),
        ("task_id", &r.task_id),
        ("operator", &r.operator),
        ("code", &r.code),
        ("status", &r.status),
        ("by", &r.by),
        ("via", &r.via),
        ("reason", &r.reason),
        ("detail", &r.detail),
    ];
    for (key, value) in fields {
        if let Some(s) = value {
            parts.push(format!("{key}={}", printable(s)));
        }
    }
    if let Some(code) = r.exit_code {
        parts.push(format!("exit={code}"));
    }
    if r.event == crate::audit::Event::ActionStarted && r.action.as_deref() == Some("agent") {
        let (id, who) = (r.task_id.as_deref().unwrap_or("?"), r.operator.as_deref().unwrap_or("?"));
        parts.push(format!("\n{now} {}", agent_line(ctx, id, who, &r.ts)));
    }
    parts.join(" ")
}
