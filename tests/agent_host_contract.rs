//! The agent host contract (docs/PROTOCOL.md, "The agent host
//! contract"), end to end: a daemon in this test process against the
//! reference host in tests/common/agent_host.rs. The request, `mode`
//! honoured or refused, `end` codes and `error` chunks deciding the
//! result, a stop closing the stream, and every failure's reason (a
//! status, a refused connection, a silent host). And `[agent]
//! idle_timeout_s` against a fake agent that only retries.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::agent_host::{self, HostScript};
use common::lab::{Lab, finish, records, survivors};
use support::audit::Event;
use support::protocol::{DeviceFrame, Status, StoppedBy};

/// The test process is the daemon and the subreaper here: one test at a
/// time, so a task's sweep never meets another test's processes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SECRET: &str = "s3cret-token";

fn secret_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join("agent-host.secret");
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
    std::io::Write::write_all(&mut f, format!("{SECRET}\n").as_bytes()).unwrap();
    path
}

/// A daemon whose `[agent]` posts to `addr`, plus `extra` lines of `[agent]`.
fn lab_for(addr: SocketAddr, dir: &Path, extra: &str) -> Lab {
    let lab = Lab::start_with(&format!(
        "[agent]\nendpoint = \"http://127.0.0.1:{}/v1/agent/task\"\nsecret_file = \"{}\"\n{extra}",
        addr.port(),
        secret_file(dir).display()
    ));
    lab.grant(3, Duration::from_secs(600));
    lab
}

/// Runs one agent task to its end: the result, the output, the `action.finished` record.
async fn run_task(lab: &Lab, mode: &str) -> (support::TaskResult, String, support::Record) {
    let (outcome, mut rx) =
        lab.submit(lab.command("agent", &[("prompt", "why does the printer jam?"), ("mode", mode)])).await;
    outcome.expect("accepted");
    let (result, output) = finish(&mut rx).await;
    let finished = records(&lab.paths).into_iter().find(|r| r.event == Event::ActionFinished).expect("action.finished");
    (result, output, finished)
}

