//! Daemon figures, each beside its baseline in the same run:
//!
//! 1. owner `stop` → whole tree gone, and `revoke` → whole tree gone, p50
//!    and p99 over SUPPORT_BENCH_RUNS (default 200) runs of the 10-process
//!    fixture `tests/fixtures/tree.sh` (setsid, double fork, an emptied
//!    environment, every process ignoring SIGTERM). The clock starts when
//!    the owner acts (the stop call; the consent file's removal, seen by
//!    inotify as after `support revoke`) and stops when no process of the
//!    tree is alive in /proc. Baseline: `killpg(SIGKILL)` of a plain
//!    10-process group that never tries to escape, timed the same way.
//!    And owner `stop` of an agent task (tier 3): the fake agent
//!    `tests/fixtures/agent.sh` with 10 descendants (11 processes), run
//!    through the `[agent]` section with its prompt on stdin.
//!    And owner `stop` of a fork-setsid walker (`tests/fixtures/walker.py`:
//!    two walks, each looping fork → parent exits → child `setsid()`, 50
//!    generations in): the clock stops when a `/proc` scan finds no
//!    process of it, by argv or by marker (its leader, with the same argv,
//!    sleeps until the kill), and once the stop call has returned, a scan
//!    must still find none.
//!    And, when a cgroup v2 can be delegated here (root), a one-command
//!    action (`true`) submitted → result, with each command started
//!    through `support __enter-cgroup` (in its cgroup from its first
//!    instruction) beside the same without it: the cost of that one exec.
//! 2. the idle `support daemon` under a live tier-1 grant, twice: holding
//!    its TLS 1.3 link to a loopback relay, and local-only: RSS (anonymous
//!    and file-backed), peak RSS, threads, and CPU seconds over
//!    SUPPORT_BENCH_IDLE_S (default 60) seconds, beside `mosquitto_sub`
//!    holding one TLS 1.3 subscription to a loopback `mosquitto` (the
//!    baseline, DESIGN §9: RSS <= 1.0 x it, <= 2 threads, <= 1 CPU
//!    second an hour) and `sleep` (the floor of any process), all sampled
//!    at the same moments. Needs `mosquitto` and `mosquitto_sub` on PATH
//!    (`contrib/bench-deps.sh`).
//!
//!    SUPPORT_BENCH_DAEMON_BIN names another `support` binary for these
//!    four: the Debian package's, `cargo build --profile dist`.
//!
//! Reproduce: `cargo bench --bench daemon` (the release profile's binary),
//! `cargo build --profile dist && SUPPORT_BENCH_DAEMON_BIN=target/dist/support
//! cargo bench --bench daemon` (the package's).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::load::{Mosquitto, Proc};
use common::{BIN, Rig};
use support::consent::{self, Grant, Tier};
use support::daemon::{Daemon, Options};
use support::{KeyPair, Paths, Run, StoppedBy};

const TREE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tree.sh");
const AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/agent.sh");
const WALKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/walker.py");

fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn read_pids(file: &Path, n: usize) -> Vec<i32> {
    let start = Instant::now();
    loop {
        let pids: Vec<i32> =
            std::fs::read_to_string(file).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.len() >= n {
            return pids;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the fixture wrote {} pids", pids.len());
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Polls /proc every 0.1 ms until none of `pids` is alive; returns the time since `t0`.
fn gone_after(pids: &[i32], t0: Instant) -> Duration {
    while pids.iter().any(|p| alive(*p)) {
        assert!(t0.elapsed() < Duration::from_secs(10), "the tree survived 10 s");
        std::thread::sleep(Duration::from_micros(100));
    }
    t0.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "  {name:<34} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms   (n={})",
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        percentile(&v, 1.0),
        v.len()
    );
}

fn grant(paths: &Paths) {
    let g = Grant::new(Tier::new(3).unwrap(), Duration::from_secs(3600), None, Utc::now()).unwrap();
    consent::write(paths, &g).unwrap();
}

fn setup(dir: &Path) -> (Paths, KeyPair) {
    let paths = Paths::under(dir.join("home"));
    paths.ensure_dirs().unwrap();
    std::fs::create_dir_all(paths.policy_dir()).unwrap();
    let policy = format!(
        "[[action]]\nname = \"tree\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"the tree fixture\"\n\
         argv = [\"{TREE}\", \"{{pidfile}}\"]\ntimeout_s = 60\n\n[action.params.pidfile]\n\
         pattern = \"^/[A-Za-z0-9_./-]+$\"\nmax_len = 512\ndescription = \"pid file\"\n\n\
         [[action]]\nname = \"walk\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"walker\"\n\
         argv = [\"{WALKER}\", \"{{pidfile}}\", \"stay\", \"50\"]\ntimeout_s = 60\n\n[action.params.pidfile]\n\
         pattern = \"^/[A-Za-z0-9_./-]+$\"\nmax_len = 512\ndescription = \"ready file\"\n\n\
         [[action]]\nname = \"true\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"nothing\"\nargv = [\"true\"]\ntimeout_s = 10\n\n\
         [agent]\nargv = [\"{AGENT}\", \"10\"]\nplan_args = []\nbuild_args = []\ncwd = \"{}\"\n",
        dir.display()
    );
    std::fs::write(paths.policy_dir().join("bench.toml"), policy).unwrap();
    let (key, _) = KeyPair::generate();
    support::trust::add(&paths, "bench", &key.public_key().to_string(), Utc::now()).unwrap();
    (paths, key)
}

async fn start_tree(daemon: &Daemon, key: &KeyPair, pidfile: &Path) -> (String, Vec<i32>) {
    let _ = std::fs::remove_file(pidfile);
    let params = BTreeMap::from([("pidfile".to_string(), pidfile.display().to_string())]);
    let run = Run::signed(key, &support::protocol::new_request_id(), daemon.device_id(), "tree", params, Utc::now());
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let task_id = daemon.submit(run, tx).await.expect("accepted");
    let pidfile = pidfile.to_path_buf();
    let pids = tokio::task::spawn_blocking(move || read_pids(&pidfile, 10)).await.unwrap();
    (task_id, pids)
}

/// Starts the fake agent with 10 descendants; returns its task and the 11 pids.
async fn start_agent(daemon: &Daemon, key: &KeyPair, dir: &Path) -> (String, Vec<i32>) {
    let pidfile = dir.join("agent.pids");
    let _ = std::fs::remove_file(&pidfile);
    let params = BTreeMap::from([("prompt".to_string(), "why is the printer stuck?".to_string())]);
    let run = Run::signed(key, &support::protocol::new_request_id(), daemon.device_id(), "agent", params, Utc::now());
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let task_id = daemon.submit(run, tx).await.expect("accepted");
    let pids = tokio::task::spawn_blocking(move || read_pids(&pidfile, 11)).await.unwrap();
    (task_id, pids)
}

/// Starts the walker and waits until it is 50 generations in; returns its task.
async fn start_walker(daemon: &Daemon, key: &KeyPair, ready: &Path) -> String {
    let _ = std::fs::remove_file(ready);
    let params = BTreeMap::from([("pidfile".to_string(), ready.display().to_string())]);
    let run = Run::signed(key, &support::protocol::new_request_id(), daemon.device_id(), "walk", params, Utc::now());
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let task_id = daemon.submit(run, tx).await.expect("accepted");
    let start = Instant::now();
    while !ready.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "the walker did not start");
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    task_id
}

/// Live processes whose argv holds `token` or whose environment holds `task_id`'s marker.
fn walker_left(token: &str, task_id: &str) -> usize {
    let marker = format!("SUPPORTD_TASK={task_id}");
    let holds = |bytes: Vec<u8>, needle: &str| bytes.split(|b| *b == 0).any(|s| s == needle.as_bytes());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32 && alive(*pid))
        .filter(|pid| {
            let read = |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
            holds(read("cmdline"), token) || holds(read("environ"), &marker)
        })
        .count()
}

