//! What the owner reads of a Codex `exec --json` session and of an agent
//! host's NDJSON, line by line, for the samples in
//! `tests/fixtures/agents/codex/` and `tests/fixtures/agents/host/` (their
//! READMEs say where each came from); and, when `codex` is on `PATH`, of
//! the real CLI run offline.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::protocol::Stream;
use support::transcript::{Line, LineKind, Transcript};

use LineKind::*;

fn fixture(dir: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agents").join(dir).join(name)
}

/// The lines a summarised transcript makes of `bytes` on stdout.
fn render(bytes: &[u8]) -> Vec<Line> {
    let mut t = Transcript::new(true);
    let mut lines = t.push(Stream::Stdout, bytes);
    lines.extend(t.finish());
    lines
}

fn seen(dir: &str, name: &str) -> Vec<(LineKind, String)> {
    let bytes = std::fs::read(fixture(dir, name)).unwrap();
    render(&bytes).into_iter().map(|l| (l.kind, l.text)).collect()
}

/// No line is a raw JSON object, and every line is one line of text.
fn assert_readable(lines: &[(LineKind, String)], what: &str) {
    for (kind, text) in lines {
        assert!(
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).is_err(),
            "{what}: a raw JSON object: {kind:?} {text}"
        );
        assert!(!text.contains('\n') && !text.trim().is_empty(), "{what}: {kind:?} {text:?}");
    }
}

/// `(kind, text)` pairs from literals.
fn want(lines: &[(LineKind, &str)]) -> Vec<(LineKind, String)> {
    lines.iter().map(|(kind, text)| (kind.clone(), (*text).to_owned())).collect()
}

/// Every sample, both folders: readable, and never a raw line.
#[test]
fn no_sample_line_is_raw_json() {
    for dir in ["codex", "host"] {
        let mut names: Vec<String> = std::fs::read_dir(fixture(dir, ""))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".jsonl"))
            .collect();
        names.sort();
        assert!(names.len() >= 4, "{dir}: {names:?}");
        for name in names {
            let lines = seen(dir, &name);
            assert!(!lines.is_empty(), "{dir}/{name}");
            assert_readable(&lines, &format!("{dir}/{name}"));
            assert!(lines.iter().all(|(kind, _)| *kind != Raw), "{dir}/{name}: {lines:?}");
        }
    }
}

/// codex-cli 0.171.0 with no network and no login: retries are notices
/// with their numbers and text, not errors, and none of them is progress.
#[test]
fn offline_codex_retries_are_notices() {
    const DNS: &str =
        "stream disconnected before completion: failed to lookup address information: Name does not resolve";
    let retry = |n: u32| format!("Reconnecting... {n}/5 ({DNS})");
    let waiting = "Reconnecting... waiting for network (Connection failed: error sending request)";
    for name in ["offline-no-login.jsonl", "offline-api-key.jsonl"] {
        let lines = seen("codex", name);
        let mut expected = vec![(System, "session started".to_owned())];
        expected.extend((2..=5).map(|n| (Notice, retry(n))));
        expected.push((Notice, format!("warning: Falling back from WebSockets to HTTPS transport. {DNS}")));
        expected.extend(std::iter::repeat_n((Notice, waiting.to_owned()), lines.len() - expected.len()));
        assert_eq!(lines, expected, "{name}");
        assert!(lines.len() >= 8, "{name}: at least two waits for the network");
        assert!(lines[1..].iter().all(|(kind, _)| !kind.is_progress()), "{name}");
    }
}

/// codex-cli 0.171.0 against a local HTTP server that answers 501: the
/// retries are notices, the final error and the failed turn are errors.
#[test]
fn codex_against_a_failing_server_ends_in_errors() {
    let lines = seen("codex", "local-http-501.jsonl");
    let kinds: Vec<&LineKind> = lines.iter().map(|(kind, _)| kind).collect();
    let mut expected = vec![&System];
    expected.extend([&Notice; 10]);
    expected.extend([&Error, &Error]);
    assert_eq!(kinds, expected, "{lines:?}");
    assert_eq!(
        lines[1].1,
        "Reconnecting... 2/5 (stream disconnected before completion: WebSocket protocol error: HTTP version must be 1.1 or higher)"
    );
    assert!(lines[5].1.starts_with("warning: Falling back from WebSockets to HTTPS transport."));
    assert!(lines[6].1.starts_with(
        "Reconnecting... 1/5 (unexpected status 501 Not Implemented: <!DOCTYPE HTML> ⏎ <html lang=\"en\"> ⏎ <head> ⏎ <meta"
    ));
    assert!(lines[6].1.contains(" ⏎ <p>Message: Unsupported method ('POST').</p> ⏎ "));
    assert!(lines[10].1.starts_with("Reconnecting... 5/5 (unexpected status 501 Not Implemented"));
    assert!(lines[11].1.starts_with("unexpected status 501 Not Implemented: "));
    assert!(lines[12].1.starts_with("turn failed: unexpected status 501 Not Implemented: "));
    assert!(lines[12].1.ends_with("url: http://127.0.0.1:18931/v1/responses"));
}

