//! The daemon on real processes: signed commands in through the library
//! API, frames and audit records out, and no process of a task's tree left
//! after stop, timeout, revoke, expiry or a lower tier.

mod common;

use std::time::Duration;

use common::lab::{Lab, finish, records, survivors};
use support::audit::Event;
use support::{DenyCode, Status, StoppedBy};

/// Every test here runs fixtures that re-parent to this process, which is
/// the subreaper: one at a time, so a sweep never meets another test's tree.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn owner_stop_kills_the_whole_tree_and_is_recorded() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start();
    lab.grant(1, Duration::from_secs(600));
    let (outcome, mut rx) = lab.submit(lab.tree("tree")).await;
    let task_id = outcome.expect("accepted");
    let pids = lab.pids(10).await;
    assert_eq!(survivors(&pids).len(), 10, "the whole fixture runs");
    assert_eq!(lab.daemon.tasks().len(), 1);
    let result = lab.daemon.stop_task(&task_id, StoppedBy::Owner).await.expect("stopped");
    assert_eq!(result.status, Status::Cancelled);
    assert_eq!(result.cancelled_by, Some(StoppedBy::Owner));
    assert_eq!(survivors(&pids), Vec::<i32>::new(), "survivors of the tree");
    let (frame, output) = finish(&mut rx).await;
    assert_eq!(frame.cancelled_by, Some(StoppedBy::Owner));
    assert!(output.contains("ready"), "{output}");
    let recs = records(&lab.paths);
    let stopped = recs.iter().find(|r| r.event == Event::TaskStopped).expect("task.stopped");
    assert_eq!(stopped.by.as_deref(), Some("owner"));
    assert_eq!(stopped.task_id.as_deref(), Some(task_id.as_str()));
    let finished = recs.iter().find(|r| r.event == Event::ActionFinished).expect("action.finished");
    assert_eq!(finished.status.as_deref(), Some("cancelled"));
    let started = recs.iter().position(|r| r.event == Event::ActionStarted).unwrap();
    assert!(started < recs.iter().position(|r| r.event == Event::TaskStopped).unwrap());
    assert!(lab.daemon.tasks().is_empty());
    assert!(support::audit::verify(&lab.paths).is_ok());
}

#[tokio::test]
async fn timeout_terms_then_kills_the_tree() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start();
    lab.grant(1, Duration::from_secs(600));
    let (outcome, mut rx) = lab.submit(lab.tree("tree-slow")).await;
    outcome.expect("accepted");
    let pids = lab.pids(10).await;
    let (result, _) = finish(&mut rx).await;
    assert_eq!(result.status, Status::Timeout);
    assert_eq!(result.exit_code, None);
    // 1 s timeout, then SIGTERM, which every process ignores, then SIGKILL 3 s later.
    assert!(result.duration_ms >= 4000, "{}", result.duration_ms);
    assert_eq!(survivors(&pids), Vec::<i32>::new());
}

#[tokio::test]
async fn revoke_seen_through_inotify_kills_the_tree() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start();
    let _watching = lab.watch();
    lab.grant(1, Duration::from_secs(600));
    let (outcome, mut rx) = lab.submit(lab.tree("tree")).await;
    outcome.expect("accepted");
    let pids = lab.pids(10).await;
    // What `support revoke` does, without telling the daemon: the watcher must see it.
    support::consent::remove(&lab.paths).unwrap();
    let (result, _) = finish(&mut rx).await;
    assert_eq!(result.status, Status::Cancelled);
    assert_eq!(result.cancelled_by, Some(StoppedBy::Revoke));
    assert_eq!(survivors(&pids), Vec::<i32>::new());
    let by: Vec<_> = records(&lab.paths).into_iter().filter(|r| r.event == Event::TaskStopped).map(|r| r.by).collect();
    assert_eq!(by, vec![Some("revoke".to_string())]);
}

#[tokio::test]
async fn expiry_kills_the_tree_and_is_recorded_once() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start();
    let _watching = lab.watch();
    let g = lab.grant(1, Duration::from_secs(2));
    lab.daemon.consent_changed().await;
    let (outcome, mut rx) = lab.submit(lab.tree("tree")).await;
    outcome.expect("accepted");
    let pids = lab.pids(10).await;
    let (result, _) = finish(&mut rx).await;
    assert_eq!(result.cancelled_by, Some(StoppedBy::Expiry));
    assert_eq!(survivors(&pids), Vec::<i32>::new());
    // Later looks at the same expired grant write nothing more.
    lab.daemon.consent_changed().await;
    lab.daemon.consent_changed().await;
    let expired: Vec<_> = records(&lab.paths).into_iter().filter(|r| r.event == Event::ConsentExpired).collect();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0].grant_id.as_deref(), Some(g.grant_id.as_str()));
}

