//! With a cgroup v2 delegated to the daemon, each task runs in a child
//! cgroup of its own, and a stop empties and removes it. Needs a writable
//! cgroup2 mount (root here): without one the test says so and checks nothing.

mod common;

use std::time::Duration;

use common::lab::{Lab, alive};
use support::StoppedBy;

fn cgroup2_mount() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right.starts_with("cgroup2 ").then(|| left.split_whitespace().nth(4).map(str::to_string))?
    })
}

#[tokio::test]
async fn each_task_gets_its_own_cgroup_and_a_stop_empties_it() {
    let Some(mount) = cgroup2_mount() else {
        eprintln!("no cgroup2 mount: skipped");
        return;
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim().to_string();
    let parent = std::path::Path::new(&mount).join(own.trim_start_matches('/'));
    // A cgroup "delegated" to this test process, as systemd's Delegate=yes would.
    let delegated = parent.join(format!("support-test-{}", std::process::id()));
    if std::fs::create_dir(&delegated).is_err() {
        eprintln!("cgroup2 at {mount} is not writable here: skipped");
        return;
    }
    std::fs::write(delegated.join("cgroup.procs"), std::process::id().to_string()).unwrap();
    let detected = support::daemon::tree::Delegated::detect().expect("the delegated cgroup is found");
    assert_eq!(detected.dir(), delegated.as_path());

    let lab = Lab::start();
    lab.grant(1, Duration::from_secs(600));
    let (outcome, _rx) = lab.submit(lab.tree("tree")).await;
    let task_id = outcome.expect("accepted");
    let pids = lab.pids(10).await;
    let task_cgroup = delegated.join(format!("support-{task_id}"));
    let leader_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", pids[0])).unwrap();
    assert!(leader_cgroup.contains(&format!("support-{task_id}")), "{leader_cgroup}");
    let result = lab.daemon.stop_task(&task_id, StoppedBy::Owner).await.unwrap();
    assert_eq!(result.cancelled_by, Some(StoppedBy::Owner));
    assert_eq!(pids.iter().copied().filter(|p| alive(*p)).collect::<Vec<_>>(), Vec::<i32>::new());
    assert!(!task_cgroup.exists(), "the task's cgroup is removed");

    // Put this process back and remove the test cgroup.
    std::fs::write(parent.join("cgroup.procs"), std::process::id().to_string()).unwrap();
    std::fs::remove_dir(&delegated).unwrap();
}
