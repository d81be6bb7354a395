//! The line model and the digest: a task's output cut into [`Line`]s, the
//! last [`KEEP_LINES`] kept, and a SHA-256 over the canonical bytes of every
//! line ever emitted.

use std::collections::VecDeque;
use std::fmt;

use chrono::{DateTime, Utc};
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

use super::summary::summarise;
use crate::protocol::Stream;

/// Lines kept per task.
pub const KEEP_LINES: usize = 200;
/// A line's text is cut to this many bytes (on a char boundary, with "…" appended).
pub const MAX_TEXT_BYTES: usize = 4096;
/// A partial line longer than this is not buffered further.
///
/// Its first `MAX_PENDING_BYTES` are kept; the rest, up to the next
/// newline, is dropped and only counted. On an agent's stdout (summarised)
/// the line is emitted when its newline arrives, read from what was kept:
/// a Claude tool result holding a large file shows as `tool result: a line
/// of SIZE, first lines:` and its first lines, another JSON line as `TYPE: a line
/// of SIZE, too long to read`, plain text raw. Elsewhere (stderr, tasks
/// not summarised) it is emitted raw at once, as it stands.
pub const MAX_PENDING_BYTES: usize = 64 * 1024;
/// What a line break inside a summary (or a lone `\r` in a raw line) becomes.
pub const BREAK: &str = " ⏎ ";

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
    /// A retry, a reconnect, a rate-limit or other notice: no progress of
    /// the agent's (see [`LineKind::is_progress`]); shown with `·` as
    /// [`LineKind::System`] is, with its numbers and text.
    Notice,
    /// A line as printed: stderr, a task that is not summarised, or a
    /// line that is not a JSON object of a known shape.
    Raw,
}

impl LineKind {
    /// Whether a line of this kind on stdout shows the agent getting on
    /// with its task (`[agent] idle_timeout_s` counts from the last such
    /// line): what it says, thinks, calls and is answered, and its ends.
    /// Errors, notices (retries, reconnects) and raw lines are not.
    pub fn is_progress(&self) -> bool {
        matches!(
            self,
            LineKind::Text
                | LineKind::Thinking
                | LineKind::ToolUse
                | LineKind::ToolResult
                | LineKind::Result
                | LineKind::System
        )
    }
}

impl Line {
    /// The label `support watch` and the owner's console show before the
    /// text: `agent:`, `thinking:`, `tool:`, `result:`, `ERROR:`, `done:`,
    /// `·` (session events and notices), `stderr:`, or none for raw stdout.
    pub fn label(&self) -> &'static str {
        match (&self.kind, self.stream) {
            (LineKind::Text, _) => "agent:",
            (LineKind::Thinking, _) => "thinking:",
            (LineKind::ToolUse, _) => "tool:",
            (LineKind::ToolResult, _) => "result:",
            (LineKind::Error, _) => "ERROR:",
            (LineKind::Result, _) => "done:",
            (LineKind::System | LineKind::Notice, _) => "·",
            (LineKind::Raw, Stream::Stderr) => "stderr:",
            (LineKind::Raw, Stream::Stdout) => "",
        }
    }
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
    /// (breaks become [`BREAK`], see [`crate::transcript`]), never blank.
    pub text: String,
}

/// A stream's partial line.
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// At most [`MAX_PENDING_BYTES`].
    pub(super) buf: Vec<u8>,
    /// The line outgrew the buffer and was emitted: drop up to its newline.
    pub(super) skipping: bool,
    /// The line outgrew the buffer, which holds its first bytes: its size
    /// so far (bytes), the rest dropped up to its newline, then summarised.
    pub(super) oversize: Option<usize>,
}

/// One task's transcript: partial lines per stream, the last
/// [`KEEP_LINES`] lines, and a digest over every line ever emitted.
pub struct Transcript {
    summarise: bool,
    pub(super) stdout: Pending,
    stderr: Pending,
    pub(super) lines: VecDeque<Line>,
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
    /// [`Transcript::push`] at `now`.
    pub(super) fn push_at(&mut self, stream: Stream, data: &[u8], now: DateTime<Utc>) -> Vec<Line> {
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
            let held = self.summarise && stream == Stream::Stdout;
            let pending = self.pending(stream);
            if let Some(total) = pending.oversize.as_mut() {
                *total += segment.len();
                if ended {
                    self.flush_oversized(stream, &ts, &mut out);
                }
                continue;
            }
            if pending.skipping {
                pending.skipping = !ended;
                continue;
            }
            let room = MAX_PENDING_BYTES - pending.buf.len();
            if segment.len() > room && held {
                pending.oversize = Some(pending.buf.len() + segment.len());
                pending.buf.extend_from_slice(&segment[..room]);
                if ended {
                    self.flush_oversized(stream, &ts, &mut out);
                }
            } else if segment.len() > room {
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

    /// [`Transcript::finish`] at `now`.
    pub(super) fn finish_at(&mut self, now: DateTime<Utc>) -> Vec<Line> {
        let ts = timestamp(now);
        let mut out = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            if self.pending(stream).oversize.is_some() {
                self.flush_oversized(stream, &ts, &mut out);
                continue;
            }
            let pending = std::mem::take(self.pending(stream));
            self.complete(stream, &pending.buf, &ts, &mut out);
        }
        out
    }

    /// Emits the held line that outgrew the buffer (see [`MAX_PENDING_BYTES`]).
    fn flush_oversized(&mut self, stream: Stream, ts: &str, out: &mut Vec<Line>) {
        let pending = std::mem::take(self.pending(stream));
        let total = pending.oversize.unwrap_or(pending.buf.len());
        let prefix = String::from_utf8_lossy(&pending.buf);
        match super::summary::oversized(&prefix, total) {
            Some(summary) => {
                for (kind, text) in summary {
                    self.emit(stream, kind, text, ts, out);
                }
            }
            None => self.emit(stream, LineKind::Raw, prefix.into_owned(), ts, out),
        }
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

/// A line's `ts`: RFC 3339 UTC, milliseconds, `Z`.
pub(super) fn timestamp(now: DateTime<Utc>) -> String {
    crate::time::rfc3339_millis(now)
}

fn is_break(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

/// `s` on one line: see [`crate::transcript`]. Stops early once past
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
        push_expanding_tabs(&mut out, piece);
        if out.len() > MAX_TEXT_BYTES {
            break;
        }
    }
    out
}

/// Columns between tab stops, as a terminal sets them (tabs(1), `-8`).
const TAB_STOP: usize = 8;

/// `piece` appended with each tab turned into the spaces up to the next
/// [`TAB_STOP`] (counted in characters from the piece's start): a tab is
/// a control character, which a terminal printer would show as `?`.
fn push_expanding_tabs(out: &mut String, piece: &str) {
    let mut column = 0;
    for c in piece.chars() {
        match c {
            '\t' => {
                let spaces = TAB_STOP - column % TAB_STOP;
                out.extend(std::iter::repeat_n(' ', spaces));
                column += spaces;
            }
            '\n' => {
                out.push(c);
                column = 0;
            }
            c => {
                out.push(c);
                column += 1;
            }
        }
    }
}

/// `s` with its tabs as spaces (see [`push_expanding_tabs`]), line by line.
pub(super) fn expand_tabs(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_expanding_tabs(&mut out, s);
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
