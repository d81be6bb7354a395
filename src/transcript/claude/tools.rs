//! Claude Code's tool calls (`tool_use` blocks) for people. The inputs
//! are those of `sdk-tools.d.ts` in `@anthropic-ai/claude-agent-sdk`:
//!
//! - `ExitPlanMode {plan}`: `ExitPlanMode: a plan of N lines`, then the
//!   plan's own markdown, a line each (so `support watch` shows it as
//!   written), at most [`PLAN_LINES`] of them and then how many more.
//! - `TodoWrite {todos: [{content, status, activeForm}]}`: a checklist,
//!   `[x]` completed, `[~]` in progress, `[ ]` pending.
//! - `AskUserQuestion {questions: [{question, header, options: [{label,
//!   description}], multiSelect}]}`: each question, then its options.
//! - `Edit`, `MultiEdit`, `Write`, `NotebookEdit`: the path and a short size.
//! - `Task` / `Agent`: the description and the subagent's type.
//! - Any other tool: `NAME: ARGUMENT` (see [`tool_summary`]), or its short
//!   fields when it has no argument of a known key.

use serde_json::{Map, Value};

use super::super::line::{LineKind, MAX_TEXT_BYTES};
use super::super::summary::{Summary, TOOL_INPUT_KEYS, short_fields, size, str_of, tool_summary};

/// The most lines of a plan shown: the transcript keeps 200 lines in all.
pub(super) const PLAN_LINES: usize = 120;

/// The most characters of a command in the `not permitted` list.
const ARGUMENT_CHARS: usize = 80;

/// A tool call's lines.
pub(super) fn tool_use(name: &str, input: Option<&Value>) -> Summary {
    let object = input.and_then(Value::as_object);
    let lines = object.and_then(|input| match name {
        "ExitPlanMode" => plan(input),
        "TodoWrite" => todos(input),
        "AskUserQuestion" => questions(input),
        "Edit" | "MultiEdit" | "Write" | "NotebookEdit" => edit(name, input).map(|line| vec![line]),
        "Task" | "Agent" => task(name, input).map(|line| vec![line]),
        _ => None,
    });
    lines.unwrap_or_else(|| {
        let text = match object {
            Some(input) if !input.is_empty() && !TOOL_INPUT_KEYS.iter().any(|key| input.contains_key(*key)) => {
                let fields = short_fields(input, &[]);
                if fields.is_empty() {
                    let n = input.len();
                    format!("{name} ({n} input field{})", if n == 1 { "" } else { "s" })
                } else {
                    format!("{name}: {fields}")
                }
            }
            _ => tool_summary(name, input),
        };
        vec![(LineKind::ToolUse, text)]
    })
}

/// A tool's input in a few words, for the list of denied permissions.
pub(super) fn argument(name: &str, input: Option<&Value>) -> Option<String> {
    let input = input?.as_object()?;
    if name == "ExitPlanMode" {
        return str_of(input, "plan").map(|plan| format!("a plan of {}", lines_of(plan)));
    }
    let argument = TOOL_INPUT_KEYS.iter().find_map(|key| str_of(input, key))?;
    let first = argument.lines().next().unwrap_or_default();
    let mut short: String = first.chars().take(ARGUMENT_CHARS).collect();
    if short.len() < argument.len() {
        short.push('…');
    }
    Some(short)
}

/// `N line(s)`.
fn lines_of(text: &str) -> String {
    let n = text.lines().count();
    format!("{n} line{}", if n == 1 { "" } else { "s" })
}

/// The plan as the agent wrote it: a header line, then its non-blank lines.
fn plan(input: &Map<String, Value>) -> Option<Summary> {
    let plan = str_of(input, "plan")?;
    let mut lines = vec![(LineKind::ToolUse, format!("ExitPlanMode: a plan of {}", lines_of(plan)))];
    let body: Vec<&str> = plan.lines().filter(|line| !line.trim().is_empty()).collect();
    lines.extend(body.iter().take(PLAN_LINES).map(|line| (LineKind::Text, long_line(line))));
    if body.len() > PLAN_LINES {
        lines.push((LineKind::Text, format!("… (+{} more lines of the plan)", body.len() - PLAN_LINES)));
    }
    Some(lines)
}

