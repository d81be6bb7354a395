//! What the owner reads of Claude Code's stream-json: every fixture under
//! `tests/fixtures/agents/claude/` (real captures and lines built from the
//! Agent SDK's `sdk.d.ts`, see its README.md) fed through a summarising
//! [`Transcript`], line by line against `NAME.expected` (`KIND TEXT` a
//! line; `UPDATE_EXPECT=1` rewrites them). No line on stdout is raw.
//!
//! The last two run the real `claude` when it is on PATH (skipped, saying
//! so, when it is not: CI does not install it), with no login: once with
//! no network, once against a stand-in Messages API on loopback that
//! scripts a tool call, a result with a tab and a write refused in plan
//! mode; none of its lines may stay raw JSON.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::protocol::Stream;
use support::transcript::{Line, LineKind, MAX_PENDING_BYTES, Transcript};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agents/claude")
}

/// Every line `data` stands for, fed in chunks of 7 bytes (cut anywhere).
fn transcript(data: &[u8]) -> Vec<Line> {
    let mut t = Transcript::new(true);
    let mut lines = Vec::new();
    for chunk in data.chunks(7) {
        lines.extend(t.push(Stream::Stdout, chunk));
    }
    lines.extend(t.finish());
    lines
}

fn kind_name(kind: &LineKind) -> String {
    serde_json::to_value(kind).unwrap().as_str().unwrap().to_owned()
}

/// The owner's lines must be sentences: not raw, not a JSON object.
fn assert_readable(name: &str, lines: &[Line]) {
    for line in lines {
        assert_ne!(line.kind, LineKind::Raw, "{name}: line {} is raw: {}", line.n, line.text);
        let text = line.text.trim_start_matches("[subagent] ");
        assert!(
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).is_err() && !text.starts_with('{'),
            "{name}: line {} is a JSON object: {}",
            line.n,
            line.text
        );
        assert!(!line.text.contains('\t'), "{name}: line {} holds a tab: {:?}", line.n, line.text);
    }
}

#[test]
fn every_fixture_reads_as_expected() {
    let mut names: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    names.sort();
    assert!(names.len() >= 6, "fixtures: {names:?}");
    for path in names {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let lines = transcript(&std::fs::read(&path).unwrap());
        assert_readable(&name, &lines);
        let got: Vec<String> = lines.iter().map(|l| format!("{} {}", kind_name(&l.kind), l.text)).collect();
        let expected_path = path.with_extension("expected");
        if std::env::var_os("UPDATE_EXPECT").is_some() {
            std::fs::write(&expected_path, got.join("\n") + "\n").unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_EXPECT=1 writes it)", expected_path.display()));
        let expected: Vec<&str> = expected.lines().collect();
        for (i, (got, want)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(got, want, "{name}: line {}", i + 1);
        }
        assert_eq!(got.len(), expected.len(), "{name}: number of lines");
    }
}

/// The lines of one stream-json line.
fn one(line: &str) -> Vec<(LineKind, String)> {
    transcript(format!("{line}\n").as_bytes()).into_iter().map(|l| (l.kind, l.text)).collect()
}

#[test]
fn a_plan_reads_as_its_own_lines_and_its_denial_is_named() {
    let lines = transcript(&std::fs::read(fixtures().join("plan-session.jsonl")).unwrap());
    let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
    let header = texts.iter().position(|t| t.starts_with("ExitPlanMode: a plan of")).expect("the plan's header");
    assert_eq!(texts[header + 1], "# Free the disk");
    assert_eq!(texts[header + 2], "1. Check `du -sh /var/log/*`.");
    assert!(texts.contains(&"   journalctl --vacuum-size=2G"), "the plan keeps its indentation");
    // The plan's one long line is cut at a word, saying how much more there was.
    let long = texts.iter().find(|t| t.starts_with("Why: ")).unwrap();
    assert!(long.ends_with(" more)") && long.contains("a … (+"), "{long}");
    let done = lines.iter().find(|l| l.kind == LineKind::Result).unwrap();
    assert!(
        done.text.ends_with("; not permitted: Edit (/etc/systemd/journald.conf), ExitPlanMode (a plan of 12 lines)"),
        "{}",
        done.text
    );
    let sub: Vec<&str> = texts.iter().copied().filter(|t| t.starts_with("[subagent] ")).collect();
    assert_eq!(sub.len(), 3, "{sub:?}");
    assert!(texts.contains(&"  [x] Find what fills the disk") && texts.contains(&"  [~] Write the plan"));
    assert!(texts.contains(&"  [ ] Ask before deleting"));
    assert!(texts.contains(&"[subagent] 38G     /var/log ⏎ 1.2G    /var/cache ⏎ 4.0K    /var/mail"), "tabs as spaces");
}

