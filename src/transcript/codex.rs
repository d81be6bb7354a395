//! Codex CLI `codex exec --json`: `thread.started`, `turn.*`, `error`
//! and the `item.started` / `item.updated` / `item.completed` events of
//! `agent_message`, `reasoning`, `command_execution`, `file_change`,
//! `mcp_tool_call`, `web_search`, `todo_list` and `error` items.

use serde_json::{Map, Value};

use super::line::LineKind;
use super::summary::{Summary, error_message, first_lines, str_of, text_of, tool_output, tool_summary};

/// The `type`s of a Codex event.
pub(super) const TYPES: &[&str] = &[
    "thread.started",
    "turn.started",
    "turn.completed",
    "turn.failed",
    "item.started",
    "item.updated",
    "item.completed",
    "error",
];

/// The lines a Codex event of type `kind` (one of [`TYPES`]) stands for.
pub(super) fn summarise(kind: &str, obj: &Map<String, Value>) -> Option<Summary> {
    let one = |line_kind, text: String| Some(vec![(line_kind, text)]);
    match kind {
        "thread.started" => one(LineKind::System, "session started".into()),
        "turn.started" => Some(Vec::new()),
        "turn.completed" => one(LineKind::Result, usage(obj.get("usage"))),
        "turn.failed" => {
            let message = error_message(obj).unwrap_or_else(|| "unknown error".into());
            one(LineKind::Error, format!("turn failed: {message}"))
        }
        "item.started" | "item.updated" | "item.completed" => item(kind, obj.get("item")?.as_object()?),
        "error" => one(LineKind::Error, error_message(obj).unwrap_or_else(|| "error".into())),
        _ => None,
    }
}

/// `turn completed (N input / M output tokens)`.
fn usage(usage: Option<&Value>) -> String {
    let tokens = |key| usage.and_then(|u| u.get(key)).and_then(Value::as_u64);
    match (tokens("input_tokens"), tokens("output_tokens")) {
        (Some(input), Some(output)) => format!("turn completed ({input} input / {output} output tokens)"),
        _ => "turn completed".into(),
    }
}

/// A Codex item event. Messages, reasoning, edits and searches are shown
/// once complete; commands and MCP calls when they start and when they end.
fn item(event: &str, item: &Map<String, Value>) -> Option<Summary> {
    let started = event == "item.started";
    let completed = event == "item.completed";
    let status = str_of(item, "status");
    let failed = matches!(status, Some("failed" | "declined"));
    let lines = match str_of(item, "type")? {
        "agent_message" if completed => vec![(LineKind::Text, str_of(item, "text")?.into())],
        "reasoning" if completed => vec![(LineKind::Thinking, str_of(item, "text")?.into())],
        "agent_message" | "reasoning" => Vec::new(),
        "command_execution" => {
            let command = str_of(item, "command").unwrap_or("?");
            if started {
                vec![(LineKind::ToolUse, format!("$ {command}"))]
            } else if completed {
                match item.get("exit_code").and_then(Value::as_i64) {
                    Some(code) => {
                        let output = str_of(item, "aggregated_output").unwrap_or("");
                        let text = if output.trim().is_empty() {
                            format!("exit {code}")
                        } else {
                            format!("exit {code}: {}", first_lines(output, 1))
                        };
                        vec![(LineKind::ToolResult, text)]
                    }
                    None => {
                        let kind = if failed { LineKind::Error } else { LineKind::ToolResult };
                        vec![(kind, format!("{}: $ {command}", status.unwrap_or("ended")))]
                    }
                }
            } else {
                Vec::new()
            }
        }
        "file_change" if completed => {
            let changes = item.get("changes").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            let (kind, verb) = if failed { (LineKind::Error, "edit failed:") } else { (LineKind::ToolUse, "edit") };
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
        "file_change" => Vec::new(),
        "mcp_tool_call" => {
            let server = str_of(item, "server").unwrap_or("?");
            let tool = str_of(item, "tool").unwrap_or("?");
            let name = format!("{server}/{tool}");
            if started {
                vec![(LineKind::ToolUse, tool_summary(&name, item.get("arguments")))]
            } else if completed {
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
            } else {
                Vec::new()
            }
        }
        "web_search" if completed => vec![(LineKind::ToolUse, format!("web search: {}", str_of(item, "query")?))],
        "web_search" => Vec::new(),
        "todo_list" if !completed => {
            let items = item.get("items")?.as_array()?;
            let steps: Vec<String> = items
                .iter()
                .map(|step| {
                    let done = step.get("completed").and_then(Value::as_bool).unwrap_or(false);
                    let text = step.get("text").map(text_of).unwrap_or_default();
                    format!("[{}] {text}", if done { "x" } else { " " })
                })
                .collect();
            vec![(LineKind::System, format!("plan: {}", steps.join("; ")))]
        }
        // The last update already showed the plan as it ends.
        "todo_list" => Vec::new(),
        "error" if event != "item.updated" => vec![(LineKind::Error, str_of(item, "message")?.into())],
        "error" => Vec::new(),
        _ => return None,
    };
    Some(lines)
}
