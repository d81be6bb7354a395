//! One time format in human output (issue 17, item 6; README,
//! "Scripting"): every instant the real binary prints for a person is
//! RFC 3339 in UTC to the second (`2026-11-22T10:36:26Z`), and no other
//! shape of a date or a time of day shows. The commands run with `TZ` set
//! to a zone 5½ hours from UTC, so a local time could not pass for UTC;
//! against a real relay, a real daemon with a running task, and the
//! operator's CLI.

mod common;
#[path = "common/owner.rs"]
mod owner;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Run, to_second};
use owner::{Owner, finished};
use regex::Regex;

/// India's zone as a POSIX `TZ` string (UTC+05:30, no summer time), so it
/// needs no tzdata.
const ZONE: &str = "IST-5:30";

/// `cmd` run in [`ZONE`] with no `COLUMNS` (rows stay whole), exit `code`:
/// its stdout and stderr.
#[track_caller]
fn human(mut cmd: Command, code: i32) -> String {
    let run = Run::from(cmd.env("TZ", ZONE).env_remove("COLUMNS").output().unwrap());
    run.code(code);
    format!("{}{}", run.stdout, run.stderr)
}

/// The instants in `text`, each `2026-11-22T10:36:26Z`; fails on any other
/// shape of a date or a time: another separator, an offset, a fraction of a
/// second, a zone's name, a bare time of day.
#[track_caller]
fn instants(what: &str, text: &str) -> Vec<String> {
    let one = Regex::new(r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z").unwrap();
    let shown: Vec<String> = one.find_iter(text).map(|m| m.as_str().to_string()).collect();
    let rest = one.replace_all(text, "<instant>");
    let other = Regex::new(
        r"\d{4}-\d{2}-\d{2}|\d{1,2}:\d{2}:\d{2}|[+-]\d{2}:\d{2}\b|\b(UTC|GMT|IST)\b|<instant>[\w.:+-]|[\w.:+-]<instant>",
    )
    .unwrap();
    if let Some(m) = other.find(&rest) {
        panic!("{what}: {:?} is not an instant as people read it here:\n{text}", m.as_str());
    }
    let strict = Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$").unwrap();
    assert!(shown.iter().all(|t| strict.is_match(t)), "{what}: {shown:?}");
    shown
}

/// At least `n` instants in `text`, all of them as people read them.
#[track_caller]
fn at_least(n: usize, what: &str, text: &str) -> Vec<String> {
    let shown = instants(what, text);
    assert!(shown.len() >= n, "{what}: {} instant(s), expected {n} or more:\n{text}", shown.len());
    shown
}

#[test]
fn every_instant_a_person_reads_is_rfc3339_utc_to_the_second() {
    let owner = Owner::start();
    let home = owner.home();
    let device = owner.device.device_id.clone();

    let allow = human(home.cmd(&["allow", "--tier", "1", "--minutes", "30", "--reason", "the printer jams"]), 0);
    let status = home.status();
    assert_eq!(at_least(1, "allow", &allow), [to_second(&status["expires_at"])], "allow names the grant's end");

    // A denial for the summary and the audit log, then a task that runs on.
    let denied = human(owner.operator(&["run", &device, "restart-user-service", "unit=foo.service"]), 4);
    instants("operator run (denied)", &denied);
    let (operator, task, _pids) = owner.start_tree(&owner.work.path().join("tree.pids"));

    let status_text = human(home.cmd(&["status"]), 0);
    let shown = at_least(4, "status", &status_text);
    let status = home.status();
    for field in ["expires_at", "granted_at"] {
        assert!(shown.contains(&to_second(&status[field])), "status shows {field} {}:\n{status_text}", status[field]);
    }
    assert!(
        status_text.contains(&format!(" since {}", to_second(&status["daemon"]["link"]["since"]))),
        "{status_text}"
    );
    let tasks = human(home.cmd(&["tasks"]), 0);
    let started = owner.tasks().into_iter().find(|t| t["task_id"] == task.as_str()).unwrap()["started_at"].clone();
    assert!(at_least(1, "tasks", &tasks).contains(&to_second(&started)), "{tasks}");

    let audit = human(home.cmd(&["audit"]), 0);
    let records = owner.audit().len();
    assert!(at_least(records, "audit", &audit).len() >= records, "a time on every row:\n{audit}");
    at_least(1, "trust list", &human(home.cmd(&["trust", "list"]), 0));
    at_least(3, "summary", &human(home.cmd(&["summary"]), 0));

    // `watch`: the status it starts with, then an audit record as it comes.
    let mut watch = home.cmd(&["watch"]).env("TZ", ZONE).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    let out = watch.stdout.take().unwrap();
    std::thread::spawn(move || BufReader::new(out).lines().map_while(Result::ok).try_for_each(|l| tx.send(l)));
    let mut seen = Vec::new();
    let mut next = |until: &str| loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("watch: no {until}: {seen:?}"));
        let done = line.contains(until);
        seen.push(line);
        if done {
            break seen.join("\n");
        }
    };
    next(&task);
    human(home.cmd(&["allow", "--tier", "1", "--minutes", "20"]), 0);
    next("until ");
    human(owner.operator(&["run", &device, "restart-user-service", "unit=foo.service"]), 4);
    let watched = next("action.denied");
    let _ = watch.kill();
    let _ = watch.wait();
    for line in watched.lines() {
        assert!(!instants("watch", line).is_empty(), "every watch line starts with the time: {line:?}\n{watched}");
    }

    // The operator's and the relay admin's listings and messages, once the
    // relay has the device's heartbeat with the grant in it.
    let listed = |v: &serde_json::Value| {
        v.as_array().into_iter().flatten().any(|d| d["device_id"] == device.as_str() && d["expires_at"].is_string())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !listed(&Run::from(owner.operator(&["devices", "--json"]).output().unwrap()).json()) {
        assert!(std::time::Instant::now() < deadline, "the relay never had the grant\n{}", owner.device.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    at_least(2, "operator devices", &human(owner.operator(&["devices"]), 0));
    let relay = |args: &[&str]| {
        let mut cmd = Command::new(common::bin());
        cmd.args(["relay", "--state"]).arg(&owner.relay.state).args(args).env("NO_COLOR", "1");
        cmd
    };
    at_least(2, "relay devices", &human(relay(&["devices"]), 0));
    at_least(1, "relay operators", &human(relay(&["operators"]), 0));
    at_least(1, "relay enroll-token", &human(relay(&["enroll-token", "--ttl", "10m"]), 0));
    at_least(3, "relay tokens", &human(relay(&["tokens"]), 0));

    // `revoke` ends the task and prints the grant's summary.
    at_least(2, "revoke", &human(home.cmd(&["revoke"]), 0));
    finished(operator);
}

#[test]
fn the_check_itself_refuses_the_other_shapes() {
    let refused = [
        "connected since 2026-11-22 10:27:08 +00:00",
        "until 2026-11-22 11:00:00 CET",
        "resets 2026-08-23 21:30 UTC",
        "10:41:08 [t-1] agent: hello",
        "at 2026-11-22T10:36:26.123456Z",
        "at 2026-11-22T16:06:26+05:30",
        "at 2026-11-22T10:36:26ZZ",
        "on 2026-11-22",
    ];
    for text in refused {
        let caught = std::panic::catch_unwind(|| instants("sample", text));
        assert!(caught.is_err(), "{text:?} passed");
    }
    let shown = instants("sample", "since 2026-11-22T10:36:26Z (29m 12s left), took 41ms, at 127.0.0.1:4433");
    assert_eq!(shown, ["2026-11-22T10:36:26Z"]);
}
