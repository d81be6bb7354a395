//! Claude Code `claude -p --output-format stream-json --verbose`: every
//! member of the Claude Agent SDK's `SDKMessage` union (`sdk.d.ts` in
//! `@anthropic-ai/claude-agent-sdk` 0.3.x, the CLI 2.1.x).
//!
//! - `assistant` / `user` messages: a line per content block (`text`,
//!   `thinking`, `tool_use` as in [`tools`], `tool_result`, an error
//!   result as [`LineKind::Error`]); a message with `error` set (the CLI's
//!   synthetic "API Error: …") is an error line.
//! - `result`: `done in …` or `failed (SUBTYPE) after …`, with turns,
//!   cost, the API's HTTP status and the tools whose use was not permitted
//!   (`permission_denials`).
//! - `system` subtypes and the other top-level types: see [`system`].
//! - `stream_event` (partial messages), `keep_alive` and
//!   `system`/`thinking_tokens` are dropped: the whole message follows.
//! - A line of a type not known yet: `· TYPE: FIELDS`, its short fields.
//!
//! A line with `parent_tool_use_id` set comes from a subagent (the `Task`
//! tool): its lines start with [`SUBAGENT`].

mod oversized;
mod system;
mod tools;

use serde_json::{Map, Value};

use super::line::{LineKind, expand_tabs};
use super::summary::{Summary, first_lines, str_of, text_of, tool_output, unknown_line};

pub(super) use oversized::{field_in_prefix, oversized};

/// The most lines of a Claude Code tool result shown in its summary.
const TOOL_RESULT_LINES: usize = 3;

/// What a subagent's lines start with.
pub(super) const SUBAGENT: &str = "[subagent] ";

/// The keys an unknown line's summary leaves out: its type and ids.
const ID_KEYS: &[&str] = &["type", "subtype", "session_id", "uuid", "parent_tool_use_id", "tool_use_id", "request_id"];

/// The top-level `type`s of the `SDKMessage` union and of stream-json's
/// control messages.
pub(super) const TYPES: &[&str] = &[
    "system",
    "assistant",
    "user",
    "result",
    "stream_event",
    "rate_limit_event",
    "tool_progress",
    "tool_use_summary",
    "prompt_suggestion",
    "auth_status",
    "conversation_reset",
    "keep_alive",
    "control_request",
    "control_response",
    "control_cancel_request",
];

/// Whether a stdout line of type `kind` is Claude Code's: a type of
/// [`TYPES`], or one not known yet that carries Claude's `session_id`
/// and `uuid` (every `SDKMessage` does).
pub(super) fn claims(kind: &str, obj: &Map<String, Value>) -> bool {
    TYPES.contains(&kind) || (str_of(obj, "session_id").is_some() && str_of(obj, "uuid").is_some())
}

/// The lines a stream-json line of type `kind` (see [`claims`]) stands
/// for; never `None`, so no Claude line stays raw JSON.
pub(super) fn summarise(kind: &str, obj: &Map<String, Value>) -> Option<Summary> {
    let lines = match kind {
        "system" => system::system(obj),
        "assistant" | "user" => {
            message(obj, kind == "user").unwrap_or_else(|| vec![(LineKind::Notice, unknown_line(kind, obj, ID_KEYS))])
        }
        "result" => vec![(result_kind(obj), result(obj))],
        "stream_event" | "keep_alive" | "control_response" => Vec::new(),
        _ => system::top_level(kind, obj),
    };
    Some(mark_subagent(obj, lines))
}

/// A subagent's lines, prefixed with [`SUBAGENT`].
fn mark_subagent(obj: &Map<String, Value>, lines: Summary) -> Summary {
    if str_of(obj, "parent_tool_use_id").is_none() {
        return lines;
    }
    // Tabs first, so the subagent's columns line up as the agent's do.
    lines.into_iter().map(|(kind, text)| (kind, format!("{SUBAGENT}{}", expand_tabs(&text)))).collect()
}

/// An `assistant` or `user` message: one or more lines per content block.
fn message(obj: &Map<String, Value>, user: bool) -> Option<Summary> {
    let content = obj.get("message")?.get("content")?;
    // `error` (SDKAssistantMessageError) marks the CLI's own "API Error: …" message.
    let failed = str_of(obj, "error").is_some();
    let mut lines = match content {
        Value::String(text) => vec![text_line(text, user)],
        Value::Array(items) => items
            .iter()
            .flat_map(|item| match item.as_object() {
                Some(item) => content_lines(item, user),
                None => vec![(LineKind::Notice, format!("content: {}", text_of(item)))],
            })
            .collect(),
        _ => return None,
    };
    if failed {
        for (kind, _) in &mut lines {
            if *kind == LineKind::Text {
                *kind = LineKind::Error;
            }
        }
    }
    Some(lines)
}

