//! Grants as the daemon in this process enforces them: a budget under a
//! race, a command replayed after a restart, a grant dated in the future,
//! a grant edited under the same id. No binary runs here (the daemon is
//! this process's subreaper and would take its children for a task's).

mod common;

use std::time::Duration;

use chrono::Utc;
use common::lab::{Lab, finish, records};
use support::audit::Event;
use support::consent::{self, Grant, Tier};
use support::protocol::DenyCode;

/// Writes `g` narrowed to at most `max` actions.
fn with_budget(lab: &Lab, max: u32) -> Grant {
    let g = Grant::new(Tier::DIAGNOSTICS, Duration::from_secs(600), None, Utc::now())
        .unwrap()
        .scoped(None, None, Some(max))
        .unwrap();
    consent::write(&lab.paths, &g).unwrap();
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_commands_racing_for_the_last_action_start_one() {
    let lab = Lab::start();
    for round in 0..20 {
        with_budget(&lab, 1);
        let mark = |n: usize| {
            lab.command("mark", &[("pidfile", lab.home.path.join(format!("m{round}-{n}")).to_str().unwrap())])
        };
        let ((a, mut rx_a), (b, mut rx_b)) = tokio::join!(lab.submit(mark(1)), lab.submit(mark(2)));
        let codes: Vec<Option<DenyCode>> = [&a, &b].iter().map(|o| o.as_ref().err().map(|d| d.code)).collect();
        assert!(codes.contains(&None) && codes.contains(&Some(DenyCode::BudgetExhausted)), "round {round}: {codes:?}");
        for (o, rx) in [(&a, &mut rx_a), (&b, &mut rx_b)] {
            if o.is_ok() {
                finish(rx).await;
            }
        }
    }
}

/// Starts a daemon on `paths` once the last one's lock is released (its
/// task drivers may hold it a moment after their result).
async fn restart(paths: &support::Paths) -> support::Daemon {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match support::Daemon::start(paths, Default::default()) {
            Ok(d) => return d,
            Err(support::DaemonError::AlreadyRunning { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("restart: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_issued_ahead_of_the_clock_runs_once_across_a_restart() {
    let Lab { home, paths, daemon, operator, .. } = Lab::start();
    let ran = home.path.join("ran");
    let cmd = format!("echo once >> {}", ran.display());
    let params: std::collections::BTreeMap<_, _> = [("cmd".to_string(), cmd)].into();
    // Within the freshness window, ahead of the device's clock: the restart rule alone lets it through.
    let issued = Utc::now() + chrono::TimeDelta::seconds(20);
    let sign = |id: &str| support::Run::signed(&operator, id, daemon.device_id(), "shell", params.clone(), issued);
    let (early, run) = (sign("r-early"), sign("r-replayed"));
    let (tx, _rx) = tokio::sync::mpsc::channel(1024);
    // Sent before the owner granted anything: refused, and its nonce used up all the same.
    assert_eq!(daemon.submit(early.clone(), tx.clone()).await.unwrap_err().code, DenyCode::NoConsent);
    common::lab::grant(&paths, 4, Duration::from_secs(600));
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    daemon.submit(run.clone(), tx).await.expect("the first time it runs");
    finish(&mut rx).await;
    daemon.shutdown().await;
    drop(daemon);

    let daemon = restart(&paths).await;
    let nonce = run.nonce.clone();
    for replayed in [run, early] {
        let (tx, _rx) = tokio::sync::mpsc::channel(1024);
        let again = daemon.submit(replayed, tx).await.expect_err("the replay is refused");
        assert_eq!(again.code, DenyCode::Replay, "{again:?}");
    }
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "once\n");
    let all = records(&paths);
    let started: Vec<_> = all.iter().filter(|r| r.event == Event::ActionStarted).collect();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].nonce.as_deref(), Some(nonce.as_str()));
    assert!(started[0].issued_at.is_some(), "{:?}", started[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_dated_in_the_future_gets_no_extra_time() {
    let lab = Lab::start();
    let now = Utc::now();
    let mut g = Grant::new(Tier::DIAGNOSTICS, Duration::from_secs(60), None, now).unwrap();
    // What the review found: granted_at ahead (4 min was allowed), a full 8 h after it.
    g.granted_at = now + chrono::TimeDelta::seconds(30);
    g.expires_at = g.granted_at + chrono::TimeDelta::minutes(480);
    consent::write(&lab.paths, &g).unwrap();
    assert!(consent::read(&lab.paths, Utc::now()).live().is_none());
    lab.daemon.consent_changed().await;
    assert!(!lab.daemon.status_view().consent.enabled);
    let (denied, _) = lab.submit(lab.command("memory", &[])).await;
    assert_eq!(denied.unwrap_err().code, DenyCode::NoConsent);
    // Slightly ahead and well inside 8 h: live, and never more than 480 min left.
    g.granted_at = now + chrono::TimeDelta::seconds(30);
    g.expires_at = g.granted_at + chrono::TimeDelta::minutes(60);
    consent::write(&lab.paths, &g).unwrap();
    lab.daemon.consent_changed().await;
    assert!(lab.daemon.status_view().consent.enabled);
    let live = consent::read(&lab.paths, Utc::now());
    assert!(live.live().is_some_and(|g| g.expires_at <= Utc::now() + chrono::TimeDelta::minutes(480)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_edited_under_the_same_id_reads_the_same_to_daemon_and_status() {
    let lab = Lab::start();
    let mut g = lab.grant(1, Duration::from_secs(1));
    lab.daemon.consent_changed().await;
    assert!(lab.daemon.status_view().consent.enabled);
    // Edited by hand: ten minutes more, same grant id.
    let first_end = g.expires_at;
    g.expires_at = Utc::now() + chrono::TimeDelta::minutes(10);
    consent::write(&lab.paths, &g).unwrap();
    let wait = (first_end - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(200);
    tokio::time::sleep(wait).await;
    lab.daemon.consent_changed().await;
    let file = consent::read(&lab.paths, Utc::now());
    let daemon = lab.daemon.status_view().consent;
    assert!(file.live().is_some(), "{file:?}");
    assert!(daemon.enabled, "the file says ON, so must the daemon: {daemon:?}");
    let shown = chrono::DateTime::parse_from_rfc3339(daemon.expires_at.as_deref().unwrap()).unwrap();
    assert!((shown.with_timezone(&Utc) - g.expires_at).num_milliseconds().abs() < 1000, "{daemon:?}");
    let (ran, mut rx) = lab.submit(lab.command("memory", &[])).await;
    ran.expect("runs under the grant as the file has it");
    finish(&mut rx).await;
    // Cut short by hand: both say off.
    g.expires_at = Utc::now() - chrono::TimeDelta::seconds(1);
    g.granted_at = g.expires_at - chrono::TimeDelta::minutes(1);
    consent::write(&lab.paths, &g).unwrap();
    lab.daemon.consent_changed().await;
    assert!(consent::read(&lab.paths, Utc::now()).live().is_none());
    assert!(!lab.daemon.status_view().consent.enabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_whose_start_cannot_be_recorded_does_not_spend_the_budget() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::start();
    with_budget(&lab, 1);
    let mark = lab.home.path.join("marked");
    let mark_cmd = || lab.command("mark", &[("pidfile", mark.to_str().unwrap())]);
    std::fs::set_permissions(lab.paths.audit(), std::fs::Permissions::from_mode(0o400)).unwrap();
    let (outcome, _) = lab.submit(mark_cmd()).await;
    assert_eq!(outcome.unwrap_err().code, DenyCode::AuditUnavailable);
    std::fs::set_permissions(lab.paths.audit(), std::fs::Permissions::from_mode(0o600)).unwrap();
    let (outcome, mut rx) = lab.submit(mark_cmd()).await;
    outcome.expect("the one action of the budget is still there");
    finish(&mut rx).await;
    assert!(mark.exists());
    let (outcome, _) = lab.submit(mark_cmd()).await;
    assert_eq!(outcome.unwrap_err().code, DenyCode::BudgetExhausted);
    assert_eq!(lab.daemon.status_view().consent.scope.and_then(|s| s.actions_used), Some(1));
}
