//! Cluster figures (issue 15, DESIGN §9), each beside its baseline in the
//! same run, on one `nats-server -js` on loopback:
//!
//! 1. Cross-relay round trip: a daemon on relay A, an operator on relay B,
//!    interleaved one for one with an operator on A (same relay), action
//!    `true`, SUPPORT_BENCH_RUNS (default 1000) runs each after 20 warm-up.
//!    Target: p99 ≤ 1.5 × same-relay p99 + 2 ms.
//! 2. Memory per idle device connection: a loopback `mosquitto` holding
//!    SUPPORT_BENCH_IDLE (default 8000) idle MQTT clients over TLS 1.3
//!    (the baseline), then a single relay, then a relay of a cluster, each
//!    holding as many idle devices (TLS 1.3 + WebSocket + hello, a ping
//!    every 20 s). Reported: VmRSS growth over the empty server / N, and
//!    beside it the growth of a second relay of the cluster that holds
//!    none of them (what each device costs every other relay) and of
//!    nats-server. Target: relay ≤ 1.0 × mosquitto.
//! 3. Failover: three relays with SUPPORT_BENCH_FAILOVER_PER (default
//!    5000) idle devices each; relay A is SIGKILLed and its devices move
//!    to B or C with the daemon's backoff; an operator on C sends each of
//!    them a `run` until the device itself answers. Reported: time until
//!    all are connected again and until all have answered, beside the
//!    same 5000 runs to devices that never moved (the measurement's own
//!    floor) and the first backoff step; and what one TLS 1.3 handshake
//!    costs the relay and the daemon in CPU (also alone: `handshake`).
//!
//! Reproduce: `nice -n 19 cargo bench --bench cluster` (needs `nats-server`
//! and `mosquitto` on PATH; README says how to install them).
//! SUPPORT_BENCH_ONLY=cross,memory,failover,handshake picks the parts.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::load::{Fleet, Mosquitto, Nats, Target};
use common::{BIN, Relay, Rig, percentile, rss_kib, session_on, trip};
use support::protocol::{self, DeviceFrame, FromRelay, ToRelay};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn cross_relay(runtime: &tokio::runtime::Runtime, dir: &Path, runs: usize) {
    let nats = Nats::start(&dir.join("nats"));
    let a = Relay::start_clustered(&dir.join("a/relay"), "127.0.0.1:0", &nats.url);
    let b = Relay::start_clustered(&dir.join("b/relay"), "127.0.0.1:0", &nats.url);
    let rig = Rig::around(BIN, &dir.join("a"), a);
    let (mut same, mut cross) = runtime.block_on(async {
        let mut on_a = rig.session().await;
        let mut on_b = session_on(&b, &rig.op_key).await;
        let (mut same, mut cross) = (vec![], vec![]);
        for i in 0..runs + 20 {
            let s = trip(&mut on_a, &rig.device_id, true).await;
            let c = trip(&mut on_b, &rig.device_id, true).await;
            if i >= 20 {
                same.push(s);
                cross.push(c);
            }
        }
        (same, cross)
    });
    same.sort();
    cross.sort();
    let target = 1.5 * percentile(&same, 0.99) + 2.0;
    println!("\n## Round trip across relays: daemon on relay A, action `true`, {runs} runs each, interleaved");
    println!("| what | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|");
    let row =
        |what: &str, v: &[Duration]| println!("| {what} | {:.2} | {:.2} |", percentile(v, 0.5), percentile(v, 0.99));
    row("baseline: operator on relay A (same relay), answers checked", &same);
    row("operator on relay B (A and B over NATS), answers checked", &cross);
    println!(
        "target p99 ≤ 1.5 × same-relay p99 + 2 ms = {target:.2} ms: {}",
        if percentile(&cross, 0.99) <= target { "met" } else { "NOT met" }
    );
}

/// Waits for `pid`'s RSS to stop moving (the allocator and kernel settle), then reads it.
fn settled_rss(pid: u32) -> u64 {
    std::thread::sleep(Duration::from_secs(2));
    let mut last = rss_kib(pid);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(500));
        let now = rss_kib(pid);
        if now.abs_diff(last) < 64 {
            return now;
        }
        last = now;
    }
    last
}

