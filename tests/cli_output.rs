//! What the CLI writes, as a user or a script meets it: a closed stdout,
//! tables in an 80-column terminal, plain logs in files, and
//! `operator keygen` into a directory that is not there yet.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::net::{Device, Proc, Relay, add_policy};
use common::{Home, Run, bin};
use support::audit::{Event, Record};
use support::{AuditLog, Paths};

/// A home with a grant, a trusted operator and the records a fix leaves:
/// one denied for want of a tier, one that ran.
fn home_with_history() -> Home {
    let h = Home::new();
    h.run(&["allow", "--tier", "2", "--minutes", "5"]).code(0);
    h.run(&["trust", "add", "alice", &common::new_public_key()]).code(0);
    let mut log = AuditLog::open(&Paths::under(h.path.clone())).unwrap();
    let mut denied = Record::new(Event::ActionDenied);
    denied.action = Some("restart-user-service".into());
    denied.operator = Some("alice".into());
    denied.code = Some("TIER_INSUFFICIENT".into());
    log.append(denied).unwrap();
    let mut finished = Record::new(Event::ActionFinished);
    finished.action = Some("restart-user-service".into());
    finished.operator = Some("alice".into());
    finished.tier = Some(2);
    finished.status = Some("ok".into());
    finished.exit_code = Some(0);
    log.append(finished).unwrap();
    h
}

/// Runs `cmd` with stdout on a pipe whose read end is already closed, as
/// when `| head -1` has read its line and gone.
fn with_closed_stdout(mut cmd: Command) -> Run {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = cmd.stdout(writer).stderr(Stdio::piped()).output().unwrap();
    Run::from(out)
}

#[test]
fn a_closed_stdout_exits_0_quietly() {
    let h = home_with_history();
    for args in [
        &["audit", "--json"][..],
        &["audit"],
        &["audit", "--verify"],
        &["actions", "--all"],
        &["actions", "--all", "--json"],
        &["actions"],
        &["trust", "list"],
        &["trust", "list", "--json"],
        &["policy", "check"],
        &["status", "--json"],
        &["status"],
    ] {
        let run = with_closed_stdout(h.cmd(args));
        assert_eq!(run.code, 0, "{args:?}: exit {}; stderr:\n{}", run.code, run.stderr);
        assert_eq!(run.stderr, "", "{args:?}");
    }
}

#[test]
fn a_stdout_that_cannot_be_written_is_an_error_said_once() {
    let h = home_with_history();
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let run = Run::from(h.cmd(&["audit"]).stdout(full()).output().unwrap());
    run.code(1).says("support: cannot write to stdout: ");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert_eq!(run.stderr.matches("No space left").count(), 1, "{}", run.stderr);
    // With --json, the one line is the error as JSON (tests/cli_scripting.rs).
    let run = Run::from(h.cmd(&["audit", "--json"]).stdout(full()).output().unwrap());
    run.code(1);
    let v: serde_json::Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(v["error"]["code"], "stdout", "{v}");
    assert_eq!(v["error"]["message"].as_str().unwrap().matches("No space left").count(), 1, "{v}");
}

#[test]
fn an_error_and_its_cause_are_each_said_once() {
    // A home under a plain file: the OS says why (ENOTDIR), once, after what
    // support was doing; the status says it too.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let home = file.join("home");
    let run = |args: &[&str]| Run::from(Command::new(bin()).args(args).env("SUPPORT_HOME", &home).output().unwrap());
    for args in [&["audit", "--verify"][..], &["allow", "--tier", "1", "--minutes", "5"]] {
        let r = run(args);
        r.code(1).says("Not a directory");
        let line = r.stderr.trim_end();
        assert_eq!(line.lines().count(), 1, "{args:?}: {line}");
        assert_eq!(line.matches(&home.display().to_string()).count(), 1, "{args:?}: the path once: {line}");
        assert_eq!(line.matches("Not a directory").count(), 1, "{args:?}: the cause once: {line}");
    }
    run(&["status"]).code(0).says("Not a directory");
}

/// Every line of `out` fits in `width` columns.
fn assert_fits(what: &str, out: &str, width: usize) {
    for line in out.lines() {
        assert!(line.chars().count() <= width, "{what}: a line over {width} columns:\n{line}\n\n{out}");
    }
}

#[test]
fn tables_fit_80_columns_and_keep_names_whole() {
    let h = home_with_history();
    let narrow = |args: &[&str]| Run::from(h.cmd(args).env("COLUMNS", "80").output().unwrap());
    let actions = narrow(&["actions", "--all"]);
    actions.code(0).says("restart-user-service").says("clear-print-queue").says("diagnostic");
    assert_fits("actions --all", &actions.stdout, 80);
    let audit = narrow(&["audit"]);
    audit.code(0).says("restart-user-service").says("TIER_INSUFFICIENT").says("consent.granted");
    audit.says("action.finished").says("trust.added").says("alice").says("4 of 4 records");
    assert_fits("audit", &audit.stdout, 80);
    let trust = narrow(&["trust", "list"]);
    trust.code(0).says("alice");
    assert_fits("trust list", &trust.stdout, 80);

    // Into a pipe with no COLUMNS a row stays on its line, for grep.
    let piped = Run::from(h.cmd(&["actions", "--all"]).env_remove("COLUMNS").output().unwrap());
    let line = piped.stdout.lines().find(|l| l.starts_with("restart-user-service")).unwrap();
    assert!(line.contains("Restart one of your own systemd user services"), "{}", piped.stdout);
}