#[test]
fn retries_and_rejections_are_labelled() {
    let retry = one(
        r#"{"type":"system","subtype":"api_retry","attempt":1,"max_retries":2,"retry_delay_ms":518.5,"error_status":null,"error":"unknown","session_id":"s","uuid":"u"}"#,
    );
    assert_eq!(retry, [(LineKind::Notice, "API request failed (unknown, no answer); retry 1 of 2 in 0.5 s".into())]);
    let rejected = one(
        r#"{"type":"rate_limit_event","rate_limit_info":{"status":"rejected","resetsAt":1787520600,"rateLimitType":"five_hour"},"uuid":"u","session_id":"s"}"#,
    );
    assert_eq!(rejected, [(LineKind::Error, "rate limit reached (five hour, resets 2026-08-23T21:30:00Z)".into())]);
    let unknown = one(r#"{"type":"brand_new","note":"hello","deep":{"a":1},"session_id":"s","uuid":"u"}"#);
    assert_eq!(unknown, [(LineKind::Notice, "brand_new: note: hello".into())]);
    assert!(!LineKind::Notice.is_progress(), "retries do not reset the idle timer");
}

/// A `Read` of a big log: one stream-json line of `size` bytes whose
/// tool result is numbered lines, as Claude Code prints them.
fn huge_read(size: usize, is_error: bool) -> Vec<u8> {
    let mut content = String::new();
    let mut n = 1;
    while content.len() < size {
        content.push_str(&format!("{n:>6}\tlog line {n} of a big file\n"));
        n += 1;
    }
    // In the CLI's own key order: `type` first, the content before the ids.
    let content = serde_json::Value::String(content);
    format!(
        r#"{{"type":"user","message":{{"role":"user","content":[{{"tool_use_id":"toolu_big","type":"tool_result","is_error":{is_error},"content":{content}}}]}},"parent_tool_use_id":null,"session_id":"s","uuid":"u"}}"#
    )
    .into_bytes()
    .into_iter()
    .chain(*b"\n")
    .collect()
}

/// Bytes as whole KiB, rounded as the transcript rounds them.
fn kib(bytes: usize) -> String {
    format!("{:.0}", bytes as f64 / 1024.0)
}

#[test]
fn a_huge_tool_result_shows_its_first_lines_and_its_size() {
    let big = huge_read(3 * MAX_PENDING_BYTES, false);
    let mut data = big.clone();
    data.extend_from_slice(
        br#"{"type":"assistant","message":{"content":[{"type":"text","text":"next"}]},"session_id":"s","uuid":"u2"}"#,
    );
    data.push(b'\n');
    let lines = transcript(&data);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0].kind, LineKind::ToolResult);
    let size = kib(big.len());
    assert_eq!(
        lines[0].text,
        format!(
            "tool result: a line of {size} KiB, first lines: ⏎      1  log line 1 of a big file ⏎      2  log line 2 of a big file ⏎      3  log line 3 of a big file ⏎ … (the rest is not shown)"
        )
    );
    assert_eq!((lines[1].kind.clone(), lines[1].text.as_str()), (LineKind::Text, "next"));

    // Cut off by the end of the task (no newline): the same line, at finish.
    let failed = huge_read(2 * MAX_PENDING_BYTES, true);
    let lines = transcript(&failed[..failed.len() - 1]);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].kind, LineKind::Error);
    assert!(
        lines[0].text.starts_with(&format!("tool error: a line of {} KiB, first lines:", kib(failed.len() - 1))),
        "{}",
        lines[0].text
    );

    // Any other huge JSON line names its type and size; huge plain text stays raw.
    let other = format!("{{\"type\":\"brand_new\",\"blob\":\"{}\"}}\n", "x".repeat(MAX_PENDING_BYTES));
    let lines = transcript(other.as_bytes());
    assert_eq!(
        (lines[0].kind.clone(), lines[0].text.as_str()),
        (LineKind::Notice, "brand_new: a line of 64 KiB, too long to read")
    );
    let text = format!("{}\n", "y".repeat(MAX_PENDING_BYTES + 10));
    assert_eq!(transcript(text.as_bytes())[0].kind, LineKind::Raw);
}

/// The real `claude` on PATH, or `None` (the test says it is skipped).
fn real_claude() -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("claude"))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!(
            "skipped: no `claude` on PATH (npm install --prefix DIR @anthropic-ai/claude-code, then put DIR/node_modules/.bin on PATH)"
        );
    }
    found
}

/// The transcript of the real CLI run in an empty home and folder with
/// `args` after `-p PROMPT --output-format stream-json --verbose`, the
/// API at `base_url` (a closed port: no network).
fn run_claude(claude: &Path, prompt: &str, args: &[&str], base_url: &str) -> Vec<Line> {
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(claude)
        .args(["-p", prompt, "--output-format", "stream-json", "--verbose"])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .env("HOME", home.path())
        .env("ANTHROPIC_API_KEY", "sk-ant-not-a-key")
        .env("ANTHROPIC_BASE_URL", base_url)
        .env("CLAUDE_CODE_MAX_RETRIES", "1")
        .current_dir(home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        let _ = tx.send(out);
    });
    let out = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(out) => out,
        Err(_) => {
            child.kill().unwrap();
            panic!("{} gave no end in 120 s", claude.display());
        }
    };
    child.wait().unwrap();
    transcript(&out)
}

