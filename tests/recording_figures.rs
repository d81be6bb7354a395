//! The cost of recording, at the writer: 50 MiB of terminal output fed to
//! [`Recorder::output`] in 4 KiB chunks (a pty's reads), against a
//! baseline in the same run of the same chunks appended raw to a file
//! (`write_all`, then `sync_all`), in the same directory. The recorder adds
//! the UTF-8 decoding, the JSON escaping, one write per event and the
//! SHA-256. Two inputs: text (what `cat` of a source file shows) and
//! escape-heavy bytes (colour codes and control bytes, JSON's worst case).
//! Ignored by default (it writes 250 MiB or so).
//!
//! `cargo test --test recording_figures -- --ignored --nocapture`

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::time::{Duration, Instant};

use support::recording::{self, Header, Recorder};

const TOTAL: usize = 50 << 20;
const CHUNK: usize = 4096;

/// `TOTAL` bytes of `unit` repeated.
fn stream(unit: &[u8]) -> Vec<u8> {
    unit.iter().copied().cycle().take(TOTAL).collect()
}

fn mib_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

fn raw(dir: &std::path::Path, data: &[u8]) -> Duration {
    let path = dir.join("raw.out");
    let start = Instant::now();
    let mut f = std::fs::OpenOptions::new().append(true).create_new(true).mode(0o600).open(&path).unwrap();
    for chunk in data.chunks(CHUNK) {
        f.write_all(chunk).unwrap();
    }
    f.sync_all().unwrap();
    let took = start.elapsed();
    std::fs::remove_file(path).unwrap();
    took
}

fn recorded(dir: &std::path::Path, id: &str, data: &[u8]) -> (Duration, u64) {
    let header = Header { width: 80, height: 24, timestamp: 0, title: "figure".into(), env: BTreeMap::new() };
    let start = Instant::now();
    let mut rec = Recorder::create(&recording::dir(dir), id, &header, 4 << 30).unwrap();
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        rec.output(Duration::from_micros(i as u64), chunk).unwrap();
    }
    let done = rec.finish().unwrap();
    let took = start.elapsed();
    std::fs::remove_file(done.path).unwrap();
    (took, done.bytes)
}

#[test]
#[ignore = "a figure: cargo test --test recording_figures -- --ignored --nocapture"]
fn recording_throughput_beside_raw_writes() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let text = stream(include_bytes!("../src/recording/mod.rs"));
    let escapes = stream(b"\x1b[1;31mred\x1b[0m \x1b[38;5;214m\xe2\x96\x88\x1b[0m\t\x07\r\n");
    println!(
        "| input (50 MiB in 4 KiB chunks) | raw writes MiB/s | recorded MiB/s | recorded / raw | file bytes / input bytes |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, data) in
        [("text (cat of src/recording/mod.rs)", &text), ("escape-heavy (colours, control bytes)", &escapes)]
    {
        let mut raws = Vec::new();
        let mut recs = Vec::new();
        let mut size = 0;
        for round in 0..3 {
            raws.push(raw(dir.path(), data));
            let (took, bytes) = recorded(dir.path(), &format!("t-{round}"), data);
            recs.push(took);
            size = bytes;
        }
        // The best of three rounds: the machine is shared, the slow rounds are other people's.
        let raw = mib_per_s(TOTAL, *raws.iter().min().unwrap());
        let rec = mib_per_s(TOTAL, *recs.iter().min().unwrap());
        println!("| {name} | {raw:.1} | {rec:.1} | {:.3} | {:.2} |", rec / raw, size as f64 / TOTAL as f64);
    }
}