async fn wait_idle(daemon: &Daemon) {
    while !daemon.tasks().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn kill_trees(runs: usize, dir: &Path) {
    let (paths, key) = setup(dir);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let daemon = Daemon::start(&paths, Options::default()).unwrap();
        let (_stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let watcher = daemon.clone();
        tokio::spawn(async move {
            watcher
                .watch_consent(async move {
                    let _ = stop_rx.await;
                })
                .await
        });
        let pidfile = dir.join("pids");
        let (mut stops, mut revokes, mut baseline, mut agents) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut walkers = Vec::new();
        for _ in 0..runs {
            // Owner stop.
            grant(&paths);
            daemon.consent_changed().await;
            let (task_id, pids) = start_tree(&daemon, &key, &pidfile).await;
            let t0 = Instant::now();
            let d = daemon.clone();
            let stopper = tokio::spawn(async move { d.stop_task(&task_id, StoppedBy::Owner).await });
            stops.push(tokio::task::spawn_blocking(move || gone_after(&pids, t0)).await.unwrap());
            let _ = stopper.await;
            wait_idle(&daemon).await;

            // Owner stop of an agent task with 10 descendants.
            let (task_id, pids) = start_agent(&daemon, &key, dir).await;
            let t0 = Instant::now();
            let d = daemon.clone();
            let stopper = tokio::spawn(async move { d.stop_task(&task_id, StoppedBy::Owner).await });
            agents.push(tokio::task::spawn_blocking(move || gone_after(&pids, t0)).await.unwrap());
            let _ = stopper.await;
            wait_idle(&daemon).await;

            // Owner stop of a fork-setsid walker.
            let ready = dir.join("walker.ready");
            let task_id = start_walker(&daemon, &key, &ready).await;
            let t0 = Instant::now();
            let d = daemon.clone();
            let id = task_id.clone();
            let stopper = tokio::spawn(async move { d.stop_task(&id, StoppedBy::Owner).await });
            // Its leader (a sleeping process with the same argv) lives until
            // the kill, so a scan finds none only once the tree is gone.
            let (token, id) = (ready.display().to_string(), task_id.clone());
            let gone = tokio::task::spawn_blocking(move || {
                while walker_left(&token, &id) > 0 {
                    assert!(t0.elapsed() < Duration::from_secs(10), "the walker survived 10 s");
                }
                t0.elapsed()
            });
            walkers.push(gone.await.unwrap());
            assert!(stopper.await.unwrap().is_some(), "the walker's task did not end");
            let left = walker_left(&ready.display().to_string(), &task_id);
            assert_eq!(left, 0, "{left} processes of the walker outlived the stop");
            wait_idle(&daemon).await;

            // Revoke, seen through inotify.
            let (_, pids) = start_tree(&daemon, &key, &pidfile).await;
            let t0 = Instant::now();
            consent::remove(&paths).unwrap();
            revokes.push(tokio::task::spawn_blocking(move || gone_after(&pids, t0)).await.unwrap());
            wait_idle(&daemon).await;

            // Baseline: killpg of a plain group of 10.
            let _ = std::fs::remove_file(&pidfile);
            let mut child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(r#"echo $$ >> "$0"; for i in 1 2 3 4 5 6 7 8 9; do sleep 1000 & echo $! >> "$0"; done; wait"#)
                .arg(&pidfile)
                .process_group(0)
                .spawn()
                .unwrap();
            let pf = pidfile.clone();
            let pids = tokio::task::spawn_blocking(move || read_pids(&pf, 10)).await.unwrap();
            let pgid = child.id().unwrap() as i32;
            let t0 = Instant::now();
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL).unwrap();
            let reap = tokio::spawn(async move { child.wait().await });
            baseline.push(tokio::task::spawn_blocking(move || gone_after(&pids, t0)).await.unwrap());
            let _ = reap.await;
        }
        println!("tree of 10 processes → all gone ({runs} runs each):");
        report("owner stop (Daemon::stop_task)", stops);
        report("revoke (file removed, inotify)", revokes);
        report("baseline: killpg of a plain group", baseline);
        println!("agent task, 11 processes (the agent and 10 descendants) → all gone ({runs} runs):");
        report("owner stop (Daemon::stop_task)", agents);
        println!("fork-setsid walker (two walks) → none left in /proc ({runs} runs):");
        report("owner stop (Daemon::stop_task)", walkers);
        daemon.shutdown().await;
    });
}

