//! Tiers 3 and 4 on a daemon inside the test process: the shell's tier,
//! a missing agent program, and the agent host backend (`[agent]
//! endpoint`) against a real HTTP server on loopback.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::lab::{Lab, finish, records};
use support::audit::Event;
use support::protocol::{DenyCode, DeviceFrame, Status, StoppedBy};

/// The test process is the daemon and the subreaper here: one test at a
/// time, so a task's sweep never meets another test's processes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn the_shell_needs_tier_4_and_runs_sh_c_at_it() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start();
    lab.grant(3, Duration::from_secs(600));
    let (outcome, _) = lab.submit(lab.command("shell", &[("cmd", "echo hi")])).await;
    assert_eq!(outcome.unwrap_err().code, DenyCode::TierInsufficient);
    lab.grant(4, Duration::from_secs(600));
    let (outcome, mut rx) = lab.submit(lab.command("shell", &[("cmd", "echo $((6 * 7)) | tr 4 x")])).await;
    outcome.expect("accepted");
    let (result, output) = finish(&mut rx).await;
    assert_eq!(result.status, Status::Ok);
    assert_eq!(output, "x2\n", "run by /bin/sh -c");
}

#[tokio::test]
async fn a_missing_agent_program_is_denied_naming_it_and_the_setting() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start_with("[agent]\nargv = [\"no-such-agent-cli\", \"--json\"]\nplan_args = []\nbuild_args = []\n");
    lab.grant(3, Duration::from_secs(600));
    let (outcome, _) = lab.submit(lab.command("agent", &[("prompt", "hi")])).await;
    let denial = outcome.unwrap_err();
    assert_eq!(denial.code, DenyCode::AgentUnavailable);
    assert!(denial.message.contains("`no-such-agent-cli`"), "{}", denial.message);
    assert!(denial.message.contains("[agent] argv"), "{}", denial.message);
    let recs = records(&lab.paths);
    let denied = recs.iter().find(|r| r.event == Event::ActionDenied).expect("audited");
    assert_eq!(denied.code.as_deref(), Some("AGENT_UNAVAILABLE"));
}

/// What the test agent host saw.
#[derive(Debug, Default)]
struct Seen {
    secret: Option<String>,
    host: Option<String>,
    body: Option<serde_json::Value>,
    /// The response body could no longer be sent: the request was aborted.
    aborted: bool,
}

/// An agent host on 127.0.0.1:0 that answers NDJSON lines and then keeps
/// the response open; `fail` answers 500 instead.
async fn agent_host(fail: bool) -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Seen>>) {
    use http_body_util::BodyExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let shared = seen.clone();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let seen = shared.clone();
            async move {
                let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(String::from);
                {
                    let mut s = seen.lock().unwrap();
                    s.secret = header("x-support-secret");
                    s.host = header("host");
                }
                let body = req.into_body().collect().await.unwrap().to_bytes();
                seen.lock().unwrap().body = serde_json::from_slice(&body).ok();
                if fail {
                    let resp = hyper::Response::builder()
                        .status(500)
                        .body(http_body_util::Either::Left(http_body_util::Full::new(bytes::Bytes::from(
                            "model overloaded",
                        ))))
                        .unwrap();
                    return Ok::<_, std::convert::Infallible>(resp);
                }
                let (tx, rx) =
                    tokio::sync::mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>>(4);
                tokio::spawn(async move {
                    let lines = [
                        r#"{"type":"text","text":"Reading the logs"}"#,
                        r#"{"type":"tool_use","name":"Read","input":{"file_path":"/var/log/cups/error_log"}}"#,
                    ];
                    for line in lines {
                        let _ = tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from(format!("{line}\n"))))).await;
                    }
                    // Keep the response open until the daemon drops it.
                    loop {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        if tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(b"\n")))).await.is_err() {
                            seen.lock().unwrap().aborted = true;
                            return;
                        }
                    }
                });
                let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
                Ok(hyper::Response::builder()
                    .header("content-type", "application/x-ndjson")
                    .body(http_body_util::Either::Right(body))
                    .unwrap())
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    });
    (addr, seen)
}

/// An mpsc receiver as a stream of body frames.
fn tokio_stream_from<T>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

fn http_policy(addr: std::net::SocketAddr, secret_file: &Path) -> String {
    format!(
        "[agent]\nendpoint = \"http://127.0.0.1:{}/v1/agent/task\"\nsecret_file = \"{}\"\n",
        addr.port(),
        secret_file.display()
    )
}

