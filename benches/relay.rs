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
//! 4. Signed answers: signing and checking 1 KiB `output` answers one at
//!    a time, beside encoding and decoding them unsigned (target: ≤ 0.3 ms
//!    p50 on a 1 KiB answer); the operator's side of a 100 MiB output
//!    stream in MiB/s, beside decoding alone. The round trip (2.) is
//!    measured checked, unchecked, and, with SUPPORT_BENCH_BASELINE_BIN set
//!    to a `support` binary built before answers were signed, against that
//!    binary's relay and daemon, interleaved one for one.
//!
//! Reproduce: `cargo bench --bench relay`.

mod common;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{BIN, Relay, Rig, enroll_all, percentile, raise_fd_limit, rss_kib, trip};
use support::KeyPair;
use support::dial::{self, DeviceHello};
use support::protocol::answer::{AnswerCheck, Chain};
use support::protocol::{self, DeviceFrame, FromRelay, Role, Status, ToRelay};

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
    let rig = Rig::start(BIN, &dir.join("signed"));
    // The code before answers were signed, built from its commit: its relay and daemon beside ours.
    let baseline_bin = std::env::var("SUPPORT_BENCH_BASELINE_BIN").ok();
    let baseline = baseline_bin.as_deref().map(|bin| Rig::start(bin, &dir.join("unsigned")));
    let sync_file = dir.join("fdatasync.bench");
    let (mut trips, mut raw, mut old, mut syncs) = runtime.block_on(async {
        let mut session = rig.session().await;
        let mut old_session = match &baseline {
            Some(b) => Some(b.session().await),
            None => None,
        };
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&sync_file).unwrap();
        let record = [b'x'; 511];
        let (mut trips, mut raw, mut old, mut syncs) = (vec![], vec![], vec![], vec![]);
        for i in 0..runs + 20 {
            let t0 = Instant::now();
            file.write_all(&record).unwrap();
            file.write_all(b"\n").unwrap();
            file.sync_data().unwrap();
            let sync = t0.elapsed();
            let trip_checked = trip(&mut session, &rig.device_id, true).await;
            let trip_unchecked = trip(&mut session, &rig.device_id, false).await;
            let trip_old = match (&mut old_session, &baseline) {
                (Some(s), Some(b)) => Some(trip(s, &b.device_id, false).await),
                _ => None,
            };
            if i >= 20 {
                trips.push(trip_checked);
                raw.push(trip_unchecked);
                old.extend(trip_old);
                syncs.push(sync);
            }
        }
        (trips, raw, old, syncs)
    });
    for v in [&mut trips, &mut raw, &mut old, &mut syncs] {
        v.sort();
    }
    let target = 2.0 * percentile(&syncs, 0.99) + 5.0;
    println!(
        "\n## Round trip operator → relay → daemon → operator, action `true`, {runs} runs each, interleaved (after 20 warm-up)"
    );
    println!("| what | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|");
    let row = |what: &str, v: &[Duration]| {
        println!("| {what} | {:.2} | {:.2} |", percentile(v, 0.5), percentile(v, 0.99));
    };
    row("round trip, answers signed by the device and checked (2 fsynced audit records inside)", &trips);
    row("same relay and daemon, answers signed but not checked by the operator", &raw);
    if !old.is_empty() {
        row("baseline: the code before signed answers (SUPPORT_BENCH_BASELINE_BIN), answers unsigned", &old);
    } else {
        println!(
            "(set SUPPORT_BENCH_BASELINE_BIN to a `support` binary built before signed answers for the unsigned baseline)"
        );
    }
    row("baseline: raw write + fdatasync, 512 B", &syncs);
    println!(
        "target p99 ≤ 2 × fdatasync p99 + 5 ms = {target:.2} ms: {}",
        if percentile(&trips, 0.99) <= target { "met" } else { "NOT met" }
    );
    drop(baseline);
    reconnect(rig);
}

/// The relay is stopped and started again five times; the time until the daemon's link is up.
fn reconnect(mut rig: Rig) {
    println!("\n## Reconnect after a relay restart (5 times)");
    let addr = rig.relay.addr.clone();
    let state = rig.relay.state.clone();
    let mut times = Vec::new();
    for _ in 0..5 {
        rig.relay.stop();
        let t0 = Instant::now();
        while rig.connected() {
            std::thread::sleep(Duration::from_millis(2));
        }
        let seen = t0.elapsed();
        rig.relay = Relay::start(&state, &addr);
        let back = rig.wait_connected();
        times.push((seen, back));
    }
    println!("| restart | link seen down (ms) | relay up → daemon connected (ms) |");
    println!("|---:|---:|---:|");
    for (i, (seen, back)) in times.iter().enumerate() {
        println!("| {} | {:.0} | {:.0} |", i + 1, seen.as_secs_f64() * 1000.0, back.as_secs_f64() * 1000.0);
    }
    println!("bound: the first backoff step, 1 s ± 30 % (≤ 1300 ms), plus the handshake");
}

