//! `support tasks`, `support stop`, `support watch`: the running daemon's
//! tasks, through the loopback control API.

use std::process::ExitCode;

use serde_json::{Value, json};

use super::client::Client;
use super::out::outln;
use super::table::{Listing, Wrap};
use super::{Ctx, paint, printable};
use crate::Error;
use crate::daemon::TaskInfo;

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

fn task_id_arg(id: &str) -> Result<&str, Error> {
    let safe = id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if safe { Ok(id) } else { Err(Error::Usage(format!("`{}` is not a task id (see `support tasks`)", printable(id)))) }
}

fn show(ctx: &Ctx, client: &Client, id: &str, json: bool) -> Result<ExitCode, Error> {
    let detail = match client.call("GET", &format!("/v1/tasks/{}", task_id_arg(id)?)) {
        Ok(v) => v,
        Err(Error::Failed(m)) if m.contains("404") => {
            return Err(Error::Usage(format!("no task {id} is running or recently ended (see `support tasks`)")));
        }
        Err(e) => return Err(e),
    };
    if json {
        super::print_json(&detail)?;
        return Ok(ExitCode::SUCCESS);
    }
    if detail["running"] == true {
        println!("{}", running_line(ctx, &detail["task"]));
    } else {
        let t = &detail["task"];
        println!(
            "task    {id}: {} for {}, ended: {}",
            printable(t["action"].as_str().unwrap_or("?")),
            printable(t["operator"].as_str().unwrap_or("?")),
            describe(&detail["result"])
        );
    }
    let tr = &detail["transcript"];
    let lines = tr["lines"].as_array().cloned().unwrap_or_default();
    let total = tr["total"].as_u64().unwrap_or(0);
    if total > lines.len() as u64 {
        println!("({} earlier lines are not kept)", total - lines.len() as u64);
    }
    for line in &lines {
        println!("{}", render_line(id, line));
    }
    println!("transcript: {total} lines, sha256 {}", tr["sha256"].as_str().unwrap_or("?"));
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn tasks(ctx: &Ctx, args: TasksArgs) -> Result<ExitCode, Error> {
    let client = Client::find(&ctx.paths)?;
    if let Some(id) = &args.task_id {
        return show(ctx, &client, id, args.json);
    }
    if args.json {
        super::print_json(&client.call("GET", "/v1/tasks")?)?;
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
        ("started", Wrap::Words),
        ("pid", Wrap::Words),
    ]);
    for t in &tasks {
        let started =
            crate::time::parse_rfc3339(&t.started_at).map(super::local).unwrap_or_else(|| printable(&t.started_at));
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
pub(crate) fn running_line(ctx: &Ctx, t: &Value) -> String {
    let id = printable(t["task_id"].as_str().unwrap_or("?"));
    let who = printable(t["operator"].as_str().unwrap_or("?"));
    let since = t["started_at"]
        .as_str()
        .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
        .map(super::local)
        .unwrap_or_else(|| "?".into());
    let stop = ctx.command_line(&["stop", &id]);
    if t["agent"].as_bool() == Some(true) {
        format!(
            "{} {who} since {since} (task {id}); stop it: {stop}",
            paint("support is operating your agent:", "1;33")
        )
    } else {
        let action = printable(t["action"].as_str().unwrap_or("?"));
        format!("task    {id}: {action} (tier {}) for {who} since {since}; stop it: {stop}", t["tier"])
    }
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
            // The agent comes first: it is what the owner most often wants stopped.
            let agent: Vec<&TaskInfo> = tasks.iter().filter(|t| t.agent).collect();
            match (agent.as_slice(), tasks.as_slice()) {
                (_, []) => {
                    println!("No task is running.");
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
        // What the agent did before this watch began.
        for t in list(&client)?.into_iter().filter(|t| t.agent) {
            if let Ok(detail) = client.call("GET", &format!("/v1/tasks/{}", t.task_id)) {
                println!("{}", running_line(ctx, &detail["task"]));
                for line in detail["transcript"]["lines"].as_array().into_iter().flatten() {
                    println!("{}", render_line(&t.task_id, line));
                }
            }
        }
    }
    client.stream("/v1/events", |line| {
        if args.json {
            println!("{line}");
        } else if let Some(text) = serde_json::from_str::<Value>(line).ok().as_ref().and_then(|v| render_event(ctx, v))
        {
            println!("{text}");
        }
        true
    })?;
    if !args.json {
        eprintln!("The daemon ended the stream (it stopped).");
    }
    Ok(ExitCode::SUCCESS)
}

/// One transcript line (see `daemon::transcript`) for people, its text made safe for the terminal.
pub(crate) fn render_line(task_id: &str, line: &Value) -> String {
    let at = line["ts"]
        .as_str()
        .and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok())
        .map(|t| t.with_timezone(&chrono::Local).format("%H:%M:%S").to_string())
        .unwrap_or_default();
    let label = match (line["kind"].as_str().unwrap_or("raw"), line["stream"].as_str()) {
        ("text", _) => paint("agent:", "36"),
        ("thinking", _) => paint("thinking:", "2"),
        ("tool_use", _) => paint("tool:", "33"),
        ("tool_result", _) => paint("result:", "2"),
        ("error", _) => paint("ERROR:", "31"),
        ("result", _) => paint("done:", "32"),
        ("system", _) => paint("·", "2"),
        (_, Some("stderr")) => paint("stderr:", "2"),
        _ => String::new(),
    };
    let text = printable(line["text"].as_str().unwrap_or(""));
    let sep = if label.is_empty() { "" } else { " " };
    format!("{at} [{task_id}] {label}{sep}{text}")
}

/// One event as a line for people; `None` for keep-alive pings.
fn render_event(ctx: &Ctx, v: &Value) -> Option<String> {
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
            let mut out = format!("{now} support is {consent}; {} task(s) running", s["running_tasks"]);
            for t in s["tasks"].as_array().into_iter().flatten() {
                out.push_str(&format!("\n{now} {}", running_line(ctx, t)));
            }
            Some(out)
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
            if r["event"] == "action.started" && r["action"] == "agent" {
                let task =
                    json!({"agent": true, "task_id": r["task_id"], "operator": r["operator"], "started_at": r["ts"]});
                parts.push(format!("\n{now} {}", running_line(ctx, &task)));
            }
            Some(parts.join(" "))
        }
        "transcript" => Some(render_line(&printable(v["task_id"].as_str().unwrap_or("?")), &v["line"])),
        "lagged" => Some(format!("{now} ({} events missed: this terminal read too slowly)", v["missed"])),
        _ => None,
    }
}
