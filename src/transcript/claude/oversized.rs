//! A stream-json line too long to buffer whole (over
//! [`super::super::MAX_PENDING_BYTES`]: a `Read` of a big log, say): only
//! its first bytes are kept, a JSON object cut short that no parser takes,
//! so what can be read is read from the prefix as text.
//!
//! A tool result shows as `tool result: a line of SIZE, first lines:` and the first
//! lines of its content; any other line as `TYPE: a line of SIZE, too
//! long to read`.

use super::super::line::LineKind;
use super::super::summary::{Summary, first_lines, size};
use super::SUBAGENT;

/// The lines of a tool result shown.
const LINES: usize = 3;
/// The most characters of the prefix decoded: enough for [`LINES`] lines.
const DECODE_CHARS: usize = 16 * 1024;

/// A Claude line's summary from its first bytes `prefix` and its size
/// `total` (bytes); `None` when the prefix is not a Claude message.
pub(in super::super) fn oversized(prefix: &str, total: usize) -> Option<Summary> {
    let kind = field_in_prefix(prefix, "type")?;
    let tool_result = prefix.find(r#""type":"tool_result""#);
    if tool_result.is_none() && kind != "user" && kind != "assistant" {
        return None;
    }
    let subagent = if prefix.contains(r#""parent_tool_use_id":"toolu"#) { SUBAGENT } else { "" };
    let size = size(total);
    let (line_kind, text) = match tool_result {
        Some(at) => {
            let item = &prefix[at..];
            let failed = item.contains(r#""is_error":true"#);
            let content = string_after(item, r#""content":""#).or_else(|| string_after(item, r#""text":""#));
            let head = content.map(|c| first_lines(&c, LINES)).unwrap_or_default();
            let head = head.split("\n… (+").next().unwrap_or_default().to_owned();
            let what = if failed { "tool error" } else { "tool result" };
            let text = format!("{what}: a line of {size}, first lines:\n{head}\n… (the rest is not shown)");
            (if failed { LineKind::Error } else { LineKind::ToolResult }, text)
        }
        None => {
            let text = string_after(prefix, r#""text":""#).map(|t| first_lines(&t, LINES)).unwrap_or_default();
            (LineKind::Notice, format!("{kind} message: a line of {size}, too long to show whole: {text} …"))
        }
    };
    Some(vec![(line_kind, format!("{subagent}{text}"))])
}

/// The first string value of `"key":"…"` in a JSON prefix, decoded.
pub(in super::super) fn field_in_prefix(prefix: &str, key: &str) -> Option<String> {
    string_after(prefix, &format!("\"{key}\":\"")).filter(|v| !v.is_empty() && v.len() <= 64)
}

/// The JSON string that starts right after the first `opening` (which
/// ends with its opening quote), decoded up to its closing quote or the
/// end of `text` (RFC 8259 §7 escapes; a broken escape is U+FFFD).
fn string_after(text: &str, opening: &str) -> Option<String> {
    let start = text.find(opening)? + opening.len();
    let mut out = String::new();
    let mut chars = text[start..].chars();
    while let Some(c) = chars.next() {
        if out.len() >= DECODE_CHARS {
            break;
        }
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('b' | 'f') => {}
                Some('u') => out.push(unicode_escape(&mut chars)),
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

/// The character of a `\uXXXX` escape (its `\u` read), a surrogate pair
/// joined with the `\uXXXX` after it.
fn unicode_escape(chars: &mut std::str::Chars<'_>) -> char {
    let hex = |chars: &mut std::str::Chars<'_>| {
        let digits: String = chars.by_ref().take(4).collect();
        u32::from_str_radix(&digits, 16).ok()
    };
    let Some(high) = hex(chars) else { return '\u{fffd}' };
    if (0xD800..0xDC00).contains(&high) {
        let rest = chars.as_str();
        if let Some(low) = rest.strip_prefix("\\u").and_then(|r| u32::from_str_radix(r.get(..4)?, 16).ok())
            && (0xDC00..0xE000).contains(&low)
        {
            chars.nth(5);
            return char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)).unwrap_or('\u{fffd}');
        }
        return '\u{fffd}';
    }
    char::from_u32(high).unwrap_or('\u{fffd}')
}