/// A line no longer than a transcript line, cut at a space with how much
/// more there was, rather than mid-word by the transcript.
fn long_line(line: &str) -> String {
    let room = MAX_TEXT_BYTES - 32;
    if line.len() <= room {
        return line.to_owned();
    }
    let head = crate::text::head(line, room);
    let head = head.rfind(' ').map_or(head, |space| &head[..space]);
    format!("{head} … (+{} more)", size(line.len() - head.len()))
}

/// A checklist: `TodoWrite: N items (D done)`, then `[x] done`, `[~] in
/// progress`, `[ ] pending`.
fn todos(input: &Map<String, Value>) -> Option<Summary> {
    let todos = input.get("todos")?.as_array()?;
    let mut done = 0;
    let items: Vec<(LineKind, String)> = todos
        .iter()
        .filter_map(Value::as_object)
        .map(|todo| {
            let content = str_of(todo, "content").unwrap_or("(no text)");
            let mark = match str_of(todo, "status") {
                Some("completed") => {
                    done += 1;
                    "[x]"
                }
                Some("in_progress") => "[~]",
                _ => "[ ]",
            };
            (LineKind::ToolUse, format!("  {mark} {content}"))
        })
        .collect();
    let n = items.len();
    let mut lines =
        vec![(LineKind::ToolUse, format!("TodoWrite: {n} item{} ({done} done)", if n == 1 { "" } else { "s" }))];
    lines.extend(items);
    Some(lines)
}

/// Each question (`HEADER: QUESTION`), then its options, numbered.
fn questions(input: &Map<String, Value>) -> Option<Summary> {
    let questions = input.get("questions")?.as_array()?;
    let mut lines = Vec::new();
    for question in questions.iter().filter_map(Value::as_object) {
        let text = str_of(question, "question").unwrap_or("(no question)");
        let header = str_of(question, "header").map(|h| format!("{h}: ")).unwrap_or_default();
        let multi = question.get("multiSelect").and_then(Value::as_bool) == Some(true);
        let choose = if multi { " (choose any)" } else { "" };
        lines.push((LineKind::ToolUse, format!("AskUserQuestion: {header}{text}{choose}")));
        let options = question.get("options").and_then(Value::as_array).into_iter().flatten();
        for (i, option) in options.filter_map(Value::as_object).enumerate() {
            let label = str_of(option, "label").unwrap_or("?");
            let description = str_of(option, "description").map(|d| format!(" — {d}")).unwrap_or_default();
            lines.push((LineKind::ToolUse, format!("  {}. {label}{description}", i + 1)));
        }
    }
    (!lines.is_empty()).then_some(lines)
}

/// `NAME: PATH (SIZE)` for a file edit.
fn edit(name: &str, input: &Map<String, Value>) -> Option<(LineKind, String)> {
    let path = str_of(input, "file_path").or(str_of(input, "notebook_path")).or(str_of(input, "path"))?;
    let detail = match name {
        "Write" => str_of(input, "content").map(|c| format!("{}, {}", lines_of(c), size(c.len()))),
        "MultiEdit" => input
            .get("edits")
            .and_then(Value::as_array)
            .map(|edits| format!("{} edit{}", edits.len(), if edits.len() == 1 { "" } else { "s" })),
        "NotebookEdit" => {
            let mode = str_of(input, "edit_mode").unwrap_or("replace");
            let cell = str_of(input, "cell_id").map(|c| format!(" cell {c}")).unwrap_or_default();
            let source = str_of(input, "new_source").map(|s| format!(", {}", size(s.len()))).unwrap_or_default();
            Some(format!("{mode}{cell}{source}"))
        }
        _ => {
            let old = str_of(input, "old_string").map(lines_of);
            let new = str_of(input, "new_string").map(lines_of);
            let all =
                if input.get("replace_all").and_then(Value::as_bool) == Some(true) { ", every match" } else { "" };
            old.zip(new).map(|(old, new)| format!("{old} → {new}{all}"))
        }
    };
    Some((
        LineKind::ToolUse,
        match detail {
            Some(detail) => format!("{name}: {path} ({detail})"),
            None => format!("{name}: {path}"),
        },
    ))
}

/// `Task: DESCRIPTION (SUBAGENT TYPE)`.
fn task(name: &str, input: &Map<String, Value>) -> Option<(LineKind, String)> {
    let description = str_of(input, "description").or(str_of(input, "prompt"))?;
    let kind = str_of(input, "subagent_type").map(|t| format!(" ({t})")).unwrap_or_default();
    Some((LineKind::ToolUse, format!("{name}: {description}{kind}")))
}
