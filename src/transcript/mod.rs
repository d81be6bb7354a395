//! The live transcript of a task: its raw output bytes turned into lines
//! for the owner to read, the last [`KEEP_LINES`] of them kept in memory.
//!
//! Output arrives in chunks cut anywhere ([`crate::daemon::exec::Chunk`]); each
//! stream keeps its partial line until the newline arrives, so a UTF-8
//! character or a JSON object split across chunks comes out whole. This
//! module does no I/O: the daemon feeds it and serves [`Transcript::lines`];
//! the operator feeds it the same `output` frames and checks the digest.
//!
//! # Summaries
//!
//! An agent task (tier 3) prints one JSON object per line on stdout. With
//! `summarise` set, each such line becomes one or more lines for people:
//!
//! - Claude Code `claude -p --output-format stream-json --verbose`: every
//!   type of the Agent SDK's `SDKMessage` union (`system` subtypes, the
//!   `assistant` and `user` messages' content blocks, `result`,
//!   `rate_limit_event`, `tool_progress`, …); plans, todo lists and
//!   questions as their own lines, subagent lines marked, a line of a type
//!   not known yet as `TYPE: FIELDS` (see `claude`). `stream_event` lines
//!   (`--include-partial-messages`) are dropped: the whole message follows.
//! - Codex CLI `codex exec --json`: every `ThreadEvent` and `ThreadItem`
//!   (`thread.started`, `turn.*`, `item.*`, `item.plan.delta`,
//!   `request_user_input`, `error`; `agent_message`, `reasoning`, `plan`,
//!   `command_execution`, `file_change`, `mcp_tool_call`,
//!   `collab_tool_call`, `web_search`, `todo_list` and `error` items).
//!   Its retries (`Reconnecting...`) and `error` items are
//!   [`LineKind::Notice`] lines.
//! - A loopback agent host's NDJSON: the content items above at top level
//!   (`{"type":"text","text":..}`, `tool_use`, `tool_result`, `error`,
//!   `result`), and the hyphenated `tool-use`, `tool-result`, `reasoning`
//!   and `end` (`{"code":N}`) chunks.
//! - Any other object with an `error` string, or an `error` object with a
//!   `message`.
//! - Any other JSON object: `TYPE: SHORT TEXT FIELDS` ([`LineKind::System`]).
//!
//! Anything else (not JSON, not an object) stays a
//! [`LineKind::Raw`] line holding the text as printed. stderr is never
//! parsed. A stdout line over [`MAX_PENDING_BYTES`] is read from its first
//! bytes once its newline arrives (a Claude tool result: its size and
//! first lines).
//!
//! # Text
//!
//! A line's text never holds a line break: each run of breaks (`\n`, `\r`,
//! VT, FF, NEL, U+2028, U+2029) with any blank lines between becomes
//! [`BREAK`] (" ⏎ "), and trailing whitespace before a break is dropped.
//! A tab becomes the spaces up to the next multiple of 8 columns.
//! That holds for raw lines too, where a lone `\r` (a progress bar) would
//! otherwise rewrite the line on a terminal. Other control characters
//! (ANSI escapes) are kept: whoever prints a line to a terminal escapes
//! them. Then the text is cut to [`MAX_TEXT_BYTES`] on a character
//! boundary, with "…" appended. Lines that are empty or whitespace only
//! are skipped.
//!
//! # Layout
//!
//! - `line`: the line model ([`Line`], [`LineKind`]), the [`Transcript`]
//!   that cuts output into lines, and its digest over their canonical bytes.
//! - `summary`: which shape a stdout line has, and the JSON helpers the shapes share.
//! - `claude`: Claude Code stream-json (`system`: system messages and
//!   notices, `tools`: tool calls, `oversized`: lines too long to buffer).
//! - `codex`: Codex `exec --json` events.
//! - `host`: a loopback agent host's NDJSON.

#![warn(missing_docs)]

mod claude;
mod codex;
mod host;
mod line;
mod summary;

pub use line::{BREAK, KEEP_LINES, Line, LineKind, MAX_PENDING_BYTES, MAX_TEXT_BYTES, Transcript};

#[cfg(test)]
mod tests;
