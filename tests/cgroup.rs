//! With a cgroup v2 delegated to the daemon, each task runs in a child
//! cgroup of its own from its command's first instruction (through
//! `support __enter-cgroup`), and a stop empties and removes it: even of a
//! fork-setsid walker, and of one that moved itself out of the cgroup.
//! Needs a writable cgroup2 mount (root here): without one each test says
//! so and checks nothing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::lab::{Lab, alive, finish};
use common::walker::{left, policy, token, walking};
use support::StoppedBy;
use support::daemon::Options;

/// This process's cgroup is the daemon's: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cgroup2_mount() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right.starts_with("cgroup2 ").then(|| left.split_whitespace().nth(4).map(str::to_string))?
    })
}

/// A cgroup "delegated" to this test process, as systemd's Delegate=yes
/// would: made under this process's own and moved into; on drop, this
/// process goes back and it is removed.
struct Delegation {
    parent: PathBuf,
    dir: PathBuf,
}

impl Delegation {
    fn new() -> Option<Delegation> {
        let Some(mount) = cgroup2_mount() else {
            eprintln!("no cgroup2 mount: skipped");
            return None;
        };
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().trim().to_string();
        let parent = Path::new(&mount).join(own.trim_start_matches('/'));
        let dir = parent.join(format!("support-test-{}", std::process::id()));
        if std::fs::create_dir(&dir).is_err() {
            eprintln!("cgroup2 at {mount} is not writable here: skipped");
            return None;
        }
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).unwrap();
        let detected = support::daemon::tree::Delegated::detect().expect("the delegated cgroup is found");
        assert_eq!(detected.dir(), dir.as_path());
        Some(Delegation { parent, dir })
    }

    fn task(&self, task_id: &str) -> PathBuf {
        self.dir.join(format!("support-{task_id}"))
    }
}

impl Drop for Delegation {
    fn drop(&mut self) {
        let _ = std::fs::write(self.parent.join("cgroup.procs"), std::process::id().to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A lab whose daemon starts commands through the real `support` binary.
fn lab() -> Lab {
    let options = Options { cgroup_helper: Some(PathBuf::from(env!("CARGO_BIN_EXE_support"))), ..Options::default() };
    Lab::start_with_options(&policy(), options)
}

#[tokio::test]
async fn each_task_gets_its_own_cgroup_and_a_stop_empties_it() {
    stop_empties_the_cgroup(lab).await;
}

/// Without the helper (`Options::default()`), a command is moved in once it runs.
#[tokio::test]
async fn without_the_helper_too() {
    stop_empties_the_cgroup(|| Lab::start_with(&policy())).await;
}

async fn stop_empties_the_cgroup(lab: impl FnOnce() -> Lab) {
    let _one = SERIAL.lock().await;
    let Some(delegated) = Delegation::new() else { return };
    let lab = lab();
    lab.grant(1, Duration::from_secs(600));
    let (outcome, _rx) = lab.submit(lab.tree("tree")).await;
    let task_id = outcome.expect("accepted");
    let pids = lab.pids(10).await;
    let leader_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", pids[0])).unwrap();
    assert!(leader_cgroup.contains(&format!("support-{task_id}")), "{leader_cgroup}");
    let result = lab.daemon.stop_task(&task_id, StoppedBy::Owner).await.unwrap();
    assert_eq!(result.cancelled_by, Some(StoppedBy::Owner));
    assert_eq!(pids.iter().copied().filter(|p| alive(*p)).collect::<Vec<_>>(), Vec::<i32>::new());
    assert!(!delegated.task(&task_id).exists(), "the task's cgroup is removed");
}

/// The command is in its cgroup before it runs an instruction of its own:
/// what it reads of itself at once already names the task's cgroup.
#[tokio::test]
async fn a_command_starts_inside_its_cgroup() {
    let _one = SERIAL.lock().await;
    let Some(_delegated) = Delegation::new() else { return };
    let lab = lab();
    lab.grant(1, Duration::from_secs(600));
    for _ in 0..5 {
        let (outcome, mut rx) = lab.submit(lab.command("own-cgroup", &[])).await;
        let task_id = outcome.expect("accepted");
        let (result, output) = finish(&mut rx).await;
        assert_eq!(result.exit_code, Some(0), "{output}");
        assert!(output.contains(&format!("/support-{task_id}\n")), "started outside its cgroup: {output}");
    }
}

async fn a_stop_kills_the_walker(mode: &str) {
    let _one = SERIAL.lock().await;
    let Some(delegated) = Delegation::new() else { return };
    let lab = lab();
    lab.grant(1, Duration::from_secs(600));
    let (task_id, _rx) = walking(&lab, mode).await;
    let result = lab.daemon.stop_task(&task_id, StoppedBy::Owner).await.expect("ended");
    assert_eq!(result.cancelled_by, Some(StoppedBy::Owner));
    assert_eq!(left(&token(&lab), &task_id), Vec::<i32>::new(), "the walker outlived the stop");
    assert!(!delegated.task(&task_id).exists(), "the task's cgroup is removed");
}

#[tokio::test]
async fn a_stop_kills_a_walker_in_the_cgroup() {
    a_stop_kills_the_walker("stay").await;
}

#[tokio::test]
async fn a_stop_kills_a_walker_started_late_in_the_cgroup() {
    a_stop_kills_the_walker("late").await;
}

/// The walks leave the task's cgroup before they start: `cgroup.kill`
/// misses them, and the freeze must not.
#[tokio::test]
async fn a_stop_kills_a_walker_that_left_the_cgroup() {
    a_stop_kills_the_walker("escape").await;
}