#[test]
fn real_claude_without_network_is_never_raw_json() {
    let Some(claude) = real_claude() else { return };
    // A port nothing listens on: the CLI retries, then gives up.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let lines = run_claude(&claude, "hi", &["--permission-mode", "plan"], &format!("http://{closed}"));
    assert!(lines.iter().any(|l| l.text.starts_with("session started (Claude Code ")), "{lines:?}");
    assert!(lines.iter().any(|l| l.kind == LineKind::Notice && l.text.contains("retry 1 of 1")), "{lines:?}");
    assert!(lines.iter().any(|l| l.kind == LineKind::Error), "no network is an error: {lines:?}");
    assert_readable("real claude, no network", &lines);
}

/// One server-sent event of the Messages API.
fn sse(event: &str, data: serde_json::Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// A streamed assistant turn of `blocks` (`{"type":"text"}` or `tool_use`),
/// its message id `msg_stand_in_N` (the CLI joins the blocks of one id).
fn turn(n: usize, blocks: &[serde_json::Value]) -> String {
    let mut out = sse(
        "message_start",
        serde_json::json!({"type": "message_start", "message": {"id": format!("msg_stand_in_{n}"), "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 1}}}),
    );
    for (index, block) in blocks.iter().enumerate() {
        let (start, delta) = if block["type"] == "text" {
            (
                serde_json::json!({"type": "text", "text": ""}),
                serde_json::json!({"type": "text_delta", "text": block["text"]}),
            )
        } else {
            (
                serde_json::json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}),
                serde_json::json!({"type": "input_json_delta", "partial_json": block["input"].to_string()}),
            )
        };
        out += &sse(
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": index, "content_block": start}),
        );
        out += &sse(
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
        out += &sse("content_block_stop", serde_json::json!({"type": "content_block_stop", "index": index}));
    }
    let stop = if blocks.last().is_some_and(|b| b["type"] == "tool_use") { "tool_use" } else { "end_turn" };
    out += &sse(
        "message_delta",
        serde_json::json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 9}}),
    );
    out + &sse("message_stop", serde_json::json!({"type": "message_stop"}))
}

/// A stand-in Messages API on loopback: its address. A request with tools
/// gets the next step of the script by how many assistant turns it holds;
/// any other (a title, a probe) a short text.
fn stand_in_api() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            // A connection each thread: the CLI opens some before it sends on them.
            std::thread::spawn(move || answer(stream));
        }
    });
    addr
}

/// Answers one request of the CLI's on `stream` (see [`stand_in_api`]).
fn answer(mut stream: std::net::TcpStream) {
    use std::io::{BufRead, BufReader, Write};
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let turns = request["messages"].as_array().map_or(0, |m| m.iter().filter(|m| m["role"] == "assistant").count());
    let has_tools = request["tools"].as_array().is_some_and(|t| !t.is_empty());
    let blocks = match (has_tools, turns) {
        (false, _) => vec![serde_json::json!({"type": "text", "text": "Disk check"})],
        (true, 0) => vec![
            serde_json::json!({"type": "text", "text": "Looking."}),
            serde_json::json!({"type": "tool_use", "id": "toolu_stand_in_1", "name": "Bash",
                "input": {"command": "printf 'size\\tname\\n'", "description": "A table"}}),
        ],
        (true, 1) => vec![serde_json::json!({"type": "tool_use", "id": "toolu_stand_in_2", "name": "Write",
            "input": {"file_path": "/nonexistent-support-test/PLAN.md", "content": "# Plan\n"}})],
        _ => vec![serde_json::json!({"type": "text", "text": "The plan needs your approval."})],
    };
    let data = turn(turns, &blocks);
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{data}",
        data.len()
    );
}

#[test]
fn real_claude_with_a_stand_in_api_reads_as_sentences() {
    let Some(claude) = real_claude() else { return };
    let api = stand_in_api();
    let lines = run_claude(&claude, "The disk is full", &["--permission-mode", "plan"], &format!("http://{api}"));
    assert_readable("real claude, stand-in API", &lines);
    let has = |kind: LineKind, text: &str| lines.iter().any(|l| l.kind == kind && l.text.contains(text));
    assert!(has(LineKind::ToolUse, "Bash: printf"), "{lines:?}");
    assert!(has(LineKind::ToolResult, "size    name"), "the tab as spaces: {lines:?}");
    assert!(has(LineKind::Error, "PLAN.md"), "the plan-mode refusal: {lines:?}");
    assert!(has(LineKind::Result, "not permitted: Write (/nonexistent-support-test/PLAN.md)"), "{lines:?}");
}