/// codex-cli 0.171.0 against a scripted Responses API (a reasoning
/// summary, a command that fails, one that succeeds, a message): the
/// failed command is an error naming its exit code, never `result:`.
#[test]
fn real_codex_session_with_commands() {
    const WS: &str = "unexpected status 404 Not Found: Unknown error, url: ws://127.0.0.1:18932/v1/responses";
    let mut expected = vec![
        (System, "session started".to_owned()),
        (
            Notice,
            "warning: Model metadata for `gpt-5.1-codex` not found. Defaulting to fallback metadata; this can degrade performance and cause issues.".to_owned(),
        ),
    ];
    expected.extend((2..=5).map(|n| (Notice, format!("Reconnecting... {n}/5 ({WS})"))));
    expected.extend(want(&[
        (Notice, &format!("warning: Falling back from WebSockets to HTTPS transport. {WS}")),
        (Thinking, "**Checking the disk**"),
        (ToolUse, "$ /bin/bash -lc 'ls /nonexistent-dir'"),
        (
            Error,
            "failed (exit 2): $ /bin/bash -lc 'ls /nonexistent-dir' ⏎ ls: cannot access '/nonexistent-dir': No such file or directory",
        ),
        (ToolUse, "$ /bin/bash -lc 'echo hello; echo world'"),
        (ToolResult, "exit 0: hello ⏎ world"),
        (Text, "The disk is fine. ⏎ Nothing to clean."),
        (Result, "turn completed (480 input / 120 output tokens)"),
    ]));
    assert_eq!(seen("codex", "local-scripted-model.jsonl"), expected);
}

/// A public capture (codex-cli 0.155.1) with a spawned subagent.
#[test]
fn codex_subagents_are_marked() {
    assert_eq!(
        seen("codex", "public-collab-0.155.1.jsonl"),
        want(&[
            (System, "session started"),
            (
                Notice,
                "warning: Exceeded skills context budget. All skill descriptions were removed and 1281 additional skills were not included in the model-visible skills list."
            ),
            (
                Text,
                "I’ll run `ls -a` first, then use the available agent capability to request the exact one-word reply."
            ),
            (ToolUse, "$ /usr/bin/bash -lc 'ls -a'"),
            (ToolResult, "exit 0: . ⏎ .. ⏎ … (+3 lines)"),
            (
                Text,
                "The directory listing is complete. I’m now spawning the researcher-role sub-agent with the exact instruction to return one word."
            ),
            (ToolUse, "spawn a subagent: Reply with the single word PONG."),
            (ToolResult, "subagent 02c7a1a20ea9: pending init"),
            (ToolUse, "wait for subagents (02c7a1a20ea9)"),
            (ToolResult, "subagent 02c7a1a20ea9: completed: LUNA-RESEARCHER PONG"),
            (Text, "LUNA-RESEARCHER PONG"),
            (Result, "turn completed (105565 input / 419 output tokens)"),
        ])
    );
    assert_eq!(
        seen("codex", "public-parser-tests.jsonl"),
        want(&[
            (ToolUse, "wait for subagents"),
            (ToolResult, "wait for subagents: done"),
            (ToolUse, "message a subagent (thread_child): Investigate deployment failure"),
            (ToolUse, "web search: route"),
            (ToolUse, "web search"),
        ])
    );
}

