use chrono::{DateTime, Utc};
use proptest::prelude::*;

use super::line::timestamp;
use super::*;
use crate::protocol::Stream;
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
            (ToolResult, "Filesystem      Size  Used Avail Use% Mounted on ⏎ /dev/nvme0n1p2  234G  230G  4.0G  99% /"),
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
            (System, "to-do list (0 of 2 done):"),
            (System, "[ ] Check disk"),
            (System, "[ ] Clean cache"),
            (ToolUse, "$ bash -lc 'df -h /'"),
            (ToolResult, "exit 0: Filesystem  Size  Used ⏎ /dev/sda2   234G  230G"),
            (System, "to-do list (1 of 2 done):"),
            (System, "[x] Check disk"),
            (System, "[ ] Clean cache"),
            (ToolUse, "edit notes.md (update)"),
            (ToolUse, "edit new.txt (add)"),
            (ToolUse, "fs/read_file: /etc/fstab"),
            (Error, "fs/read_file failed: access denied"),
            (ToolUse, "web search: ubuntu clean apt cache"),
            (Error, "failed (exit 1): $ false"),
            (Notice, "warning: model overloaded, retrying"),
            (Text, "The disk is 99% full. ⏎ I cleaned the cache."),
            (Result, "turn completed (1200 input / 345 output tokens)"),
            (Error, "turn failed: stream disconnected"),
            (Notice, "Reconnecting... 1/5"),
        ]
    );
    assert_eq!(numbered(&lines), (1..=21).collect::<Vec<_>>());
}

#[test]
fn single_lines_summarise_or_stay_raw() {
    let cases: &[(&str, &[(LineKind, &str)])] = &[
        // Not JSON objects: raw, as printed.
        ("plain text", &[(Raw, "plain text")]),
        // Objects of a shape not known: the type and short text fields.
        (r#"{"type":"unknown.event","x":1}"#, &[(Notice, "unknown.event")]),
        (r#"{"no_type":true}"#, &[(Notice, "event (no_type)")]),
        (r#"["type","text"]"#, &[(Raw, r#"["type","text"]"#)]),
        (r#""a string""#, &[(Raw, r#""a string""#)]),
        (r#"{"type":"text"}"#, &[(Notice, "text")]),
        (r#"{"type":"text","text":"cut {"#, &[(Raw, r#"{"type":"text","text":"cut {"#)]),
        // A Claude type with no message is still named, never raw JSON.
        (r#"{"type":"assistant"}"#, &[(Notice, "assistant")]),
        (r#"{"type":"assistant","message":{"content":5}}"#, &[(Notice, "assistant")]),
        (r#"{"type":"item.completed"}"#, &[(Notice, "item.completed")]),
        (r#"{"type":"item.completed","item":{"type":"new_kind"}}"#, &[(Notice, "new_kind")]),
        // Claude Code.
        (r#"{"type":"system","subtype":"compact_boundary"}"#, &[(System, "conversation compacted")]),
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
            &[(ToolUse, "TodoWrite: 1 item (0 done)"), (ToolUse, "  [ ] a")],
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
            &[(Text, "[image]")],
        ),
        (r#"{"type":"assistant","message":{"content":[]}}"#, &[]),
        (r#"{"type":"user","message":{"role":"user","content":"Fix the disk"}}"#, &[(Text, "prompt: Fix the disk")]),
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
        (r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#, &[(Error, "Overloaded")]),
        (r#"{"type":"error"}"#, &[(Error, "error")]),
        (r#"{"error":"quota exceeded"}"#, &[(Error, "quota exceeded")]),
        (r#"{"status":500,"error":{"message":"internal"}}"#, &[(Error, "internal")]),
        (r#"{"error":{"code":5}}"#, &[(Notice, "event (error)")]),
        (r#"{"type":"notice","message":"hi"}"#, &[(Notice, "notice: hi")]),
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
    // Not summarised: emitted raw as soon as it outgrows the buffer.
    let mut t = Transcript::new(false);
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
    let lines = t.push_at(Stream::Stdout, b"xxx\"}\nnext\n", at());
    assert_eq!(summary(&lines), [(Raw, "next")]);
    assert_eq!(t.total(), 2);

    // Summarised: held (bounded) until its newline, then named with its size.
    let mut t = Transcript::new(true);
    let mut emitted = t.push_at(Stream::Stdout, br#"{"type":"text","text":""#, at());
    for _ in 0..(3 * MAX_PENDING_BYTES / chunk.len()) {
        emitted.extend(t.push_at(Stream::Stdout, &chunk, at()));
        assert!(t.stdout.buf.len() <= MAX_PENDING_BYTES);
    }
    assert_eq!(emitted, [], "held until its newline");
    let lines = t.push_at(Stream::Stdout, b"xxx\"}\n{\"type\":\"text\",\"text\":\"next\"}\n", at());
    assert_eq!(summary(&lines), [(Notice, "text: a line of 191 KiB, too long to read"), (Text, "next")]);
    assert!(t.stdout.buf.is_empty() && t.stdout.oversize.is_none());

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