fn memory(runtime: &tokio::runtime::Runtime, dir: &Path, n: usize) {
    let _in_runtime = runtime.enter();
    let single = dir.join("single/relay");
    let t0 = Instant::now();
    let keys = Arc::new(common::enroll_all(&single, n));
    eprintln!("(generated and enrolled {n} device keys in {:.1} s)", t0.elapsed().as_secs_f64());
    let clustered = dir.join("clustered/relay");
    std::fs::create_dir_all(&clustered).unwrap();
    std::fs::copy(single.join("registry.json"), clustered.join("registry.json")).unwrap();
    let mut rows = vec![];

    // What each relay pays per enrolled device before any connects: its copy of the registry.
    let bare = Relay::start(&dir.join("bare/relay"), "127.0.0.1:0");
    let bare_rss = settled_rss(bare.child.id());
    drop(bare);
    // Single relay first: its self-signed certificate serves mosquitto too.
    let relay = Relay::start(&single, "127.0.0.1:0");
    let mosquitto = Mosquitto::start(&dir.join("single"), &single);
    let pid = mosquitto.proc.0.id();
    let empty = settled_rss(pid);
    let clients = runtime.block_on(mosquitto.clients(0, n));
    let full = settled_rss(pid);
    rows.push(("baseline: mosquitto, idle MQTT clients over TLS 1.3", empty, full));
    drop(clients);
    drop(mosquitto);

    let pid = relay.child.id();
    let empty = settled_rss(pid);
    let fleet = Fleet::start(keys.clone(), vec![Target::of(&relay)], |_| vec![0], 256);
    runtime.block_on(fleet.wait(1, Duration::from_secs(600), |c| c[0] == n)).expect("all devices connected");
    let full = settled_rss(pid);
    rows.push(("single relay (registry.json)", empty, full));
    runtime.block_on(fleet.stop());
    drop(relay);

    let nats = Nats::start(&dir.join("clustered/nats"));
    let migrated = std::process::Command::new(BIN)
        .args(["relay", "--state"])
        .arg(&clustered)
        .args(["migrate", "--to", &nats.url])
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let a = Relay::start_clustered(&clustered, "127.0.0.1:0", &nats.url);
    let b = Relay::start_clustered(&dir.join("clustered-b/relay"), "127.0.0.1:0", &nats.url);
    let pids = [a.child.id(), b.child.id(), nats.proc.0.id()];
    let empty: Vec<u64> = pids.iter().map(|p| settled_rss(*p)).collect();
    let fleet = Fleet::start(keys.clone(), vec![Target::of(&a)], |_| vec![0], 256);
    runtime.block_on(fleet.wait(1, Duration::from_secs(600), |c| c[0] == n)).expect("all devices connected");
    let full: Vec<u64> = pids.iter().map(|p| settled_rss(*p)).collect();
    rows.push(("relay of a cluster (NATS), holding the devices", empty[0], full[0]));
    rows.push(("another relay of that cluster, holding none of them", empty[1], full[1]));
    rows.push(("nats-server -js (registry and presence buckets)", empty[2], full[2]));
    runtime.block_on(fleet.stop());

    let per = |e: u64, f: u64| (f as f64 - e as f64) / n as f64;
    let base = per(rows[0].1, rows[0].2);
    println!("\n## Memory per idle connection, {n} connections (VmRSS growth / {n})");
    println!("| server | empty (KiB) | with {n} (KiB) | per connection (KiB) | × mosquitto |");
    println!("|---|---:|---:|---:|---:|");
    for (what, e, f) in &rows {
        println!("| {what} | {e} | {f} | {:.1} | {:.2} |", per(*e, *f), per(*e, *f) / base);
    }
    println!(
        "the registry's copy in each relay: empty relay {bare_rss} KiB, with {n} enrolled {} KiB: {:.2} KiB per enrolled device",
        rows[1].1,
        (rows[1].1 as f64 - bare_rss as f64) / n as f64
    );
    for (what, e, f) in &rows[1..3] {
        let ok = per(*e, *f) <= base;
        println!("target {what} ≤ 1.0 × mosquitto ({base:.1} KiB): {}", if ok { "met" } else { "NOT met" });
    }
}

/// Runs `noop` from `session` to every device in `ids` until each answers
/// itself; per device, the time from `t0` to its answer.
async fn reach(session: &mut support::operator::Session, ids: &[String], t0: Instant) -> HashMap<String, Duration> {
    let mut reached = HashMap::new();
    let mut ready: std::collections::VecDeque<(String, Instant)> = ids.iter().map(|d| (d.clone(), t0)).collect();
    let mut inflight: HashMap<String, String> = HashMap::new();
    while reached.len() < ids.len() {
        assert!(t0.elapsed() < Duration::from_secs(600), "devices unreachable after 600 s");
        while inflight.len() < 200 && ready.front().is_some_and(|(_, at)| *at <= Instant::now()) {
            let (device, _) = ready.pop_front().unwrap();
            let run = session.command(&device, "noop", BTreeMap::new());
            session.send_raw(&protocol::encode(&ToRelay::Run(run.clone()))).await.unwrap();
            inflight.insert(run.request_id, device);
        }
        match session.recv(Duration::from_millis(20)).await {
            Ok(FromRelay::Answer(DeviceFrame::Denied { request_id, .. })) => {
                if let Some(device) = inflight.remove(&request_id) {
                    reached.insert(device, t0.elapsed());
                }
            }
            Ok(FromRelay::Error { request_id: Some(r), .. }) => {
                if let Some(device) = inflight.remove(&r) {
                    ready.push_back((device, Instant::now() + Duration::from_millis(50)));
                }
            }
            Ok(_) => {}
            Err(support::dial::DialError::Timeout(_)) => {}
            Err(e) => panic!("operator session: {e}"),
        }
    }
    reached
}

