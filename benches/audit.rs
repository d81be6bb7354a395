//! Audit log figures, each beside its baseline in the same run:
//!
//! 1. appends/s: `AuditLog::append` (lock, chain, one O_APPEND write,
//!    fdatasync) against a raw `write` + `fdatasync` loop of lines the same
//!    size on the same file system, interleaved in rounds;
//! 2. `verify` records/s over a 1M-record log, against a bare pass that
//!    reads the same file and computes one HMAC-SHA256 per line.
//!
//! Reproduce: `cargo bench --bench audit` (set SUPPORT_BENCH_DIR to measure
//! another file system; SUPPORT_BENCH_RECORDS to change the verify size).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::Instant;

use support::Paths;
use support::audit::{self, AuditLog, Event, Record};

const APPENDS: usize = 3000;

fn sample_record(i: usize) -> Record {
    let mut r = Record::new(Event::ActionFinished);
    r.action = Some("journal-tail".into());
    r.params = Some(BTreeMap::from([("unit".into(), "NetworkManager.service".into()), ("lines".into(), "50".into())]));
    r.request_id = Some(format!("r-{i:016x}"));
    r.task_id = Some(format!("t-{i:016x}"));
    r.operator = Some("alice".into());
    r.tier = Some(1);
    r.status = Some("ok".into());
    r.exit_code = Some(0);
    r.duration_ms = Some(42);
    r.output_bytes = Some(8123);
    r.output_sha256 = Some("9f".repeat(32));
    r
}

fn bench_dir() -> PathBuf {
    std::env::var_os("SUPPORT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let base = bench_dir();
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    println!("audit benchmark in {} (reproduce: cargo bench --bench audit)", base.display());

    // 1. Appends, interleaved with the raw baseline.
    let paths = Paths::under(dir.path().join("home"));
    let mut log = AuditLog::open(&paths).unwrap();
    let line_len = {
        let r = log.append(sample_record(0)).unwrap();
        serde_json::to_string(&r).unwrap().len() + 1
    };
    let raw_path = dir.path().join("raw.jsonl");
    let mut raw = OpenOptions::new().create(true).append(true).open(&raw_path).unwrap();
    let line = format!("{}\n", "x".repeat(line_len - 1));
    // Raw and audit appends alternate one by one, and which goes first alternates too:
    // both meet the same disk weather, and neither always follows the other's journal commit.
    let (mut ours, mut base_lat) = (Vec::with_capacity(APPENDS), Vec::with_capacity(APPENDS));
    for i in 0..APPENDS {
        let mut raw_once = || {
            let t = Instant::now();
            raw.write_all(line.as_bytes()).unwrap();
            raw.sync_data().unwrap();
            base_lat.push(t.elapsed().as_secs_f64());
        };
        if i % 2 == 0 {
            raw_once();
        }
        let record = sample_record(i + 1);
        let t = Instant::now();
        log.append(record).unwrap();
        ours.push(t.elapsed().as_secs_f64());
        if i % 2 == 1 {
            raw_once();
        }
    }
    let rate = |lat: &[f64]| lat.len() as f64 / lat.iter().sum::<f64>();
    let (ours_rate, raw_rate) = (rate(&ours), rate(&base_lat));
    println!("append, {line_len}-byte records, {APPENDS} of each, interleaved one by one, order alternating:");
    println!("  raw write+fdatasync   {raw_rate:>10.0} /s   (median {:.0} us)", median(base_lat.clone()) * 1e6);
    println!(
        "  AuditLog::append      {ours_rate:>10.0} /s   (median {:.0} us; {:.2} x raw; target >= 0.90)",
        median(ours.clone()) * 1e6,
        ours_rate / raw_rate
    );

    // 2. Verify a large log.
    let n: usize = std::env::var("SUPPORT_BENCH_RECORDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let vpaths = Paths::under(dir.path().join("verify"));
    let mut vlog = AuditLog::open(&vpaths).unwrap();
    for start in (0..n).step_by(10_000) {
        vlog.append_batch((start..(start + 10_000).min(n)).map(sample_record).collect()).unwrap();
    }
    let bytes = std::fs::metadata(vpaths.audit()).unwrap().len();
    let key_bytes = std::fs::read(vpaths.audit_key()).unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes);
    let (mut base_rates, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        let mut count = 0usize;
        let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(vpaths.audit()).unwrap());
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).unwrap() > 0 {
            std::hint::black_box(ring::hmac::sign(&key, &buf));
            count += 1;
            buf.clear();
        }
        assert_eq!(count, n);
        base_rates.push(n as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let v = audit::verify(&vpaths).unwrap();
        assert_eq!(v.records as usize, n);
        ours.push(n as f64 / t.elapsed().as_secs_f64());
    }
    let (ours, raw_rate) = (median(ours), median(base_rates));
    println!("verify, {n} records ({:.0} MiB), median of 3:", bytes as f64 / (1 << 20) as f64);
    println!("  read + one HMAC a line {raw_rate:>10.0} records/s");
    println!("  audit::verify          {ours:>10.0} records/s   ({:.2} x baseline; target >= 1M/s)", ours / raw_rate);
}