/// A cgroup made under this process's own and moved into, as systemd's
/// `Delegate=yes` would give; `None` when cgroup2 is not writable here.
fn delegate() -> Option<(PathBuf, PathBuf)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right.starts_with("cgroup2 ").then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim().trim_start_matches('/').to_string();
    let parent = mount.join(own);
    let dir = parent.join(format!("support-bench-{}", std::process::id()));
    std::fs::create_dir(&dir).ok()?;
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string()).ok()?;
    Some((parent, dir))
}

/// `true` submitted → result, `runs` times, through a daemon whose tasks
/// get cgroups, with and without `support __enter-cgroup`.
fn spawn_in_cgroup(runs: usize, dir: &Path) {
    let Some((parent, delegated)) = delegate() else {
        println!("command start in a cgroup: skipped (no writable cgroup2 here)");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut times = Vec::new();
        for (name, helper) in [("plain", None), ("helper", Some(PathBuf::from(BIN)))] {
            let (paths, key) = setup(&dir.join(name));
            grant(&paths);
            let daemon = Daemon::start(&paths, Options { cgroup_helper: helper, ..Options::default() }).unwrap();
            let mut v = Vec::new();
            for _ in 0..runs {
                let run = Run::signed(
                    &key,
                    &support::protocol::new_request_id(),
                    daemon.device_id(),
                    "true",
                    BTreeMap::new(),
                    Utc::now(),
                );
                let (tx, mut rx) = tokio::sync::mpsc::channel(256);
                let t0 = Instant::now();
                daemon.submit(run, tx).await.expect("accepted");
                while let Some(frame) = rx.recv().await {
                    if matches!(frame, support::DeviceFrame::Result { .. }) {
                        break;
                    }
                }
                v.push(t0.elapsed());
                wait_idle(&daemon).await;
            }
            daemon.shutdown().await;
            times.push(v);
        }
        println!("a one-command action (`true`) submitted → result, each task in its own cgroup ({runs} runs each):");
        report("through support __enter-cgroup", times.pop().unwrap());
        report("baseline: moved in once it runs", times.pop().unwrap());
    });
    let _ = std::fs::write(parent.join("cgroup.procs"), std::process::id().to_string());
    let _ = std::fs::remove_dir(&delegated);
}

/// What `/proc/PID` says of a process at one moment.
struct Sample {
    /// VmRSS, KiB.
    rss: u64,
    /// VmHWM (peak RSS), KiB.
    peak: u64,
    threads: u64,
    /// The sum over its threads of `/proc/PID/task/TID/schedstat`'s first
    /// field (ns on CPU), finer than the 10 ms ticks of `stat`.
    cpu_ns: u64,
    /// RssAnon, KiB.
    anon: u64,
    /// RssFile, KiB: clean pages of its executable and libraries.
    file: u64,
}

fn sample(pid: u32) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let mut cpu_ns = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let text = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        cpu_ns += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Sample {
        rss: field("VmRSS:"),
        peak: field("VmHWM:"),
        threads: field("Threads:"),
        cpu_ns,
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    }
}