/// CPU time of the calling thread (user + system), from `getrusage(RUSAGE_THREAD)`.
fn thread_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_THREAD).unwrap();
    let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(u.user_time()) + tv(u.system_time())
}

/// `n` TLS 1.3 handshakes one after another, the relay's server config
/// (its certificate from `state`) on one thread against the daemon's
/// client config on another, over in-memory pipes: the CPU each side
/// spends per handshake (relay, daemon).
fn handshake_cost(state: &Path, n: usize) -> (Duration, Duration) {
    let (identity, _) = support::tls::Identity::self_signed(state, &[]).unwrap();
    let server = tokio_rustls::TlsAcceptor::from(identity.server_config().unwrap());
    let client = tokio_rustls::TlsConnector::from(
        support::tls::RelayTrust::CaFile(state.join("cert.pem")).client_config().unwrap(),
    );
    let name = support::tls::server_name("localhost").unwrap();
    let (to_server, from_client) = std::sync::mpsc::channel::<tokio::io::DuplexStream>();
    let relay = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let cpu0 = thread_cpu();
        for pipe in from_client {
            rt.block_on(server.accept(pipe)).unwrap();
        }
        (thread_cpu() - cpu0) / n as u32
    });
    let daemon = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let cpu0 = thread_cpu();
        // Kept open until the relay's side is done: it writes its session tickets after the client's Finished.
        let mut open = Vec::with_capacity(n);
        for _ in 0..n {
            let (a, b) = tokio::io::duplex(16 << 10);
            to_server.send(a).unwrap();
            open.push(rt.block_on(client.connect(name.clone(), b)).unwrap());
        }
        drop(to_server);
        let cpu = (thread_cpu() - cpu0) / n as u32;
        (cpu, open)
    });
    let (daemon, open) = daemon.join().unwrap();
    let relay = relay.join().unwrap();
    drop(open);
    (relay, daemon)
}

/// Prints [`handshake_cost`] over 2000 handshakes.
fn print_handshake_cost(dir: &Path) {
    let (relay, daemon) = handshake_cost(&dir.join("handshakes"), 2000);
    println!(
        "one TLS 1.3 handshake, CPU: the relay's side {:.3} ms ({:.0} a second per core), the daemon's {:.3} ms",
        relay.as_secs_f64() * 1000.0,
        1.0 / relay.as_secs_f64(),
        daemon.as_secs_f64() * 1000.0
    );
}

