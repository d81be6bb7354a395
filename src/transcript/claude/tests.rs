//! Unit tests of the Claude shapes that the fixtures do not reach: a JSON
//! string read from a line cut short, and tool inputs of odd shapes.

use serde_json::json;

use super::oversized::oversized;
use super::tools::{argument, tool_use};
use crate::transcript::LineKind::{self, *};

fn texts(lines: &[(LineKind, String)]) -> Vec<&str> {
    lines.iter().map(|(_, text)| text.as_str()).collect()
}

#[test]
fn a_cut_line_is_read_up_to_where_it_stops() {
    // Escapes, a surrogate pair, a broken escape, then the cut mid-string.
    let prefix = r#"{"type":"user","message":{"content":[{"type":"tool_result","content":"a\"b\\c\u00e9 \ud83d\ude00 \uZZZZ\nline 2\tx\nline 3\nline 4 cut he"#;
    let lines = oversized(prefix, 3 * 1024 * 1024).unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].0, ToolResult);
    assert_eq!(
        lines[0].1,
        "tool result: a line of 3.0 MiB, first lines:\na\"b\\cé 😀 \u{fffd}\nline 2\tx\nline 3\n… (the rest is not shown)"
    );
    // A lone high surrogate and an escape cut at the very end do not panic.
    for cut in [r#"\ud83d"#, r#"\ud83d\u00"#, r#"\u12"#, r#"\"#] {
        let prefix = format!(r#"{{"type":"user","message":{{"content":[{{"type":"tool_result","content":"x{cut}"#);
        assert!(oversized(&prefix, 70_000).is_some(), "{cut}");
    }
    // A subagent's, an error, and a message that is no tool result.
    let sub = r#"{"type":"user","parent_tool_use_id":"toolu_1","message":{"content":[{"type":"tool_result","is_error":true,"content":[{"type":"text","text":"boom"#;
    let lines = oversized(sub, 70_000).unwrap();
    assert_eq!(lines[0].0, Error);
    assert!(lines[0].1.starts_with("[subagent] tool error: a line of 68 KiB"), "{}", lines[0].1);
    let text = r#"{"type":"assistant","message":{"content":[{"type":"text","text":"a long answer"#;
    assert_eq!(
        texts(&oversized(text, 70_000).unwrap()),
        ["assistant message: a line of 68 KiB, too long to show whole: a long answer …"]
    );
    assert_eq!(oversized(r#"{"type":"item.completed","item":{"#, 70_000), None);
}

#[test]
fn odd_tool_inputs_still_read() {
    // No known key: short fields, not JSON.
    assert_eq!(
        texts(&tool_use("mcp__tickets__open", Some(&json!({"title": "Disk full", "n": 2})))),
        ["mcp__tickets__open: n: 2, title: Disk full"]
    );
    assert_eq!(texts(&tool_use("Deep", Some(&json!({"a": {"b": 1}})))), ["Deep (1 input field)"]);
    // A plan without `plan`, todos of the wrong type: the generic line.
    assert_eq!(texts(&tool_use("ExitPlanMode", Some(&json!({})))), ["ExitPlanMode"]);
    assert_eq!(texts(&tool_use("TodoWrite", Some(&json!({"todos": "x"})))), ["TodoWrite: todos: x"]);
    // A long plan is capped, saying how many lines more.
    let plan: String = (1..=130).map(|i| format!("step {i}\n")).collect();
    let lines = tool_use("ExitPlanMode", Some(&json!({ "plan": plan })));
    assert_eq!(lines.len(), 1 + 120 + 1);
    assert_eq!(lines[0], (ToolUse, "ExitPlanMode: a plan of 130 lines".into()));
    assert_eq!(lines[121], (Text, "… (+10 more lines of the plan)".into()));
    // A multi-select question.
    let ask = json!({"questions": [{"question": "Which?", "multiSelect": true, "options": [{"label": "a"}]}]});
    assert_eq!(texts(&tool_use("AskUserQuestion", Some(&ask))), ["AskUserQuestion: Which? (choose any)", "  1. a"]);
    // The denied-permission list: a command's first line, cut.
    let long = format!("{}\nsecond line", "x".repeat(100));
    assert_eq!(argument("Bash", Some(&json!({ "command": long }))), Some(format!("{}…", "x".repeat(80))));
    assert_eq!(argument("Bash", Some(&json!({}))), None);
}
