//! `support tasks`, `support stop`, `support watch`: the running daemon's
//! tasks, through the loopback control API.

use std::process::ExitCode;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;

use super::client::Client;
use super::{Ctx, paint, printable};
use crate::Error;
use crate::daemon::TaskInfo;

/// List the tasks the daemon is running.
#[derive(Debug, clap::Args)]
pub struct TasksArgs {
    /// One JSON object: {"tasks": [{task_id, request_id, action, tier, params, operator, grant_id, started_at, pid, start_ticks}]}.
    #[arg(long)]
    json: bool,
}

/// Stop a running task now: its whole process tree is killed.
///
/// With no TASK_ID, stops the one task running (and refuses to guess when several run).
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The task to stop (from `support tasks`).
    #[arg(value_name = "TASK_ID", conflicts_with = "all")]
    task_id: Option<String>,
    /// Stop every running task.
    #[arg(long)]
    all: bool,
}

/// Follow what the daemon does, live: grants, commands, output, stops.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Print the raw event stream: one JSON object per line.
    #[arg(long)]
    json: bool,
}

fn list(client: &Client) -> Result<Vec<TaskInfo>, Error> {
    let v = client.call("GET", "/v1/tasks")?;
    serde_json::from_value(v["tasks"].clone()).map_err(|e| Error::Failed(format!("the daemon's task list: {e}")))
}

pub(crate) fn tasks(ctx: &Ctx, args: TasksArgs) -> Result<ExitCode, Error> {
    let client = Client::find(&ctx.paths)?;
    if args.json {
        super::print_json(&client.call("GET", "/v1/tasks")?);
        return Ok(ExitCode::SUCCESS);
    }
    let tasks = list(&client)?;
    if tasks.is_empty() {
        println!("No task is running.");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED);
    table.set_header(["task", "action", "tier", "operator", "started", "pid"]);
    for t in &tasks {
        let started = chrono::DateTime::parse_from_rfc3339(&t.started_at)
            .map(|d| super::local(d.with_timezone(&chrono::Utc)))
            .unwrap_or_else(|_| t.started_at.clone());
        table.add_row([
            t.task_id.clone(),
            printable(&t.action),
            t.tier.to_string(),
            printable(&t.operator),
            started,
            t.pid.map(|p| p.to_string()).unwrap_or_default(),
        ]);
    }
    println!("{table}");
    println!("Stop one with: {}", ctx.command_line(&["stop", "TASK_ID"]));
    Ok(ExitCode::SUCCESS)
}

fn describe(result: &Value) -> String {
    if result.is_null() {
        return "its end is not recorded yet".into();
    }
    let status = result["status"].as_str().unwrap_or("?");
    let by = result["cancelled_by"].as_str().map(|b| format!(" by {b}")).unwrap_or_default();
    format!("{status}{by} after {} ms", result["duration_ms"].as_u64().unwrap_or(0))
}

pub(crate) fn stop(ctx: &Ctx, args: StopArgs) -> Result<ExitCode, Error> {
    let client = Client::find(&ctx.paths)?;
    if args.all {
        let v = client.call("POST", "/v1/tasks/stop")?;
        let stopped = v["stopped"].as_array().cloned().unwrap_or_default();
        if stopped.is_empty() {
            println!("No task was running.");
        }
        for s in stopped {
            println!("Stopped {}: {}.", s["task_id"].as_str().unwrap_or("?"), describe(&s["result"]));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let id = match args.task_id {
        Some(id) => id,
        None => {
            let tasks = list(&client)?;
            match tasks.as_slice() {
                [] => {
                    println!("No task is running.");
                    return Ok(ExitCode::SUCCESS);
                }
                [one] => one.task_id.clone(),
                many => {
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
    let safe = id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !safe {
        return Err(Error::Usage(format!("`{}` is not a task id (see `support tasks`)", printable(&id))));
    }
    match client.call("POST", &format!("/v1/tasks/{id}/stop")) {
        Ok(v) => {
            println!("Stopped {id}: {}.", describe(&v["result"]));
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::Failed(m)) if m.contains("404") => {
            Err(Error::Usage(format!("no task {id} is running (see `support tasks`)")))
        }
        Err(e) => Err(e),
    }
}

pub(crate) fn watch(ctx: &Ctx, args: WatchArgs) -> Result<ExitCode, Error> {
    let client = Client::find(&ctx.paths)?;
    if !args.json {
        eprintln!("Watching the daemon (pid {}); Ctrl-C to stop watching.", client.info().pid);
    }
    client.stream("/v1/events", |line| {
        if args.json {
            println!("{line}");
        } else if let Some(text) = serde_json::from_str::<Value>(line).ok().as_ref().and_then(render_event) {
            println!("{text}");
        }
        true
    })?;
    if !args.json {
        eprintln!("The daemon ended the stream (it stopped).");
    }
    Ok(ExitCode::SUCCESS)
}

/// One event as a line for people; `None` for keep-alive pings.
fn render_event(v: &Value) -> Option<String> {
    let now = chrono::Local::now().format("%H:%M:%S");
    match v["kind"].as_str()? {
        "status" => {
            let s = &v["status"];
            let c = &s["consent"];
            let consent = if c["enabled"].as_bool() == Some(true) {
                format!("{} at tier {} until {}", paint("ON", "32"), c["tier"], c["expires_at"].as_str().unwrap_or("?"))
            } else {
                format!("{} ({})", paint("OFF", "31"), printable(c["off_reason"].as_str().unwrap_or("no grant")))
            };
            Some(format!("{now} support is {consent}; {} task(s) running", s["running_tasks"]))
        }
        "audit" => {
            let r = &v["record"];
            let mut parts = vec![format!("{now} #{} {}", r["seq"], r["event"].as_str().unwrap_or("?"))];
            for key in ["action", "task_id", "operator", "code", "status", "by", "reason", "detail"] {
                if let Some(s) = r[key].as_str() {
                    parts.push(format!("{key}={}", printable(s)));
                }
            }
            if let Some(code) = r["exit_code"].as_i64() {
                parts.push(format!("exit={code}"));
            }
            Some(parts.join(" "))
        }
        "output" => {
            let data = v["data"].as_str().unwrap_or("");
            let task = v["task_id"].as_str().unwrap_or("?");
            let lines: Vec<String> = data.lines().map(|l| format!("{now} [{task}] {}", printable(l))).collect();
            Some(lines.join("\n"))
        }
        "lagged" => Some(format!("{now} ({} events missed: this terminal read too slowly)", v["missed"])),
        _ => None,
    }
}
