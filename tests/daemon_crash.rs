//! A daemon killed with SIGKILL mid-task: the next start finds the task in
//! `tasks.json`, kills every process its tree left, and audits `task.aborted`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::lab::{Lab, alive, grant, records};
use support::Paths;
use support::audit::Event;

/// Not a test on its own: the daemon process the test below kills, run by
/// it with `--ignored` and `CRASH_HOME` set.
#[test]
#[ignore = "the child process of sigkill_mid_task_then_the_next_start_kills_the_leftovers"]
fn crash_child() {
    let home = std::env::var_os("CRASH_HOME").expect("run by the crash test, with CRASH_HOME");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let paths = Paths::under(home.into());
        let daemon = support::Daemon::start(&paths, Default::default()).unwrap();
        let operator = support::KeyPair::load(&paths.home.join("operator.key")).unwrap();
        let pidfile = paths.home.join("pids");
        let params = [("pidfile".to_string(), pidfile.display().to_string())].into();
        let run = support::Run::signed(&operator, "r-crash", daemon.device_id(), "tree", params, chrono::Utc::now());
        let (tx, _rx) = tokio::sync::mpsc::channel(1024);
        daemon.submit(run, tx).await.expect("accepted");
        tokio::task::spawn_blocking(move || common::wait_pids(&pidfile, 10)).await.unwrap();
        println!("READY");
        std::future::pending::<()>().await;
    });
}

#[test]
fn sigkill_mid_task_then_the_next_start_kills_the_leftovers() {
    let home = common::Home::new();
    let paths = Paths::under(home.path.clone());
    Lab::prepare(&paths);
    grant(&paths, 1, Duration::from_secs(600));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("CRASH_HOME", &home.path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("READY"))), "the child daemon never got its task running");
    let pids: Vec<i32> = std::fs::read_to_string(home.path.join("pids"))
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 10);
    child.kill().unwrap();
    child.wait().unwrap();
    let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert_eq!(left.len(), 10, "the tree outlives its daemon: {left:?} of {pids:?}");
    let tasks = std::fs::read_to_string(paths.tasks()).unwrap();
    assert!(tasks.contains("r-crash"), "{tasks}");

    let daemon = support::Daemon::start(&paths, Default::default()).expect("the next start");
    let survivors: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    assert_eq!(survivors, Vec::<i32>::new(), "leftovers after the next start");
    let aborted: Vec<_> = records(&paths).into_iter().filter(|r| r.event == Event::TaskAborted).collect();
    assert_eq!(aborted.len(), 1, "{aborted:?}");
    assert_eq!(aborted[0].request_id.as_deref(), Some("r-crash"));
    assert!(aborted[0].detail.as_deref().unwrap_or("").contains("10 leftover processes"), "{:?}", aborted[0].detail);
    assert!(daemon.tasks().is_empty());
    let tasks = std::fs::read_to_string(paths.tasks()).unwrap();
    assert_eq!(tasks.trim(), "[]");
}

#[test]
fn a_malformed_task_registry_is_put_on_the_record() {
    let home = common::Home::new();
    let paths = Paths::under(home.path.clone());
    Lab::prepare(&paths);
    std::fs::create_dir_all(paths.run_dir()).unwrap();
    std::fs::write(paths.tasks(), b"[{not json").unwrap();
    let _daemon = support::Daemon::start(&paths, Default::default()).expect("starts");
    let aborted: Vec<_> = records(&paths).into_iter().filter(|r| r.event == Event::TaskAborted).collect();
    assert_eq!(aborted.len(), 1, "{aborted:?}");
    assert!(aborted[0].detail.as_deref().unwrap_or("").contains("malformed"));
    assert_eq!(std::fs::read_to_string(paths.tasks()).unwrap().trim(), "[]");
}

#[test]
fn a_task_listed_where_older_daemons_kept_tasks_json_is_cleaned_up_too() {
    use std::os::unix::process::CommandExt as _;
    let home = common::Home::new();
    let paths = Paths::under(home.path.clone());
    Lab::prepare(&paths);
    let task_id = "t-0123456789abcdef";
    let mut left = Command::new("sleep").arg("300").env("SUPPORTD_TASK", task_id).process_group(0).spawn().unwrap();
    let pid = left.id() as i32;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let ticks: u64 = stat.rsplit(')').next().unwrap().split_whitespace().nth(19).unwrap().parse().unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim().to_string();
    let legacy = paths.state_dir.join("tasks.json");
    let entry = serde_json::json!([{
        "task_id": task_id, "request_id": "r-old", "action": "tree", "tier": 1, "params": {},
        "operator": "alice", "grant_id": "g-old", "started_at": "2026-12-01T00:00:00Z",
        "pid": pid, "start_ticks": ticks, "boot_id": boot,
    }]);
    std::fs::write(&legacy, entry.to_string()).unwrap();
    std::fs::set_permissions(&legacy, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let _daemon = support::Daemon::start(&paths, Default::default()).expect("starts");
    // The daemon here is this process, a subreaper that may reap it first.
    if let Ok(status) = left.wait() {
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9), "the leftover was killed");
    }
    assert!(!alive(pid), "the leftover outlived the next start");
    let aborted: Vec<_> = records(&paths).into_iter().filter(|r| r.event == Event::TaskAborted).collect();
    assert_eq!(aborted.len(), 1, "{aborted:?}");
    assert_eq!(aborted[0].request_id.as_deref(), Some("r-old"));
    assert!(!legacy.exists(), "the old file is gone once read");
}
