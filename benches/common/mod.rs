//! What the relay benches share: a relay child process (single, or of a
//! cluster on a `nats-server -js`), a relay with an enrolled daemon and a
//! trusted operator (`Rig`), one `noop` round trip, RSS and percentiles.
#![allow(dead_code)]

pub mod load;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::KeyPair;
use support::dial::RelayUrl;
use support::operator::{Outcome, Session};
use support::protocol::{self, DeviceFrame, FromRelay, Status, ToRelay};
use support::tls::RelayTrust;

pub const BIN: &str = env!("CARGO_BIN_EXE_support");

/// `m` locked, even if a holder panicked.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// VmRSS of `pid` (KiB).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// The `p` quantile of `sorted`, in ms.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

pub struct Relay {
    pub child: Child,
    pub addr: String,
    pub state: PathBuf,
    pub bin: String,
}

impl Relay {
    pub fn start(state: &Path, listen: &str) -> Relay {
        Relay::start_with(BIN, state, listen)
    }

    /// A relay of the cluster at `nats` (`relay.toml` in `state` names it,
    /// so its admin commands use the cluster too).
    pub fn start_clustered(state: &Path, listen: &str, nats: &str) -> Relay {
        std::fs::create_dir_all(state).unwrap();
        std::fs::write(state.join("relay.toml"), format!("cluster = \"{nats}\"\n")).unwrap();
        Relay::start_with(BIN, state, listen)
    }

    /// `bin relay serve --self-signed` with its state in `state`.
    pub fn start_with(bin: &str, state: &Path, listen: &str) -> Relay {
        // The round trip sends ~300 runs a second on one connection, over
        // the default rate limit (20); the bucket itself costs nanoseconds.
        // A baseline binary from before the limit has no such option.
        let unlimited: &[&str] = if bin == BIN { &["--max-runs-per-second", "1000000"] } else { &[] };
        // SUPPORT_BENCH_RELAY_WRAP="heaptrack -o FILE" (say) runs the relay under a profiler.
        let wrap = std::env::var("SUPPORT_BENCH_RELAY_WRAP").unwrap_or_default();
        let mut wrap = wrap.split_whitespace();
        let mut command = match wrap.next() {
            Some(program) => {
                let mut c = Command::new(program);
                c.args(wrap).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = command
            .args(["relay", "--state"])
            .arg(state)
            .args(["serve", "--self-signed", "--listen", listen])
            .args(unlimited)
            .stdout(Stdio::piped())
            .stderr(log_file(state, "relay"))
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // A profiler wrapping the relay may print lines of its own first.
        let addr = lines.by_ref().find_map(|l| l.unwrap().strip_prefix("listening on ").map(String::from)).unwrap();
        let _fingerprint = lines.next();
        Relay { child, addr, state: state.into(), bin: bin.into() }
    }

    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }

    pub fn url(&self) -> RelayUrl {
        format!("wss://{}", self.addr).parse().unwrap()
    }

    pub fn tls(&self) -> Arc<rustls::ClientConfig> {
        RelayTrust::CaFile(self.state.join("cert.pem")).client_config().unwrap()
    }

    pub fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(&self.bin).args(["relay", "--state"]).arg(&self.state).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A log file beside the relay's state directory (kept with SUPPORT_BENCH_KEEP=1).
pub fn log_file(state: &Path, what: &str) -> std::fs::File {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::fs::create_dir_all(state.parent().unwrap()).unwrap();
    std::fs::File::create(state.with_file_name(format!("{what}-{n}.log"))).unwrap()
}

/// Raises this process's open-file limit (children inherit it); the soft limit now.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // Root may raise the hard limit too; otherwise the soft one goes up to it.
    if setrlimit(Resource::RLIMIT_NOFILE, 200_000, 200_000).is_err() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    getrlimit(Resource::RLIMIT_NOFILE).unwrap().0
}

/// Writes a registry with `n` enrolled devices; returns their keys.
pub fn enroll_all(state: &Path, n: usize) -> Vec<KeyPair> {
    let keys: Vec<KeyPair> = (0..n).map(|_| KeyPair::generate().0).collect();
    let devices: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|k| {
            let v = serde_json::json!({"public_key": k.public_key().to_string(), "name": "bench", "enrolled_at": "2026-01-01T00:00:00Z"});
            (k.public_key().device_id(), v)
        })
        .collect();
    std::fs::create_dir_all(state).unwrap();
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(state.join("registry.json")).unwrap();
    f.write_all(serde_json::json!({"devices": devices}).to_string().as_bytes()).unwrap();
    keys
}

