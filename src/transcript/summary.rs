//! A stdout line's summary: which shape it has (Claude Code, Codex, an
//! agent host), and the JSON helpers those shapes share.

use serde_json::{Map, Value};

use super::line::LineKind;
use super::{claude, codex, host};

/// The preferred keys of a tool's input, for its one-line summary.
pub(super) const TOOL_INPUT_KEYS: [&str; 7] =
    ["command", "file_path", "path", "pattern", "url", "query", "description"];

/// The lines one stdout line stands for, in order (possibly none).
pub(super) type Summary = Vec<(LineKind, String)>;

/// The lines a stdout line stands for, or `None` to keep it raw (it is
/// not a JSON object).
pub(super) fn summarise(line: &str) -> Option<Summary> {
    let value: Value = serde_json::from_str(line).ok()?;
    let obj = value.as_object()?;
    let summary = match str_of(obj, "type") {
        Some(kind) if claude::claims(kind, obj) => claude::summarise(kind, obj),
        Some(kind) if codex::TYPES.contains(&kind) => codex::summarise(kind, obj),
        _ => host::summarise(obj),
    };
    // An object of a known type but a shape not known is still no raw JSON.
    summary.or_else(|| Some(vec![unknown_event(obj)]))
}

/// `obj[key]` if it is a string.
pub(super) fn str_of<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str)
}

/// An error event's text: its `message`, else its [`error_field`].
pub(super) fn error_message(obj: &Map<String, Value>) -> Option<String> {
    str_of(obj, "message").map(Into::into).or_else(|| error_field(obj))
}

/// `error` as a string, or as an object with a `message`.
pub(super) fn error_field(obj: &Map<String, Value>) -> Option<String> {
    match obj.get("error")? {
        Value::String(s) => Some(s.clone()),
        Value::Object(error) => str_of(error, "message").map(Into::into),
        _ => None,
    }
}

/// A value as text: strings as they are, anything else as compact JSON.
pub(super) fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The first `n` non-blank lines of `s`, and how many more there are.
pub(super) fn first_lines(s: &str, n: usize) -> String {
    let mut lines = s.lines().filter(|l| !l.trim().is_empty());
    let head: Vec<&str> = lines.by_ref().take(n).collect();
    let more = lines.count();
    let mut out = head.join("\n");
    if more > 0 {
        out.push_str(&format!("\n… (+{more} lines)"));
    }
    out
}

/// `NAME: ARGUMENT`, the argument the first of [`TOOL_INPUT_KEYS`] present,
/// else the whole input as compact JSON.
pub(super) fn tool_summary(name: &str, input: Option<&Value>) -> String {
    let Some(input) = input.filter(|i| !i.is_null() && i.as_object().is_none_or(|o| !o.is_empty())) else {
        return name.into();
    };
    let argument = TOOL_INPUT_KEYS.iter().find_map(|key| input.get(key)).map_or_else(|| input.to_string(), text_of);
    format!("{name}: {argument}")
}

/// A tool result's `content`: a string, or blocks of which the text ones count.
pub(super) fn tool_output(content: &Value) -> String {
    match content {
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|block| match str_of(block.as_object()?, "type")? {
                "text" => block.get("text").and_then(Value::as_str).map(Into::into),
                "image" => Some("[image]".to_owned()),
                _ => None,
            })
            .collect::<Vec<String>>()
            .join("\n"),
        Value::Null => String::new(),
        other => text_of(other),
    }
}

/// The longest string field [`unknown_event`] shows, in bytes; longer ones
/// are left out (a blob, not a sentence).
const SHORT_FIELD_BYTES: usize = 200;

/// An event of a type not known yet: `TYPE: TEXT; TEXT` (kind
/// [`LineKind::Notice`], shown with `·`: not progress, so a host that only
/// sends such chunks still meets the idle limit), its short (at most
/// [`SHORT_FIELD_BYTES`]) non-blank string fields by key (serde_json sorts them), ids
/// left out. Without a `type`: `event (KEY, KEY)`. So no line of the
/// transcript is a raw JSON object (issue 13, item 1).
pub(super) fn unknown_event(obj: &Map<String, Value>) -> (LineKind, String) {
    let Some(kind) = str_of(obj, "type") else {
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        return (LineKind::Notice, format!("event ({})", keys.join(", ")));
    };
    let is_id = |key: &str| matches!(key, "type" | "id" | "uuid") || key.ends_with("_id") || key.ends_with("Id");
    let fields: Vec<&str> = obj
        .iter()
        .filter(|(key, _)| !is_id(key))
        .filter_map(|(_, value)| value.as_str())
        .filter(|text| !text.trim().is_empty() && text.len() <= SHORT_FIELD_BYTES)
        .collect();
    if fields.is_empty() {
        (LineKind::Notice, kind.to_owned())
    } else {
        (LineKind::Notice, format!("{kind}: {}", fields.join("; ")))
    }
}
/// The most fields [`short_fields`] names, and the most characters of each.
const SHORT_FIELDS: usize = 6;
const SHORT_FIELD_CHARS: usize = 200;

/// An object's short scalar fields as `key: value, …` (strings, numbers and
/// booleans, at most [`SHORT_FIELDS`], each cut to [`SHORT_FIELD_CHARS`]
/// characters), leaving out the keys in `skip`: what a line of a type not
/// known yet shows, so it is never printed as raw JSON.
pub(super) fn short_fields(obj: &Map<String, Value>, skip: &[&str]) -> String {
    obj.iter()
        .filter(|(key, _)| !skip.contains(&key.as_str()))
        .filter_map(|(key, value)| {
            let value = match value {
                Value::String(s) if !s.trim().is_empty() => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            let mut short: String = value.chars().take(SHORT_FIELD_CHARS).collect();
            if short.len() < value.len() {
                short.push('…');
            }
            Some(format!("{key}: {short}"))
        })
        .take(SHORT_FIELDS)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `TYPE: FIELDS` (see [`short_fields`]), or `TYPE` alone.
pub(super) fn unknown_line(kind: &str, obj: &Map<String, Value>, skip: &[&str]) -> String {
    let fields = short_fields(obj, skip);
    if fields.is_empty() { kind.to_owned() } else { format!("{kind}: {fields}") }
}

/// A byte count for people: `512 B`, `12 KiB`, `1.5 MiB` (IEC units).
pub(super) fn size(bytes: usize) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if bytes < 1024 {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.0} KiB", b / KIB)
    } else {
        format!("{:.1} MiB", b / (KIB * KIB))
    }
}

/// The lines a stdout line that outgrew [`super::MAX_PENDING_BYTES`]
/// stands for: `prefix` is its first bytes (a JSON object cut short),
/// `total` its whole size in bytes. `None` keeps the prefix as a raw line
/// (it is not JSON).
pub(super) fn oversized(prefix: &str, total: usize) -> Option<Summary> {
    if !prefix.trim_start().starts_with('{') {
        return None;
    }
    Some(claude::oversized(prefix, total).unwrap_or_else(|| {
        let kind = claude::field_in_prefix(prefix, "type").unwrap_or_else(|| "line".into());
        vec![(LineKind::Notice, format!("{kind}: a line of {}, too long to read", size(total)))]
    }))
}
