//! A task whose processes loop fork → parent exits → child `setsid()`
//! (`tests/fixtures/walker.py`) is gone, every process of it, when a stop,
//! a revoke or an expiry ends the task, and when its leader exits: whether
//! the walk starts with the task or later. Checked by scanning `/proc` for
//! the walker's argv and for the task's marker, once the task is recorded
//! as ended.

mod common;

use std::path::Path;
use std::time::Duration;

use common::lab::{Lab, finish};
use support::{Status, StoppedBy};

/// Orphans re-parent to this process, the subreaper: one test at a time,
/// so no daemon's kill meets another test's walker.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const WALKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/walker.py");

fn policy() -> String {
    let mut text = String::new();
    for mode in ["stay", "late", "exit"] {
        text.push_str(&format!(
            "[[action]]\nname = \"walk-{mode}\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"a fork-setsid walker\"\n\
             argv = [\"{WALKER}\", \"{{ready}}\", \"{mode}\"]\ntimeout_s = 60\n\
             [action.params.ready]\npattern = \"^/[A-Za-z0-9_./-]+$\"\nmax_len = 512\ndescription = \"ready file\"\n\n"
        ));
    }
    text
}

/// Live processes whose argv holds `token` or whose environment holds the
/// marker of `task_id`.
pub fn left(token: &str, task_id: &str) -> Vec<i32> {
    let marker = format!("SUPPORTD_TASK={task_id}");
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if pid == me || !common::lab::alive(pid) {
            continue;
        }
        let read = |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
        let holds = |bytes: Vec<u8>, needle: &str| bytes.split(|b| *b == 0).any(|s| s == needle.as_bytes());
        if holds(read("cmdline"), token) || holds(read("environ"), &marker) {
            found.push(pid);
        }
    }
    found
}

/// Starts `walk-{mode}` and waits (at most 10 s) until the walk is 20 generations in.
async fn walking(lab: &Lab, mode: &str) -> (String, tokio::sync::mpsc::Receiver<support::DeviceFrame>) {
    let ready = lab.pidfile.clone();
    let (outcome, rx) = lab.submit(lab.command(&format!("walk-{mode}"), &[("ready", ready.to_str().unwrap())])).await;
    let task_id = outcome.expect("accepted");
    tokio::task::spawn_blocking(move || wait_for(&ready)).await.unwrap();
    (task_id, rx)
}

fn wait_for(file: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !file.exists() {
        assert!(std::time::Instant::now() < deadline, "the walker did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn token(lab: &Lab) -> String {
    lab.pidfile.to_str().unwrap().to_string()
}

/// How the task is ended.
#[derive(Clone, Copy, PartialEq)]
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
    let _watching = lab.watch();
    lab.grant(1, Duration::from_secs(if end == End::Expiry { 4 } else { 600 }));
    lab.daemon.consent_changed().await;
    let (task_id, mut rx) = walking(&lab, mode).await;
    let by = match end {
        End::Stop => lab.daemon.stop_task(&task_id, StoppedBy::Owner).await.expect("ended").cancelled_by,
        End::Revoke => {
            support::consent::remove(&lab.paths).unwrap();
            finish(&mut rx).await.0.cancelled_by
        }
        End::Expiry => finish(&mut rx).await.0.cancelled_by,
    };
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

/// The leader exits once the walks run: the sweep at its exit must catch them.
#[tokio::test]
async fn a_walk_left_by_an_exiting_leader_is_killed() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start_with(&policy());
    lab.grant(1, Duration::from_secs(600));
    let (task_id, mut rx) = walking(&lab, "exit").await;
    let (result, _) = finish(&mut rx).await;
    assert_eq!(result.status, Status::Ok);
    assert_eq!(left(&token(&lab), &task_id), Vec::<i32>::new(), "the walk outlived its task");
}