/// Every `ThreadEvent` and `ThreadItem` of `exec_events.rs`, in its shapes.
#[test]
fn every_codex_event_and_item_reads_as_a_sentence() {
    assert_eq!(
        seen("codex", "exec-events-shapes.jsonl"),
        want(&[
            (System, "session started"),
            (Thinking, "**Checking disk usage**"),
            (System, "to-do list (0 of 2 done):"),
            (System, "[ ] Check disk"),
            (System, "[ ] Clean cache"),
            (System, "to-do list (1 of 2 done):"),
            (System, "[x] Check disk"),
            (System, "[ ] Clean cache"),
            (ToolUse, "$ bash -lc 'du -sh /var/cache'"),
            (
                Error,
                "failed (exit 1): $ bash -lc 'du -sh /var/cache' ⏎ du: cannot read directory '/var/cache/private': Permission denied ⏎ 4.1G    /var/cache"
            ),
            (Error, "declined: $ rm -rf /var/cache/apt"),
            (Error, "edit failed: /etc/apt/apt.conf.d/99keep (add)"),
            (ToolUse, "docs/search: apt clean"),
            (ToolResult, "docs/search: apt-get clean clears /var/cache/apt/archives"),
            (ToolUse, "web: open https://wiki.debian.org/AptConfiguration"),
            (System, "plan:"),
            (System, "# Free disk space"),
            (System, "1. Run `apt-get clean`."),
            (System, "2. Remove old journals: `journalctl --vacuum-size=200M`."),
            (Text, "question: Journals: Keep how much of the journal?"),
            (Text, "- 200 MB (Recommended): Enough for a week"),
            (Text, "- 1 GB"),
            (Error, "spawn a subagent failed"),
            (Error, "subagent 02c7a1a20ea9: errored: sandbox denied journalctl"),
            (Notice, "image_view: /tmp/df.png"),
            (Notice, "warning: model rerouted: gpt-5.1-codex -> gpt-5.1-codex-mini (HighRiskCyberActivity)"),
            (
                Error,
                "turn failed: stream disconnected before completion: error sending request for url (https://api.openai.com/v1/responses)"
            ),
            (Error, "unexpected status 401 Unauthorized: Incorrect API key provided"),
        ])
    );
}

/// An agent host's chunks: the seed contract's hyphenated ones summarised,
/// an unknown one as `TYPE: TEXT`, `end` as the host's exit code.
#[test]
fn agent_host_chunks_are_summarised() {
    assert_eq!(
        seen("host", "seed-contract.jsonl"),
        want(&[
            (Notice, "start: plan"),
            (Text, "Looking at the print queue."),
            (Thinking, "The queue may be stuck on a job."),
            (ToolUse, "Bash: lpstat -o"),
            (ToolResult, "HP_LaserJet-17  alice  1024  Mon 01 Dec 2026 09:12:01"),
            (ToolUse, "Read: /var/log/cups/error_log"),
            (Error, "Permission denied"),
            (Notice, "status: 2; waiting for the model"),
            (Text, "Job 17 is stuck. ⏎ Cancel it with `cancel HP_LaserJet-17`."),
            (Result, "the agent host ended with code 0"),
        ])
    );
    assert_eq!(
        seen("host", "protocol-examples.jsonl"),
        want(&[
            (Text, "Reading the logs"),
            (ToolUse, "Read: /var/log/cups/error_log"),
            (ToolResult, "..."),
            (Error, "..."),
            (Result, "done in 1.2 s: ..."),
        ])
    );
}

/// Issue 13's failure: an `error` chunk, then `end` with code 1.
#[test]
fn agent_host_failure_reads_as_errors() {
    assert_eq!(
        seen("host", "failure.jsonl"),
        want(
            &[(Text, "Starting"), (Error, "upstream model unavailable"), (Error, "the agent host ended with code 1"),]
        )
    );
    assert_eq!(
        seen("host", "failure-error-object.jsonl"),
        want(&[(Error, "Overloaded"), (Error, "the agent host ended with code 3: the agent gave up after 3 attempts")])
    );
}

