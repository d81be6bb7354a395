//! Codex CLI `codex exec --json`: every `ThreadEvent` and `ThreadItem` of
//! `@openai/codex-sdk`'s `index.d.ts` and `codex-rs/exec/src/exec_events.rs`.
//!
//! - `thread.started`, `turn.started` (nothing), `turn.completed` (token
//!   counts), `turn.failed` (`ERROR:`), `item.plan.delta` (nothing: the
//!   `plan` item follows), `request_user_input` (each question and its
//!   options), and `error`: `ERROR:`, except Codex's own retries
//!   (`Reconnecting... 2/5 (…)`, `Reconnecting... waiting for network (…)`),
//!   which are [`LineKind::Notice`] lines with their text as sent.
//! - The `item.started` / `item.updated` / `item.completed` events of
//!   `agent_message`, `reasoning`, `plan` (its own lines), `command_execution`
//!   (a command that failed, exit code non-zero or status `failed` /
//!   `declined`, is an `ERROR:` line `failed (exit N): $ COMMAND`),
//!   `file_change`, `mcp_tool_call`, `collab_tool_call` (subagents: spawn,
//!   send input, wait, close, and each subagent's state), `web_search`,
//!   `todo_list` (a checklist) and `error` items. An `error` item is what
//!   Codex calls a non-fatal error: its warnings, config warnings,
//!   deprecation notices and model reroutes (`event_processor_with_jsonl_output.rs`),
//!   so it is a notice, `warning: MESSAGE`.
//! - An item type not known yet is `· TYPE: SHORT TEXT FIELDS`
//!   ([`unknown_event`]).

use serde_json::{Map, Value};

use super::line::LineKind;
use super::summary::{Summary, error_message, first_lines, str_of, text_of, tool_output, tool_summary, unknown_event};

/// The `type`s of a Codex event.
pub(super) const TYPES: &[&str] = &[
    "thread.started",
    "turn.started",
    "turn.completed",
    "turn.failed",
    "item.started",
    "item.updated",
    "item.completed",
    "item.plan.delta",
    "request_user_input",
    "error",
];

/// The start of the `error` events Codex sends while it retries a stream
/// (`codex-rs/core`: `Reconnecting... {attempt}/{max} ({error})`, and
/// `Reconnecting... waiting for network ({error})` once offline).
const RETRY_PREFIX: &str = "Reconnecting...";

/// What older Codex releases put in the same event instead:
/// `stream error: {error}; retrying {attempt}/{max} in {delay}…`.
const OLD_RETRY: &str = "; retrying ";

