//! The live transcript of a task: its raw output bytes turned into lines
//! for the owner to read, the last [`KEEP_LINES`] of them kept in memory.
//!
//! Output arrives in chunks cut anywhere ([`super::exec::Chunk`]); each
//! stream keeps its partial line until the newline arrives, so a UTF-8
//! character or a JSON object split across chunks comes out whole. This
//! module does no I/O: the daemon feeds it and serves [`Transcript::lines`].
//!
//! # Summaries
//!
//! An agent task (tier 3) prints one JSON object per line on stdout. With
//! `summarise` set, each such line becomes one or more lines for people:
//!
//! - Claude Code `claude -p --output-format stream-json --verbose`: the
//!   `system` (`init`), `assistant` and `user` messages (their `content`
//!   items `text`, `thinking`, `tool_use`, `tool_result`) and the final
//!   `result`. `stream_event` lines (`--include-partial-messages`) are
//!   dropped: the whole message follows them.
//! - Codex CLI `codex exec --json`: `thread.started`, `turn.*`, `error`
//!   and the `item.started` / `item.updated` / `item.completed` events of
//!   `agent_message`, `reasoning`, `command_execution`, `file_change`,
//!   `mcp_tool_call`, `web_search`, `todo_list` and `error` items.
//! - A loopback agent host's NDJSON: the content items above at top level
//!   (`{"type":"text","text":..}`, `tool_use`, `tool_result`, `error`,
//!   `result`).
//! - Any other object with an `error` string, or an `error` object with a
//!   `message`.
//!
//! Anything else (not JSON, not an object, a shape not listed) stays a
//! [`LineKind::Raw`] line holding the text as printed. stderr is never
//! parsed.
//!
//! # Text
//!
//! A line's text never holds a line break: each run of breaks (`\n`, `\r`,
//! VT, FF, NEL, U+2028, U+2029) with any blank lines between becomes
//! [`BREAK`] (" ⏎ "), and trailing whitespace before a break is dropped.
//! That holds for raw lines too, where a lone `\r` (a progress bar) would
//! otherwise rewrite the line on a terminal. Other control characters
//! (ANSI escapes) are kept: whoever prints a line to a terminal escapes
//! them. Then the text is cut to [`MAX_TEXT_BYTES`] on a character
//! boundary, with "…" appended. Lines that are empty or whitespace only
//! are skipped.

use std::collections::VecDeque;
use std::fmt;

use chrono::{DateTime, Utc};
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::protocol::Stream;

/// Lines kept per task.
pub const KEEP_LINES: usize = 200;
/// A line's text is cut to this many bytes (on a char boundary, with "…" appended).
pub const MAX_TEXT_BYTES: usize = 4096;
/// A partial line longer than this is emitted as it stands (kind raw) rather than buffered further.
///
/// Its first `MAX_PENDING_BYTES` make the line; the rest, up to the next
/// newline, is dropped (the text is cut to [`MAX_TEXT_BYTES`] anyway). So a
/// stream-JSON line longer than this (a tool result holding a large file)
/// shows as one raw line, whatever the chunking.
pub const MAX_PENDING_BYTES: usize = 64 * 1024;
/// What a line break inside a summary (or a lone `\r` in a raw line) becomes.
pub const BREAK: &str = " ⏎ ";

/// The most lines of a Claude Code tool result shown in its summary.
const TOOL_RESULT_LINES: usize = 3;
/// The preferred keys of a tool's input, for its one-line summary.
const TOOL_INPUT_KEYS: [&str; 7] = ["command", "file_path", "path", "pattern", "url", "query", "description"];

/// What a transcript line says; the wire form is snake_case (`tool_use`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// The agent's message (Claude `text` content, Codex `agent_message`).
    Text,
    /// The agent's reasoning (Claude `thinking`, Codex `reasoning`).
    Thinking,
    /// A tool call: `NAME: ARGUMENT` (Claude `tool_use`), `$ COMMAND` or
    /// `edit PATH (KIND)` (Codex items).
    ToolUse,
    /// What a tool answered: its first lines, or `exit N: FIRST LINE`.
    ToolResult,
    /// A failed tool call, turn or session, or an `error` event.
    Error,
    /// The end of a run or turn: duration, turns, cost or token counts.
    Result,
    /// Session events: `session started (model M, in CWD)`, a plan.
    System,
    /// A line as printed: stderr, a task that is not summarised, or a
    /// line that is not a JSON object of a known shape.
    Raw,
}

/// One transcript line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// 1, 2, ... over the task's whole life (not reset when old lines are dropped).
    pub n: u64,
    /// When the chunk that completed it was fed: RFC 3339 UTC, milliseconds, `Z`.
    pub ts: String,
    /// The pipe it came from.
    pub stream: Stream,
    /// What it says; always [`LineKind::Raw`] on stderr.
    pub kind: LineKind,
    /// For people: at most [`MAX_TEXT_BYTES`] plus "…", never a line break
    /// (breaks become [`BREAK`], see the module docs), never blank.
    pub text: String,
}

/// A stream's partial line.
#[derive(Debug, Default)]
struct Pending {
    /// At most [`MAX_PENDING_BYTES`].
    buf: Vec<u8>,
    /// The line outgrew the buffer and was emitted: drop up to its newline.
    skipping: bool,
}

/// One task's transcript: partial lines per stream, the last
/// [`KEEP_LINES`] lines, and a digest over every line ever emitted.
pub struct Transcript {
    summarise: bool,
    stdout: Pending,
    stderr: Pending,
    lines: VecDeque<Line>,
    total: u64,
    sha256: Context,
}

