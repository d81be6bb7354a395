//! Shared helpers: a temporary support home and a runner for the real binary
//! that prints stdout and stderr when an expectation fails.
#![allow(dead_code)]

pub mod agent_host;
pub mod console;
pub mod desk;
pub mod lab;
pub mod nats;
pub mod net;
pub mod tree_run;
pub mod walker;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Home {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, showing both streams otherwise.
    #[track_caller]
    pub fn code(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "exit code\n--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr);
        self
    }

    /// Asserts that stdout or stderr contains `needle`.
    #[track_caller]
    pub fn says(&self, needle: &str) -> &Run {
        assert!(
            self.stdout.contains(needle) || self.stderr.contains(needle),
            "expected {needle:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n--- stderr (exit {})\n{}", self.stdout, self.code, self.stderr))
    }
}

/// Waits (at most 10 s) until `pidfile` lists `n` pids; returns them.
pub fn wait_pids(pidfile: &Path, n: usize) -> Vec<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(pidfile).unwrap_or_default();
        let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        if pids.len() >= n {
            return pids;
        }
        assert!(std::time::Instant::now() < deadline, "{} lists only {} pids", pidfile.display(), pids.len());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_support"))
}

impl Home {
    pub fn new() -> Home {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home");
        Home { _dir: dir, path }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args).env("SUPPORT_HOME", &self.path).env("NO_COLOR", "1").env_remove("SUPPORT_LOG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().unwrap())
    }

    /// Runs with the given umask, through `sh -c 'umask M; exec ...'`.
    pub fn run_umask(&self, umask: &str, args: &[&str]) -> Run {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("umask {umask}; exec \"$0\" \"$@\""))
            .arg(bin())
            .args(args)
            .env("SUPPORT_HOME", &self.path)
            .output()
            .unwrap();
        Run::from(out)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn status(&self) -> serde_json::Value {
        self.run(&["status", "--json"]).code(0).json()
    }
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A fresh Ed25519 public key in the documented encoding.
pub fn new_public_key() -> String {
    use base64::Engine as _;
    use ring::signature::{Ed25519KeyPair, KeyPair};
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    format!("ed25519:{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()))
}

/// An RFC 3339 time from a `--json` field as people read it (README,
/// "Scripting"): to the second, in UTC, `2026-11-22T10:36:26Z`.
pub fn to_second(rfc3339: &serde_json::Value) -> String {
    let t = chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap()).unwrap().with_timezone(&chrono::Utc);
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