#[tokio::test]
async fn the_request_carries_both_task_id_spellings_the_secret_and_the_mode_the_host_honours() {
    let _one = SERIAL.lock().await;
    let (addr, seen) = agent_host::start(HostScript::new(SECRET, &[r#"{"type":"end","code":0}"#])).await;
    let dir = tempfile::tempdir().unwrap();
    let lab = lab_for(addr, dir.path(), "");
    for mode in ["plan", "build"] {
        let (result, output, _) = run_task(&lab, mode).await;
        assert_eq!((result.status, result.exit_code, result.reason.as_deref()), (Status::Ok, Some(0), None));
        assert!(output.contains(&format!("working in {mode} mode")), "{output}");
        let s = seen.lock().unwrap();
        let body = s.body.as_ref().expect("a JSON body");
        assert!(body["task_id"].as_str().is_some_and(|t| t.starts_with("t-")), "{body}");
        assert_eq!(body["taskId"], body["task_id"], "the seed's camelCase spelling too");
        assert_eq!((body["prompt"].as_str(), body["mode"].as_str()), (Some("why does the printer jam?"), Some(mode)));
        assert_eq!(s.header("x-support-secret"), Some(SECRET));
        assert_eq!(s.header("host"), Some(format!("127.0.0.1:{}", addr.port()).as_str()));
        assert_eq!(s.header("content-type"), Some("application/json"));
    }
}

#[tokio::test]
async fn a_non_zero_end_code_fails_the_task_with_that_exit_code_on_the_record() {
    let _one = SERIAL.lock().await;
    let chunks = [r#"{"type":"error","message":"the model is overloaded"}"#, r#"{"type":"end","code":3}"#];
    let (addr, _) = agent_host::start(HostScript::new(SECRET, &chunks)).await;
    let dir = tempfile::tempdir().unwrap();
    let lab = lab_for(addr, dir.path(), "");
    let (result, _, finished) = run_task(&lab, "plan").await;
    assert_eq!((result.status, result.exit_code), (Status::Failed, Some(3)));
    assert_eq!((finished.status.as_deref(), finished.exit_code), (Some("failed"), Some(3)));
}

#[tokio::test]
async fn an_error_chunk_then_an_end_without_code_fails_naming_the_error() {
    let _one = SERIAL.lock().await;
    let chunks = [r#"{"type":"error","message":"the model is overloaded"}"#, r#"{"type":"end"}"#];
    let (addr, _) = agent_host::start(HostScript::new(SECRET, &chunks)).await;
    let dir = tempfile::tempdir().unwrap();
    let lab = lab_for(addr, dir.path(), "");
    let (result, _, finished) = run_task(&lab, "build").await;
    assert_eq!((result.status, result.exit_code), (Status::Failed, None));
    let want = "the agent host reported an error: the model is overloaded";
    assert_eq!(result.reason.as_deref(), Some(want));
    assert_eq!((finished.status.as_deref(), finished.reason.as_deref()), (Some("failed"), Some(want)));
}

#[tokio::test]
async fn an_end_code_that_cannot_be_read_fails_and_one_point_zero_is_one() {
    let _one = SERIAL.lock().await;
    for (end, want) in [(r#"{"type":"end","code":"1"}"#, None), (r#"{"type":"end","code":1.0}"#, Some(1))] {
        let (addr, _) = agent_host::start(HostScript::new(SECRET, &[end])).await;
        let dir = tempfile::tempdir().unwrap();
        let lab = lab_for(addr, dir.path(), "");
        let (result, _, _) = run_task(&lab, "plan").await;
        assert_eq!((result.status, result.exit_code), (Status::Failed, want), "{end}");
        if want.is_none() {
            let reason = result.reason.unwrap_or_default();
            assert!(reason.contains("an end chunk with an unreadable code (\"1\")"), "{reason}");
        }
    }
}

#[tokio::test]
async fn an_error_chunk_too_long_to_read_still_fails_the_task() {
    let _one = SERIAL.lock().await;
    let error = format!(r#"{{"type":"error","message":"{}"}}"#, "<p>overloaded</p>".repeat(5000));
    let chunks = [error.as_str(), r#"{"type":"end"}"#];
    let (addr, _) = agent_host::start(HostScript::new(SECRET, &chunks)).await;
    let dir = tempfile::tempdir().unwrap();
    let lab = lab_for(addr, dir.path(), "");
    let (result, _, _) = run_task(&lab, "plan").await;
    assert_eq!(result.status, Status::Failed, "{:?}", result.reason);
    assert!(result.reason.as_deref().is_some_and(|r| r.contains("error")), "{:?}", result.reason);
}

#[tokio::test]
async fn a_mode_the_host_cannot_do_is_refused_with_400_and_the_reason_says_so() {
    let _one = SERIAL.lock().await;
    let mut script = HostScript::new(SECRET, &[r#"{"type":"end","code":0}"#]);
    script.modes = vec!["plan"];
    let (addr, _) = agent_host::start(script).await;
    let dir = tempfile::tempdir().unwrap();
    let lab = lab_for(addr, dir.path(), "");
    let (result, output, _) = run_task(&lab, "build").await;
    assert_eq!((result.status, result.exit_code), (Status::Failed, None));
    let want = "the agent host answered 400 Bad Request: this host does not do mode `build`";
    assert_eq!(result.reason.as_deref(), Some(want));
    assert!(output.contains(&format!("support: {want}")), "said on stderr too: {output}");
    let (result, _, _) = run_task(&lab, "plan").await;
    assert_eq!(result.status, Status::Ok);
}

#[tokio::test]
async fn every_failure_of_the_host_names_its_cause_never_a_signal() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // A wrong secret: 403.
    let (addr, _) = agent_host::start(HostScript::new("another-secret", &[])).await;
    let (result, _, finished) = run_task(&lab_for(addr, dir.path(), ""), "plan").await;
    let want = "the agent host answered 403 Forbidden: wrong or missing X-Support-Secret";
    assert_eq!((result.status, result.reason.as_deref()), (Status::Failed, Some(want)));
    assert_eq!(finished.reason.as_deref(), Some(want));
    // Busy: 503.
    let mut busy = HostScript::new(SECRET, &[]);
    busy.status = Some((503, "busy with another task"));
    let (addr, _) = agent_host::start(busy).await;
    let dir = tempfile::tempdir().unwrap();
    let (result, _, _) = run_task(&lab_for(addr, dir.path(), ""), "plan").await;
    assert_eq!(
        result.reason.as_deref(),
        Some("the agent host answered 503 Service Unavailable: busy with another task")
    );
    // Nobody listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (result, _, _) = run_task(&lab_for(port, dir.path(), ""), "plan").await;
    assert_eq!(result.reason, Some(format!("the agent host at {port} refused the connection")));
    // It accepts and never answers: the daemon gives up after HTTP_CONNECT_TIMEOUT.
    let mut silent = HostScript::new(SECRET, &[]);
    silent.silent = true;
    let (addr, _) = agent_host::start(silent).await;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (result, _, _) = run_task(&lab_for(addr, dir.path(), ""), "plan").await;
    assert_eq!((result.status, result.exit_code), (Status::Failed, None));
    assert_eq!(result.reason, Some(format!("the agent host at {addr} sent no answer in 10 s")));
    assert!(started.elapsed() >= support::daemon::exec::HTTP_CONNECT_TIMEOUT);
}

#[tokio::test]
async fn a_stop_closes_the_stream_and_the_host_notices() {
    let _one = SERIAL.lock().await;
    let mut script =
        HostScript::new(SECRET, &[r#"{"type":"tool_use","name":"Read","input":{"file_path":"/var/log/syslog"}}"#]);
    script.hold = true;
    let (addr, seen) = agent_host::start(script).await;
    let dir = tempfile::tempdir().unwrap();
    let lab = lab_for(addr, dir.path(), "");
    let (outcome, mut rx) = lab.submit(lab.command("agent", &[("prompt", "look"), ("mode", "plan")])).await;
    let task_id = outcome.expect("accepted");
    let mut output = String::new();
    while !output.contains("syslog") {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap() {
            DeviceFrame::Output { data, .. } => output.push_str(&data),
            DeviceFrame::Accepted { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    let result = lab.daemon.stop_task(&task_id, StoppedBy::Operator).await.expect("stopped");
    assert_eq!((result.status, result.cancelled_by), (Status::Cancelled, Some(StoppedBy::Operator)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.lock().unwrap().closed_by_daemon {
        assert!(Instant::now() < deadline, "the host never saw its stream closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_host_that_sends_nothing_but_errors_ends_at_the_idle_limit() {
    let _one = SERIAL.lock().await;
    let mut script = HostScript::new(SECRET, &[r#"{"type":"error","message":"rate limited, retrying"}"#]);
    script.hold = true;
    let (addr, seen) = agent_host::start(script).await;
    let dir = tempfile::tempdir().unwrap();
    let lab = lab_for(addr, dir.path(), "idle_timeout_s = 1\n");
    let started = Instant::now();
    let (result, _, finished) = run_task(&lab, "plan").await;
    assert_eq!((result.status, result.exit_code), (Status::Failed, None));
    assert_eq!(result.reason.as_deref(), Some("no progress for 1 s"));
    assert_eq!(finished.reason.as_deref(), Some("no progress for 1 s"));
    // The mode line counted as progress; then only errors and keep-alives.
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.lock().unwrap().closed_by_daemon {
        assert!(Instant::now() < deadline, "the host never saw its stream closed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn stuck_lab(work: &Path, arg: &str) -> Lab {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/agent-stuck.sh");
    let lab = Lab::start_with(&format!(
        "[agent]\nargv = [\"{fixture}\", \"{arg}\"]\ncwd = \"{}\"\nplan_args = []\nbuild_args = []\nidle_timeout_s = 1\n",
        work.display()
    ));
    lab.grant(3, Duration::from_secs(600));
    lab
}

#[tokio::test]
async fn an_agent_that_only_retries_is_killed_at_the_idle_limit_and_fails_saying_why() {
    let _one = SERIAL.lock().await;
    let work = tempfile::tempdir().unwrap();
    let lab = stuck_lab(work.path(), "retry");
    let (result, output, finished) = run_task(&lab, "plan").await;
    assert!(output.contains("Reconnecting... 3/5"), "it retried for a while: {output}");
    assert_eq!((result.status, result.exit_code, result.cancelled_by), (Status::Failed, None, None));
    assert_eq!(result.reason.as_deref(), Some("no progress for 1 s"));
    assert_eq!((finished.status.as_deref(), finished.reason.as_deref()), (Some("failed"), Some("no progress for 1 s")));
    let pids: Vec<i32> = std::fs::read_to_string(work.path().join("agent.pids"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(survivors(&pids), Vec::<i32>::new(), "the agent's tree is gone");
}

#[tokio::test]
async fn claude_code_retrying_the_api_is_no_progress_either() {
    let _one = SERIAL.lock().await;
    let work = tempfile::tempdir().unwrap();
    let lab = stuck_lab(work.path(), "claude-retry");
    let (result, output, _) = run_task(&lab, "plan").await;
    assert!(output.contains("\"attempt\":3"), "it retried for a while: {output}");
    assert_eq!((result.status, result.reason.as_deref()), (Status::Failed, Some("no progress for 1 s")), "{output}");
}

#[tokio::test]
async fn an_agent_that_is_only_quiet_is_not_idle() {
    let _one = SERIAL.lock().await;
    let work = tempfile::tempdir().unwrap();
    let lab = stuck_lab(work.path(), "silent");
    let started = Instant::now();
    let (result, output, _) = run_task(&lab, "plan").await;
    assert!(started.elapsed() > Duration::from_millis(1500), "it was quiet past the 1 s limit");
    assert_eq!((result.status, result.exit_code, result.reason.as_deref()), (Status::Ok, Some(0), None), "{output}");
}

#[tokio::test]
async fn an_agent_that_keeps_making_progress_outlives_the_idle_limit() {
    let _one = SERIAL.lock().await;
    let work = tempfile::tempdir().unwrap();
    let lab = stuck_lab(work.path(), "progress");
    let started = Instant::now();
    let (result, output, _) = run_task(&lab, "plan").await;
    assert!(started.elapsed() > Duration::from_millis(1500), "it ran past the 1 s limit");
    assert_eq!((result.status, result.exit_code, result.reason.as_deref()), (Status::Ok, Some(0), None), "{output}");
}

#[tokio::test]
async fn a_missing_working_folder_is_agent_unavailable_naming_it_not_the_program() {
    let _one = SERIAL.lock().await;
    let gone = tempfile::tempdir().unwrap().path().join("no-such-project");
    let lab = stuck_lab(&gone, "progress");
    let (outcome, _) = lab.submit(lab.command("agent", &[("prompt", "hi")])).await;
    let denial = outcome.unwrap_err();
    assert_eq!(denial.code, support::protocol::DenyCode::AgentUnavailable);
    assert!(denial.message.contains(&format!("working folder {}", gone.display())), "{}", denial.message);
    assert!(denial.message.contains("[agent] cwd") && !denial.message.contains("not installed"), "{}", denial.message);
}

#[tokio::test]
async fn an_agent_killed_by_a_signal_fails_naming_the_signal() {
    let _one = SERIAL.lock().await;
    let work = tempfile::tempdir().unwrap();
    let lab = stuck_lab(work.path(), "signal");
    let (result, _, finished) = run_task(&lab, "plan").await;
    assert_eq!((result.status, result.exit_code), (Status::Failed, None));
    assert_eq!(result.reason.as_deref(), Some("killed by signal 9 (SIGKILL)"));
    assert_eq!(finished.reason.as_deref(), Some("killed by signal 9 (SIGKILL)"));
}