impl fmt::Debug for Transcript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transcript")
            .field("summarise", &self.summarise)
            .field("stdout", &self.stdout)
            .field("stderr", &self.stderr)
            .field("lines", &self.lines)
            .field("total", &self.total)
            .field("digest", &self.digest())
            .finish()
    }
}

impl Transcript {
    /// `summarise`: parse stream-JSON lines (agent tasks); false keeps every line raw (other tasks).
    pub fn new(summarise: bool) -> Transcript {
        Transcript {
            summarise,
            stdout: Pending::default(),
            stderr: Pending::default(),
            lines: VecDeque::with_capacity(KEEP_LINES),
            total: 0,
            sha256: Context::new(&SHA256),
        }
    }

    /// Feeds raw output; returns the lines completed by it (in order). Splits on '\n' (strip a trailing '\r'),
    /// keeps a partial line per stream until its newline arrives (so a UTF-8 character or a JSON object split
    /// across chunks is whole), decodes with from_utf8_lossy only once a line is whole, skips lines that are empty
    /// or whitespace only.
    ///
    /// A partial line longer than [`MAX_PENDING_BYTES`] is emitted raw at
    /// once and the rest of it dropped. One JSON line may yield several
    /// lines (consecutive `n`), or none (`turn.started`).
    pub fn push(&mut self, stream: Stream, data: &[u8]) -> Vec<Line> {
        self.push_at(stream, data, Utc::now())
    }

    /// Flushes both streams' partial lines (the task ended): stdout's first, then stderr's.
    pub fn finish(&mut self) -> Vec<Line> {
        self.finish_at(Utc::now())
    }

    /// The last [`KEEP_LINES`] lines, oldest first.
    pub fn lines(&self) -> Vec<Line> {
        self.lines.iter().cloned().collect()
    }

    /// How many lines were ever emitted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// SHA-256 (ring::digest) over every line ever emitted, in order, each
    /// as the JSON object `{"n","stream","kind","text"}` (its fields in
    /// that order, without `ts`) followed by "\n"; 64 lowercase hex digits.
    /// The same digest for no lines is that of the empty input.
    ///
    /// So the digest covers lines already dropped from memory, and does
    /// not depend on when a line arrived: the operator, feeding the same
    /// `output` frames through a `Transcript`, gets the same digest.
    pub fn digest(&self) -> String {
        hex::encode(self.sha256.clone().finish().as_ref())
    }
}

/// A line as the digest covers it.
#[derive(Serialize)]
struct Canonical<'a> {
    n: u64,
    stream: Stream,
    kind: &'a LineKind,
    text: &'a str,
}

impl Transcript {
    fn push_at(&mut self, stream: Stream, data: &[u8], now: DateTime<Utc>) -> Vec<Line> {
        let ts = timestamp(now);
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let (segment, ended) = match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    let segment = &rest[..i];
                    rest = &rest[i + 1..];
                    (segment, true)
                }
                None => (std::mem::take(&mut rest), false),
            };
            let pending = self.pending(stream);
            if pending.skipping {
                pending.skipping = !ended;
                continue;
            }
            let room = MAX_PENDING_BYTES - pending.buf.len();
            if segment.len() > room {
                pending.buf.extend_from_slice(&segment[..room]);
                pending.skipping = !ended;
                let line = std::mem::take(&mut pending.buf);
                self.emit(stream, LineKind::Raw, String::from_utf8_lossy(&line).into_owned(), &ts, &mut out);
            } else {
                pending.buf.extend_from_slice(segment);
                if ended {
                    let line = std::mem::take(&mut pending.buf);
                    self.complete(stream, &line, &ts, &mut out);
                }
            }
        }
        out
    }

    fn finish_at(&mut self, now: DateTime<Utc>) -> Vec<Line> {
        let ts = timestamp(now);
        let mut out = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let pending = std::mem::take(self.pending(stream));
            self.complete(stream, &pending.buf, &ts, &mut out);
        }
        out
    }

    fn pending(&mut self, stream: Stream) -> &mut Pending {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    /// A whole line, without its '\n'.
    fn complete(&mut self, stream: Stream, line: &[u8], ts: &str, out: &mut Vec<Line>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = String::from_utf8_lossy(line);
        if text.trim().is_empty() {
            return;
        }
        let summary = match stream {
            Stream::Stdout if self.summarise => summarise(&text),
            _ => None,
        };
        match summary {
            Some(summary) => {
                for (kind, text) in summary {
                    self.emit(stream, kind, text, ts, out);
                }
            }
            None => self.emit(stream, LineKind::Raw, text.into_owned(), ts, out),
        }
    }

    fn emit(&mut self, stream: Stream, kind: LineKind, text: String, ts: &str, out: &mut Vec<Line>) {
        let text = cut(one_line(&text));
        if text.trim().is_empty() {
            return;
        }
        self.total += 1;
        let line = Line { n: self.total, ts: ts.to_owned(), stream, kind, text };
        let canonical = Canonical { n: line.n, stream: line.stream, kind: &line.kind, text: &line.text };
        let json = serde_json::to_string(&canonical).expect("a Line is strings, numbers and unit enums");
        self.sha256.update(json.as_bytes());
        self.sha256.update(b"\n");
        if self.lines.len() == KEEP_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line.clone());
        out.push(line);
    }
}

fn timestamp(now: DateTime<Utc>) -> String {
    crate::time::rfc3339_millis(now)
}

fn is_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// `s` on one line: see the module docs. Stops early once past
/// [`MAX_TEXT_BYTES`], since [`cut`] follows.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_TEXT_BYTES + BREAK.len()));
    for piece in s.split(is_break) {
        let piece = piece.trim_end();
        if piece.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str(BREAK);
        }
        out.push_str(piece);
        if out.len() > MAX_TEXT_BYTES {
            break;
        }
    }
    out
}

