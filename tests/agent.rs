//! Tiers 3 and 4 end to end: the owner's agent (a fake that speaks Claude
//! Code's stream-json and resists being stopped) and the shell, driven by
//! an operator through a real relay and a real daemon; the owner's stop,
//! revoke and view. (tests/agent_lab.rs has the in-process daemon tests:
//! a test process that is itself a daemon sweeps up its own children, so
//! the two kinds never share a test binary.)

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::desk::Desk;
use common::lab::survivors;
use common::net::{Device, Relay, add_policy};
use common::wait_pids;
use common::{Home, Run};
use support::operator::Outcome;
use support::protocol::{DenyCode, DeviceFrame, Status, StoppedBy};

fn fixture() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/agent.sh")
}

/// An `[agent]` section running the fake agent with `children`
/// descendants in `workdir`.
fn agent_policy(workdir: &Path, children: u32) -> String {
    format!(
        "[agent]\nargv = [\"{}\", \"{children}\"]\ncwd = \"{}\"\ntimeout_s = 120\n\
         plan_args = [\"--permission-mode\", \"plan\"]\nbuild_args = [\"--permission-mode\", \"acceptEdits\"]\n",
        fixture(),
        workdir.display()
    )
}

fn operator(relay: &Relay, key: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(common::bin());
    cmd.arg("operator")
        .args(args)
        .env("SUPPORT_OPERATOR_RELAY", relay.url())
        .env("SUPPORT_OPERATOR_RELAY_CA", relay.ca())
        .env("SUPPORT_OPERATOR_KEY", key)
        .env("NO_COLOR", "1");
    cmd
}

/// A device on `relays`' device relay whose `[agent]` runs the fake agent
/// in `workdir`, trusting `desk`, once the operators' relay lists it.
fn agent_device(relays: &Desk, key: &support::KeyPair, workdir: &Path, extra: &str) -> Device {
    let (home, relay) = (Home::new(), &relays.device);
    add_policy(&home, &format!("{}\n{extra}", agent_policy(workdir, 3)));
    let device = Device::start(
        home,
        &relay.url(),
        &["--relay-ca", relay.ca().to_str().unwrap(), "--enroll", &relay.token()],
        true,
    );
    device.trust("desk", key);
    relays.wait_online(&device.device_id);
    device
}

#[test]
fn the_owner_watches_the_agent_through_the_relay_and_stops_it() {
    owner_watches_and_stops(&Desk::one());
}

#[test]
fn the_owner_stops_the_agent_of_an_operator_on_another_relay_of_the_cluster() {
    owner_watches_and_stops(&Desk::across());
}

