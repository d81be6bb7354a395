//! A task whose processes loop fork → parent exits → child `setsid()`
//! (`tests/fixtures/walker.py`) is gone, every process of it, when a stop,
//! a revoke or an expiry ends the task, and when its leader exits: whether
//! the walk starts with the task or later. Checked by scanning `/proc` for
//! the walker's argv and for the task's marker, once the task is recorded
//! as ended.

mod common;

use std::time::Duration;

use common::lab::{Lab, finish};
use common::walker::{left, policy, token, walking};
use support::{Status, StoppedBy};

/// Orphans re-parent to this process, the subreaper: one test at a time,
/// so no daemon's kill meets another test's walker.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The longest a task may take to end after a stop, revoke or expiry here.
const KILL_BOUND: Duration = Duration::from_secs(3);

/// How the task is ended.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    Stop,
    Revoke,
    Expiry,
}

/// Runs `walk-{mode}`, ends it as `end` says once the walks run, and
/// checks that nothing of it is left once its end is on record.
async fn ended_leaves_nothing(mode: &str, end: End) {
    let _one = SERIAL.lock().await;
    let lab = Lab::start_with(&policy());
    // No consent watcher: the daemon is told, as `support revoke` tells it
    // and as the watcher's timer does at expiry. So the walk's zombies are
    // not reaped as it goes (the watcher reaps at each SIGCHLD), and make
    // every /proc scan long, as a busy machine's many processes would.
    let grant = lab.grant(1, Duration::from_secs(if end == End::Expiry { 5 } else { 600 }));
    lab.daemon.consent_changed().await;
    let (task_id, mut rx) = walking(&lab, mode).await;
    let mut t0 = std::time::Instant::now();
    let by = match end {
        End::Stop => lab.daemon.stop_task(&task_id, StoppedBy::Owner).await.expect("ended").cancelled_by,
        End::Revoke => {
            support::consent::remove(&lab.paths).unwrap();
            lab.daemon.consent_changed().await;
            finish(&mut rx).await.0.cancelled_by
        }
        End::Expiry => {
            let wait = (grant.expires_at - chrono::Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait + Duration::from_millis(20)).await;
            t0 = std::time::Instant::now();
            lab.daemon.consent_changed().await;
            finish(&mut rx).await.0.cancelled_by
        }
    };
    // DESIGN's bound is 100 ms at p99; this leaves room for a loaded machine.
    let took = t0.elapsed();
    eprintln!("walk-{mode}, {end:?}: the task ended {took:?} after");
    assert!(took < KILL_BOUND, "the task ended {took:?} after the {end:?}");
    let want = match end {
        End::Stop => StoppedBy::Owner,
        End::Revoke => StoppedBy::Revoke,
        End::Expiry => StoppedBy::Expiry,
    };
    assert_eq!(by, Some(want));
    assert_eq!(left(&token(&lab), &task_id), Vec::<i32>::new(), "the walker outlived the {want:?}");
}

#[tokio::test]
async fn a_stop_kills_a_walker_started_with_the_task() {
    ended_leaves_nothing("stay", End::Stop).await;
}

#[tokio::test]
async fn a_stop_kills_a_walker_started_late() {
    ended_leaves_nothing("late", End::Stop).await;
}

#[tokio::test]
async fn a_revoke_kills_a_walker() {
    ended_leaves_nothing("late", End::Revoke).await;
}

#[tokio::test]
async fn an_expiry_kills_a_walker() {
    ended_leaves_nothing("stay", End::Expiry).await;
}

/// A process of the task sends SIGCONT to all of it, over and over: what
/// the kill stops must be stopped again, and the kill must still end.
#[tokio::test]
async fn a_stop_kills_a_walker_whose_helper_resumes_it() {
    ended_leaves_nothing("cont", End::Stop).await;
}

/// The leader exits once the walks run: the sweep at its exit must catch them.
#[tokio::test]
async fn a_walk_left_by_an_exiting_leader_is_killed() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start_with(&policy());
    lab.grant(1, Duration::from_secs(600));
    let (task_id, mut rx) = walking(&lab, "exit").await;
    let t0 = std::time::Instant::now();
    let (result, _) = finish(&mut rx).await;
    assert_eq!(result.status, Status::Ok);
    assert!(t0.elapsed() < KILL_BOUND, "the task ended {:?} after its walks began", t0.elapsed());
    assert_eq!(left(&token(&lab), &task_id), Vec::<i32>::new(), "the walk outlived its task");
}