/// The device's signing and the operator's check, directly: 1 KiB
/// `output` answers one at a time (sign + encode on the device, decode +
/// check on the operator), beside the same frames encoded and decoded
/// unsigned; then the operator's side of a 100 MiB output stream in 16 KiB
/// answers, beside decoding the same stream without checks.
fn answers() {
    let device = KeyPair::generate().0;
    let operator = KeyPair::generate().0;
    let device_id = device.public_key().device_id();
    let run = support::Run::signed(&operator, "r-bench", &device_id, "noop", BTreeMap::new(), chrono::Utc::now());
    let text = |n: usize, i: usize| -> String {
        let line = format!("{i:08} the quick brown fox jumps over the lazy dog 0123456789\n");
        line.repeat(n / line.len() + 1)[..n].to_string()
    };
    let frames = std::env::var("SUPPORT_BENCH_ANSWERS").ok().and_then(|s| s.parse().ok()).unwrap_or(5000);
    let (mut sign, mut check, mut both, mut plain) = (vec![], vec![], vec![], vec![]);
    let mut chain = Chain::new(&device_id, &run);
    let mut checker = AnswerCheck::new(device.public_key(), &run);
    let mut accepted = DeviceFrame::accepted("r-bench", "t-bench");
    chain.sign(&device, &mut accepted);
    checker.check(&accepted).unwrap();
    for i in 0..frames {
        let frame = DeviceFrame::output("r-bench", i as u64, support::protocol::Stream::Stdout, text(1024, i));
        let t0 = Instant::now();
        let wire = protocol::encode(&ToRelay::Answer(frame.clone()));
        let back: FromRelay = protocol::decode(&wire).unwrap();
        plain.push(t0.elapsed());
        std::hint::black_box(back);
        let t0 = Instant::now();
        let mut signed = frame;
        chain.sign(&device, &mut signed);
        let wire = protocol::encode(&ToRelay::Answer(signed));
        let t1 = Instant::now();
        let FromRelay::Answer(back) = protocol::decode::<FromRelay>(&wire).unwrap() else { unreachable!() };
        checker.check(&back).unwrap();
        let t2 = Instant::now();
        sign.push(t1 - t0);
        check.push(t2 - t1);
        both.push(t2 - t0);
    }
    for v in [&mut sign, &mut check, &mut both, &mut plain] {
        v.sort();
    }
    println!("\n## Signed answers, 1 KiB `output` each, {frames} in a row");
    println!("| what | p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|");
    let row = |what: &str, v: &[Duration]| {
        println!("| {what} | {:.3} | {:.3} |", percentile(v, 0.5), percentile(v, 0.99));
    };
    row("baseline: encode + decode, unsigned", &plain);
    row("device: sign + encode", &sign);
    row("operator: decode + check (signature, place, chain)", &check);
    row("both", &both);
    println!(
        "target: signing costs ≤ 0.3 ms p50 on a 1 KiB answer: {}",
        if percentile(&both, 0.5) - percentile(&plain, 0.5) <= 0.3 { "met" } else { "NOT met" }
    );

    // 100 MiB in 16 KiB answers, signed beforehand; the operator's side timed.
    let chunk = 16 * 1024;
    let stream_mib: usize = std::env::var("SUPPORT_BENCH_STREAM_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    let count = stream_mib * 1024 * 1024 / chunk;
    let mut chain = Chain::new(&device_id, &run);
    let mut wires = Vec::with_capacity(count + 2);
    let mut first = DeviceFrame::accepted("r-bench", "t-bench");
    chain.sign(&device, &mut first);
    wires.push(protocol::encode(&ToRelay::Answer(first)));
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut bytes = 0u64;
    for i in 0..count {
        let data = text(chunk, i);
        digest.update(data.as_bytes());
        bytes += data.len() as u64;
        let mut f = DeviceFrame::output("r-bench", i as u64, support::protocol::Stream::Stdout, data);
        chain.sign(&device, &mut f);
        wires.push(protocol::encode(&ToRelay::Answer(f)));
    }
    let mut end = DeviceFrame::result(
        "r-bench",
        &support::TaskResult {
            status: Status::Ok,
            exit_code: Some(0),
            duration_ms: 1,
            truncated: false,
            output_bytes: bytes,
            output_sha256: hex::encode(digest.finish()),
            cancelled_by: None,
            reason: None,
        },
    );
    chain.sign(&device, &mut end);
    wires.push(protocol::encode(&ToRelay::Answer(end)));
    let mib = bytes as f64 / (1024.0 * 1024.0);
    let t0 = Instant::now();
    for w in &wires {
        std::hint::black_box(protocol::decode::<FromRelay>(w).unwrap());
    }
    let decode_only = t0.elapsed();
    let t0 = Instant::now();
    let mut checker = AnswerCheck::new(device.public_key(), &run);
    for w in &wires {
        let FromRelay::Answer(f) = protocol::decode::<FromRelay>(w).unwrap() else { unreachable!() };
        checker.check(&f).unwrap();
    }
    let checked = t0.elapsed();
    println!("\n## The operator's side of a {mib:.0} MiB output stream ({count} answers of 16 KiB), one thread");
    println!("| what | time (s) | MiB/s |");
    println!("|---|---:|---:|");
    println!("| baseline: decode only | {:.2} | {:.0} |", decode_only.as_secs_f64(), mib / decode_only.as_secs_f64());
    println!(
        "| decode + check every answer + the result's SHA-256 | {:.2} | {:.0} |",
        checked.as_secs_f64(),
        mib / checked.as_secs_f64()
    );
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
    answers();
    round_trip(&runtime, runs);
    // SUPPORT_BENCH_DEVICES= (empty) measures the round trip and the reconnect only.
    if !targets.is_empty() {
        idle_devices(&runtime, &targets);
    }
}
