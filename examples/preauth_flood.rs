//! A one-off measurement (not a test, not part of `cargo bench`): the
//! relay's memory while N strangers, none past `hello`, each send most of
//! a large frame and never finish it.
//!
//! ```text
//! cargo run --example preauth_flood -- PATH/TO/support [N [SECONDS]]
//! ```
//!
//! Starts `PATH/TO/support relay serve --self-signed` on a loopback port,
//! opens N (default 1000) TLS WebSockets to `/v1/device`, and on each, after
//! the challenge, writes the header of a text frame of just under 1 MiB and
//! then 960 KiB of it. Reports the relay's RSS before, and its peak
//! (`VmHWM`) over the next SECONDS (default 10). Give it an
//! older binary to see the figure before the pre-hello cap.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the strangers got done: challenges seen, payload bytes written.
#[derive(Default)]
struct Counts {
    challenged: AtomicU64,
    bytes: AtomicU64,
}
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// One stranger: TLS, upgrade, challenge, then most of a frame of `claimed` bytes.
async fn stranger(addr: String, tls: Arc<rustls::ClientConfig>, claimed: u64, sent: usize, counts: Arc<Counts>) {
    let Ok(tcp) = tokio::net::TcpStream::connect(&addr).await else { return };
    let connector = tokio_rustls::TlsConnector::from(tls);
    let Ok(stream) = connector.connect(support::tls::server_name("127.0.0.1").unwrap(), tcp).await else { return };
    let url = format!("wss://{addr}/v1/device");
    let Ok((mut ws, _)) = tokio_tungstenite::client_async_with_config(url, stream, None).await else { return };
    let _challenge = ws.next().await;
    counts.challenged.fetch_add(1, Ordering::Relaxed);
    // A masked text frame header (mask key 0), written under the WebSocket
    // layer so the frame is never finished.
    let mut head = vec![0x81, 0x80 | 127];
    head.extend_from_slice(&claimed.to_be_bytes());
    head.extend_from_slice(&[0, 0, 0, 0]);
    let raw = ws.get_mut();
    if raw.write_all(&head).await.is_err() {
        return;
    }
    let chunk = vec![b'x'; 64 << 10];
    let mut left = sent;
    while left > 0 {
        let n = left.min(chunk.len());
        if raw.write_all(&chunk[..n]).await.is_err() || raw.flush().await.is_err() {
            return;
        }
        left -= n;
        counts.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
}

fn main() {
    let mut args = std::env::args().skip(1);
    let bin = args.next().expect("usage: preauth_flood PATH/TO/support [N]");
    let n: usize = args.next().map(|s| s.parse().expect("N is a number")).unwrap_or(1000);
    let wait_s: u64 = args.next().map(|s| s.parse().expect("SECONDS is a number")).unwrap_or(10);
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("relay");
    let mut relay = Command::new(&bin)
        .args(["relay", "--state"])
        .arg(&state)
        .args(["serve", "--self-signed", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(relay.stdout.take().unwrap()).lines();
    let addr = lines.next().unwrap().unwrap().strip_prefix("listening on ").unwrap().to_string();
    let pid = relay.id();
    std::thread::sleep(Duration::from_millis(500));
    let empty = status_kib(pid, "VmRSS:");
    let tls = support::tls::RelayTrust::CaFile(state.join("cert.pem")).client_config().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let claimed = (1u64 << 20) - 16;
    runtime.block_on(async {
        let counts = Arc::new(Counts::default());
        let mut strangers = tokio::task::JoinSet::new();
        for _ in 0..n {
            strangers.spawn(stranger(addr.clone(), tls.clone(), claimed, 960 << 10, counts.clone()));
        }
        tokio::time::sleep(Duration::from_secs(wait_s)).await;
        let peak = status_kib(pid, "VmHWM:");
        println!(
            "in {wait_s} s: {} challenged, {} MiB of frame payload written",
            counts.challenged.load(Ordering::Relaxed),
            counts.bytes.load(Ordering::Relaxed) >> 20
        );
        println!("relay {bin}");
        println!("{n} strangers before hello, each sending 960 KiB of a {claimed}-byte frame");
        println!(
            "relay RSS empty {empty} KiB, peak {peak} KiB, growth {:.1} KiB per stranger",
            (peak - empty) as f64 / n as f64
        );
        strangers.abort_all();
    });
    let _ = relay.kill();
    let _ = relay.wait();
}
