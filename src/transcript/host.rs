//! A loopback agent host's NDJSON (`[agent] endpoint`), one chunk per line:
//!
//! - Claude's content items at top level (`{"type":"text","text":..}`,
//!   `thinking`, `tool_use`, `tool_result`), and a `result` line read as
//!   Claude's and an `error` line as Codex's (the shapes agree);
//! - the seed contract's hyphenated chunks: `tool-use` (or `tool-call`)
//!   `{"name"|"toolName", "input"|"args"}`, `tool-result`
//!   `{"output"|"result"|"content", "is_error"|"isError"}`, `reasoning`
//!   `{"text"}`, and `end` `{"code": N}` (the host's exit code: non-zero is
//!   an error line; failing the task on it is the daemon's business);
//! - any other object with an `error` string, or an `error` object with a
//!   `message`, is an error line;
//! - anything else is `· TYPE: SHORT TEXT FIELDS`
//!   ([`super::summary::unknown_event`]), never the raw object.

use serde_json::{Map, Value};

use super::claude::content_item;
use super::line::LineKind;
use super::summary::{Summary, error_field, first_lines, str_of, text_of, tool_output, tool_summary, unknown_event};

/// The most lines of a `tool-result` chunk shown.
const TOOL_RESULT_LINES: usize = 3;

/// The lines an agent host's object stands for: always some.
pub(super) fn summarise(obj: &Map<String, Value>) -> Option<Summary> {
    if let Some(line) = content_item(obj, false).or_else(|| chunk(obj)) {
        return Some(vec![line]);
    }
    match error_field(obj) {
        Some(error) => Some(vec![(LineKind::Error, error)]),
        None => Some(vec![unknown_event(obj)]),
    }
}

/// A chunk of the seed contract, by its hyphenated `type`.
fn chunk(obj: &Map<String, Value>) -> Option<(LineKind, String)> {
    let field = |keys: &[&str]| keys.iter().find_map(|key| obj.get(*key).filter(|v| !v.is_null()));
    match str_of(obj, "type")? {
        "tool-use" | "tool-call" => {
            let name = field(&["name", "toolName", "tool"]).map(text_of).unwrap_or_else(|| "tool".into());
            Some((LineKind::ToolUse, tool_summary(&name, field(&["input", "args", "arguments"]))))
        }
        "tool-result" => {
            let text = field(&["output", "result", "content"]).map(tool_output).unwrap_or_default();
            let text =
                if text.trim().is_empty() { "(no output)".into() } else { first_lines(&text, TOOL_RESULT_LINES) };
            let is_error = field(&["is_error", "isError"]).and_then(Value::as_bool).unwrap_or(false);
            Some((if is_error { LineKind::Error } else { LineKind::ToolResult }, text))
        }
        "reasoning" => Some((LineKind::Thinking, str_of(obj, "text")?.into())),
        "end" => Some(end(obj)),
        _ => None,
    }
}

/// `the agent host ended with code N[: REASON]`: kind result for 0 (or no
/// code), error otherwise.
fn end(obj: &Map<String, Value>) -> (LineKind, String) {
    let code = obj.get("code").and_then(Value::as_i64);
    let reason = ["message", "reason"].iter().find_map(|key| str_of(obj, key)).map(str::to_owned);
    let reason = reason.or_else(|| error_field(obj)).filter(|r| !r.trim().is_empty());
    let mut text = match code {
        Some(code) => format!("the agent host ended with code {code}"),
        None => "the agent host ended".to_owned(),
    };
    if let Some(reason) = reason {
        text.push_str(": ");
        text.push_str(&reason);
    }
    (if code.unwrap_or(0) == 0 { LineKind::Result } else { LineKind::Error }, text)
}