/// An agent task driven by an operator on `relays`' operator relay: the
/// owner watches its transcript and stops it; the operator is told so.
fn owner_watches_and_stops(relays: &Desk) {
    let relay = relays.operator();
    let (key, key_path) = relays.add_operator("desk");
    let work = tempfile::tempdir().unwrap();
    let device = agent_device(relays, &key, work.path(), "");
    device.allow(3);
    let pidfile = work.path().join("agent.pids");
    let agent = operator(relay, &key_path, &["agent", &device.device_id, "the printer jams", "--mode", "build"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pids = wait_pids(&pidfile, 4);

    // The owner sees who drives the agent, and since when.
    let status = device.home.run(&["status"]);
    status.code(0).says("support is operating your agent:").says("desk since");
    let tasks = device.home.run(&["tasks", "--json"]).json();
    let task = &tasks["tasks"][0];
    assert_eq!(task["agent"], true, "{tasks}");
    let task_id = task["task_id"].as_str().unwrap().to_string();
    // The transcript: the stream-JSON summarised, stderr raw, mode arguments passed.
    let detail = wait_transcript(&device.home, &task_id, "no jobs queued");
    let lines = detail["transcript"]["lines"].as_array().unwrap();
    let has = |kind: &str, text: &str| {
        lines.iter().any(|l| l["kind"] == kind && l["text"].as_str().is_some_and(|t| t.starts_with(text)))
    };
    assert!(has("text", "Looking into: the printer jams"), "{lines:?}");
    assert!(has("tool_use", "Bash: lpstat -o"), "{lines:?}");
    assert!(has("raw", "args: 3 --permission-mode acceptEdits"), "build mode's arguments, raw from stderr: {lines:?}");

    // `support stop` with no id stops the agent; its whole tree goes.
    let stop = device.home.run(&["stop"]);
    stop.code(0).says(&format!("Stopped {task_id}: cancelled by owner"));
    assert_eq!(survivors(&pids), Vec::<i32>::new(), "survivors of the agent's tree");
    let out = agent.wait_with_output().unwrap();
    let run = Run::from(out);
    run.code(1).says("stopped by the owner").says("Looking into: the printer jams");

    // On the record: started, stopped by the owner with the transcript's digest, finished.
    let audit = device.home.run(&["audit", "--json", "--limit", "20"]);
    let recs: Vec<serde_json::Value> = audit.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let stopped = recs.iter().find(|r| r["event"] == "task.stopped").expect("task.stopped");
    assert_eq!(stopped["by"], "owner");
    assert_eq!(stopped["action"], "agent");
    let after = device.home.run(&["tasks", &task_id, "--json"]).json();
    assert_eq!(after["running"], false);
    assert_eq!(stopped["transcript_sha256"], after["transcript"]["sha256"], "the recorded digest is the transcript's");
    assert!(recs.iter().any(|r| r["event"] == "action.started" && r["action"] == "agent"));
    device.home.run(&["audit", "--verify"]).code(0);
}

/// Polls `support tasks ID --json` until the transcript holds `needle`.
fn wait_transcript(home: &Home, task_id: &str, needle: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let detail = home.run(&["tasks", task_id, "--json"]).json();
        if detail["transcript"].to_string().contains(needle) {
            return detail;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in the transcript: {detail}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn deny_code(outcome: &Outcome) -> Option<(DenyCode, String)> {
    match outcome {
        Outcome::Denied { code, message } => Some((*code, message.clone())),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_busy_revoke_and_a_disabled_shell() {
    tiers_busy_revoke(tokio::task::block_in_place(Desk::one)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_busy_revoke_and_a_disabled_shell_for_an_operator_on_another_relay() {
    tiers_busy_revoke(tokio::task::block_in_place(Desk::across)).await;
}

/// Tiers, one agent at a time and a revoke mid-task, from `relays`' operator relay.
async fn tiers_busy_revoke(relays: Desk) {
    let relay = relays.operator();
    let work = tempfile::tempdir().unwrap();
    let (key_path, device) = tokio::task::block_in_place(|| {
        let (key, key_path) = relays.add_operator("desk");
        (key_path, agent_device(&relays, &key, work.path(), "[shell]\nenabled = false\n"))
    });
    let mut session = relay.session(&key_path).await;
    let none = || std::future::pending::<()>();
    let agent = |session: &mut support::operator::Session, prompt: &str| {
        let params = BTreeMap::from([("prompt".to_string(), prompt.to_string())]);
        session.command(&device.device_id, "agent", params)
    };

    // Tier 2 does not reach the agent.
    device.home.run(&["allow", "--tier", "2", "--minutes", "10"]).code(0);
    let run = agent(&mut session, "look");
    let outcome = session.run(&run, |_| {}, none()).await.unwrap();
    assert_eq!(deny_code(&outcome).map(|d| d.0), Some(DenyCode::TierInsufficient), "{outcome:?}");

    // The shell is off on this device: denied whatever the tier, and the message says why.
    device.home.run(&["allow", "--tier", "4", "--minutes", "10", "--yes"]).code(0);
    let shell = operator(relay, &key_path, &["shell", &device.device_id, "--", "echo", "hi"]).output().unwrap();
    let shell = Run::from(shell);
    shell.code(4).says("UNKNOWN_ACTION").says("[shell] enabled = false");

    // One agent task at a time; a revoke cancels it.
    device.allow(3);
    let first = agent(&mut session, "look");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut second_session = relay.session(&key_path).await;
    let running = tokio::spawn(async move {
        session.run(&first, move |f| drop(tx.send(f.clone())), std::future::pending::<()>()).await.unwrap()
    });
    match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap() {
        DeviceFrame::Accepted { .. } => {}
        other => panic!("the first frame: {other:?}"),
    }
    let pids = wait_pids(&work.path().join("agent.pids"), 4);
    let second = agent(&mut second_session, "look again");
    let outcome = second_session.run(&second, |_| {}, none()).await.unwrap();
    let (code, message) = deny_code(&outcome).expect("denied");
    assert_eq!(code, DenyCode::Busy, "{message}");
    assert!(message.contains("one agent task at a time"), "{message}");
    device.home.run(&["revoke"]).code(0);
    let outcome = tokio::time::timeout(Duration::from_secs(10), running).await.unwrap().unwrap();
    match outcome {
        Outcome::Finished(DeviceFrame::Result { status, cancelled_by, .. }) => {
            assert_eq!((status, cancelled_by), (Status::Cancelled, Some(StoppedBy::Revoke)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(survivors(&pids), Vec::<i32>::new(), "survivors after revoke");
}

#[test]
fn a_tier_4_shell_command_runs_and_its_signed_output_comes_back() {
    shell_command(&Desk::one());
}

#[test]
fn a_tier_4_shell_command_runs_on_a_device_of_another_relay_of_the_cluster() {
    shell_command(&Desk::across());
}

/// `support operator shell` from `relays`' operator relay at tier 4 (and
/// refused at tier 3): the command's output, checked against the device's
/// signatures by the CLI, and its record on the device.
fn shell_command(relays: &Desk) {
    let (key, key_path) = relays.add_operator("desk");
    let work = tempfile::tempdir().unwrap();
    let device = agent_device(relays, &key, work.path(), "");
    let shell = |cmd: &str| {
        Run::from(operator(relays.operator(), &key_path, &["shell", &device.device_id, "--", cmd]).output().unwrap())
    };
    device.allow(3);
    shell("echo $((6 * 7))").code(4).says("TIER_INSUFFICIENT");
    device.allow(4);
    let out = shell("echo $((6 * 7)) | tr 4 x; echo to-stderr >&2; exit 3");
    assert!(out.stdout.contains("x2"), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("to-stderr") || out.stderr.contains("to-stderr"), "{}\n{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "the command's failure is the operator's: {}", out.stderr);
    let audit = device.home.run(&["audit", "--json", "--limit", "20"]).stdout;
    let finished = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["event"] == "action.finished" && r["action"] == "shell")
        .expect("the shell command is on the owner's record");
    assert_eq!(finished["exit_code"], 3, "{finished}");
}

#[test]
fn a_non_loopback_agent_host_is_refused_when_the_policy_loads() {
    let home = Home::new();
    for endpoint in
        ["http://10.0.0.7:8080/agent", "http://example.com:80/", "https://127.0.0.1:9/x", "http://127.0.0.1/"]
    {
        let file = home.path.with_extension(format!("{}.toml", endpoint.len()));
        std::fs::write(&file, format!("[agent]\nendpoint = \"{endpoint}\"\nsecret_file = \"~/s\"\n")).unwrap();
        home.run(&["policy", "check", file.to_str().unwrap()]).code(2).says("endpoint");
    }
    // And a daemon with such a policy does not start.
    add_policy(&home, "[agent]\nendpoint = \"http://192.168.1.2:80/x\"\nsecret_file = \"~/s\"\n");
    let out = home.cmd(&["daemon"]).output().unwrap();
    Run::from(out).code(1).says("endpoint");
}
