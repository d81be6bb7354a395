//! A daemon in this test process, with a trusted operator key, a test
//! catalogue (`policy.d/test.toml`) and helpers to send it signed commands.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use support::consent::{self, Grant, Tier};
use support::daemon::{Daemon, Options};
use support::{DeviceFrame, KeyPair, Paths, Run, TaskResult};
use tokio::sync::mpsc;

use super::Home;

/// The test catalogue: `tree` (tier 1) and `tree-fix` (tier 2) run the
/// kill-resistant fixture; `tree-slow` times out after 1 s; `flood`
/// prints 100 MB into a 1 MiB cap; `mark` touches a file.
pub fn test_policy() -> String {
    let tree = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tree.sh");
    let mut text = String::new();
    for (name, tier, kind, timeout) in
        [("tree", 1, "diagnostic", 60), ("tree-fix", 2, "fix", 60), ("tree-slow", 1, "diagnostic", 1)]
    {
        text.push_str(&format!(
            "[[action]]\nname = \"{name}\"\ntier = {tier}\nkind = \"{kind}\"\ndescription = \"the tree fixture\"\n\
             argv = [\"{tree}\", \"{{pidfile}}\"]\ntimeout_s = {timeout}\n{PIDFILE}\n"
        ));
    }
    text.push_str(
        r#"
[[action]]
name = "flood"
tier = 1
kind = "diagnostic"
description = "100 MB of output"
argv = ["head", "-c", "100000000", "/dev/zero"]
timeout_s = 60
max_output_bytes = 1048576

[[action]]
name = "mark"
tier = 1
kind = "diagnostic"
description = "creates a file"
argv = ["touch", "{pidfile}"]
timeout_s = 10
"#,
    );
    text.push_str(PIDFILE);
    text
}

const PIDFILE: &str = r#"
[action.params.pidfile]
pattern = "^/[A-Za-z0-9_./-]+$"
max_len = 512
description = "where the fixture writes its pids"
"#;

/// Runs the daemon's consent watcher until dropped.
pub struct Watching {
    _stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Lab {
    pub home: Home,
    pub paths: Paths,
    pub daemon: Daemon,
    pub operator: KeyPair,
    pub pidfile: PathBuf,
}

impl Lab {
    /// A home with the test catalogue and a trusted operator, and its daemon.
    pub fn start() -> Lab {
        Lab::start_with("")
    }

    /// As [`Lab::start`], with `extra` as a second policy file (`policy.d/zz-extra.toml`).
    pub fn start_with(extra: &str) -> Lab {
        Lab::start_with_options(extra, Options::default())
    }

    /// As [`Lab::start_with`], with the daemon's `options`.
    pub fn start_with_options(extra: &str, options: Options) -> Lab {
        let home = Home::new();
        let paths = Paths::under(home.path.clone());
        Lab::prepare(&paths);
        std::fs::write(paths.policy_dir().join("zz-extra.toml"), extra).unwrap();
        let daemon = Daemon::start(&paths, options).expect("daemon starts");
        let operator = KeyPair::load(&paths.home.join("operator.key")).unwrap();
        let pidfile = home.path.join("pids");
        Lab { home, paths, daemon, operator, pidfile }
    }

    /// Writes the test catalogue and an operator key (`operator.key`) the home trusts.
    pub fn prepare(paths: &Paths) {
        paths.ensure_dirs().unwrap();
        std::fs::create_dir_all(paths.policy_dir()).unwrap();
        std::fs::write(paths.policy_dir().join("test.toml"), test_policy()).unwrap();
        let key_path = paths.home.join("operator.key");
        let (key, _) = KeyPair::load_or_create(&key_path).unwrap();
        if support::trust::list(paths).unwrap().is_empty() {
            let public = key.public_key().to_string();
            support::trust::add(paths, "alice", &public, Utc::now()).unwrap();
        }
    }

    /// Starts the consent watcher (inotify, poll, expiry timer).
    pub fn watch(&self) -> Watching {
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let d = self.daemon.clone();
        let task = tokio::spawn(async move {
            d.watch_consent(async move {
                let _ = stop_rx.await;
            })
            .await
        });
        Watching { _stop: stop, task }
    }

    pub fn grant(&self, tier: u8, length: Duration) -> Grant {
        grant(&self.paths, tier, length)
    }

    /// A command signed by the trusted operator, issued now.
    pub fn command(&self, action: &str, params: &[(&str, &str)]) -> Run {
        let params: BTreeMap<String, String> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Run::signed(
            &self.operator,
            &support::protocol::new_request_id(),
            self.daemon.device_id(),
            action,
            params,
            Utc::now(),
        )
    }

    /// The tree fixture's command at `action`.
    pub fn tree(&self, action: &str) -> Run {
        self.command(action, &[("pidfile", self.pidfile.to_str().unwrap())])
    }

    /// Submits and returns the outcome and the frames that follow.
    pub async fn submit(
        &self,
        run: Run,
    ) -> (Result<String, support::daemon::gate::Denial>, mpsc::Receiver<DeviceFrame>) {
        let (tx, rx) = mpsc::channel(1024);
        let outcome = self.daemon.submit(run, tx).await;
        (outcome, rx)
    }

    /// Waits (at most 10 s) until the fixture has written `n` pids.
    pub async fn pids(&self, n: usize) -> Vec<i32> {
        let pidfile = self.pidfile.clone();
        tokio::task::spawn_blocking(move || super::wait_pids(&pidfile, n)).await.unwrap()
    }
}

/// Writes a grant of `tier` for `length` into the home.
pub fn grant(paths: &Paths, tier: u8, length: Duration) -> Grant {
    let g = Grant::new(Tier::new(tier).unwrap(), length, None, Utc::now()).unwrap();
    consent::write(paths, &g).unwrap();
    g
}

/// Those of `pids` still alive.
pub fn survivors(pids: &[i32]) -> Vec<i32> {
    pids.iter().copied().filter(|p| alive(*p)).collect()
}

/// Whether `pid` is a live process: present in /proc and not a zombie
/// with no thread left (a `Z` process whose other threads run is alive).
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let Some((_, rest)) = stat.rsplit_once(") ") else { return false };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 is the state, field 20 the number of threads (proc(5)).
    fields.first() != Some(&"Z") || fields.get(17).and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > 1)
}

/// Reads frames until the `result` (at most 30 s); returns it and the output.
pub async fn finish(rx: &mut mpsc::Receiver<DeviceFrame>) -> (TaskResult, String) {
    let mut output = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let frame = tokio::time::timeout_at(deadline, rx.recv()).await.expect("a result within 30 s").expect("frames");
        match frame {
            DeviceFrame::Output { data, .. } => output.push_str(&data),
            DeviceFrame::Result {
                status,
                exit_code,
                duration_ms,
                truncated,
                output_sha256,
                output_bytes,
                cancelled_by,
                reason,
                ..
            } => {
                return (
                    TaskResult {
                        status,
                        exit_code,
                        duration_ms,
                        truncated,
                        output_bytes,
                        output_sha256,
                        cancelled_by,
                        reason,
                    },
                    output,
                );
            }
            DeviceFrame::Accepted { .. } | DeviceFrame::Terminal { .. } => {}
            DeviceFrame::Denied { code, message, .. } => panic!("denied {code}: {message}"),
        }
    }
}

/// The audit records of `paths`, oldest first.
pub fn records(paths: &Paths) -> Vec<support::Record> {
    let listing = support::audit::list(paths, 0).unwrap();
    let mut all: Vec<support::Record> = listing.records.into_iter().filter_map(|l| l.record).collect();
    all.sort_by_key(|r| r.seq);
    all
}
