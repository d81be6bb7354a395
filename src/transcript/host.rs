//! A loopback agent host's NDJSON (`[agent] endpoint`): Claude's content
//! items at top level (`{"type":"text","text":..}`, `thinking`,
//! `tool_use`, `tool_result`), and `error` and `result` lines. A `result`
//! line is read as Claude's and an `error` line as Codex's (the shapes
//! agree); any other object with an `error` string, or an `error` object
//! with a `message`, is an error line.

use serde_json::{Map, Value};

use super::claude::content_item;
use super::line::LineKind;
use super::summary::{Summary, error_field};

/// The line an agent host's object stands for, or `None` to keep it raw.
pub(super) fn summarise(obj: &Map<String, Value>) -> Option<Summary> {
    match content_item(obj, false) {
        Some(line) => Some(vec![line]),
        None => Some(vec![(LineKind::Error, error_field(obj)?)]),
    }
}