/// `s` cut to [`MAX_TEXT_BYTES`] on a character boundary, "…" appended when cut.
fn cut(mut s: String) -> String {
    if s.len() > MAX_TEXT_BYTES {
        s.truncate(crate::text::head(&s, MAX_TEXT_BYTES).len());
        s.push('…');
    }
    s
}

/// The first `n` non-blank lines of `s`, and how many more there are.
fn first_lines(s: &str, n: usize) -> String {
    let mut lines = s.lines().filter(|l| !l.trim().is_empty());
    let head: Vec<&str> = lines.by_ref().take(n).collect();
    let more = lines.count();
    let mut out = head.join("\n");
    if more > 0 {
        out.push_str(&format!("\n… (+{more} lines)"));
    }
    out
}

type Summary = Vec<(LineKind, String)>;

/// The lines a stdout line stands for, or `None` to keep it raw.
fn summarise(line: &str) -> Option<Summary> {
    let value: Value = serde_json::from_str(line).ok()?;
    let obj = value.as_object()?;
    let one = |kind, text: String| Some(vec![(kind, text)]);
    match str_of(obj, "type") {
        // Claude Code stream-json.
        Some("system") => one(LineKind::System, claude_system(obj)),
        Some(role @ ("assistant" | "user")) => claude_message(obj, role == "user"),
        Some("result") => one(claude_result_kind(obj), claude_result(obj)),
        Some("stream_event") => Some(Vec::new()),
        // Codex exec --json.
        Some("thread.started") => one(LineKind::System, "session started".into()),
        Some("turn.started") => Some(Vec::new()),
        Some("turn.completed") => one(LineKind::Result, codex_usage(obj.get("usage"))),
        Some("turn.failed") => {
            let message = error_message(obj).unwrap_or_else(|| "unknown error".into());
            one(LineKind::Error, format!("turn failed: {message}"))
        }
        Some(event @ ("item.started" | "item.updated" | "item.completed")) => {
            codex_item(event, obj.get("item")?.as_object()?)
        }
        Some("error") => one(LineKind::Error, error_message(obj).unwrap_or_else(|| "error".into())),
        // An agent host's content items at top level, then any error.
        _ => match content_item(obj, false) {
            Some(line) => Some(vec![line]),
            None => one(LineKind::Error, error_field(obj)?),
        },
    }
}

fn str_of<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str)
}

/// An error event's text: its `message`, else its [`error_field`].
fn error_message(obj: &Map<String, Value>) -> Option<String> {
    str_of(obj, "message").map(Into::into).or_else(|| error_field(obj))
}

/// `error` as a string, or as an object with a `message`.
fn error_field(obj: &Map<String, Value>) -> Option<String> {
    match obj.get("error")? {
        Value::String(s) => Some(s.clone()),
        Value::Object(error) => str_of(error, "message").map(Into::into),
        _ => None,
    }
}