#[tokio::test]
async fn a_lower_grant_stops_the_tasks_above_it_only() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start();
    lab.grant(2, Duration::from_secs(600));
    let (outcome, mut fix_rx) = lab.submit(lab.tree("tree-fix")).await;
    outcome.expect("tier 2 accepted");
    let pids = lab.pids(10).await;
    // A tier-1 tree runs beside it, and must outlive the lowering.
    let low_file = lab.home.path.join("low-pids");
    let (outcome, mut low_rx) = lab.submit(lab.command("tree", &[("pidfile", low_file.to_str().unwrap())])).await;
    let low_task = outcome.expect("tier 1 accepted");
    let low = tokio::task::spawn_blocking(move || common::wait_pids(&low_file, 10)).await.unwrap();
    lab.grant(1, Duration::from_secs(600));
    lab.daemon.consent_changed().await;
    let (result, _) = finish(&mut fix_rx).await;
    assert_eq!(result.cancelled_by, Some(StoppedBy::TierLowered));
    assert_eq!(survivors(&pids), Vec::<i32>::new());
    assert_eq!(survivors(&low).len(), 10, "the tier-1 tree still runs");
    assert_eq!(
        lab.daemon.tasks().iter().map(|t| t.task_id.clone()).collect::<Vec<_>>(),
        std::slice::from_ref(&low_task)
    );
    lab.daemon.stop_task(&low_task, StoppedBy::Owner).await.expect("stopped");
    let (low_result, _) = finish(&mut low_rx).await;
    assert_eq!(low_result.cancelled_by, Some(StoppedBy::Owner));
}

#[tokio::test]
async fn denials_are_sent_audited_and_spawn_nothing() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start();
    let mark = lab.home.path.join("marked");
    let mark_cmd = || lab.command("mark", &[("pidfile", mark.to_str().unwrap())]);
    let (outcome, mut rx) = lab.submit(mark_cmd()).await;
    assert_eq!(outcome.unwrap_err().code, DenyCode::NoConsent);
    assert!(matches!(rx.recv().await, Some(support::DeviceFrame::Denied { code: DenyCode::NoConsent, .. })));
    lab.grant(1, Duration::from_secs(600));
    let run = lab.tree("tree-fix");
    let (outcome, _) = lab.submit(run.clone()).await;
    assert_eq!(outcome.unwrap_err().code, DenyCode::TierInsufficient);
    let (outcome, _) = lab.submit(run).await;
    assert_eq!(outcome.unwrap_err().code, DenyCode::Replay, "the same frame again");
    assert!(!mark.exists() && !lab.pidfile.exists(), "nothing ran");
    let codes: Vec<_> =
        records(&lab.paths).into_iter().filter(|r| r.event == Event::ActionDenied).filter_map(|r| r.code).collect();
    assert_eq!(codes, ["NO_CONSENT", "TIER_INSUFFICIENT", "REPLAY"]);
}

#[tokio::test]
async fn an_unwritable_audit_log_denies_and_spawns_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let _one = SERIAL.lock().await;
    let lab = Lab::start();
    lab.grant(1, Duration::from_secs(600));
    std::fs::set_permissions(lab.paths.audit(), std::fs::Permissions::from_mode(0o400)).unwrap();
    let (outcome, mut rx) = lab.submit(lab.tree("tree")).await;
    let denial = outcome.unwrap_err();
    assert_eq!(denial.code, DenyCode::AuditUnavailable, "{denial:?}");
    assert!(denial.message.contains("audit"), "{}", denial.message);
    assert!(matches!(rx.recv().await, Some(support::DeviceFrame::Denied { code: DenyCode::AuditUnavailable, .. })));
    assert!(!lab.pidfile.exists(), "the fixture must not have started");
    assert!(lab.daemon.tasks().is_empty());
}

#[tokio::test]
async fn environment_is_reduced_to_the_allowlist() {
    let env = support::daemon::exec::environment(
        &["TZ".to_string()],
        [
            ("PATH", "/bin"),
            ("HOME", "/h"),
            ("TZ", "UTC"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("SUPPORT_HOME", "/secret"),
            ("SUPPORT_OPERATOR_KEY", "k"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
        "t-1",
    );
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["PATH", "HOME", "TZ", "SUPPORTD_TASK"]);
}

#[tokio::test]
async fn a_second_daemon_on_the_same_home_is_refused() {
    let lab = Lab::start();
    let err = support::Daemon::start(&lab.paths, Default::default()).unwrap_err();
    assert!(matches!(err, support::DaemonError::AlreadyRunning { .. }), "{err}");
    assert!(err.to_string().contains("already running"), "{err}");
}
