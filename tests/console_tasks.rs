//! The owner's console with a real task: an in-process daemon (this test
//! process is the subreaper of the task's tree, so nothing else runs in
//! this binary), its console on an ephemeral port, the task's line live
//! on the event stream, and Stop through the console.

mod common;

use std::time::Duration;

use common::console::Session;
use common::lab::{Lab, finish, records, survivors};
use support::audit::Event;
use support::{Status, StoppedBy};

/// The whole daemon in this process (the subreaper of its tasks' trees),
/// with its console on an ephemeral port.
struct InProcess {
    lab: Lab,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn in_process() -> InProcess {
    let lab = Lab::start();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let serving = support::daemon::serve_console(listener, lab.daemon.clone(), stop_rx);
    // Served from the call, before the future is first polled: a login
    // asked for at once is not refused as "not served" (it raced before).
    assert!(lab.daemon.console_login().is_some(), "the console's port is known from the call");
    tokio::spawn(serving);
    InProcess { lab, _stop: stop }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_streams_a_task_s_lines_and_stops_its_whole_tree() {
    let p = in_process().await;
    let lab = &p.lab;
    lab.grant(1, Duration::from_secs(600));
    lab.daemon.consent_changed().await;
    let url = lab.daemon.console_login().expect("the console is served").url;
    let session = tokio::task::spawn_blocking(move || Session::login(&url)).await.unwrap();
    let session = std::sync::Arc::new(session);
    // The stream is open before the task starts: its first line comes live.
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    let watching = {
        let s = session.clone();
        tokio::task::spawn_blocking(move || {
            s.events(|stream| {
                let first = stream.next().expect("a first event");
                let _ = opened_tx.send(first);
                let tasks = stream
                    .until(&|name, data| name == "tasks" && data["tasks"].as_array().is_some_and(|t| !t.is_empty()));
                let line = stream
                    .until(&|name, data| name == "line" && data["text"].as_str().is_some_and(|t| t.contains("ready")));
                (tasks, line)
            })
        })
    };
    let (name, first) = opened_rx.await.unwrap();
    assert_eq!(name, "status");
    assert_eq!(first["consent"]["tier"], 1);
    let (outcome, mut rx) = lab.submit(lab.tree("tree")).await;
    let task_id = outcome.expect("accepted");
    let pids = lab.pids(10).await;
    let (tasks, line) = tokio::time::timeout(Duration::from_secs(30), watching).await.unwrap().unwrap();
    assert_eq!(tasks["tasks"][0]["task_id"], task_id.as_str());
    assert_eq!(tasks["tasks"][0]["operator"], "alice");
    assert_eq!(line["task_id"], task_id.as_str());
    assert_eq!(line["label"], "", "raw stdout has no label, as in `support watch`");
    // Stop, through the console.
    let path = format!("/console/api/tasks/{task_id}/stop");
    let s = session.clone();
    let stopped = tokio::task::spawn_blocking(move || s.post(&path, "{}")).await.unwrap();
    assert_eq!(stopped.status, 200, "{stopped:?}");
    assert_eq!(stopped.json()["result"]["status"], "cancelled");
    assert_eq!(survivors(&pids), Vec::<i32>::new(), "the whole tree is gone");
    let (result, _) = finish(&mut rx).await;
    assert_eq!(result.status, Status::Cancelled);
    assert_eq!(result.cancelled_by, Some(StoppedBy::Owner), "the operator is told the owner stopped it");
    let stop = records(&lab.paths).into_iter().find(|r| r.event == Event::TaskStopped).expect("task.stopped");
    assert_eq!(stop.by.as_deref(), Some("owner"));
    assert_eq!(stop.via.as_deref(), Some("console"));
    assert_eq!(stop.task_id.as_deref(), Some(task_id.as_str()));
    assert!(support::audit::verify(&lab.paths).is_ok(), "via is in the MAC'd bytes and the chain holds");
    let s = session.clone();
    let gone =
        tokio::task::spawn_blocking(move || s.post("/console/api/tasks/t-0000000000000000/stop", "{}")).await.unwrap();
    assert_eq!(gone.status, 404);

    // A task that reads the secret and asks the control API for a login
    // itself (no `support console` to refuse it first) is refused by the
    // daemon: 403, `console.refused`, no link.
    let control = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = control.local_addr().unwrap().port();
    let secret = support::daemon::ensure_secret(&lab.paths).unwrap();
    let (_stop_control, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(support::daemon::serve_control(control, None, lab.daemon.clone(), secret, stop_rx));
    lab.grant(4, Duration::from_secs(600));
    lab.daemon.consent_changed().await;
    let secret_file = lab.paths.secret();
    let cmd = format!(
        "curl -sS -X POST -H \"Authorization: Bearer $(cat '{}')\" -w ' status=%{{http_code}}' http://127.0.0.1:{port}/v1/console/login",
        secret_file.display()
    );
    let (outcome, mut rx) = lab.submit(lab.command("shell", &[("cmd", &cmd)])).await;
    outcome.expect("the shell command is accepted");
    let (_, output) = finish(&mut rx).await;
    assert!(output.contains("status=403"), "{output}");
    assert!(!output.contains("token"), "no login link for a task: {output}");
    let refused = records(&lab.paths).into_iter().filter(|r| r.event == Event::ConsoleRefused).collect::<Vec<_>>();
    assert_eq!(refused.len(), 1, "{refused:?}");
}