/// The idle daemon twice (local-only, and holding its TLS 1.3 link to a
/// loopback relay), both under a live tier-1 grant, beside `mosquitto_sub`
/// holding one TLS 1.3 subscription to a loopback `mosquitto` (DESIGN §9's
/// baseline) and `sleep` (the floor of any process), all four sampled at
/// the same moments, `seconds` apart.
fn idle(dir: &Path, seconds: u64) {
    // The package's build (`cargo build --profile dist`), say, without
    // building this bench with whole-program LTO too.
    let bin = std::env::var("SUPPORT_BENCH_DAEMON_BIN").unwrap_or_else(|_| BIN.to_string());
    let bin = bin.as_str();
    let home: PathBuf = dir.join("idle-home");
    // Under a live grant, as a daemon waiting for support is: the grant's
    // file is then watched and re-read, which an empty home never shows.
    let allowed = Command::new(bin)
        .args(["allow", "--tier", "1", "--minutes", "60"])
        .env("SUPPORT_HOME", &home)
        .output()
        .unwrap();
    assert!(allowed.status.success(), "{}", String::from_utf8_lossy(&allowed.stderr));
    let local = Proc(
        Command::new(bin)
            .arg("daemon")
            .env("SUPPORT_HOME", &home)
            .env("SUPPORT_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while !home.join("daemon.json").exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "the daemon did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Enrolled, connected, a tier-1 grant; the relay's self-signed
    // certificate serves mosquitto too, and is the subscriber's CA file.
    let rig = Rig::start(bin, &dir.join("linked"));
    let broker = Mosquitto::start(dir, &rig.relay.state);
    let subscriber = broker.subscriber();
    let sleeper = Proc(Command::new("sleep").arg((seconds + 5).to_string()).spawn().unwrap());
    let pids = [
        ("support daemon, linked to a relay", rig.daemon.id()),
        ("support daemon, local-only", local.0.id()),
        ("baseline: mosquitto_sub, TLS 1.3", subscriber.0.id()),
        ("floor: sleep", sleeper.0.id()),
    ];
    // Let start-up work (key, audit, first reads, the link's first
    // heartbeat) settle before measuring.
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<Sample> = pids.iter().map(|(_, pid)| sample(*pid)).collect();
    std::thread::sleep(Duration::from_secs(seconds));
    let after: Vec<Sample> = pids.iter().map(|(_, pid)| sample(*pid)).collect();
    let exe = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
    println!("idle over {seconds} s ({bin}, {} KiB; daemons under a live tier-1 grant):", exe / 1024);
    println!("| process | RSS (KiB) | anonymous | file-backed | peak | threads | CPU s/hour |");
    println!("|---|---|---|---|---|---|---|");
    let per_hour = |a: &Sample, b: &Sample| b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / 1e9 * 3600.0 / seconds as f64;
    for ((name, _), (a, b)) in pids.iter().zip(before.iter().zip(&after)) {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {:.3} |",
            b.rss,
            b.anon,
            b.file,
            b.peak,
            b.threads,
            per_hour(a, b)
        );
    }
    let baseline = after[2].rss as f64;
    for (i, what) in [(0, "daemon linked to a relay"), (1, "daemon local-only")] {
        let (ratio, threads, cpu) = (after[i].rss as f64 / baseline, after[i].threads, per_hour(&before[i], &after[i]));
        let met = ratio <= 1.0 && threads <= 2 && cpu <= 1.0;
        println!(
            "target {what}: RSS {ratio:.2} x mosquitto_sub (<= 1.0), {threads} threads (<= 2), {cpu:.3} CPU s/hour (<= 1): {}",
            if met { "target met" } else { "NOT met" }
        );
    }
    // The daemon stops as under systemd; the rest are killed as they drop.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(local.0.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    drop((local, subscriber, sleeper, rig, broker));
}

fn main() {
    let env_num = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let runs = env_num("SUPPORT_BENCH_RUNS", 200) as usize;
    let seconds = env_num("SUPPORT_BENCH_IDLE_S", 60);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    println!("daemon benchmark (reproduce: cargo bench --bench daemon)");
    kill_trees(runs, dir.path());
    spawn_in_cgroup(runs, dir.path());
    idle(dir.path(), seconds);
}
