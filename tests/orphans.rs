//! Which task an orphan re-parented to the daemon belongs to, by its
//! marker, and the rule failing closed: an orphan whose marker names no
//! running task is killed with the task that is stopped; one that names
//! another running task is left to that task, whose own stop kills it.

mod common;

use std::time::Duration;

use common::lab::{Lab, alive};
use support::StoppedBy;

/// Orphans re-parent to this process, the subreaper: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn policy() -> String {
    let forge = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/forge.sh");
    format!(
        "[[action]]\nname = \"forge\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"an orphan with a forged marker\"\n\
         argv = [\"{forge}\", \"{{file}}\", \"{{marker}}\"]\ntimeout_s = 60\n\
         [action.params.file]\npattern = \"^/[A-Za-z0-9_./-]+$\"\nmax_len = 512\ndescription = \"pid file\"\n\
         [action.params.marker]\npattern = \"^t-[0-9a-f]{{16}}$\"\nmax_len = 18\ndescription = \"the forged marker\"\n"
    )
}

/// Starts `forge` with `marker`; returns its task and the orphan's pid.
async fn forged(lab: &Lab, marker: &str) -> (String, i32) {
    let file = lab.home.path.join("forged");
    let run = lab.command("forge", &[("file", file.to_str().unwrap()), ("marker", marker)]);
    let (outcome, _rx) = lab.submit(run).await;
    let task_id = outcome.expect("accepted");
    let pid = tokio::task::spawn_blocking(move || common::wait_pids(&file, 1)).await.unwrap()[0];
    (task_id, pid)
}

#[tokio::test]
async fn an_orphan_whose_marker_names_no_running_task_dies_with_the_task() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start_with(&policy());
    lab.grant(1, Duration::from_secs(600));
    let (task_id, orphan) = forged(&lab, "t-ffffffffffffffff").await;
    assert!(alive(orphan));
    lab.daemon.stop_task(&task_id, StoppedBy::Owner).await.expect("ended");
    assert!(!alive(orphan), "an orphan with a marker of no running task outlived the stop");
}

#[tokio::test]
async fn an_orphan_that_names_another_running_task_dies_with_that_task() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start_with(&policy());
    lab.grant(1, Duration::from_secs(600));
    let (outcome, _rx) = lab.submit(lab.tree("tree")).await;
    let other = outcome.expect("accepted");
    lab.pids(10).await;
    let (task_id, orphan) = forged(&lab, &other).await;
    lab.daemon.stop_task(&task_id, StoppedBy::Owner).await.expect("ended");
    // The known gap (SECURITY.md): it is left to the task it names...
    assert!(alive(orphan), "the other task's orphan was killed");
    // ...whose stop kills it.
    lab.daemon.stop_task(&other, StoppedBy::Owner).await.expect("ended");
    assert!(!alive(orphan), "an orphan outlived the task its marker names");
}
