//! Making untrusted text safe to show: on a terminal, in a table, in a
//! log line or an audit record. Every place that prints text it did not
//! write (an operator's name, a device's output, a file's contents, a
//! wire id) goes through one of these, so the rule is the same everywhere.

/// Control characters, and the invisible ones that can make text read
/// other than it is: zero-width and bidirectional marks, line and
/// paragraph separators, the byte-order mark (Unicode TR #36, §2.2 and
/// the "Trojan Source" attacks, CVE-2021-42574).
pub fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// `text` with every unprintable character (see [`is_unprintable`]) shown as `?`.
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if is_unprintable(c) { '?' } else { c }).collect()
}

/// Like [`printable`], but newlines and tabs pass: output from another
/// machine keeps its lines while escape sequences (ECMA-48 CSI, OSC) do not.
pub fn printable_lines(text: &str) -> String {
    text.chars().map(|c| if c == '\n' || c == '\t' || !is_unprintable(c) { c } else { '?' }).collect()
}

/// `text` with unprintable characters left out, at most `max_chars`
/// characters, or `fallback` when nothing visible is left (a display name).
pub fn display_name(text: &str, max_chars: usize, fallback: &str) -> String {
    let name: String = text.chars().filter(|c| !is_unprintable(*c)).take(max_chars).collect();
    if name.trim().is_empty() { fallback.into() } else { name }
}

/// `text` for a message: [`printable`], at most 64 characters, `...`
/// appended when it was longer.
pub fn brief(text: &str) -> String {
    let mut s: String = printable(text).chars().take(64).collect();
    if text.chars().count() > 64 {
        s.push_str("...");
    }
    s
}

/// A wire id as it may be shown or recorded: itself when it is one safe
/// segment (at most 64 of `A-Z a-z 0-9 _ - .`), else only its size,
/// `(malformed, N bytes)`: anyone's text never reaches a record as it is.
pub fn safe_id(s: &str) -> String {
    let safe = s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if safe { s.to_string() } else { format!("(malformed, {} bytes)", s.len()) }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a
/// character boundary.
pub fn head(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_invisible_marks_are_replaced() {
        assert_eq!(printable("a\x1b[31mb\u{202E}c"), "a?[31mb?c");
        assert_eq!(printable_lines("a\n\tb\x1b]0;x\x07"), "a\n\tb?]0;x?");
        assert_eq!(display_name("\u{200B}\n", 64, "unnamed"), "unnamed");
        assert_eq!(display_name("laptop\x1b", 3, "unnamed"), "lap");
    }

    #[test]
    fn brief_caps_and_cleans_text() {
        assert_eq!(brief("t-0123"), "t-0123");
        assert_eq!(brief("a\u{1b}[31mb"), "a?[31mb");
        assert_eq!(brief(&"x".repeat(100)), format!("{}...", "x".repeat(64)));
    }

    #[test]
    fn ids_pass_only_as_one_safe_segment() {
        assert_eq!(safe_id("r-1.a_b"), "r-1.a_b");
        assert_eq!(safe_id("../etc"), "(malformed, 6 bytes)");
        assert_eq!(safe_id(&"a".repeat(65)), "(malformed, 65 bytes)");
    }

    #[test]
    fn head_never_splits_a_character() {
        assert_eq!(head("héllo", 2), "h");
        assert_eq!(head("héllo", 3), "hé");
        assert_eq!(head("abc", 10), "abc");
    }
}
