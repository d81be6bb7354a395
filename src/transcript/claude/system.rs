//! Claude Code's `system` messages (by `subtype`) and its other top-level
//! types that are not a message or a result, as `sdk.d.ts` defines them.
//! What failed is [`LineKind::Error`]; a retry, a rate limit or a notice
//! is [`LineKind::Notice`] with its numbers and text; what the session
//! does (hooks, subagent tasks, compaction) is [`LineKind::System`].

use serde_json::{Map, Value};

use super::super::line::LineKind;
use super::super::summary::{Summary, first_lines, str_of, text_of, unknown_line};
use super::ID_KEYS;

/// The most lines of a hook's output shown.
const HOOK_LINES: usize = 3;

/// A `system` message's lines.
pub(super) fn system(obj: &Map<String, Value>) -> Summary {
    let subtype = str_of(obj, "subtype").unwrap_or("");
    let s = |key| str_of(obj, key);
    let one = |kind, text: String| vec![(kind, text)];
    match subtype {
        "init" => one(LineKind::System, init(obj)),
        "api_retry" => one(LineKind::Notice, api_retry(obj)),
        "control_request_progress" => match s("status") {
            Some("api_retry") => one(LineKind::Notice, api_retry(obj)),
            status => one(LineKind::System, format!("control request: {}", status.unwrap_or("progress"))),
        },
        "compact_boundary" => one(LineKind::System, compact(obj)),
        "status" => status(obj),
        "model_refusal_fallback" => one(
            LineKind::Notice,
            format!(
                "the model {} refused{}; retrying with {}{}",
                s("original_model").unwrap_or("?"),
                refusal_reason(obj),
                s("fallback_model").unwrap_or("another model"),
                s("content").map(|c| format!(": {c}")).unwrap_or_default(),
            ),
        ),
        "model_refusal_no_fallback" => one(
            LineKind::Error,
            format!(
                "the model {} refused{}{}",
                s("original_model").unwrap_or("?"),
                refusal_reason(obj),
                s("content").map(|c| format!(": {c}")).unwrap_or_default(),
            ),
        ),
        "local_command_output" => one(LineKind::Text, s("content").unwrap_or("(no output)").into()),
        "hook_started" => one(LineKind::System, format!("hook {} started", hook_name(obj))),
        "hook_progress" => one(LineKind::System, with_output(format!("hook {}", hook_name(obj)), hook_output(obj))),
        "hook_response" => one(hook_response_kind(obj), hook_response(obj)),
        "plugin_install" => {
            let name = s("name").unwrap_or("plugins");
            match s("status") {
                Some("failed") => {
                    one(LineKind::Error, with_output(format!("plugin {name} failed to install"), s("error")))
                }
                status => one(LineKind::System, format!("plugin {name}: {}", status.unwrap_or("installing"))),
            }
        }
        "task_started" => one(
            LineKind::System,
            format!(
                "task started: {}{}",
                s("description").unwrap_or("(no description)"),
                s("subagent_type").map(|t| format!(" ({t})")).unwrap_or_default()
            ),
        ),
        "task_progress" => one(LineKind::System, task_progress(obj)),
        "task_updated" => task_updated(obj),
        "task_notification" => one(task_notification_kind(obj), task_notification(obj)),
        "background_tasks_changed" => {
            let tasks = obj.get("tasks").and_then(Value::as_array).cloned().unwrap_or_default();
            let named: Vec<&str> = tasks.iter().filter_map(|t| t.get("description").and_then(Value::as_str)).collect();
            one(LineKind::System, with_output(format!("background tasks: {}", tasks.len()), Some(&named.join("; "))))
        }
        "thinking_tokens" => Vec::new(),
        "session_state_changed" => {
            one(LineKind::Notice, format!("session state: {}", s("state").unwrap_or("changed").replace('_', " ")))
        }
        "worker_shutting_down" => one(LineKind::Notice, with_output("the worker is shutting down".into(), s("reason"))),
        "commands_changed" => {
            let count = obj.get("commands").and_then(Value::as_array).map_or(0, Vec::len);
            one(LineKind::System, format!("slash commands changed: {count} now"))
        }
        "notification" => one(LineKind::Notice, s("text").unwrap_or("notification").into()),
        "informational" => {
            let level = s("level").filter(|l| *l != "info").map(|l| format!("{l}: ")).unwrap_or_default();
            one(LineKind::Notice, format!("{level}{}", s("content").unwrap_or("(no text)")))
        }
        "files_persisted" => files_persisted(obj),
        "memory_recall" => {
            let memories = obj.get("memories").and_then(Value::as_array).cloned().unwrap_or_default();
            let paths: Vec<&str> = memories.iter().filter_map(|m| m.get("path").and_then(Value::as_str)).collect();
            one(
                LineKind::System,
                with_output(
                    format!("recalled {} memor{}", memories.len(), if memories.len() == 1 { "y" } else { "ies" }),
                    Some(&paths.join(", ")),
                ),
            )
        }
        "elicitation_complete" => one(
            LineKind::System,
            format!("MCP server {}: the question was answered", s("mcp_server_name").unwrap_or("?")),
        ),
        "permission_denied" => one(
            LineKind::Error,
            with_output(
                format!("permission denied: {}", s("tool_name").unwrap_or("a tool")),
                s("decision_reason").or(s("message")),
            ),
        ),
        "mirror_error" => one(LineKind::Error, with_output("the session mirror failed".into(), s("error"))),
        "session_writes_lost" => {
            let lost = obj.get("lost").and_then(Value::as_array).map(|l| l.iter().map(text_of).collect::<Vec<_>>());
            one(
                LineKind::Error,
                format!(
                    "the session's writes were lost ({}): {}",
                    s("error_code").unwrap_or("?"),
                    lost.map_or_else(|| "?".into(), |l| l.join(", "))
                ),
            )
        }
        "" => one(LineKind::Notice, unknown_line("system", obj, ID_KEYS)),
        other => one(LineKind::Notice, unknown_line(&format!("system {other}"), obj, ID_KEYS)),
    }
}