/// A user message's text is the prompt (a subagent's, say), told apart
/// from the agent's own.
fn text_line(text: &str, user: bool) -> (LineKind, String) {
    (LineKind::Text, if user { format!("prompt: {text}") } else { text.into() })
}

/// A content block's lines: [`content_item`], [`tools::tool_use`] for a
/// tool call, and `· content TYPE: FIELDS` for a block not known yet.
fn content_lines(item: &Map<String, Value>, user: bool) -> Summary {
    match str_of(item, "type") {
        Some("tool_use" | "server_tool_use") => {
            tools::tool_use(str_of(item, "name").unwrap_or("tool"), item.get("input"))
        }
        kind => content_item(item, user).map(|line| vec![line]).unwrap_or_else(|| {
            vec![(LineKind::Notice, unknown_line(&format!("content {}", kind.unwrap_or("?")), item, ID_KEYS))]
        }),
    }
}

/// A Claude content item, or an agent host's top-level line of the same shape.
pub(super) fn content_item(item: &Map<String, Value>, user: bool) -> Option<(LineKind, String)> {
    match str_of(item, "type")? {
        "text" => Some(text_line(str_of(item, "text")?, user)),
        "thinking" => Some((LineKind::Thinking, str_of(item, "thinking").or(str_of(item, "text"))?.into())),
        "redacted_thinking" => Some((LineKind::Thinking, "(redacted)".into())),
        "tool_use" | "server_tool_use" => {
            let name = str_of(item, "name").unwrap_or("tool");
            Some((LineKind::ToolUse, super::summary::tool_summary(name, item.get("input"))))
        }
        "tool_result" | "web_search_tool_result" | "web_fetch_tool_result" | "mcp_tool_result" => {
            let content = item.get("content").or(item.get("output"));
            let text = content.map(tool_output).unwrap_or_default();
            let text =
                if text.trim().is_empty() { "(no output)".into() } else { first_lines(&text, TOOL_RESULT_LINES) };
            let is_error = item.get("is_error").and_then(Value::as_bool).unwrap_or(false);
            Some((if is_error { LineKind::Error } else { LineKind::ToolResult }, text))
        }
        "image" => Some((LineKind::Text, "[image]".into())),
        "document" => Some((LineKind::Text, "[document]".into())),
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

/// `done in 12.3 s, 4 turns, $0.0123: RESULT`, or `failed (SUBTYPE) after
/// …`, then `; not permitted: TOOL (ARGUMENT), …` for `permission_denials`.
fn result(obj: &Map<String, Value>) -> String {
    let failed = result_failed(obj);
    let mut text = match (failed, str_of(obj, "subtype")) {
        (false, _) => "done".to_owned(),
        (true, Some(subtype)) if subtype != "success" => format!("failed ({subtype})"),
        (true, _) => "failed".to_owned(),
    };
    if let Some(status) = obj.get("api_error_status").and_then(Value::as_u64) {
        text.push_str(&format!(" (the API answered HTTP {status})"));
    }
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
        text.push_str(result.trim_end());
    }
    if let Some(denied) = permission_denials(obj) {
        text.push_str("; not permitted: ");
        text.push_str(&denied);
    }
    text
}

/// `TOOL (ARGUMENT), …` for `permission_denials` (`SDKPermissionDenial`:
/// `tool_name`, `tool_use_id`, `tool_input`); `None` when there are none.
fn permission_denials(obj: &Map<String, Value>) -> Option<String> {
    let denials = obj.get("permission_denials")?.as_array()?;
    let named: Vec<String> = denials
        .iter()
        .filter_map(Value::as_object)
        .map(|denial| {
            let name = str_of(denial, "tool_name").unwrap_or("a tool");
            match tools::argument(name, denial.get("tool_input")) {
                Some(argument) => format!("{name} ({argument})"),
                None => name.to_owned(),
            }
        })
        .collect();
    (!named.is_empty()).then(|| named.join(", "))
}

#[cfg(test)]
mod tests;