fn secret_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join("agent-host.secret");
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
    std::io::Write::write_all(&mut f, b"s3cret-token\n").unwrap();
    path
}

#[tokio::test]
async fn the_agent_host_gets_the_secret_streams_ndjson_and_a_stop_aborts_it() {
    let _one = SERIAL.lock().await;
    let (addr, seen) = agent_host(false).await;
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::start_with(&http_policy(addr, &secret_file(dir.path())));
    lab.grant(3, Duration::from_secs(600));
    let (outcome, mut rx) =
        lab.submit(lab.command("agent", &[("prompt", "why does the printer jam?"), ("mode", "build")])).await;
    let task_id = outcome.expect("accepted");
    // The output arrives while the request is open.
    let mut output = String::new();
    while !output.contains("error_log") {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap() {
            DeviceFrame::Output { data, .. } => output.push_str(&data),
            DeviceFrame::Accepted { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.secret.as_deref(), Some("s3cret-token"), "X-Support-Secret, trimmed");
        assert_eq!(s.host.as_deref(), Some(format!("127.0.0.1:{}", addr.port()).as_str()));
        let body = s.body.as_ref().expect("a JSON body");
        assert_eq!(body["task_id"], task_id.as_str());
        assert_eq!(body["prompt"], "why does the printer jam?");
        assert_eq!(body["mode"], "build");
    }
    let detail = lab.daemon.task_detail(&task_id).unwrap();
    let lines = serde_json::to_string(&detail.transcript.lines).unwrap();
    assert!(lines.contains("Read: /var/log/cups/error_log"), "{lines}");

    let result = lab.daemon.stop_task(&task_id, StoppedBy::Owner).await.expect("stopped");
    assert_eq!((result.status, result.cancelled_by), (Status::Cancelled, Some(StoppedBy::Owner)));
    let (frame, _) = finish(&mut rx).await;
    assert_eq!(frame.cancelled_by, Some(StoppedBy::Owner));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !seen.lock().unwrap().aborted {
        assert!(Instant::now() < deadline, "the agent host never saw the request end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recs = records(&lab.paths);
    let stopped = recs.iter().find(|r| r.event == Event::TaskStopped).expect("task.stopped");
    assert_eq!(stopped.transcript_sha256.as_deref(), detail_digest(&lab, &task_id).as_deref());
}

fn detail_digest(lab: &Lab, task_id: &str) -> Option<String> {
    Some(lab.daemon.task_detail(task_id)?.transcript.sha256)
}

#[tokio::test]
async fn an_agent_host_error_fails_the_task_with_its_answer() {
    let _one = SERIAL.lock().await;
    let (addr, _seen) = agent_host(true).await;
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::start_with(&http_policy(addr, &secret_file(dir.path())));
    lab.grant(3, Duration::from_secs(600));
    let (outcome, mut rx) = lab.submit(lab.command("agent", &[("prompt", "hi")])).await;
    outcome.expect("accepted");
    let (result, output) = finish(&mut rx).await;
    assert_eq!(result.status, Status::Failed);
    assert!(output.contains("answered 500 Internal Server Error: model overloaded"), "{output}");
    assert_eq!(result.reason.as_deref(), Some("the agent host answered 500 Internal Server Error: model overloaded"));
}

#[tokio::test]
async fn a_long_prompt_runs_and_the_record_keeps_its_digest() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/agent.sh");
    let lab = Lab::start_with(&format!(
        "[agent]\nargv = [\"{fixture}\", \"0\"]\ncwd = \"{}\"\nplan_args = []\nbuild_args = []\n",
        dir.path().display()
    ));
    lab.grant(3, Duration::from_secs(600));
    // 64 KiB, the default max_prompt_bytes: more than an audit record may hold.
    let prompt = format!("please finish {}", "é".repeat((65536 - 14) / 2));
    assert_eq!(prompt.len(), 65536);
    let (outcome, mut rx) = lab.submit(lab.command("agent", &[("prompt", &prompt)])).await;
    outcome.expect("accepted");
    let (result, output) = finish(&mut rx).await;
    assert_eq!(result.status, Status::Ok, "{output}");
    let recs = records(&lab.paths);
    let started = recs.iter().find(|r| r.event == Event::ActionStarted).expect("action.started");
    let kept = &started.params.as_ref().unwrap()["prompt"];
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, prompt.as_bytes()));
    assert!(
        kept.starts_with("please finish é") && kept.ends_with(&format!("[65536 bytes, sha256 {digest}]")),
        "{kept}"
    );
    assert!(support::audit::verify(&lab.paths).is_ok());
}