/// Waits (at most 30 s) until `ok` holds for the output of `run`.
fn wait_for(what: &str, run: impl Fn() -> Run, ok: impl Fn(&Run) -> bool) -> Run {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = run();
        if ok(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "never {what}:\n{}\n{}", r.stdout, r.stderr);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn devices_and_tasks_fit_80_columns() {
    let relay = Relay::start("127.0.0.1:0");
    let (key, key_path) = relay.operator("alice");
    let home = Home::new();
    add_policy(
        &home,
        "[[action]]\nname = \"slow-user-service-check\"\ntier = 1\nkind = \"diagnostic\"\n\
         description = \"sleeps\"\nargv = [\"sleep\", \"30\"]\ntimeout_s = 60\n",
    );
    let token = relay.token();
    let device =
        Device::start(home, &relay.url(), &["--relay-ca", relay.ca().to_str().unwrap(), "--enroll", &token], true);
    device.trust("alice", &key);
    device.allow(1);
    let operator = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.arg("operator")
            .args(args)
            .env("SUPPORT_OPERATOR_RELAY", relay.url())
            .env("SUPPORT_OPERATOR_RELAY_CA", relay.ca())
            .env("SUPPORT_OPERATOR_KEY", &key_path)
            .env("NO_COLOR", "1")
            .env("COLUMNS", "80");
        c
    };
    let _run = Proc(
        operator(&["run", &device.device_id, "slow-user-service-check"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let tasks = wait_for(
        "a task ran",
        || Run::from(device.home.cmd(&["tasks"]).env("COLUMNS", "80").output().unwrap()),
        |r| r.stdout.contains("slow-user-service-check"),
    );
    tasks.code(0).says("alice");
    assert_fits("tasks", &tasks.stdout, 80);
    let listed = Run::from(operator(&["devices"]).output().unwrap());
    listed.code(0).says(&device.device_id).says("yes");
    assert_fits("operator devices", &listed.stdout, 80);
    let admin = wait_for(
        "the relay listed the device",
        || {
            let mut c = Command::new(bin());
            c.args(["relay", "--state"]).arg(&relay.state).args(["devices"]).env("COLUMNS", "80");
            Run::from(c.output().unwrap())
        },
        |r| r.stdout.contains(&device.device_id),
    );
    admin.code(0);
    assert_fits("relay devices", &admin.stdout, 80);
    let closed = with_closed_stdout({
        let mut c = Command::new(bin());
        c.args(["relay", "--state"]).arg(&relay.state).args(["devices"]);
        c
    });
    assert_eq!((closed.code, closed.stderr.as_str()), (0, ""), "relay devices into a closed pipe");
}

#[test]
fn the_daemon_writes_no_colour_into_a_file() {
    let h = Home::new();
    let log = h.path.with_extension("daemon.log");
    std::fs::create_dir_all(&h.path).unwrap();
    let child = h
        .cmd(&["daemon"])
        .env_remove("NO_COLOR")
        .env("SUPPORT_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = Proc(child);
    wait_for("the daemon started", || h.run(&["status", "--json"]), |r| !r.json()["daemon"].is_null());
    daemon.term();
    let text = std::fs::read(&log).unwrap();
    assert!(!text.is_empty(), "the daemon logged nothing");
    assert!(!text.contains(&0x1b), "ESC in the daemon's log file:\n{}", String::from_utf8_lossy(&text));
}

#[test]
fn keygen_makes_missing_directories_0700() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys/support/op.key");
    let run = Run::from(Command::new(bin()).args(["operator", "keygen", "--out"]).arg(&out).output().unwrap());
    run.code(0).says("ed25519:");
    for d in [dir.path().join("keys"), dir.path().join("keys/support")] {
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700, "{}", d.display());
    }
    assert_eq!(common::mode(&out), 0o600);
    // An existing directory is used as it is, and an existing key refused.
    let again = Run::from(Command::new(bin()).args(["operator", "keygen", "--out"]).arg(&out).output().unwrap());
    again.code(2).says("exists");
    let beside = dir.path().join("op2.key");
    Run::from(Command::new(bin()).args(["operator", "keygen", "--out"]).arg(&beside).output().unwrap()).code(0);
}

#[test]
fn a_malformed_daemon_toml_is_named_without_quoting_its_token() {
    let h = Home::new();
    std::fs::create_dir_all(&h.path).unwrap();
    std::fs::set_permissions(&h.path, std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = h.file("daemon.toml");
    let text = "relay = \"wss://127.0.0.1:1\"\nenroll = \"et-do-not-print-me\" oops\n";
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let run = h.run(&["daemon"]);
    run.code(2).says("daemon.toml (line 2): ");
    assert!(!run.stderr.contains("do-not-print-me"), "{}", run.stderr);
}
