//! 100 MB of output into a 1 MiB cap: truncated, marked so, and the daemon's
//! memory stays bounded (its own test binary, so nothing else runs beside it).

mod common;

use std::time::Duration;

use common::lab::{Lab, finish};
use support::Status;

/// Peak resident memory of this process (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_hundred_megabytes_are_truncated_in_bounded_memory() {
    let lab = Lab::start();
    lab.grant(1, Duration::from_secs(600));
    let before = peak_rss_kib();
    let (outcome, mut rx) = lab.submit(lab.command("flood", &[])).await;
    outcome.expect("accepted");
    let (result, output) = finish(&mut rx).await;
    let grew = peak_rss_kib().saturating_sub(before);
    assert_eq!(result.status, Status::Ok, "{result:?}");
    assert_eq!(result.exit_code, Some(0));
    assert!(result.truncated);
    assert_eq!(result.output_bytes, 1024 * 1024);
    assert_eq!(output.len(), 1024 * 1024);
    let expected = ring::digest::digest(&ring::digest::SHA256, &vec![0u8; 1024 * 1024]);
    assert_eq!(result.output_sha256, hex::encode(expected));
    // The output that passed (1 MiB, kept here as frames) plus buffers; not 100 MB.
    assert!(grew < 32 * 1024, "peak RSS grew by {grew} KiB");
    let finished = common::lab::records(&lab.paths)
        .into_iter()
        .find(|r| r.event == support::audit::Event::ActionFinished)
        .unwrap();
    assert_eq!(finished.output_bytes, Some(1024 * 1024));
    assert!(finished.detail.unwrap_or_default().contains("truncated"));
}