/// `session started (Claude Code V, model M, in CWD, MODE mode)`.
fn init(obj: &Map<String, Value>) -> String {
    let details: Vec<String> = [
        str_of(obj, "claude_code_version").map(|v| format!("Claude Code {v}")),
        str_of(obj, "model").map(|m| format!("model {m}")),
        str_of(obj, "cwd").map(|c| format!("in {c}")),
        str_of(obj, "permissionMode").filter(|m| *m != "default").map(|m| format!("{m} mode")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if details.is_empty() { "session started".into() } else { format!("session started ({})", details.join(", ")) }
}

/// `API request failed (ERROR, HTTP 529); retry 1 of 10 in 0.5 s`.
fn api_retry(obj: &Map<String, Value>) -> String {
    let error = str_of(obj, "error").unwrap_or("unknown");
    let status = match obj.get("error_status").and_then(Value::as_u64) {
        Some(status) => format!("HTTP {status}"),
        None => "no answer".into(),
    };
    let attempt = obj.get("attempt").and_then(Value::as_u64).map_or_else(|| "?".into(), |a| a.to_string());
    let max = obj.get("max_retries").and_then(Value::as_u64).map_or_else(|| "?".into(), |m| m.to_string());
    let delay = obj.get("retry_delay_ms").and_then(Value::as_f64).map(|ms| format!(" in {:.1} s", ms / 1000.0));
    format!("API request failed ({error}, {status}); retry {attempt} of {max}{}", delay.unwrap_or_default())
}

/// `conversation compacted (auto, 150000 → 30000 tokens)`.
fn compact(obj: &Map<String, Value>) -> String {
    let Some(meta) = obj.get("compact_metadata").and_then(Value::as_object) else {
        return "conversation compacted".into();
    };
    let trigger = str_of(meta, "trigger").unwrap_or("auto");
    let tokens = |key| meta.get(key).and_then(Value::as_u64);
    match (tokens("pre_tokens"), tokens("post_tokens")) {
        (Some(pre), Some(post)) => format!("conversation compacted ({trigger}, {pre} → {post} tokens)"),
        (Some(pre), None) => format!("conversation compacted ({trigger}, from {pre} tokens)"),
        _ => format!("conversation compacted ({trigger})"),
    }
}

/// `status`: compacting, requesting, a permission mode, or a failed compaction.
fn status(obj: &Map<String, Value>) -> Summary {
    if str_of(obj, "compact_result") == Some("failed") {
        return vec![(LineKind::Error, with_output("compacting failed".into(), str_of(obj, "compact_error")))];
    }
    let mut parts = Vec::new();
    if let Some(status) = str_of(obj, "status") {
        parts.push(status.to_owned());
    }
    if let Some(mode) = str_of(obj, "permissionMode") {
        parts.push(format!("permission mode {mode}"));
    }
    let text = if parts.is_empty() { "status: idle".into() } else { format!("status: {}", parts.join(", ")) };
    vec![(LineKind::System, text)]
}

/// ` (CATEGORY: EXPLANATION)` of a refusal, or nothing.
fn refusal_reason(obj: &Map<String, Value>) -> String {
    match (str_of(obj, "api_refusal_category"), str_of(obj, "api_refusal_explanation")) {
        (Some(c), Some(e)) => format!(" ({c}: {e})"),
        (Some(x), None) | (None, Some(x)) => format!(" ({x})"),
        (None, None) => String::new(),
    }
}

/// `TEXT: DETAIL`, or `TEXT` when the detail is missing or blank.
fn with_output(text: String, detail: Option<&str>) -> String {
    match detail.map(str::trim).filter(|d| !d.is_empty()) {
        Some(detail) => format!("{text}: {detail}"),
        None => text,
    }
}

fn hook_name(obj: &Map<String, Value>) -> &str {
    str_of(obj, "hook_name").or(str_of(obj, "hook_event")).unwrap_or("?")
}

/// A hook's first lines of output (stderr when stdout is empty).
fn hook_output(obj: &Map<String, Value>) -> Option<&str> {
    ["output", "stdout", "stderr"].into_iter().filter_map(|key| str_of(obj, key)).find(|o| !o.trim().is_empty())
}

fn hook_response_kind(obj: &Map<String, Value>) -> LineKind {
    match str_of(obj, "outcome") {
        Some("error") => LineKind::Error,
        Some("cancelled") => LineKind::Notice,
        _ => LineKind::System,
    }
}

/// `hook NAME: OUTCOME (exit N): FIRST LINES`.
fn hook_response(obj: &Map<String, Value>) -> String {
    let outcome = match str_of(obj, "outcome") {
        Some("error") => "failed",
        Some("cancelled") => "cancelled",
        Some(other) => other,
        None => "done",
    };
    let exit = obj.get("exit_code").and_then(Value::as_i64).map(|c| format!(" (exit {c})")).unwrap_or_default();
    let output = hook_output(obj).map(|o| first_lines(o, HOOK_LINES));
    with_output(format!("hook {}: {outcome}{exit}", hook_name(obj)), output.as_deref())
}

/// `task T: DESCRIPTION (N tool uses, last TOOL): SUMMARY`.
fn task_progress(obj: &Map<String, Value>) -> String {
    let id = str_of(obj, "task_id").unwrap_or("?");
    let description = str_of(obj, "description").unwrap_or("working");
    let uses = obj.get("usage").and_then(|u| u.get("tool_uses")).and_then(Value::as_u64);
    let last = str_of(obj, "last_tool_name").map(|t| format!(", last {t}")).unwrap_or_default();
    let counts = uses.map(|u| format!(" ({u} tool use{}{last})", if u == 1 { "" } else { "s" })).unwrap_or_default();
    with_output(format!("task {id}: {description}{counts}"), str_of(obj, "summary"))
}

fn task_updated(obj: &Map<String, Value>) -> Summary {
    let id = str_of(obj, "task_id").unwrap_or("?");
    let patch = obj.get("patch").and_then(Value::as_object);
    let field = |key| patch.and_then(|p| str_of(p, key));
    match field("status") {
        Some(status @ ("failed" | "killed")) => {
            vec![(LineKind::Error, with_output(format!("task {id} {status}"), field("error")))]
        }
        status => {
            let text = format!("task {id}: {}", status.or(field("description")).unwrap_or("updated"));
            vec![(LineKind::System, with_output(text, field("error")))]
        }
    }
}

fn task_notification_kind(obj: &Map<String, Value>) -> LineKind {
    match str_of(obj, "status") {
        Some("failed") => LineKind::Error,
        Some("stopped") => LineKind::Notice,
        _ => LineKind::System,
    }
}

/// `task T completed: SUMMARY` (a subagent's result).
fn task_notification(obj: &Map<String, Value>) -> String {
    let id = str_of(obj, "task_id").unwrap_or("?");
    let status = str_of(obj, "status").unwrap_or("done");
    let usage = obj.get("usage").and_then(Value::as_object);
    let took = usage
        .and_then(|u| u.get("duration_ms"))
        .and_then(Value::as_f64)
        .map(|ms| format!(" in {:.1} s", ms / 1000.0))
        .unwrap_or_default();
    with_output(format!("task {id} {status}{took}"), str_of(obj, "summary"))
}

fn files_persisted(obj: &Map<String, Value>) -> Summary {
    let names = |key| -> Vec<String> {
        obj.get(key)
            .and_then(Value::as_array)
            .map(|files| files.iter().filter_map(|f| f.get("filename").map(text_of)).collect())
            .unwrap_or_default()
    };
    let mut lines = vec![(LineKind::System, format!("files saved: {}", names("files").join(", ")))];
    for failed in obj.get("failed").and_then(Value::as_array).into_iter().flatten() {
        let name = failed.get("filename").map(text_of).unwrap_or_default();
        let error = failed.get("error").map(text_of).unwrap_or_default();
        lines.push((LineKind::Error, format!("could not save {name}: {error}")));
    }
    lines
}

/// The top-level types that are not a message, a result or `system`.
pub(super) fn top_level(kind: &str, obj: &Map<String, Value>) -> Summary {
    let s = |key| str_of(obj, key);
    match kind {
        "rate_limit_event" => vec![rate_limit(obj)],
        "tool_progress" => vec![tool_progress(obj)],
        "tool_use_summary" => vec![(LineKind::System, format!("summary: {}", s("summary").unwrap_or("")))],
        "prompt_suggestion" => {
            vec![(LineKind::Notice, format!("suggested next prompt: {}", s("suggestion").unwrap_or("")))]
        }
        "auth_status" => {
            let output: Vec<String> = obj
                .get("output")
                .and_then(Value::as_array)
                .map(|o| o.iter().map(text_of).collect())
                .unwrap_or_default();
            match s("error") {
                Some(error) => vec![(LineKind::Error, format!("login failed: {error}"))],
                None => vec![(LineKind::Notice, with_output("login".into(), Some(&output.join("\n"))))],
            }
        }
        "conversation_reset" => {
            let trigger = s("trigger").map(|t| format!(" ({t})")).unwrap_or_default();
            vec![(LineKind::System, format!("conversation reset{trigger}"))]
        }
        "control_request" => vec![control_request(obj)],
        "control_cancel_request" => vec![(LineKind::Notice, "a permission request was withdrawn".into())],
        _ => vec![(LineKind::Notice, unknown_line(kind, obj, ID_KEYS))],
    }
}

/// `rate limit: allowed (five_hour, 45 % used, resets 2026-08-23T21:30:00Z)`; a
/// rejection is an error line.
fn rate_limit(obj: &Map<String, Value>) -> (LineKind, String) {
    let info = obj.get("rate_limit_info").and_then(Value::as_object);
    let field = |key| info.and_then(|i| str_of(i, key));
    let status = field("status").unwrap_or("?");
    let mut details = Vec::new();
    if let Some(kind) = field("rateLimitType") {
        details.push(kind.replace('_', " "));
    }
    if let Some(used) = info.and_then(|i| i.get("utilization")).and_then(Value::as_f64) {
        // `utilization` is a fraction (0.45) in the captures; a percentage is accepted too.
        let percent = if used <= 1.0 { used * 100.0 } else { used };
        details.push(format!("{percent:.0} % used"));
    }
    if let Some(resets) = info.and_then(|i| i.get("resetsAt")).and_then(Value::as_i64)
        && let Some(at) = chrono::DateTime::from_timestamp(resets, 0)
    {
        details.push(format!("resets {}", crate::time::human(at)));
    }
    if info.and_then(|i| i.get("isUsingOverage")).and_then(Value::as_bool) == Some(true) {
        details.push("using overage".into());
    }
    let details = if details.is_empty() { String::new() } else { format!(" ({})", details.join(", ")) };
    match status {
        "rejected" => (LineKind::Error, format!("rate limit reached{details}")),
        "allowed_warning" => (LineKind::Notice, format!("rate limit close{details}")),
        other => (LineKind::Notice, format!("rate limit: {other}{details}")),
    }
}

/// `tool Bash: running for 12 s`; a subagent's API retry is a notice.
fn tool_progress(obj: &Map<String, Value>) -> (LineKind, String) {
    let name = str_of(obj, "tool_name").unwrap_or("tool");
    if let Some(retry) = obj.get("subagent_retry").and_then(Value::as_object) {
        let n = |key| retry.get(key).and_then(Value::as_f64).unwrap_or(0.0);
        let status =
            retry.get("error_status").and_then(Value::as_u64).map(|s| format!(", HTTP {s}")).unwrap_or_default();
        return (
            LineKind::Notice,
            format!(
                "{name}: the subagent's API request failed ({}{status}); retry {} of {} in {:.1} s",
                str_of(retry, "error_category").unwrap_or("unknown"),
                n("attempt"),
                n("max_retries"),
                n("retry_delay_ms") / 1000.0
            ),
        );
    }
    let elapsed = obj.get("elapsed_time_seconds").and_then(Value::as_f64).unwrap_or(0.0);
    let what = str_of(obj, "description").map(|d| format!(" ({d})")).unwrap_or_default();
    (LineKind::System, format!("tool {name}{what}: running for {elapsed:.0} s"))
}

/// A `can_use_tool` request: the tool that asks to run and its argument.
fn control_request(obj: &Map<String, Value>) -> (LineKind, String) {
    let request = obj.get("request").and_then(Value::as_object);
    let subtype = request.and_then(|r| str_of(r, "subtype")).unwrap_or("request");
    match (subtype, request.and_then(|r| str_of(r, "tool_name"))) {
        ("can_use_tool", Some(tool)) => {
            let argument = super::tools::argument(tool, request.and_then(|r| r.get("input")));
            let argument = argument.map(|a| format!(" ({a})")).unwrap_or_default();
            (LineKind::Notice, format!("asks permission to use {tool}{argument}"))
        }
        _ => (LineKind::Notice, format!("control request: {subtype}")),
    }
}