/// A relay and an enrolled daemon (both the binary `bin`), an operator
/// key the relay admits and the owner trusts, and a `noop` action under a
/// tier-1 grant.
pub struct Rig {
    pub relay: Relay,
    pub daemon: Child,
    pub home: PathBuf,
    pub op_key: PathBuf,
    pub device_id: String,
}

impl Rig {
    pub fn start(bin: &str, dir: &Path) -> Rig {
        let state = dir.join("relay");
        std::fs::create_dir_all(dir).unwrap();
        Rig::around(bin, dir, Relay::start_with(bin, &state, "127.0.0.1:0"))
    }

    /// The rig around `relay`, already started (of a cluster, say).
    pub fn around(bin: &str, dir: &Path, relay: Relay) -> Rig {
        let home = dir.join("owner");
        let op_key = dir.join("op.key");
        let public = {
            let out = Command::new(bin).args(["operator", "keygen", "--out"]).arg(&op_key).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        relay.admin(&["add-operator", "bench", &public]);
        let token = relay.admin(&["enroll-token"]);
        let rig_owner = |args: &[&str]| owner(bin, &home, args);
        rig_owner(&["trust", "add", "bench", &public]);
        std::fs::create_dir_all(home.join("policy.d")).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(home.join("policy.d/bench.toml"))
            .unwrap();
        f.write_all(b"[[action]]\nname = \"noop\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"does nothing\"\nargv = [\"true\"]\ntimeout_s = 10\n").unwrap();
        rig_owner(&["allow", "--tier", "1", "--minutes", "60"]);
        let daemon = Command::new(bin)
            .args(["daemon", "--relay", &format!("wss://{}", relay.addr), "--relay-ca"])
            .arg(relay.state.join("cert.pem"))
            .args(["--enroll", &token])
            .env("SUPPORT_HOME", &home)
            .stderr(log_file(&relay.state, "daemon"))
            .spawn()
            .unwrap();
        let mut rig = Rig { relay, daemon, home, op_key, device_id: String::new() };
        rig.wait_connected();
        let s: serde_json::Value = serde_json::from_str(&owner(bin, &rig.home, &["status", "--json"])).unwrap();
        rig.device_id = s["device_id"].as_str().unwrap().into();
        rig
    }

    pub fn connected(&self) -> bool {
        let s: serde_json::Value =
            serde_json::from_str(&owner(&self.relay.bin, &self.home, &["status", "--json"])).unwrap_or_default();
        s["daemon"]["connected"] == true
    }

    pub fn wait_connected(&self) -> Duration {
        let t0 = Instant::now();
        while !self.connected() {
            assert!(t0.elapsed() < Duration::from_secs(120), "the daemon never connected");
            std::thread::sleep(Duration::from_millis(5));
        }
        t0.elapsed()
    }

    pub async fn session(&self) -> Session {
        session_on(&self.relay, &self.op_key).await
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.daemon.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.daemon.wait();
    }
}

/// An operator session with the key at `op_key` on `relay`, retried for
/// up to 10 s (a relay of a cluster learns a new operator from NATS).
pub async fn session_on(relay: &Relay, op_key: &Path) -> Session {
    let t0 = Instant::now();
    loop {
        match Session::connect(&relay.url(), relay.tls(), KeyPair::load(op_key).unwrap()).await {
            Ok(s) => return s,
            Err(e) if t0.elapsed() > Duration::from_secs(10) => panic!("operator session: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The owner's `support ARGS` in `home`; its stdout.
pub fn owner(bin: &str, home: &Path, args: &[&str]) -> String {
    let out = Command::new(bin).args(args).env("SUPPORT_HOME", home).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `noop` through `session`: checked ([`Session::run`]: device key,
/// every answer's signature and place), or read as it comes without a
/// check (what an operator did before answers were signed).
pub async fn trip(session: &mut Session, device_id: &str, checked: bool) -> Duration {
    let run = session.command(device_id, "noop", BTreeMap::new());
    let t0 = Instant::now();
    if checked {
        let outcome = session.run(&run, |_| {}, std::future::pending()).await.unwrap();
        let trip = t0.elapsed();
        assert!(matches!(outcome, Outcome::Finished(DeviceFrame::Result { status: Status::Ok, .. })), "{outcome:?}");
        return trip;
    }
    session.send_raw(&protocol::encode(&ToRelay::Run(run.clone()))).await.unwrap();
    loop {
        match session.recv(Duration::from_secs(10)).await.unwrap() {
            FromRelay::Answer(DeviceFrame::Result { request_id, status, .. }) if request_id == run.request_id => {
                assert_eq!(status, Status::Ok);
                return t0.elapsed();
            }
            FromRelay::Answer(DeviceFrame::Denied { code, .. }) => panic!("denied {code}"),
            _ => {}
        }
    }
}