fn failover(runtime: &tokio::runtime::Runtime, dir: &Path, per: usize) {
    let limit = common::raise_fd_limit();
    let nats = Nats::start(&dir.join("nats"));
    let state = |r: &str| dir.join(format!("{r}/relay"));
    let t0 = Instant::now();
    let keys = Arc::new(common::enroll_all(&state("a"), 3 * per));
    let migrated = std::process::Command::new(BIN)
        .args(["relay", "--state"])
        .arg(state("a"))
        .args(["migrate", "--to", &nats.url])
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    eprintln!(
        "(enrolled {} devices in the cluster in {:.1} s; open-file limit {limit})",
        3 * per,
        t0.elapsed().as_secs_f64()
    );
    let mut relays: Vec<Relay> =
        ["a", "b", "c"].iter().map(|r| Relay::start_clustered(&state(r), "127.0.0.1:0", &nats.url)).collect();
    let op_key = dir.join("op.key");
    let out = std::process::Command::new(BIN).args(["operator", "keygen", "--out"]).arg(&op_key).output().unwrap();
    relays[0].admin(&["add-operator", "bench", String::from_utf8_lossy(&out.stdout).trim()]);
    let targets: Vec<Target> = relays.iter().map(Target::of).collect();
    // Device i starts on relay i % 3; its next relay alternates between the other two.
    let order = |i: usize| {
        let (s, k) = (i % 3, (i / 3) % 2);
        vec![s, (s + 1 + k) % 3, (s + 2 - k) % 3]
    };
    let victims: Vec<String> = (0..3 * per).filter(|i| i % 3 == 0).map(|i| keys[i].public_key().device_id()).collect();
    let stayers: Vec<String> = (0..3 * per).filter(|i| i % 3 == 2).map(|i| keys[i].public_key().device_id()).collect();
    runtime.block_on(async {
        let t0 = Instant::now();
        let fleet = Fleet::start(keys.clone(), targets, order, 256);
        fleet.wait(3, Duration::from_secs(900), |c| c.iter().all(|n| *n == per)).await.expect("all devices connected");
        let first_connect = t0.elapsed();
        let mut on_c = session_on(&relays[2], &op_key).await;
        // Presence settles: every relay learns who holds what. Then the floor: runs to devices that stay put.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let t_floor = Instant::now();
        let floor = reach(&mut on_c, &victims, t_floor).await;
        let floor_local = reach(&mut on_c, &stayers, Instant::now()).await;
        let floor_all = t_floor.elapsed();
        let rss: Vec<u64> = relays.iter().map(|r| rss_kib(r.child.id())).collect();
        let killed = Instant::now();
        relays[0].child.kill().unwrap();
        let _ = relays[0].child.wait();
        // The operator starts at once and tries each device until it answers, while they move.
        let (back, reached) =
            tokio::join!(fleet.wait(3, Duration::from_secs(600), |c| c[0] == 0 && c[1] + c[2] == 3 * per), async {
                let r = reach(&mut on_c, &victims, killed).await;
                (r, killed.elapsed())
            });
        let (reached, all) = reached;
        let mut times: Vec<Duration> = reached.values().copied().collect();
        times.sort();
        let spread = fleet.connected(3);
        let retries = fleet.retries.load(Ordering::Relaxed);
        let fleet_errors = fleet.errors.clone();
        fleet.stop().await;
        let slowest = |m: &HashMap<String, Duration>| m.values().max().copied().unwrap_or_default().as_secs_f64();
        println!("\n## Failover: 3 relays × {per} idle devices, relay A SIGKILLed");
        println!("relays' RSS before the kill (KiB): A {}, B {}, C {}", rss[0], rss[1], rss[2]);
        println!("| what | time (s) |");
        println!("|---|---:|");
        println!(
            "| baseline: an operator on C reaches A's {per} devices before the kill (via NATS), one run each | {:.2} |",
            slowest(&floor)
        );
        println!("| baseline: the same operator reaches C's own {per} devices | {:.2} |", slowest(&floor_local));
        println!(
            "| baseline: the first connections of all {} devices, 256 handshakes at a time ({:.0} a second) | {:.2} |",
            3 * per,
            (3 * per) as f64 / first_connect.as_secs_f64(),
            first_connect.as_secs_f64()
        );
        let _ = floor_all;
        match back {
            Some(t) => println!(
                "| kill → all {per} of A's devices connected to B or C (now B {}, C {}) | {:.2} |",
                spread[1],
                spread[2],
                t.as_secs_f64()
            ),
            None => println!("| kill → all of A's devices connected again | not within 600 s |"),
        }
        println!("| kill → the last of A's devices answers the operator on C (reachable) | {:.2} |", all.as_secs_f64());
        println!(
            "| reachable after the kill, per device: p50 {:.2} s, p99 {:.2} s | |",
            percentile(&times, 0.5) / 1000.0,
            percentile(&times, 0.99) / 1000.0
        );
        println!("connection attempts that failed and were retried with the backoff: {retries}");
        for (why, n) in common::lock(&fleet_errors).iter() {
            println!("  {n} × {why}");
        }
        print_handshake_cost(dir);
        let bound = support::daemon::BACKOFF_S[0] as f64 * (1.0 + support::daemon::JITTER);
        println!(
            "backoff bound: the first step, {} s ± {:.0} % (≤ {bound:.1} s), then {} s, {} s, …",
            support::daemon::BACKOFF_S[0],
            support::daemon::JITTER * 100.0,
            support::daemon::BACKOFF_S[1],
            support::daemon::BACKOFF_S[2]
        );
    });
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let limit = common::raise_fd_limit();
    let only = std::env::var("SUPPORT_BENCH_ONLY").unwrap_or_else(|_| "cross,memory,failover".into());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    if std::env::var_os("SUPPORT_BENCH_KEEP").is_some() {
        eprintln!("logs kept in {}", tmp.keep().display());
    }
    println!("# cargo bench --bench cluster (open-file limit {limit})");
    if only.contains("cross") {
        cross_relay(&runtime, &dir.join("cross"), env_usize("SUPPORT_BENCH_RUNS", 1000));
    }
    if only.contains("memory") {
        memory(&runtime, &dir.join("memory"), env_usize("SUPPORT_BENCH_IDLE", 8000));
    }
    if only.contains("handshake") {
        print_handshake_cost(&dir);
    }
    if only.contains("failover") {
        failover(&runtime, &dir.join("failover"), env_usize("SUPPORT_BENCH_FAILOVER_PER", 5000));
    }
}