/// Single chunks at the edges of the shapes.
#[test]
fn edge_chunks() {
    let cases: &[(&str, &[(LineKind, &str)])] = &[
        (r#"{"type":"end"}"#, &[(Result, "the agent host ended")]),
        (
            r#"{"type":"end","code":2,"error":{"message":"crashed"}}"#,
            &[(Error, "the agent host ended with code 2: crashed")],
        ),
        (r#"{"type":"tool-use","toolName":"Now"}"#, &[(ToolUse, "Now")]),
        (r#"{"type":"tool-result"}"#, &[(ToolResult, "(no output)")]),
        (r#"{"type":"progress","percent":40,"blob":{"a":1}}"#, &[(Notice, "progress")]),
        (
            r#"{"type":"item.started","item":{"id":"i","type":"command_execution","command":"ls","status":"in_progress"}}"#,
            &[(ToolUse, "$ ls")],
        ),
        (
            r#"{"type":"item.completed","item":{"id":"i","type":"command_execution","command":"ls","exit_code":0,"aggregated_output":"","status":"completed"}}"#,
            &[(ToolResult, "exit 0")],
        ),
        (
            r#"{"type":"item.completed","item":{"id":"i","type":"command_execution","command":"ls","exit_code":2,"aggregated_output":"","status":"failed"}}"#,
            &[(Error, "failed (exit 2): $ ls")],
        ),
        (
            r#"{"type":"item.completed","item":{"id":"i","type":"command_execution","command":"ls","exit_code":null,"aggregated_output":"killed","status":"failed"}}"#,
            &[(Error, "failed (no exit code): $ ls ⏎ killed")],
        ),
        (r#"{"type":"item.updated","item":{"id":"i","type":"new_kind","x":"y"}}"#, &[]),
        (
            r#"{"type":"item.started","item":{"id":"i","type":"new_kind","note":"hello"}}"#,
            &[(Notice, "new_kind: hello")],
        ),
        (r#"{"type":"item.plan.delta","item_id":"i","delta":"1."}"#, &[]),
        (r#"{"type":"request_user_input","questions":[]}"#, &[(Text, "question (no text)")]),
        (r#"{"type":"error","message":"Reconnecting... 1/5 (timeout)"}"#, &[(Notice, "Reconnecting... 1/5 (timeout)")]),
        (r#"{"type":"item.completed","item":{"id":"i","type":"todo_list","items":[]}}"#, &[]),
        // codex-cli 0.4x's retry text (`codex-rs/core/src/codex.rs` then).
        (
            r#"{"type":"error","message":"stream error: stream disconnected before completion; retrying 1/5 in 190ms…"}"#,
            &[(Notice, "stream error: stream disconnected before completion; retrying 1/5 in 190ms…")],
        ),
        (r#"{"type":"error","message":"not retrying ; retrying soon"}"#, &[(Error, "not retrying ; retrying soon")]),
    ];
    for (input, expected) in cases {
        let lines: Vec<(LineKind, String)> =
            render(format!("{input}\n").as_bytes()).into_iter().map(|l| (l.kind, l.text)).collect();
        assert_eq!(lines, want(expected), "input: {input}");
    }
}

/// The `codex` on `PATH`, if any.
fn codex_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("codex")).find(|candidate| candidate.is_file())
}

/// The real Codex CLI, offline in a scratch home with a bogus key: every
/// line it prints in 20 s (or until it exits) reads as a sentence. Skipped,
/// saying so, when `codex` is not on `PATH` (CI does not install it).
#[test]
fn real_codex_output_is_readable() {
    let Some(codex) = codex_on_path() else {
        eprintln!(
            "skipped: no `codex` on PATH (npm install --prefix DIR @openai/codex, then put DIR/node_modules/.bin on PATH)"
        );
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(&codex)
        .args(["exec", "--json", "--skip-git-repo-check", "-c", "openai_base_url=\"http://127.0.0.1:9/v1\"", "hi"])
        .current_dir(home.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("CODEX_API_KEY", "sk-bogus-key-for-a-test")
        // An address that refuses at once, so no network is needed or used.
        .env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut transcript = Transcript::new(true);
    let mut printed = Vec::new();
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                lines.extend(transcript.push(Stream::Stdout, format!("{line}\n").as_bytes()));
                printed.push(line);
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines.extend(transcript.finish());
    assert!(!printed.is_empty(), "{} printed nothing on stdout in 20 s", codex.display());
    assert!(printed[0].contains("thread.started"), "{printed:?}");
    let lines: Vec<(LineKind, String)> = lines.into_iter().map(|l| (l.kind, l.text)).collect();
    assert_readable(&lines, "real codex");
    assert!(lines.iter().all(|(kind, _)| *kind != Raw), "{lines:?}\nfrom {printed:?}");
    assert_eq!(lines[0], (System, "session started".to_owned()));
    eprintln!("real codex: {} JSON lines became {} transcript lines", printed.len(), lines.len());
}
