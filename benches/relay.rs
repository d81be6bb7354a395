//! Relay figures (DESIGN §9), each beside its baseline in the same run:
//!
//! 1. Idle devices: the relay (`support relay serve`, a child process) and
//!    a load generator here that opens authenticated device connections
//!    (TLS 1.3 + WebSocket + challenge/hello, devices pre-enrolled in the
//!    registry), spread over 127.0.0.x source addresses. Reported: the
//!    relay's RSS (/proc/PID/status VmRSS) empty, then at each N in
//!    SUPPORT_BENCH_DEVICES (default 1000,10000,50000), and the growth per
//!    connection. Target ≤ 25 KiB per connection.
//! 2. Round trip: operator → relay → daemon → relay → operator for a
//!    trivial action (`true`), SUPPORT_BENCH_RUNS (default 1000) times on
//!    one operator connection, interleaved one for one with a raw
//!    `write + fdatasync` of a 512-byte record in the same directory as
//!    the audit log. Target: p99 ≤ 2 × fdatasync p99 + 5 ms (each run
//!    writes two fsynced audit records: action.started, action.finished).
//! 3. Reconnect: the relay is stopped and started again on the same
//!    address, five times; the time until the daemon reports its link up.
//!    The bound is the first backoff step, 1 s + 30 %.
//!
//! Reproduce: `cargo bench --bench relay`.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::KeyPair;
use support::dial::{self, DeviceHello, RelayUrl};
use support::operator::{Outcome, Session};
use support::protocol::{DeviceFrame, Role, Status};
use support::tls::RelayTrust;

const BIN: &str = env!("CARGO_BIN_EXE_support");

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

struct Relay {
    child: Child,
    addr: String,
    state: PathBuf,
}

impl Relay {
    fn start(state: &Path, listen: &str) -> Relay {
        let mut child = Command::new(BIN)
            .args(["relay", "--state"])
            .arg(state)
            .args(["serve", "--self-signed", "--listen", listen])
            // The round trip sends ~300 runs a second on one connection, over
            // the default rate limit (20); the bucket itself costs nanoseconds.
            .args(["--max-runs-per-second", "1000000"])
            .stdout(Stdio::piped())
            .stderr(log_file(state, "relay"))
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = lines.next().unwrap().unwrap().strip_prefix("listening on ").unwrap().to_string();
        let _fingerprint = lines.next();
        Relay { child, addr, state: state.into() }
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }

    fn url(&self) -> RelayUrl {
        format!("wss://{}", self.addr).parse().unwrap()
    }

    fn tls(&self) -> Arc<rustls::ClientConfig> {
        RelayTrust::CaFile(self.state.join("cert.pem")).client_config().unwrap()
    }

    fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(BIN).args(["relay", "--state"]).arg(&self.state).args(args).output().unwrap();
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
fn log_file(state: &Path, what: &str) -> std::fs::File {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::fs::File::create(state.with_file_name(format!("{what}-{n}.log"))).unwrap()
}

fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // Root may raise the hard limit too; otherwise the soft one goes up to it.
    if setrlimit(Resource::RLIMIT_NOFILE, 200_000, 200_000).is_err() {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    getrlimit(Resource::RLIMIT_NOFILE).unwrap().0
}

/// Writes a registry with `n` enrolled devices; returns their keys.
fn enroll_all(state: &Path, n: usize) -> Vec<KeyPair> {
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

fn idle_devices(runtime: &tokio::runtime::Runtime, targets: &[usize]) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("relay");
    let max = *targets.iter().max().unwrap();
    let limit = raise_fd_limit();
    for n in targets.iter().filter(|n| (**n as u64) + 1000 >= limit) {
        println!("(skipping {n} connections: the open-file limit here is {limit})");
    }
    let targets: Vec<usize> = targets.iter().copied().filter(|n| (*n as u64) + 1000 < limit).collect();
    if targets.is_empty() {
        println!("idle devices: the open-file limit ({limit}) is too low for this run");
        return;
    }
    let started = Instant::now();
    let keys = enroll_all(&state, max);
    println!("(generated and enrolled {max} device keys in {:.1} s)", started.elapsed().as_secs_f64());
    let mut relay = Relay::start(&state, "127.0.0.1:0");
    let pid = relay.child.id();
    std::thread::sleep(Duration::from_millis(500));
    let empty = rss_kib(pid);
    println!("\n## Idle device connections (TLS 1.3 + WebSocket + hello), relay pid {pid}");
    println!("| connections | relay RSS (KiB) | growth per connection (KiB) |");
    println!("|---:|---:|---:|");
    println!("| 0 (empty relay, baseline) | {empty} | — |");
    let (url, tls) = (relay.url(), relay.tls());
    let relay_addr: std::net::SocketAddr = relay.addr.parse().unwrap();
    let keys = Arc::new(keys);
    let mut held = Vec::new();
    let mut open = 0usize;
    for n in targets {
        let (url, tls, keys) = (url.clone(), tls.clone(), keys.clone());
        let t0 = Instant::now();
        let batch = runtime.block_on(async move {
            let sem = Arc::new(tokio::sync::Semaphore::new(256));
            let mut tasks = tokio::task::JoinSet::new();
            for i in open..n {
                let (url, tls, keys, sem) = (url.clone(), tls.clone(), keys.clone(), sem.clone());
                tasks.spawn(async move {
                    let _permit = sem.acquire_owned().await.unwrap();
                    let source = std::net::SocketAddr::from(([127, 0, 0, 2 + (i % 200) as u8], 0));
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.bind(source).unwrap();
                    let tcp = socket.connect(relay_addr).await.unwrap();
                    let (ws, _) = dial::connect_over(tcp, &url, tls, Role::Device, &keys[i], DeviceHello::default())
                        .await
                        .unwrap();
                    ws
                });
            }
            let mut out = Vec::new();
            while let Some(ws) = tasks.join_next().await {
                out.push(ws.unwrap());
            }
            out
        });
        let took = t0.elapsed();
        held.extend(batch);
        open = n;
        // Let the relay settle (live.json, allocator) before reading.
        std::thread::sleep(Duration::from_secs(2));
        let rss = rss_kib(pid);
        println!("| {n} | {rss} | {:.1} |", (rss - empty) as f64 / n as f64);
        eprintln!("  ({} connections opened in {:.1} s)", n, took.as_secs_f64());
    }
    drop(held);
    relay.stop();
}

fn round_trip(runtime: &tokio::runtime::Runtime, runs: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    if std::env::var_os("SUPPORT_BENCH_KEEP").is_some() {
        eprintln!("logs kept in {}", tmp.keep().display());
    }
    let state = dir.join("relay");
    let home = dir.join("owner");
    let mut relay = Relay::start(&state, "127.0.0.1:0");
    let op_key = dir.join("op.key");
    let public = {
        let out = Command::new(BIN).args(["operator", "keygen", "--out"]).arg(&op_key).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    relay.admin(&["add-operator", "bench", &public]);
    let token = relay.admin(&["enroll-token"]);
    let owner = |args: &[&str]| {
        let out = Command::new(BIN).args(args).env("SUPPORT_HOME", &home).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    owner(&["trust", "add", "bench", &public]);
    std::fs::create_dir_all(home.join("policy.d")).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(home.join("policy.d/bench.toml"))
        .unwrap();
    f.write_all(b"[[action]]\nname = \"noop\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"does nothing\"\nargv = [\"true\"]\ntimeout_s = 10\n").unwrap();
    owner(&["allow", "--tier", "1", "--minutes", "60"]);
    let ca = state.join("cert.pem");
    let mut daemon = Command::new(BIN)
        .args(["daemon", "--relay", &format!("wss://{}", relay.addr), "--relay-ca"])
        .arg(&ca)
        .args(["--enroll", &token])
        .env("SUPPORT_HOME", &home)
        .stderr(log_file(&state, "daemon"))
        .spawn()
        .unwrap();
    let connected = || {
        let s: serde_json::Value = serde_json::from_str(&owner(&["status", "--json"])).unwrap_or_default();
        s["daemon"]["connected"] == true
    };
    let wait_connected = || {
        let t0 = Instant::now();
        while !connected() {
            assert!(t0.elapsed() < Duration::from_secs(120), "the daemon never connected");
            std::thread::sleep(Duration::from_millis(5));
        }
        t0.elapsed()
    };
    wait_connected();
    let device_id: String = {
        let s: serde_json::Value = serde_json::from_str(&owner(&["status", "--json"])).unwrap();
        s["device_id"].as_str().unwrap().into()
    };
    let sync_file = dir.join("fdatasync.bench");
    let (url, tls) = (relay.url(), relay.tls());
    let (trips, syncs) = runtime.block_on(async {
        let mut session = Session::connect(&url, tls, KeyPair::load(&op_key).unwrap()).await.unwrap();
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&sync_file).unwrap();
        let record = [b'x'; 511];
        let (mut trips, mut syncs) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for i in 0..runs + 20 {
            let t0 = Instant::now();
            file.write_all(&record).unwrap();
            file.write_all(b"\n").unwrap();
            file.sync_data().unwrap();
            let sync = t0.elapsed();
            let run = session.command(&device_id, "noop", BTreeMap::new());
            let t0 = Instant::now();
            let outcome = session.run(&run, |_| {}, std::future::pending()).await.unwrap();
            let trip = t0.elapsed();
            assert!(
                matches!(outcome, Outcome::Finished(DeviceFrame::Result { status: Status::Ok, .. })),
                "{outcome:?}"
            );
            if i >= 20 {
                trips.push(trip);
                syncs.push(sync);
            }
        }
        (trips, syncs)
    });
    let (mut trips, mut syncs) = (trips, syncs);
    trips.sort();
    syncs.sort();
    let target = 2.0 * percentile(&syncs, 0.99) + 5.0;
    println!("\n## Round trip operator → relay → daemon → operator, action `true`, {runs} runs (after 20 warm-up)");
    println!("| what | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|");
    println!(
        "| round trip (2 fsynced audit records inside) | {:.2} | {:.2} |",
        percentile(&trips, 0.5),
        percentile(&trips, 0.99)
    );
    println!(
        "| baseline: raw write + fdatasync, 512 B | {:.2} | {:.2} |",
        percentile(&syncs, 0.5),
        percentile(&syncs, 0.99)
    );
    println!(
        "target p99 ≤ 2 × fdatasync p99 + 5 ms = {target:.2} ms: {}",
        if percentile(&trips, 0.99) <= target { "met" } else { "NOT met" }
    );

    println!("\n## Reconnect after a relay restart (5 times)");
    let addr = relay.addr.clone();
    let mut times = Vec::new();
    for _ in 0..5 {
        relay.stop();
        let t0 = Instant::now();
        while connected() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let seen = t0.elapsed();
        let restarted = Relay::start(&state, &addr);
        let back = wait_connected();
        relay = restarted;
        times.push((seen, back));
    }
    println!("| restart | link seen down (ms) | relay up → daemon connected (ms) |");
    println!("|---:|---:|---:|");
    for (i, (seen, back)) in times.iter().enumerate() {
        println!("| {} | {:.0} | {:.0} |", i + 1, seen.as_secs_f64() * 1000.0, back.as_secs_f64() * 1000.0);
    }
    println!("bound: the first backoff step, 1 s ± 30 % (≤ 1300 ms), plus the handshake");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = daemon.wait();
    relay.stop();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let targets: Vec<usize> = std::env::var("SUPPORT_BENCH_DEVICES")
        .unwrap_or_else(|_| "1000,10000,50000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let runs = std::env::var("SUPPORT_BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    println!("# cargo bench --bench relay");
    round_trip(&runtime, runs);
    // SUPPORT_BENCH_DEVICES= (empty) measures the round trip and the reconnect only.
    if !targets.is_empty() {
        idle_devices(&runtime, &targets);
    }
}