/// A value as text: strings as they are, anything else as compact JSON.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn claude_system(obj: &Map<String, Value>) -> String {
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
fn claude_message(obj: &Map<String, Value>, user: bool) -> Option<Summary> {
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
fn content_item(item: &Map<String, Value>, user: bool) -> Option<(LineKind, String)> {
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

/// `NAME: ARGUMENT`, the argument the first of [`TOOL_INPUT_KEYS`] present,
/// else the whole input as compact JSON.
fn tool_summary(name: &str, input: Option<&Value>) -> String {
    let Some(input) = input.filter(|i| !i.is_null() && i.as_object().is_none_or(|o| !o.is_empty())) else {
        return name.into();
    };
    let argument = TOOL_INPUT_KEYS.iter().find_map(|key| input.get(key)).map_or_else(|| input.to_string(), text_of);
    format!("{name}: {argument}")
}

/// A tool result's `content`: a string, or blocks of which the text ones count.
fn tool_output(content: &Value) -> String {
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

fn claude_result_kind(obj: &Map<String, Value>) -> LineKind {
    if claude_result_failed(obj) { LineKind::Error } else { LineKind::Result }
}

fn claude_result_failed(obj: &Map<String, Value>) -> bool {
    obj.get("is_error").and_then(Value::as_bool).unwrap_or(false)
        || str_of(obj, "subtype").is_some_and(|s| s.starts_with("error"))
}

/// `done in 12.3 s, 4 turns, $0.0123: RESULT`, or `failed (SUBTYPE) after …`.
fn claude_result(obj: &Map<String, Value>) -> String {
    let failed = claude_result_failed(obj);
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

/// `turn completed (N input / M output tokens)`.
fn codex_usage(usage: Option<&Value>) -> String {
    let tokens = |key| usage.and_then(|u| u.get(key)).and_then(Value::as_u64);
    match (tokens("input_tokens"), tokens("output_tokens")) {
        (Some(input), Some(output)) => format!("turn completed ({input} input / {output} output tokens)"),
        _ => "turn completed".into(),
    }
}

/// A Codex item event. Messages, reasoning, edits and searches are shown
/// once complete; commands and MCP calls when they start and when they end.
fn codex_item(event: &str, item: &Map<String, Value>) -> Option<Summary> {
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use LineKind::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-01-02T03:04:05.678Z").unwrap().with_timezone(&Utc)
    }

    /// Feeds `chunks` to stdout at a fixed time, then finishes.
    fn run(summarise: bool, chunks: &[&[u8]]) -> (Transcript, Vec<Line>) {
        let mut t = Transcript::new(summarise);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(t.push_at(Stream::Stdout, chunk, at()));
        }
        out.extend(t.finish_at(at()));
        (t, out)
    }

    fn summary(lines: &[Line]) -> Vec<(LineKind, &str)> {
        lines.iter().map(|l| (l.kind.clone(), l.text.as_str())).collect()
    }

    fn numbered(lines: &[Line]) -> Vec<u64> {
        lines.iter().map(|l| l.n).collect()
    }

    const CLAUDE_SESSION: &str = concat!(
        r#"{"type":"system","subtype":"init","cwd":"/home/ana/proj","session_id":"9f1c","tools":["Bash","Read"],"mcp_servers":[],"model":"claude-sonnet-4-5-20250929","permissionMode":"default","apiKeySource":"none","uuid":"u1"}"#,
        "\n",
        r#"{"type":"assistant","message":{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"thinking","thinking":"The disk may be full.\nCheck df.","signature":"c2ln"},{"type":"text","text":"Let me check the disk usage."},{"type":"tool_use","id":"toolu_01","name":"Bash","input":{"command":"df -h /","description":"Show disk usage"}}],"stop_reason":null,"usage":{"input_tokens":4,"output_tokens":61}},"parent_tool_use_id":null,"session_id":"9f1c","uuid":"u2"}"#,
        "\n",
        r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_01","type":"tool_result","content":"Filesystem      Size  Used Avail Use% Mounted on\n/dev/nvme0n1p2  234G  230G  4.0G  99% /\n","is_error":false}]},"parent_tool_use_id":null,"session_id":"9f1c","uuid":"u3","tool_use_result":{"stdout":"…","stderr":"","interrupted":false}}"#,
        "\n",
        r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"toolu_02","name":"Read","input":{"file_path":"/var/log/syslog","limit":20}}]},"session_id":"9f1c"}"#,
        "\n",
        r#"{"type":"user","message":{"role":"user","content":[{"tool_use_id":"toolu_02","type":"tool_result","content":[{"type":"text","text":"<tool_use_error>Permission denied</tool_use_error>"}],"is_error":true}]},"session_id":"9f1c"}"#,
        "\n",
        r#"{"type":"assistant","message":{"content":[{"type":"text","text":"The root filesystem is 99% full.\n\nFree space in /var/cache."}]},"session_id":"9f1c"}"#,
        "\n",
        r#"{"type":"result","subtype":"success","is_error":false,"duration_ms":12345,"duration_api_ms":11000,"num_turns":4,"result":"The root filesystem is 99% full.","session_id":"9f1c","total_cost_usd":0.01234,"usage":{}}"#,
        "\n",
    );

    const CODEX_SESSION: &str = concat!(
        r#"{"type":"thread.started","thread_id":"0199a213-81c0-7800-8aa1-bbab2a035a53"}"#,
        "\n",
        r#"{"type":"turn.started"}"#,
        "\n",
        r#"{"type":"item.completed","item":{"id":"item_0","type":"reasoning","text":"**Checking disk usage**"}}"#,
        "\n",
        r#"{"type":"item.started","item":{"id":"item_1","type":"todo_list","items":[{"text":"Check disk","completed":false},{"text":"Clean cache","completed":false}]}}"#,
        "\n",
        r#"{"type":"item.started","item":{"id":"item_2","type":"command_execution","command":"bash -lc 'df -h /'","aggregated_output":"","exit_code":null,"status":"in_progress"}}"#,
        "\n",
        r#"{"type":"item.updated","item":{"id":"item_2","type":"command_execution","command":"bash -lc 'df -h /'","aggregated_output":"Filesystem","exit_code":null,"status":"in_progress"}}"#,
        "\n",
        r#"{"type":"item.completed","item":{"id":"item_2","type":"command_execution","command":"bash -lc 'df -h /'","aggregated_output":"Filesystem  Size  Used\n/dev/sda2   234G  230G\n","exit_code":0,"status":"completed"}}"#,
        "\n",
        r#"{"type":"item.updated","item":{"id":"item_1","type":"todo_list","items":[{"text":"Check disk","completed":true},{"text":"Clean cache","completed":false}]}}"#,
        "\n",
        r#"{"type":"item.completed","item":{"id":"item_3","type":"file_change","changes":[{"path":"notes.md","kind":"update"},{"path":"new.txt","kind":"add"}],"status":"completed"}}"#,
        "\n",
        r#"{"type":"item.started","item":{"id":"item_4","type":"mcp_tool_call","server":"fs","tool":"read_file","arguments":{"path":"/etc/fstab"},"result":null,"error":null,"status":"in_progress"}}"#,
        "\n",
        r#"{"type":"item.completed","item":{"id":"item_4","type":"mcp_tool_call","server":"fs","tool":"read_file","arguments":{"path":"/etc/fstab"},"result":null,"error":{"message":"access denied"},"status":"failed"}}"#,
        "\n",
        r#"{"type":"item.completed","item":{"id":"item_5","type":"web_search","query":"ubuntu clean apt cache"}}"#,
        "\n",
        r#"{"type":"item.completed","item":{"id":"item_6","type":"command_execution","command":"false","aggregated_output":"","exit_code":1,"status":"failed"}}"#,
        "\n",
        r#"{"type":"item.completed","item":{"id":"item_7","type":"error","message":"model overloaded, retrying"}}"#,
        "\n",
        r#"{"type":"item.started","item":{"id":"item_8","type":"agent_message","text":""}}"#,
        "\n",
        r#"{"type":"item.completed","item":{"id":"item_8","type":"agent_message","text":"The disk is 99% full.\nI cleaned the cache."}}"#,
        "\n",
        r#"{"type":"item.completed","item":{"id":"item_1","type":"todo_list","items":[{"text":"Check disk","completed":true},{"text":"Clean cache","completed":true}]}}"#,
        "\n",
        r#"{"type":"turn.completed","usage":{"input_tokens":1200,"cached_input_tokens":200,"output_tokens":345}}"#,
        "\n",
        r#"{"type":"turn.failed","error":{"message":"stream disconnected"}}"#,
        "\n",
        r#"{"type":"error","message":"Reconnecting... 1/5"}"#,
        "\n",
    );

    #[test]
    fn claude_code_session_is_summarised() {
        let (t, lines) = run(true, &[CLAUDE_SESSION.as_bytes()]);
        assert_eq!(
            summary(&lines),
            [
                (System, "session started (model claude-sonnet-4-5-20250929, in /home/ana/proj)"),
                (Thinking, "The disk may be full. ⏎ Check df."),
                (Text, "Let me check the disk usage."),
                (ToolUse, "Bash: df -h /"),
                (
                    ToolResult,
                    "Filesystem      Size  Used Avail Use% Mounted on ⏎ /dev/nvme0n1p2  234G  230G  4.0G  99% /"
                ),
                (ToolUse, "Read: /var/log/syslog"),
                (Error, "<tool_use_error>Permission denied</tool_use_error>"),
                (Text, "The root filesystem is 99% full. ⏎ Free space in /var/cache."),
                (Result, "done in 12.3 s, 4 turns, $0.0123: The root filesystem is 99% full."),
            ]
        );
        assert_eq!(numbered(&lines), (1..=9).collect::<Vec<_>>());
        assert!(lines.iter().all(|l| l.stream == Stream::Stdout && l.ts == "2025-01-02T03:04:05.678Z"));
        assert_eq!(t.total(), 9);
        assert_eq!(t.lines(), lines);
    }

    #[test]
    fn codex_session_is_summarised() {
        let (_, lines) = run(true, &[CODEX_SESSION.as_bytes()]);
        assert_eq!(
            summary(&lines),
            [
                (System, "session started"),
                (Thinking, "**Checking disk usage**"),
                (System, "plan: [ ] Check disk; [ ] Clean cache"),
                (ToolUse, "$ bash -lc 'df -h /'"),
                (ToolResult, "exit 0: Filesystem  Size  Used ⏎ … (+1 lines)"),
                (System, "plan: [x] Check disk; [ ] Clean cache"),
                (ToolUse, "edit notes.md (update)"),
                (ToolUse, "edit new.txt (add)"),
                (ToolUse, "fs/read_file: /etc/fstab"),
                (Error, "fs/read_file failed: access denied"),
                (ToolUse, "web search: ubuntu clean apt cache"),
                (ToolResult, "exit 1"),
                (Error, "model overloaded, retrying"),
                (Text, "The disk is 99% full. ⏎ I cleaned the cache."),
                (Result, "turn completed (1200 input / 345 output tokens)"),
                (Error, "turn failed: stream disconnected"),
                (Error, "Reconnecting... 1/5"),
            ]
        );
        assert_eq!(numbered(&lines), (1..=17).collect::<Vec<_>>());
    }

    #[test]
    fn single_lines_summarise_or_stay_raw() {
        let cases: &[(&str, &[(LineKind, &str)])] = &[
            // Not JSON objects, or shapes not known: raw, as printed.
            ("plain text", &[(Raw, "plain text")]),
            (r#"{"type":"unknown.event","x":1}"#, &[(Raw, r#"{"type":"unknown.event","x":1}"#)]),
            (r#"{"no_type":true}"#, &[(Raw, r#"{"no_type":true}"#)]),
            (r#"["type","text"]"#, &[(Raw, r#"["type","text"]"#)]),
            (r#""a string""#, &[(Raw, r#""a string""#)]),
            (r#"{"type":"text"}"#, &[(Raw, r#"{"type":"text"}"#)]),
            (r#"{"type":"text","text":"cut {"#, &[(Raw, r#"{"type":"text","text":"cut {"#)]),
            (r#"{"type":"assistant"}"#, &[(Raw, r#"{"type":"assistant"}"#)]),
            (
                r#"{"type":"assistant","message":{"content":5}}"#,
                &[(Raw, r#"{"type":"assistant","message":{"content":5}}"#)],
            ),
            (r#"{"type":"item.completed"}"#, &[(Raw, r#"{"type":"item.completed"}"#)]),
            (
                r#"{"type":"item.completed","item":{"type":"new_kind"}}"#,
                &[(Raw, r#"{"type":"item.completed","item":{"type":"new_kind"}}"#)],
            ),
            // Claude Code.
            (r#"{"type":"system","subtype":"compact_boundary"}"#, &[(System, "system: compact_boundary")]),
            (r#"{"type":"system","subtype":"init"}"#, &[(System, "session started")]),
            (
                r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Grep","input":{"pattern":"TODO","path":"src"}}]}}"#,
                &[(ToolUse, "Grep: src")],
            ),
            (
                r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Glob","input":{"pattern":"**/*.rs"}}]}}"#,
                &[(ToolUse, "Glob: **/*.rs")],
            ),
            (
                r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"TodoWrite","input":{"todos":[{"content":"a"}]}}]}}"#,
                &[(ToolUse, r#"TodoWrite: {"todos":[{"content":"a"}]}"#)],
            ),
            (
                r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Bash","input":{"command":"cd /tmp &&\nls"}}]}}"#,
                &[(ToolUse, "Bash: cd /tmp && ⏎ ls")],
            ),
            (
                r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Now","input":{}}]}}"#,
                &[(ToolUse, "Now")],
            ),
            (
                r#"{"type":"assistant","message":{"content":[{"type":"image","source":{}},{"type":"text","text":"  "}]}}"#,
                &[(Raw, r#"{"source":{},"type":"image"}"#)],
            ),
            (r#"{"type":"assistant","message":{"content":[]}}"#, &[]),
            (
                r#"{"type":"user","message":{"role":"user","content":"Fix the disk"}}"#,
                &[(Text, "prompt: Fix the disk")],
            ),
            (
                r#"{"type":"user","message":{"content":[{"type":"tool_result","content":"1\n2\n\n3\n4\n5"}]}}"#,
                &[(ToolResult, "1 ⏎ 2 ⏎ 3 ⏎ … (+2 lines)")],
            ),
            (
                r#"{"type":"user","message":{"content":[{"type":"tool_result","content":""}]}}"#,
                &[(ToolResult, "(no output)")],
            ),
            (
                r#"{"type":"result","subtype":"error_max_turns","is_error":false,"duration_ms":1000,"num_turns":1}"#,
                &[(Error, "failed (error_max_turns) after 1.0 s, 1 turn")],
            ),
            (
                r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 529"}"#,
                &[(Error, "failed: API Error: 529")],
            ),
            (r#"{"type":"stream_event","event":{"type":"content_block_delta"}}"#, &[]),
            // Codex.
            (r#"{"type":"turn.started"}"#, &[]),
            (r#"{"type":"turn.completed"}"#, &[(Result, "turn completed")]),
            (r#"{"type":"item.updated","item":{"type":"agent_message","text":"part"}}"#, &[]),
            (
                r#"{"type":"item.completed","item":{"type":"command_execution","command":"rm -rf /","exit_code":null,"status":"declined"}}"#,
                &[(Error, "declined: $ rm -rf /")],
            ),
            (
                r#"{"type":"item.completed","item":{"type":"file_change","changes":[{"path":"a.rs","kind":"update"}],"status":"failed"}}"#,
                &[(Error, "edit failed: a.rs (update)")],
            ),
            (
                r#"{"type":"item.completed","item":{"type":"mcp_tool_call","server":"s","tool":"t","result":{"content":[{"type":"text","text":"ok"}]},"error":null,"status":"completed"}}"#,
                &[(ToolResult, "s/t: ok")],
            ),
            // An agent host's NDJSON, and errors anywhere.
            (r#"{"type":"text","text":"hello"}"#, &[(Text, "hello")]),
            (r#"{"type":"thinking","text":"hmm"}"#, &[(Thinking, "hmm")]),
            (r#"{"type":"tool_use","name":"fetch","input":{"url":"http://x/"}}"#, &[(ToolUse, "fetch: http://x/")]),
            (r#"{"type":"tool_result","content":"fine","is_error":false}"#, &[(ToolResult, "fine")]),
            (r#"{"type":"result","result":"all done"}"#, &[(Result, "done: all done")]),
            (r#"{"type":"error","message":"boom"}"#, &[(Error, "boom")]),
            (
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
                &[(Error, "Overloaded")],
            ),
            (r#"{"type":"error"}"#, &[(Error, "error")]),
            (r#"{"error":"quota exceeded"}"#, &[(Error, "quota exceeded")]),
            (r#"{"status":500,"error":{"message":"internal"}}"#, &[(Error, "internal")]),
            (r#"{"error":{"code":5}}"#, &[(Raw, r#"{"error":{"code":5}}"#)]),
            (r#"{"type":"notice","message":"hi"}"#, &[(Raw, r#"{"type":"notice","message":"hi"}"#)]),
        ];
        for (input, want) in cases {
            let (_, lines) = run(true, &[input.as_bytes(), b"\n"]);
            assert_eq!(summary(&lines), *want, "input: {input}");
        }
    }

    #[test]
    fn chunking_never_changes_the_lines() {
        let session = format!("{CLAUDE_SESSION}{CODEX_SESSION}é😀 split\n{{\"type\":\"text\",\"text\":\"ü😀\"}}\n");
        let bytes = session.as_bytes();
        let (_, whole) = run(true, &[bytes]);
        assert!(whole.iter().any(|l| l.text == "é😀 split" && l.kind == Raw));
        assert!(whole.iter().any(|l| l.text == "ü😀" && l.kind == Text));
        for cut in 0..=bytes.len() {
            let (_, split) = run(true, &[&bytes[..cut], &bytes[cut..]]);
            assert_eq!(split, whole, "split at byte {cut}");
        }
        let one_by_one: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(true, &one_by_one).1, whole);
    }

    #[test]
    fn json_and_utf8_split_across_pushes_come_out_whole() {
        let mut t = Transcript::new(true);
        assert_eq!(t.push_at(Stream::Stdout, br#"{"type":"text","te"#, at()), []);
        let lines = t.push_at(Stream::Stdout, b"xt\":\"caf\xc3", at());
        assert_eq!(lines, []);
        let lines = t.push_at(Stream::Stdout, b"\xa9\"}\r\n\xf0\x9f", at());
        assert_eq!(summary(&lines), [(Text, "café")]);
        let lines = t.push_at(Stream::Stdout, b"\x98\x80 ok\n", at());
        assert_eq!(summary(&lines), [(Raw, "😀 ok")]);
        assert_eq!(numbered(&t.lines()), [1, 2]);
    }

    #[test]
    fn long_line_without_newline_is_raw_and_bounded() {
        let mut t = Transcript::new(true);
        let mut emitted = Vec::new();
        // A JSON line of 3 × MAX_PENDING_BYTES in chunks, then more output.
        let chunk = [b'x'; 1000];
        emitted.extend(t.push_at(Stream::Stdout, br#"{"type":"text","text":""#, at()));
        for _ in 0..(3 * MAX_PENDING_BYTES / chunk.len()) {
            emitted.extend(t.push_at(Stream::Stdout, &chunk, at()));
            assert!(t.stdout.buf.len() <= MAX_PENDING_BYTES);
        }
        assert_eq!(emitted.len(), 1, "emitted once, as soon as it outgrew the buffer");
        let line = &emitted[0];
        assert_eq!(line.kind, Raw);
        assert!(line.text.starts_with(r#"{"type":"text","text":"xxx"#));
        assert!(line.text.ends_with('…'));
        assert_eq!(line.text.len(), MAX_TEXT_BYTES + '…'.len_utf8());
        assert!(t.stdout.buf.is_empty() && t.stdout.skipping);
        // The rest of the long line is dropped; the next line is whole.
        let lines = t.push_at(Stream::Stdout, b"xxx\"}\n{\"type\":\"text\",\"text\":\"next\"}\n", at());
        assert_eq!(summary(&lines), [(Text, "next")]);
        assert_eq!(t.total(), 2);

        // A line of exactly MAX_PENDING_BYTES is still whole.
        let exact = vec![b'y'; MAX_PENDING_BYTES];
        let (_, lines) = run(false, &[&exact, b"\n"]);
        assert_eq!(lines.len(), 1);
        let mut t = Transcript::new(false);
        assert_eq!(t.push_at(Stream::Stdout, &exact, at()), [], "exactly full: still buffered");
        let lines = t.push_at(Stream::Stdout, b"z", at());
        assert_eq!(lines.len(), 1, "one byte more: emitted raw at once");
        assert!(lines[0].text.starts_with("yyy") && !lines[0].text.contains('z'));
        assert!(t.stdout.buf.is_empty() && t.stdout.skipping);
        let lines = t.push_at(
            Stream::Stdout,
            b"zz
next
",
            at(),
        );
        assert_eq!(summary(&lines), [(Raw, "next")], "the rest of the long line is dropped");
    }

    #[test]
    fn eviction_keeps_numbering_and_total() {
        let mut t = Transcript::new(false);
        let extra = 50;
        for i in 1..=(KEEP_LINES + extra) {
            let lines = t.push_at(Stream::Stdout, format!("line {i}\n").as_bytes(), at());
            assert_eq!(numbered(&lines), [i as u64]);
        }
        let kept = t.lines();
        assert_eq!(kept.len(), KEEP_LINES);
        assert_eq!(t.lines.len(), KEEP_LINES);
        assert_eq!(numbered(&kept), ((extra as u64 + 1)..=(KEEP_LINES + extra) as u64).collect::<Vec<_>>());
        assert_eq!(kept[0].text, format!("line {}", extra + 1));
        assert_eq!(t.total(), (KEEP_LINES + extra) as u64);
        // n carries on after eviction.
        let lines = t.push_at(Stream::Stderr, b"late\n", at());
        assert_eq!(lines[0].n, (KEEP_LINES + extra + 1) as u64);
    }

    #[test]
    fn digest_is_sha256_of_the_json_lines() {
        assert_eq!(
            Transcript::new(true).digest(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256 of nothing"
        );
        let mut t = Transcript::new(true);
        t.push_at(Stream::Stdout, b"hello\n", at());
        t.push_at(Stream::Stderr, b"oops\n", at());
        let json: Vec<String> = t.lines().iter().map(|l| serde_json::to_string(l).unwrap()).collect();
        assert_eq!(
            json,
            [
                r#"{"n":1,"ts":"2025-01-02T03:04:05.678Z","stream":"stdout","kind":"raw","text":"hello"}"#,
                r#"{"n":2,"ts":"2025-01-02T03:04:05.678Z","stream":"stderr","kind":"raw","text":"oops"}"#,
            ]
        );
        // printf '%s\n%s\n' '<line 1 without ts>' '<line 2 without ts>' | sha256sum
        assert_eq!(t.digest(), "cd967b4e59efec91a8ecf1a425cbc33c1e232940ac00da6f845c2990b4c605e2");
    }

    #[test]
    fn digest_changes_when_any_line_changes() {
        let digest = |feed: &[(Stream, &[u8])], time: DateTime<Utc>| {
            let mut t = Transcript::new(true);
            for (stream, data) in feed {
                t.push_at(*stream, data, time);
            }
            t.digest()
        };
        let base: &[(Stream, &[u8])] =
            &[(Stream::Stdout, b"one\n"), (Stream::Stdout, b"{\"type\":\"text\",\"text\":\"two\"}\n")];
        let variants: &[&[(Stream, &[u8])]] = &[
            &[(Stream::Stdout, b"one!\n"), (Stream::Stdout, b"{\"type\":\"text\",\"text\":\"two\"}\n")],
            &[(Stream::Stderr, b"one\n"), (Stream::Stdout, b"{\"type\":\"text\",\"text\":\"two\"}\n")],
            &[(Stream::Stdout, b"one\n"), (Stream::Stdout, b"{\"type\":\"thinking\",\"text\":\"two\"}\n")],
            &[(Stream::Stdout, b"one\n")],
            &[(Stream::Stdout, b"{\"type\":\"text\",\"text\":\"two\"}\n"), (Stream::Stdout, b"one\n")],
        ];
        let want = digest(base, at());
        assert_eq!(digest(base, at()), want, "deterministic");
        for variant in variants {
            assert_ne!(digest(variant, at()), want, "{variant:?}");
        }
        assert_eq!(digest(base, at() + chrono::TimeDelta::milliseconds(1)), want, "not the timestamp");
        // Dropped lines still count.
        let mut t = Transcript::new(false);
        for _ in 0..=KEEP_LINES {
            t.push_at(Stream::Stdout, b"same\n", at());
        }
        let mut u = Transcript::new(false);
        u.push_at(Stream::Stdout, b"other\n", at());
        for _ in 0..KEEP_LINES {
            u.push_at(Stream::Stdout, b"same\n", at());
        }
        assert_eq!(t.lines(), u.lines());
        assert_ne!(t.digest(), u.digest());
    }

    #[test]
    fn stderr_stays_raw() {
        let mut t = Transcript::new(true);
        let lines = t.push_at(Stream::Stderr, b"{\"type\":\"text\",\"text\":\"hi\"}\nwarning: x\n", at());
        assert_eq!(summary(&lines), [(Raw, r#"{"type":"text","text":"hi"}"#), (Raw, "warning: x")]);
        assert!(lines.iter().all(|l| l.stream == Stream::Stderr));
    }

    #[test]
    fn summarise_false_keeps_json_raw() {
        let (_, lines) = run(false, &[CLAUDE_SESSION.as_bytes()]);
        let want: Vec<(LineKind, &str)> = CLAUDE_SESSION.lines().map(|l| (Raw, l)).collect();
        assert_eq!(summary(&lines), want);
    }

    #[test]
    fn finish_flushes_last_lines_of_both_streams() {
        let mut t = Transcript::new(true);
        assert_eq!(t.push_at(Stream::Stderr, b"err tail", at()), []);
        assert_eq!(t.push_at(Stream::Stdout, b"first\n{\"type\":\"result\",\"result\":\"ok\"}\r", at()).len(), 1);
        let lines = t.finish_at(at());
        assert_eq!(summary(&lines), [(Result, "done: ok"), (Raw, "err tail")]);
        assert_eq!(lines[1].stream, Stream::Stderr);
        assert_eq!(numbered(&lines), [2, 3]);
        assert_eq!(t.finish_at(at()), [], "nothing left");
    }

    #[test]
    fn blank_lines_are_skipped_and_breaks_replaced() {
        let (_, lines) = run(false, &[b"\n  \r\n\t\nfirst  \r\n\r\n50%\r100%\r\nlast"]);
        assert_eq!(summary(&lines), [(Raw, "first"), (Raw, "50% ⏎ 100%"), (Raw, "last")]);
        let (_, lines) = run(true, &[br#"{"type":"text","text":"\n\n"}"#, b"\n"]);
        assert_eq!(lines, [], "a blank summary is no line");
        let (_, lines) = run(true, &["{\"type\":\"text\",\"text\":\"a\\u2028b\\r\\n\\r\\nc\\u000bd\"}\n".as_bytes()]);
        assert_eq!(summary(&lines), [(Text, "a ⏎ b ⏎ c ⏎ d")]);
    }

    #[test]
    fn text_is_cut_on_a_char_boundary() {
        // 'é' is 2 bytes and MAX_TEXT_BYTES is even: one byte of offset
        // puts the cut inside a character.
        let long = format!("a{}", "é".repeat(MAX_TEXT_BYTES));
        let (_, lines) = run(false, &[long.as_bytes(), b"\n"]);
        let text = &lines[0].text;
        assert!(text.ends_with('…'));
        assert_eq!(text.len(), MAX_TEXT_BYTES - 1 + '…'.len_utf8());
        assert!(text.trim_end_matches('…').chars().skip(1).all(|c| c == 'é'));
        let fits = "é".repeat(MAX_TEXT_BYTES / 2);
        assert_eq!(run(false, &[fits.as_bytes()]).1[0].text, fits, "not cut when it fits");
        // Summaries too.
        let json = serde_json::json!({"type": "text", "text": long}).to_string();
        let (_, lines) = run(true, &[json.as_bytes(), b"\n"]);
        assert_eq!(lines[0].text, *text);
        assert_eq!(lines[0].kind, Text);
    }

    #[test]
    fn invalid_utf8_and_odd_json_do_not_panic() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let (_, lines) = run(true, &[deep.as_bytes(), b"\n"]);
        assert_eq!(lines[0].kind, Raw, "too deep for serde_json: raw");
        let (_, lines) = run(true, &[b"\xff\xfe bad \xc3\n"]);
        assert_eq!(summary(&lines), [(Raw, "\u{fffd}\u{fffd} bad \u{fffd}")]);
    }

    #[test]
    fn line_wire_form() {
        let line = Line {
            n: 7,
            ts: "2025-01-02T03:04:05.678Z".into(),
            stream: Stream::Stdout,
            kind: ToolUse,
            text: "Bash: ls".into(),
        };
        let json = serde_json::to_string(&line).unwrap();
        assert_eq!(
            json,
            r#"{"n":7,"ts":"2025-01-02T03:04:05.678Z","stream":"stdout","kind":"tool_use","text":"Bash: ls"}"#
        );
        assert_eq!(serde_json::from_str::<Line>(&json).unwrap(), line);
        assert_eq!(timestamp(at() + chrono::TimeDelta::nanoseconds(999_999)), "2025-01-02T03:04:05.678Z");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any bytes, cut anywhere: no panic, the same lines, every text bounded.
        #[test]
        fn any_bytes_any_chunking(data in proptest::collection::vec(any::<u8>(), 0..2048), cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            bounds.push(0);
            bounds.push(data.len());
            bounds.sort_unstable();
            let chunks: Vec<&[u8]> = bounds.windows(2).map(|w| &data[w[0]..w[1]]).collect();
            let (_, whole) = run(true, &[&data]);
            let (t, split) = run(true, &chunks);
            prop_assert_eq!(&split, &whole);
            prop_assert_eq!(t.total(), whole.len() as u64);
            for line in &whole {
                prop_assert!(line.text.len() <= MAX_TEXT_BYTES + '…'.len_utf8());
                prop_assert!(!line.text.contains(['\n', '\r']));
                prop_assert!(!line.text.trim().is_empty());
            }
        }
    }
}
