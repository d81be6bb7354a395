//! Claude Code `claude -p --output-format stream-json --verbose`: the
//! `system` (`init`), `assistant` and `user` messages (their `content`
//! items `text`, `thinking`, `tool_use`, `tool_result`) and the final
//! `result`. `stream_event` lines (`--include-partial-messages`) are
//! dropped: the whole message follows them.

use serde_json::{Map, Value};

use super::line::LineKind;
use super::summary::{Summary, first_lines, str_of, text_of, tool_output, tool_summary};

/// The most lines of a Claude Code tool result shown in its summary.
const TOOL_RESULT_LINES: usize = 3;

/// The `type`s of a stream-json line.
pub(super) const TYPES: &[&str] = &["system", "assistant", "user", "result", "stream_event"];

/// The lines a stream-json line of type `kind` (one of [`TYPES`]) stands for.
pub(super) fn summarise(kind: &str, obj: &Map<String, Value>) -> Option<Summary> {
    match kind {
        "system" => Some(vec![(LineKind::System, system(obj))]),
        "assistant" | "user" => message(obj, kind == "user"),
        "result" => Some(vec![(result_kind(obj), result(obj))]),
        "stream_event" => Some(Vec::new()),
        _ => None,
    }
}

/// `session started (model M, in CWD)` for `init`, else `system: SUBTYPE`.
fn system(obj: &Map<String, Value>) -> String {
    match str_of(obj, "subtype") {
        Some("init") => {
            let details: Vec<String> =
                [str_of(obj, "model").map(|m| format!("model {m}")), str_of(obj, "cwd").map(|c| format!("in {c}"))]
                    .into_iter()
                    .flatten()
                    .collect();
            if details.is_empty() {
                "session started".into()
            } else {
                format!("session started ({})", details.join(", "))
            }
        }
        Some(subtype) => format!("system: {subtype}"),
        None => "system".into(),
    }
}

/// An `assistant` or `user` message: one line per content item.
fn message(obj: &Map<String, Value>, user: bool) -> Option<Summary> {
    let content = obj.get("message")?.get("content")?;
    match content {
        Value::String(text) => Some(vec![text_line(text, user)]),
        Value::Array(items) => Some(
            items
                .iter()
                .map(|item| {
                    item.as_object()
                        .and_then(|item| content_item(item, user))
                        .unwrap_or_else(|| (LineKind::Raw, item.to_string()))
                })
                .collect(),
        ),
        _ => None,
    }
}

/// A user message's text is the prompt (a subagent's, say), told apart
/// from the agent's own.
fn text_line(text: &str, user: bool) -> (LineKind, String) {
    (LineKind::Text, if user { format!("prompt: {text}") } else { text.into() })
}

/// A Claude content item, or an agent host's top-level line of the same shape.
pub(super) fn content_item(item: &Map<String, Value>, user: bool) -> Option<(LineKind, String)> {
    match str_of(item, "type")? {
        "text" => Some(text_line(str_of(item, "text")?, user)),
        "thinking" => Some((LineKind::Thinking, str_of(item, "thinking").or(str_of(item, "text"))?.into())),
        "redacted_thinking" => Some((LineKind::Thinking, "(redacted)".into())),
        "tool_use" | "server_tool_use" => {
            let name = str_of(item, "name").unwrap_or("tool");
            Some((LineKind::ToolUse, tool_summary(name, item.get("input"))))
        }
        "tool_result" => {
            let content = item.get("content").or(item.get("output"));
            let text = content.map(tool_output).unwrap_or_default();
            let text =
                if text.trim().is_empty() { "(no output)".into() } else { first_lines(&text, TOOL_RESULT_LINES) };
            let is_error = item.get("is_error").and_then(Value::as_bool).unwrap_or(false);
            Some((if is_error { LineKind::Error } else { LineKind::ToolResult }, text))
        }
        _ => None,
    }
}

/// A run that failed is an error line, so it stands out.
fn result_kind(obj: &Map<String, Value>) -> LineKind {
    if result_failed(obj) { LineKind::Error } else { LineKind::Result }
}

/// `is_error`, or a subtype that starts with `error` (`error_max_turns`, say).
fn result_failed(obj: &Map<String, Value>) -> bool {
    obj.get("is_error").and_then(Value::as_bool).unwrap_or(false)
        || str_of(obj, "subtype").is_some_and(|s| s.starts_with("error"))
}

/// `done in 12.3 s, 4 turns, $0.0123: RESULT`, or `failed (SUBTYPE) after …`.
fn result(obj: &Map<String, Value>) -> String {
    let failed = result_failed(obj);
    let mut text = match (failed, str_of(obj, "subtype")) {
        (false, _) => "done".to_owned(),
        (true, Some(subtype)) if subtype != "success" => format!("failed ({subtype})"),
        (true, _) => "failed".to_owned(),
    };
    if let Some(ms) = obj.get("duration_ms").and_then(Value::as_f64) {
        let seconds = ms / 1000.0;
        text.push_str(&if failed { format!(" after {seconds:.1} s") } else { format!(" in {seconds:.1} s") });
    }
    if let Some(turns) = obj.get("num_turns").and_then(Value::as_u64) {
        text.push_str(&format!(", {turns} turn{}", if turns == 1 { "" } else { "s" }));
    }
    if let Some(cost) = obj.get("total_cost_usd").and_then(Value::as_f64) {
        text.push_str(&format!(", ${cost:.4}"));
    }
    let result = match obj.get("result") {
        Some(Value::String(result)) => Some(result.clone()),
        _ => obj
            .get("errors")
            .and_then(Value::as_array)
            .map(|errors| errors.iter().map(text_of).collect::<Vec<_>>().join("; ")),
    };
    if let Some(result) = result.filter(|r| !r.trim().is_empty()) {
        text.push_str(": ");
        text.push_str(&result);
    }
    text
}