/// Whether an `error` event's message is Codex retrying, not failing.
fn is_retry(message: &str) -> bool {
    message.starts_with(RETRY_PREFIX)
        || message.rsplit_once(OLD_RETRY).is_some_and(|(_, rest)| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The most lines of a command's output shown.
const OUTPUT_LINES: usize = 2;

/// The lines a Codex event of type `kind` (one of [`TYPES`]) stands for.
pub(super) fn summarise(kind: &str, obj: &Map<String, Value>) -> Option<Summary> {
    let one = |line_kind, text: String| Some(vec![(line_kind, text)]);
    match kind {
        "thread.started" => one(LineKind::System, "session started".into()),
        "turn.started" | "item.plan.delta" => Some(Vec::new()),
        "turn.completed" => one(LineKind::Result, usage(obj.get("usage"))),
        "turn.failed" => {
            let message = error_message(obj).map_or_else(|| "unknown error".into(), |m| tidy(&m));
            one(LineKind::Error, format!("turn failed: {message}"))
        }
        "item.started" | "item.updated" | "item.completed" => match obj.get("item").and_then(Value::as_object) {
            Some(item) => Some(self::item(kind, item)),
            None => Some(vec![unknown_event(obj)]),
        },
        "request_user_input" => Some(questions(obj)),
        "error" => {
            let message = error_message(obj).map_or_else(|| "error".into(), |m| tidy(&m));
            let line_kind = if is_retry(&message) { LineKind::Notice } else { LineKind::Error };
            one(line_kind, message)
        }
        _ => None,
    }
}

/// An error message with each of its lines trimmed: Codex quotes an HTTP
/// error's body as it came, an indented HTML page say.
fn tidy(message: &str) -> String {
    message.lines().map(str::trim).filter(|line| !line.is_empty()).collect::<Vec<_>>().join("\n")
}

/// `turn completed (N input / M output tokens)`.
fn usage(usage: Option<&Value>) -> String {
    let tokens = |key| usage.and_then(|u| u.get(key)).and_then(Value::as_u64);
    match (tokens("input_tokens"), tokens("output_tokens")) {
        (Some(input), Some(output)) => format!("turn completed ({input} input / {output} output tokens)"),
        _ => "turn completed".into(),
    }
}

/// Where an item is in its life.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Started,
    Updated,
    Completed,
}

/// A Codex item event. Messages, reasoning, plans, edits and searches are
/// shown once complete; commands, MCP and collab calls when they start and
/// when they end; a to-do list when it starts and each time it changes.
fn item(event: &str, item: &Map<String, Value>) -> Summary {
    let phase = match event {
        "item.started" => Phase::Started,
        "item.updated" => Phase::Updated,
        _ => Phase::Completed,
    };
    let completed = phase == Phase::Completed;
    let text = |key| str_of(item, key).filter(|t| !t.trim().is_empty());
    match str_of(item, "type") {
        Some("agent_message") if completed => {
            text("text").map(|t| vec![(LineKind::Text, t.into())]).unwrap_or_default()
        }
        Some("reasoning") if completed => {
            text("text").map(|t| vec![(LineKind::Thinking, t.into())]).unwrap_or_default()
        }
        Some("plan") if completed => plan(text("text").unwrap_or_default()),
        Some("agent_message" | "reasoning" | "plan") => Vec::new(),
        Some("command_execution") => command(phase, item),
        Some("file_change") if completed => file_change(item),
        Some("file_change") => Vec::new(),
        Some("mcp_tool_call") => mcp_tool_call(phase, item),
        Some("collab_tool_call") => collab_tool_call(phase, item),
        Some("web_search") if completed => vec![(LineKind::ToolUse, web_search(item))],
        Some("web_search") => Vec::new(),
        Some("todo_list") if !completed => todo_list(item),
        // The last update already showed the list as it ends.
        Some("todo_list") => Vec::new(),
        Some("error") if phase != Phase::Updated => {
            let message = text("message").unwrap_or("(no message)");
            vec![(LineKind::Notice, format!("warning: {message}"))]
        }
        Some("error") => Vec::new(),
        _ if phase == Phase::Updated => Vec::new(),
        _ => vec![unknown_event(item)],
    }
}

/// A plan (plan mode's deliverable): `plan:`, then the plan's own lines.
fn plan(text: &str) -> Summary {
    let mut lines = vec![(LineKind::System, "plan:".to_owned())];
    lines.extend(text.lines().filter(|l| !l.trim().is_empty()).map(|l| (LineKind::System, l.to_owned())));
    lines
}

/// `$ COMMAND` when it starts; `exit 0: OUTPUT` when it ends well, else
/// an error line `failed (exit N): $ COMMAND` with the first lines of its
/// output, or `declined: $ COMMAND`.
fn command(phase: Phase, item: &Map<String, Value>) -> Summary {
    let command = str_of(item, "command").unwrap_or("?");
    let status = str_of(item, "status");
    let code = item.get("exit_code").and_then(Value::as_i64);
    let output = str_of(item, "aggregated_output").unwrap_or("");
    let with_output = |head: String| {
        if output.trim().is_empty() { head } else { format!("{head}\n{}", first_lines(output, OUTPUT_LINES)) }
    };
    match phase {
        Phase::Started => vec![(LineKind::ToolUse, format!("$ {command}"))],
        Phase::Updated => Vec::new(),
        Phase::Completed => match (code, status) {
            (Some(0), Some("completed") | None) => {
                let text = if output.trim().is_empty() {
                    "exit 0".to_owned()
                } else {
                    format!("exit 0: {}", first_lines(output, OUTPUT_LINES))
                };
                vec![(LineKind::ToolResult, text)]
            }
            (Some(code), _) => vec![(LineKind::Error, with_output(format!("failed (exit {code}): $ {command}")))],
            (None, Some("completed")) => vec![(LineKind::ToolResult, format!("completed: $ {command}"))],
            (None, Some("declined")) => vec![(LineKind::Error, format!("declined: $ {command}"))],
            (None, status) => {
                let status = status.unwrap_or("ended");
                vec![(LineKind::Error, with_output(format!("{status} (no exit code): $ {command}")))]
            }
        },
    }
}

/// `edit PATH (KIND)` per change, or `edit failed: PATH (KIND)`.
fn file_change(item: &Map<String, Value>) -> Summary {
    let failed = matches!(str_of(item, "status"), Some("failed" | "declined"));
    let changes = item.get("changes").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let (kind, verb) = if failed { (LineKind::Error, "edit failed:") } else { (LineKind::ToolUse, "edit") };
    if changes.is_empty() {
        return vec![(kind, format!("{verb} (no files)"))];
    }
    changes
        .iter()
        .map(|change| {
            let path = change.get("path").map(text_of).unwrap_or_else(|| "?".into());
            match change.get("kind") {
                Some(k) => (kind.clone(), format!("{verb} {path} ({})", text_of(k))),
                None => (kind.clone(), format!("{verb} {path}")),
            }
        })
        .collect()
}

/// `SERVER/TOOL: ARGUMENT` when it starts; its answer, or its error, when it ends.
fn mcp_tool_call(phase: Phase, item: &Map<String, Value>) -> Summary {
    let server = str_of(item, "server").unwrap_or("?");
    let tool = str_of(item, "tool").unwrap_or("?");
    let name = format!("{server}/{tool}");
    let failed = str_of(item, "status") == Some("failed");
    match phase {
        Phase::Started => vec![(LineKind::ToolUse, tool_summary(&name, item.get("arguments")))],
        Phase::Updated => Vec::new(),
        Phase::Completed => {
            let error = item.get("error").and_then(Value::as_object).and_then(|e| str_of(e, "message"));
            match (error, failed) {
                (Some(message), _) => vec![(LineKind::Error, format!("{name} failed: {message}"))],
                (None, true) => vec![(LineKind::Error, format!("{name} failed"))],
                (None, false) => {
                    let output = item
                        .get("result")
                        .and_then(|r| r.get("content"))
                        .map(tool_output)
                        .filter(|o| !o.trim().is_empty());
                    let text = match output {
                        Some(output) => format!("{name}: {}", first_lines(&output, 1)),
                        None => format!("{name}: done"),
                    };
                    vec![(LineKind::ToolResult, text)]
                }
            }
        }
    }
}

/// A call between Codex and its subagents (`CollabTool`: `spawn_agent`,
/// `send_input`, `wait`, `close_agent`): what it asks when it starts;
/// when it ends, each subagent's state (`CollabAgentStatus`) and message.
fn collab_tool_call(phase: Phase, item: &Map<String, Value>) -> Summary {
    let tool = str_of(item, "tool").unwrap_or("collab tool");
    let action = match tool {
        "spawn_agent" => "spawn a subagent".to_owned(),
        "send_input" => "message a subagent".to_owned(),
        "wait" => "wait for subagents".to_owned(),
        "close_agent" => "close a subagent".to_owned(),
        other => other.replace('_', " "),
    };
    let receivers: Vec<String> = item
        .get("receiver_thread_ids")
        .and_then(Value::as_array)
        .map(|ids| ids.iter().map(|id| short_id(&text_of(id))).collect())
        .unwrap_or_default();
    match phase {
        Phase::Started => {
            let mut text = action;
            if !receivers.is_empty() {
                text.push_str(&format!(" ({})", receivers.join(", ")));
            }
            if let Some(prompt) = str_of(item, "prompt").filter(|p| !p.trim().is_empty()) {
                text.push_str(": ");
                text.push_str(prompt);
            }
            vec![(LineKind::ToolUse, text)]
        }
        Phase::Updated => Vec::new(),
        Phase::Completed => {
            let mut lines = Vec::new();
            if str_of(item, "status") == Some("failed") {
                lines.push((LineKind::Error, format!("{action} failed")));
            }
            if let Some(states) = item.get("agents_states").and_then(Value::as_object) {
                for (thread, state) in states {
                    let status = state.get("status").map(text_of).unwrap_or_else(|| "unknown".into());
                    let kind = if matches!(status.as_str(), "errored" | "not_found") {
                        LineKind::Error
                    } else {
                        LineKind::ToolResult
                    };
                    let status = status.replace('_', " ");
                    let text = match state.get("message").and_then(Value::as_str).filter(|m| !m.trim().is_empty()) {
                        Some(message) => format!("subagent {}: {status}: {message}", short_id(thread)),
                        None => format!("subagent {}: {status}", short_id(thread)),
                    };
                    lines.push((kind, text));
                }
            }
            if lines.is_empty() {
                let text = if receivers.is_empty() {
                    format!("{action}: done")
                } else {
                    format!("{action}: done ({})", receivers.join(", "))
                };
                lines.push((LineKind::ToolResult, text));
            }
            lines
        }
    }
}

/// A thread id's last group (`…-02c7a1a20ea9` → `02c7a1a20ea9`): Codex's ids
/// are UUIDv7, whose first groups are the time and alike for a parent and
/// the subagents it spawns.
fn short_id(id: &str) -> String {
    id.rsplit('-').next().unwrap_or(id).to_owned()
}

/// `web search: QUERY`, or the page it opened or searched
/// (`WebSearchAction`: `search`, `open_page`, `find_in_page`).
fn web_search(item: &Map<String, Value>) -> String {
    if let Some(query) = str_of(item, "query").filter(|q| !q.trim().is_empty()) {
        return format!("web search: {query}");
    }
    let action = item.get("action").and_then(Value::as_object);
    let field = |key| action.and_then(|a| str_of(a, key)).filter(|v| !v.trim().is_empty());
    match (field("url"), field("pattern"), field("query")) {
        (Some(url), Some(pattern), _) => format!("web: find \"{pattern}\" in {url}"),
        (Some(url), None, _) => format!("web: open {url}"),
        (None, _, Some(query)) => format!("web search: {query}"),
        _ => "web search".to_owned(),
    }
}

/// A checklist: `to-do list (D of N done):`, then `[x] STEP` or `[ ] STEP`.
fn todo_list(item: &Map<String, Value>) -> Summary {
    let steps = item.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let done = |step: &Value| step.get("completed").and_then(Value::as_bool).unwrap_or(false);
    let finished = steps.iter().filter(|step| done(step)).count();
    let mut lines = vec![(LineKind::System, format!("to-do list ({finished} of {} done):", steps.len()))];
    lines.extend(steps.iter().map(|step| {
        let text = step.get("text").map(text_of).unwrap_or_default();
        (LineKind::System, format!("[{}] {text}", if done(step) { "x" } else { " " }))
    }));
    lines
}

/// `request_user_input`: `question: HEADER: QUESTION` per question, then
/// `- LABEL: DESCRIPTION` per option (`RequestUserInputQuestion`).
fn questions(obj: &Map<String, Value>) -> Summary {
    let questions = obj.get("questions").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let mut lines = Vec::new();
    for question in questions.iter().filter_map(Value::as_object) {
        let ask = str_of(question, "question").unwrap_or("(no question)");
        let header = nonblank(question, "header").map(|header| format!("{header}: "));
        lines.push((LineKind::Text, format!("question: {}{ask}", header.unwrap_or_default())));
        let options = question.get("options").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        for option in options.iter().filter_map(Value::as_object) {
            let label = str_of(option, "label").unwrap_or("?");
            let description = nonblank(option, "description").map(|d| format!(": {d}"));
            lines.push((LineKind::Text, format!("- {label}{}", description.unwrap_or_default())));
        }
    }
    if lines.is_empty() {
        lines.push((LineKind::Text, "question (no text)".to_owned()));
    }
    lines
}

/// `obj[key]` if it is a string that is not blank.
fn nonblank<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    str_of(obj, key).filter(|text| !text.trim().is_empty())
}
