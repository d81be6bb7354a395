//! The fork-setsid walker (`tests/fixtures/walker.py`): its catalogue, a
//! way to start it and wait until it walks, and a `/proc` scan for what
//! is left of it.

use std::path::Path;
use std::time::Duration;

use support::DeviceFrame;
use tokio::sync::mpsc;

use super::lab::Lab;

const WALKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/walker.py");

/// The catalogue: `walk-MODE` for each mode of the fixture (tier 1, 60 s),
/// and `own-cgroup`, which prints the cgroup its leader starts in.
pub fn policy() -> String {
    let mut text = String::new();
    for mode in ["stay", "late", "exit", "escape", "cont"] {
        text.push_str(&format!(
            "[[action]]\nname = \"walk-{mode}\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"a fork-setsid walker\"\n\
             argv = [\"{WALKER}\", \"{{ready}}\", \"{mode}\"]\ntimeout_s = 60\n\
             [action.params.ready]\npattern = \"^/[A-Za-z0-9_./-]+$\"\nmax_len = 512\ndescription = \"ready file\"\n\n"
        ));
    }
    text.push_str(
        "[[action]]\nname = \"own-cgroup\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"where it starts\"\n\
         argv = [\"cat\", \"/proc/self/cgroup\"]\ntimeout_s = 10\n",
    );
    text
}

/// The walker's argv holds this (the lab's pid file path, unique per lab).
pub fn token(lab: &Lab) -> String {
    lab.pidfile.to_str().unwrap().to_string()
}

/// Live processes whose argv holds `token` or whose environment holds the
/// marker of `task_id`.
pub fn left(token: &str, task_id: &str) -> Vec<i32> {
    let marker = format!("SUPPORTD_TASK={task_id}");
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if pid == me || !super::lab::alive(pid) {
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

/// Starts `walk-{mode}` and waits (at most 30 s: a busy machine) until the walk is well under way.
pub async fn walking(lab: &Lab, mode: &str) -> (String, mpsc::Receiver<DeviceFrame>) {
    let ready = lab.pidfile.clone();
    let (outcome, rx) = lab.submit(lab.command(&format!("walk-{mode}"), &[("ready", ready.to_str().unwrap())])).await;
    let task_id = outcome.expect("accepted");
    tokio::task::spawn_blocking(move || wait_for(&ready)).await.unwrap();
    (task_id, rx)
}

fn wait_for(file: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !file.exists() {
        assert!(std::time::Instant::now() < deadline, "the walker did not start");
        std::thread::sleep(Duration::from_millis(2));
    }
}
