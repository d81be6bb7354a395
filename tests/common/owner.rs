//! The owner's side for the console's browser tests: a real relay, a real
//! daemon (the binary) whose catalogue has the fake agent, the tree and
//! the ticker, an operator the owner trusts, and ways to read what the
//! owner's CLI says (status, tasks, audit) and to log in to the console.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::net::{Device, Relay};
use crate::common::{Home, Run};

const AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/agent.sh");
const TREE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tree.sh");
const TICKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ticker.sh");

/// How many descendants the fake agent makes (so its tree is 1 + this).
pub const AGENT_CHILDREN: usize = 3;

/// The catalogue: `[agent]` runs tests/fixtures/agent.sh in `work`;
/// `tree` (tier 1) is the kill-resistant tree of 10 processes; `ticker`
/// (tier 1) prints 50 time-stamped lines.
fn policy(work: &Path) -> String {
    format!(
        "[agent]\nargv = [\"{AGENT}\", \"{AGENT_CHILDREN}\"]\ncwd = \"{work}\"\ntimeout_s = 300\n\
         plan_args = [\"--permission-mode\", \"plan\"]\nbuild_args = [\"--permission-mode\", \"acceptEdits\"]\n\n\
         [[action]]\nname = \"tree\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"the tree fixture\"\n\
         argv = [\"{TREE}\", \"{{pidfile}}\"]\ntimeout_s = 300\n\
         [action.params.pidfile]\npattern = \"^/[A-Za-z0-9_./-]+$\"\nmax_len = 512\ndescription = \"pid file\"\n\n\
         [[action]]\nname = \"ticker\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"time-stamped lines\"\n\
         argv = [\"{TICKER}\", \"50\"]\ntimeout_s = 60\n",
        work = work.display()
    )
}

/// A relay, a device with the console's catalogue and an operator `desk`
/// it trusts; no grant yet.
pub struct Owner {
    pub relay: Relay,
    pub key_path: PathBuf,
    pub device: Device,
    /// The agent's working directory (its `agent.pids`), and pid files.
    pub work: tempfile::TempDir,
}

impl Owner {
    pub fn start() -> Owner {
        let relay = Relay::start("127.0.0.1:0");
        let (key, key_path) = relay.operator("desk");
        let work = tempfile::tempdir().unwrap();
        let device = Device::enrolled_with(&relay, &policy(work.path()));
        device.trust("desk", &key);
        Owner { relay, key_path, device, work }
    }

    pub fn home(&self) -> &Home {
        &self.device.home
    }

    /// `support allow --tier N --minutes M --yes`.
    pub fn allow(&self, tier: u8, minutes: u32) {
        let (t, m) = (tier.to_string(), minutes.to_string());
        self.home().run(&["allow", "--tier", &t, "--minutes", &m, "--yes", "--reason", "the printer jams"]).code(0);
    }

    /// The console's port, from `daemon.json`.
    pub fn console_port(&self) -> u16 {
        let info = support::Paths::under(self.home().path.clone()).daemon_info();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&info).unwrap()).unwrap();
        let port = v["console_port"].as_u64().unwrap_or_else(|| panic!("no console_port in {}: {v}", info.display()));
        port as u16
    }

    /// `http://127.0.0.1:PORT`, the console's origin.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.console_port())
    }

    /// A fresh one-time login URL, from `support console --no-open`.
    pub fn login_url(&self) -> String {
        let run = self.home().run(&["console", "--no-open"]);
        run.code(0);
        let prefix = format!("{}/console/login?token=", self.origin());
        run.stdout
            .split_whitespace()
            .find(|w| w.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no login URL in `support console --no-open`:\n{}\n{}", run.stdout, run.stderr))
            .to_string()
    }

    /// `support operator ARGS` as `desk`.
    pub fn operator(&self, args: &[&str]) -> Command {
        self.relay.operator_cli(&self.key_path, args)
    }

    /// `support operator ARGS` as `desk`, running, its output piped.
    pub fn operator_spawn(&self, args: &[&str]) -> Child {
        self.operator(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    }

    /// Starts the tree fixture through the relay (pids into `pidfile`);
    /// returns the operator's process, the task id and the 10 pids.
    pub fn start_tree(&self, pidfile: &Path) -> (Child, String, Vec<i32>) {
        let before = self.task_ids();
        let param = format!("pidfile={}", pidfile.display());
        let child = self.operator_spawn(&["run", &self.device.device_id, "tree", &param]);
        let pids = crate::common::wait_pids(pidfile, 10);
        let task = self.wait_new_task(&before);
        (child, task, pids)
    }

    /// Starts the fake agent through the relay; the operator's process,
    /// the task id and the agent's pids (itself and its descendants).
    pub fn start_agent(&self, prompt: &str) -> (Child, String, Vec<i32>) {
        let before = self.task_ids();
        let child = self.operator_spawn(&["agent", &self.device.device_id, prompt, "--mode", "build"]);
        let pids = crate::common::wait_pids(&self.work.path().join("agent.pids"), 1 + AGENT_CHILDREN);
        let task = self.wait_new_task(&before);
        (child, task, pids)
    }

    /// The running tasks (`support tasks --json`).
    pub fn tasks(&self) -> Vec<Value> {
        self.home().run(&["tasks", "--json"]).code(0).json()["tasks"].as_array().cloned().unwrap_or_default()
    }

    fn task_ids(&self) -> Vec<String> {
        self.tasks().iter().filter_map(|t| t["task_id"].as_str().map(String::from)).collect()
    }

    /// Waits (30 s at most) for a running task not in `before`; its id.
    fn wait_new_task(&self, before: &[String]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(id) = self.task_ids().into_iter().find(|id| !before.contains(id)) {
                return id;
            }
            assert!(Instant::now() < deadline, "no new task\n{}", self.device.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether task `id` is running.
    pub fn running(&self, id: &str) -> bool {
        self.tasks().iter().any(|t| t["task_id"] == id)
    }

    /// The audit records, newest first (`support audit --json`).
    pub fn audit(&self) -> Vec<Value> {
        let run = self.home().run(&["audit", "--json", "--limit", "1000"]);
        run.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// The highest audit sequence number now.
    pub fn last_seq(&self) -> u64 {
        self.audit().iter().filter_map(|r| r["seq"].as_u64()).max().unwrap_or(0)
    }

    /// The status (`support status --json`).
    pub fn status(&self) -> Value {
        self.home().status()
    }
}

/// Waits for an operator's process and returns what it printed.
pub fn finished(child: Child) -> Run {
    Run::from(child.wait_with_output().unwrap())
}
