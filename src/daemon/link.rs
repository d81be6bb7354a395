//! The daemon's one outbound connection to the relay (DESIGN §7).
//!
//! A loop around one session: dial (TLS 1.3, relay pinned), prove the
//! device key (`challenge` → `hello` → `hello_ack`), then serve: `run`
//! goes to [`Daemon::submit`] (the gate, the audit record, the executor),
//! `cancel` stops that request's task, and every frame the tasks produce
//! goes back. A WebSocket ping every 20 s; nothing heard for 50 s is a dead
//! link; a `heartbeat` every 30 s. When a session ends the loop waits
//! 1, 2, 4, 8, 16, 30, 60 s (±30 % jitter), back to 1 s after a healthy
//! session, and frames produced meanwhile wait in a bounded queue.
//!
//! Every answer is signed by the device key as it is sent (see
//! [`protocol::answer`]): each `run` gets its own [`Chain`], and a frame
//! the offline queue drops is never signed, so what goes out stays one
//! unbroken chain and the next answer says how many were left out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::Daemon;
pub use crate::control_api::LinkStatus;
use crate::dial::{self, DeviceHello, RelayUrl};
use crate::protocol::answer::Chain;
use crate::protocol::{
    self, DEAD_AFTER, DeviceFrame, FromRelay, Heartbeat, PING_EVERY, Role, SEND_TIMEOUT, StoppedBy, ToRelay,
};
use crate::secret::Secret;

/// Waits between attempts, in seconds, before jitter; the last repeats.
pub const BACKOFF_S: [u64; 7] = [1, 2, 4, 8, 16, 30, 60];
/// Each wait is scaled by a random factor in `1 ± JITTER`.
pub const JITTER: f64 = 0.3;
/// A heartbeat this often.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(30);
/// For tests only: `SUPPORT_HEARTBEAT_MS=N` makes the heartbeat come every
/// N ms (at least 50, at most 30 s), so a test sees the
/// audit witness at work without waiting 30 s.
pub const HEARTBEAT_ENV: &str = "SUPPORT_HEARTBEAT_MS";
/// A session authenticated for this long was healthy: the backoff restarts at 1 s.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// Frames kept while the link is down.
pub const OFFLINE_QUEUE: usize = 1024;
/// Commands being admitted at once; past this the link stops reading.
const MAX_ADMITTING: usize = 16;
/// Frames of one request on their way to the link's queue.
const REQUEST_FRAMES: usize = 16;
/// The error of a session the relay ended with close code 1001.
const GOING_AWAY: &str = "the relay is restarting (it closed the connection with 1001 going away)";

/// Where the relay is and how to recognise it.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// The relay's `wss://` URL.
    pub url: RelayUrl,
    /// Other relays of the same cluster (`--relay` repeated): after a
    /// failed or ended session the link tries the next, `url` first, in
    /// turn, with the same backoff. Every one is recognised by `tls`.
    pub more: Vec<RelayUrl>,
    /// TLS 1.3 with the relay pinned (its CA or its certificate's fingerprint).
    pub tls: Arc<rustls::ClientConfig>,
    /// A one-time enrollment token, sent until the relay has pinned the device.
    pub enroll_token: Option<Secret>,
}

/// The wait before attempt `attempt` (0-based) of a run of failures, with
/// `unit` a random number in [0, 1) choosing the jitter.
pub fn backoff(attempt: usize, unit: f64) -> Duration {
    let base = BACKOFF_S[attempt.min(BACKOFF_S.len() - 1)] as f64;
    Duration::from_secs_f64(base * (1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0)))
}

fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    crate::fill_random(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// A frame of one request, and that request's chain: signed when sent.
pub(crate) struct Outgoing {
    frame: DeviceFrame,
    chain: Arc<Mutex<Chain>>,
    /// Signed already (a send that failed): sent again as it is.
    signed: bool,
}

impl Outgoing {
    /// The frame as it goes out: signed now, as the next of its chain,
    /// unless it was signed for an earlier attempt.
    fn seal(&mut self, key: &crate::KeyPair) -> ToRelay {
        if !self.signed {
            crate::lock(&self.chain).sign(key, &mut self.frame);
            self.signed = true;
        }
        ToRelay::Answer(self.frame.clone())
    }
}

/// Frames produced while the link is down, oldest first. When full, the
/// oldest `output` frame goes first; `accepted`, `result` and `denied`
/// are dropped only when nothing else is left (the audit log keeps them all).
/// A dropped frame was never signed: its chain counts it, and the next
/// answer of that request says so (`dropped`).
#[derive(Default)]
struct OfflineQueue {
    frames: VecDeque<Outgoing>,
    dropped: u64,
}

impl OfflineQueue {
    fn push(&mut self, frame: Outgoing) {
        if self.frames.len() >= OFFLINE_QUEUE {
            // Only a frame not yet signed may go: its chain counts it, and the
            // next signed answer says so (`dropped`). A signed one (re-queued after
            // a failed send) is never dropped, so the queue may run over by those.
            let output = |f: &Outgoing| !f.signed && matches!(f.frame, DeviceFrame::Output { .. });
            let victim = self.frames.iter().position(output).or_else(|| self.frames.iter().position(|f| !f.signed));
            match victim.and_then(|v| self.frames.remove(v)) {
                Some(gone) => self.leave_out(&gone),
                // Nothing queued may go: new output is dropped instead of queued.
                None if output(&frame) => return self.leave_out(&frame),
                None => {}
            }
        }
        self.frames.push_back(frame);
    }

    /// Counts `gone` as dropped, in its chain (the next signed answer says so) and here.
    fn leave_out(&mut self, gone: &Outgoing) {
        crate::lock(&gone.chain).left_out();
        self.dropped += 1;
        if self.dropped.is_power_of_two() {
            tracing::warn!(dropped = self.dropped, "the offline queue is full; dropping the oldest output");
        }
    }
}

/// The heartbeat interval: [`HEARTBEAT_EVERY`], or shorter from [`HEARTBEAT_ENV`].
fn heartbeat_every() -> Duration {
    std::env::var(HEARTBEAT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(HEARTBEAT_EVERY, |ms| Duration::from_millis(ms.max(50)).min(HEARTBEAT_EVERY))
}

/// What the next heartbeat must prove to the relay's audit witness.
#[derive(Default)]
struct Witness {
    /// The witnessed seq: from `hello_ack`, then the head our last heartbeat reported.
    seq: Option<u64>,
    /// Re-reads the log only when it changed.
    prover: crate::audit::Prover,
}

/// The heartbeat now, with the proof for the witnessed seq (the whole
/// chain verified off the runtime's thread). It reports the log's head when
/// the whole chain verifies (so records the CLI wrote are witnessed too),
/// else the head this daemon last wrote; that head is what the relay
/// witnesses next, so it is the seq the next heartbeat proves.
async fn heartbeat(daemon: &Daemon, witness: &mut Witness) -> Heartbeat {
    let mut hb = daemon.heartbeat();
    let seq = witness.seq;
    let paths = daemon.inner.paths.clone();
    let mut prover = std::mem::take(&mut witness.prover);
    let proved = tokio::task::spawn_blocking(move || {
        // Unreadable trust: no operator is told more than a device's name.
        let trusted = crate::trust::list(&paths).unwrap_or_default();
        let trusted = trusted.iter().filter_map(|o| o.public_key.parse::<crate::PublicKey>().ok());
        let trusted: Vec<String> = trusted.map(|k| k.fingerprint()).collect();
        (trusted, (prover.prove(&paths, seq.unwrap_or(0)), prover))
    })
    .await;
    let (proof, head) = match proved {
        Ok((trusted, (proved, prover))) => {
            witness.prover = prover;
            hb.trusted_operators = trusted;
            proved
        }
        Err(_) => {
            let unread = protocol::ChainState::Unreadable;
            (protocol::WitnessProof { seq: seq.unwrap_or(0), mac: None, verified_seq: 0, chain: unread }, None)
        }
    };
    if let Some(h) = head.filter(|h| h.seq > 0) {
        hb.audit_head = Some(protocol::AuditHead { seq: h.seq, mac: h.mac });
    }
    hb.witness = seq.map(|_| proof);
    witness.seq = hb.audit_head.as_ref().map(|h| h.seq);
    hb
}

/// How a session ended.
struct Ended {
    /// When the relay accepted our hello, if it did.
    authenticated: Option<Instant>,
    /// `None` when the daemon is shutting down.
    error: Option<String>,
    /// The relay said it was going away (close code 1001, a restart).
    going_away: bool,
}

/// Keeps the link up until `shutdown` turns true. Frames from tasks arrive
/// on `frames`; `frames_tx` is what new commands are given.
pub(crate) async fn run(
    daemon: Daemon,
    config: LinkConfig,
    mut frames: mpsc::Receiver<Outgoing>,
    frames_tx: mpsc::Sender<Outgoing>,
    mut shutdown: watch::Receiver<bool>,
) {
    let relays: Vec<RelayUrl> = std::iter::once(config.url.clone()).chain(config.more.iter().cloned()).collect();
    let mut queue = OfflineQueue::default();
    let mut failures = 0usize;
    for url in relays.iter().cycle() {
        daemon.set_link(|s| {
            s.relay = Some(url.to_string());
            s.attempts += 1;
            s.next_attempt_at = None;
        });
        let ended = session(&daemon, &config, url, &mut frames, &frames_tx, &mut queue, &mut shutdown).await;
        let Some(error) = ended.error else { break };
        tracing::warn!(error = %error, "relay link down");
        // A session's operator is on the other side of the link: it ends with it.
        daemon.stop_sessions(StoppedBy::LinkLost);
        // Healthy: up long enough, or ended by the relay announcing a restart.
        if ended.authenticated.is_some_and(|t| ended.going_away || t.elapsed() >= HEALTHY_AFTER) {
            failures = 0;
        }
        let wait = backoff(failures, random_unit());
        failures += 1;
        daemon.set_link(|s| {
            s.connected = false;
            s.since = Some(crate::time::rfc3339(Utc::now()));
            s.last_error = Some(error);
            s.next_attempt_at = chrono::Duration::from_std(wait).ok().map(|w| crate::time::rfc3339(Utc::now() + w));
        });
        let deadline = Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                f = frames.recv() => match f {
                    Some(f) => queue.push(f),
                    None => return,
                },
                _ = crate::stopped(&mut shutdown) => return,
            }
        }
    }
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string())
}

/// Sends one frame, within [`SEND_TIMEOUT`].
async fn send<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, frame: &ToRelay) -> Result<(), String> {
    let text = Message::text(protocol::encode(frame));
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(text)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("WebSocket: {e}")),
        Err(_) => Err(format!("a write to the relay took over {} s", SEND_TIMEOUT.as_secs())),
    }
}

async fn session(
    daemon: &Daemon,
    config: &LinkConfig,
    url: &RelayUrl,
    frames: &mut mpsc::Receiver<Outgoing>,
    frames_tx: &mpsc::Sender<Outgoing>,
    queue: &mut OfflineQueue,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let hello = DeviceHello { enroll_token: config.enroll_token.clone(), name: host_name() };
    let dialled = tokio::select! {
        r = dial::connect(url, config.tls.clone(), Role::Device, daemon.device_key(), hello) => r,
        _ = crate::stopped(shutdown) => return Ended { authenticated: None, error: None, going_away: false },
    };
    let (mut ws, mut witness) = match dialled {
        Ok((ws, welcome)) => (ws, Witness { seq: welcome.witnessed_seq, ..Witness::default() }),
        Err(e) => {
            return Ended { authenticated: None, error: Some(crate::ErrorChain(&e).to_string()), going_away: false };
        }
    };
    let authenticated = Some(Instant::now());
    let failed = |e: String| Ended { authenticated, going_away: e == GOING_AWAY, error: Some(e) };
    tracing::info!("relay link up");
    daemon.set_link(|s| {
        s.connected = true;
        s.since = Some(crate::time::rfc3339(Utc::now()));
        s.witnessed_seq = witness.seq;
    });
    let first = heartbeat(daemon, &mut witness).await;
    if let Err(e) = send(&mut ws, &ToRelay::Heartbeat(first)).await {
        return failed(e);
    }
    while let Some(mut frame) = queue.frames.pop_front() {
        if let Err(e) = send(&mut ws, &frame.seal(daemon.device_key())).await {
            queue.frames.push_front(frame);
            return failed(e);
        }
    }
    let mut admitting = tokio::task::JoinSet::new();
    let ended = serve(daemon, &mut ws, frames, frames_tx, queue, shutdown, &mut admitting, &mut witness).await;
    // Admission is short and must finish (it may have written action.started).
    admitting.detach_all();
    match ended {
        Ok(()) => {
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
            Ended { authenticated, error: None, going_away: false }
        }
        Err(e) => failed(e),
    }
}

/// Serves an authenticated session until it fails (`Err`, why) or the
/// daemon shuts down or its frames end (`Ok`). Generic over the stream so
/// that its timers are tested over `tokio::io::duplex` in paused time.
// Each argument is a part of the session's state that outlives this call
// (the tests drive `serve` directly); bundling them would only rename them.
#[allow(clippy::too_many_arguments)]
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    daemon: &Daemon,
    ws: &mut WebSocketStream<S>,
    frames: &mut mpsc::Receiver<Outgoing>,
    frames_tx: &mpsc::Sender<Outgoing>,
    queue: &mut OfflineQueue,
    shutdown: &mut watch::Receiver<bool>,
    admitting: &mut tokio::task::JoinSet<()>,
    witness: &mut Witness,
) -> Result<(), String> {
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let every = heartbeat_every();
    let mut beat = tokio::time::interval_at(Instant::now() + every, every);
    let mut last_heard = Instant::now();
    // The grant and the task count also go out when they change, so
    // operators see a new grant or a revoke at once, not 30 s later.
    let mut events = daemon.subscribe();
    let mut reported = daemon.heartbeat();
    let summary = |h: &Heartbeat| (h.tier, h.expires_at.clone(), h.running_tasks, h.scope.clone());
    loop {
        tokio::select! {
            _ = events.recv() => {
                if summary(&daemon.heartbeat()) != summary(&reported) {
                    reported = heartbeat(daemon, witness).await;
                    send(ws, &ToRelay::Heartbeat(reported.clone())).await?;
                }
            }
            msg = ws.next(), if admitting.len() < MAX_ADMITTING => {
                last_heard = Instant::now();
                match msg {
                    Some(Ok(Message::Text(text))) => handle(daemon, &text, frames_tx, admitting),
                    Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::Away => return Err(GOING_AWAY.into()),
                    Some(Ok(Message::Close(_))) | None => return Err("the relay closed the connection".into()),
                    Some(Ok(Message::Binary(_))) => tracing::warn!("binary frame from the relay ignored"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("WebSocket: {e}")),
                }
            }
            Some(_) = admitting.join_next(), if !admitting.is_empty() => {}
            f = frames.recv() => {
                let Some(mut frame) = f else { return Ok(()) };
                if let Err(e) = send(ws, &frame.seal(daemon.device_key())).await {
                    queue.push(frame);
                    return Err(e);
                }
            }
            _ = ping.tick() => {
                // A stalled socket must not hold off the dead-link timer.
                match tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::Ping(Default::default()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(format!("WebSocket: {e}")),
                    Err(_) => return Err(format!("the relay took no data for {} s", SEND_TIMEOUT.as_secs())),
                }
            }
            _ = beat.tick() => {
                reported = heartbeat(daemon, witness).await;
                send(ws, &ToRelay::Heartbeat(reported.clone())).await?;
            }
            _ = tokio::time::sleep_until(last_heard + DEAD_AFTER) => {
                return Err(format!("dead link: nothing heard from the relay for {} s", DEAD_AFTER.as_secs()));
            }
            _ = crate::stopped(shutdown) => return Ok(()),
        }
    }
}

fn handle(daemon: &Daemon, text: &str, frames_tx: &mpsc::Sender<Outgoing>, admitting: &mut tokio::task::JoinSet<()>) {
    match protocol::decode::<FromRelay>(text) {
        Ok(FromRelay::Run(run)) => {
            let d = daemon.clone();
            let tx = chained(Chain::new(daemon.device_id(), &run), frames_tx.clone());
            let span = tracing::info_span!("command", request_id = %crate::text::safe_id(&run.request_id));
            admitting.spawn(tracing::Instrument::instrument(
                async move {
                    let _ = d.submit(run, tx).await;
                },
                span,
            ));
        }
        Ok(FromRelay::Cancel { request_id }) => {
            let Some(task) = daemon.tasks().into_iter().find(|t| t.request_id == request_id) else {
                tracing::info!(%request_id, "cancel for a request with no running task");
                return;
            };
            let d = daemon.clone();
            admitting.spawn(async move {
                d.stop_task(&task.task_id, StoppedBy::Operator).await;
            });
        }
        Ok(FromRelay::Session(input)) => daemon.session_input(input),
        Ok(FromRelay::Witnessed { seq, alert }) => {
            if let Some(a) = &alert
                && daemon.link_status().audit_alert.as_ref() != Some(a)
            {
                tracing::warn!(kind = a.kind.as_str(), witnessed_seq = a.witnessed_seq, detail = %crate::text::printable(&a.detail), "the relay flags this device's audit log");
            }
            daemon.set_link(|s| {
                s.witnessed_seq = seq;
                s.audit_alert = alert;
            });
        }
        Ok(FromRelay::Error { code, message, request_id }) => {
            tracing::warn!(%code, %message, ?request_id, "the relay reported an error");
        }
        Ok(other) => tracing::warn!(frame = %protocol::encode(&other), "unexpected frame from the relay ignored"),
        Err(e) => tracing::warn!(error = %e, "malformed frame from the relay ignored"),
    }
}

/// A sender for one request's frames: each reaches the link's queue
/// with `chain`, in the order sent, until the request's last sender is gone.
fn chained(chain: Chain, out: mpsc::Sender<Outgoing>) -> mpsc::Sender<DeviceFrame> {
    let (tx, mut rx) = mpsc::channel::<DeviceFrame>(REQUEST_FRAMES);
    let chain = Arc::new(Mutex::new(chain));
    tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if out.send(Outgoing { frame, chain: chain.clone(), signed: false }).await.is_err() {
                return;
            }
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;
    use tokio_tungstenite::tungstenite::protocol::Role as WsRole;

    /// A daemon in a throwaway home, for the link's timers.
    fn daemon() -> (tempfile::TempDir, Daemon) {
        let dir = tempfile::tempdir().unwrap();
        let daemon = Daemon::start(&crate::Paths::under(dir.path().join("home")), Default::default()).unwrap();
        (dir, daemon)
    }

    /// A WebSocket over an in-memory pipe: the daemon's end and the relay's.
    async fn pipe() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let config = Some(protocol::ws_config());
        let device = WebSocketStream::from_raw_socket(a, WsRole::Client, config).await;
        let relay = WebSocketStream::from_raw_socket(b, WsRole::Server, config).await;
        (device, relay)
    }

    /// Runs [`serve`] on `ws` until it ends or `stop_after` (virtual time) passes.
    async fn serve_for(
        daemon: &Daemon,
        ws: &mut WebSocketStream<DuplexStream>,
        stop_after: Duration,
    ) -> Result<(), String> {
        let (frames_tx, mut frames) = mpsc::channel(4);
        let (stop_tx, mut stop) = watch::channel(false);
        tokio::spawn(async move {
            tokio::time::sleep(stop_after).await;
            let _ = stop_tx.send(true);
        });
        let mut queue = OfflineQueue::default();
        let mut admitting = tokio::task::JoinSet::new();
        let mut witness = Witness::default();
        serve(daemon, ws, &mut frames, &frames_tx, &mut queue, &mut stop, &mut admitting, &mut witness).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_relay_is_a_dead_link_after_50_s() {
        let (_home, daemon) = daemon();
        let (mut ws, _relay) = pipe().await;
        let start = Instant::now();
        let err = serve_for(&daemon, &mut ws, Duration::from_secs(3600)).await.unwrap_err();
        assert!(err.starts_with("dead link: nothing heard from the relay for 50 s"), "{err}");
        let took = start.elapsed();
        assert!(took >= DEAD_AFTER && took < DEAD_AFTER + Duration::from_millis(100), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_that_answers_pings_keeps_the_link_and_gets_a_heartbeat_every_30_s() {
        let (_home, daemon) = daemon();
        let (mut ws, mut relay) = pipe().await;
        let start = Instant::now();
        let heard = tokio::spawn(async move {
            let (mut pings, mut beats) = (Vec::new(), Vec::new());
            while let Some(Ok(msg)) = relay.next().await {
                match msg {
                    Message::Ping(payload) => {
                        pings.push(start.elapsed().as_secs());
                        relay.send(Message::Pong(payload)).await.unwrap();
                    }
                    Message::Text(t) if t.contains("\"heartbeat\"") => beats.push(start.elapsed().as_secs()),
                    _ => {}
                }
            }
            (pings, beats)
        });
        // Five minutes: six dead-link bounds, so only the pongs keep it up.
        assert_eq!(serve_for(&daemon, &mut ws, Duration::from_secs(300)).await, Ok(()));
        drop(ws);
        let (pings, beats) = heard.await.unwrap();
        assert_eq!(pings, (1..=15).map(|i| i * PING_EVERY.as_secs()).collect::<Vec<_>>());
        assert_eq!(beats, (1..=10).map(|i| i * HEARTBEAT_EVERY.as_secs()).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_against_a_closed_port_follow_the_backoff_schedule() {
        let (_home, daemon) = daemon();
        // A port that refuses: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url: RelayUrl = format!("wss://127.0.0.1:{port}").parse().unwrap();
        let tls = crate::tls::RelayTrust::Fingerprint([0; 32]).client_config().unwrap();
        let (tx, rx) = mpsc::channel(4);
        let (stop_tx, stop) = watch::channel(false);
        let link = tokio::spawn(run(
            daemon.clone(),
            LinkConfig { url, more: Vec::new(), tls, enroll_token: None },
            rx,
            tx,
            stop,
        ));
        let start = Instant::now();
        let mut attempts_at = Vec::new();
        while attempts_at.len() < BACKOFF_S.len() + 1 {
            let attempts = daemon.link_status().attempts as usize;
            if attempts > attempts_at.len() {
                attempts_at.push(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop_tx.send(true);
        link.await.unwrap();
        let status = daemon.link_status();
        assert!(!status.connected && status.last_error.is_some(), "{status:?}");
        for (i, gap) in attempts_at.windows(2).map(|w| w[1] - w[0]).enumerate() {
            let base = Duration::from_secs(BACKOFF_S[i]);
            let (low, high) = (base.mul_f64(1.0 - JITTER), base.mul_f64(1.0 + JITTER) + Duration::from_millis(20));
            assert!(gap >= low && gap <= high, "wait {i} was {gap:?}, not within {low:?}..{high:?}");
        }
    }

    #[test]
    fn backoff_follows_the_schedule_within_the_jitter() {
        for (i, base) in BACKOFF_S.iter().enumerate() {
            let base = *base as f64;
            assert_eq!(backoff(i, 0.0).as_secs_f64(), base * 0.7);
            assert!((backoff(i, 1.0).as_secs_f64() - base * 1.3).abs() < 1e-9);
            let mid = backoff(i, random_unit()).as_secs_f64();
            assert!((base * 0.7..=base * 1.3).contains(&mid), "{mid}");
        }
        assert_eq!(backoff(100, 0.5), Duration::from_secs(60));
    }

    #[test]
    fn a_full_offline_queue_never_drops_a_frame_already_signed() {
        let key = crate::KeyPair::generate().0;
        let run = protocol::Run::signed(&key, "o", "d-1", "x", Default::default(), Utc::now());
        let chain = Arc::new(Mutex::new(Chain::new("d-1", &run)));
        let mut q = OfflineQueue::default();
        for i in 0..OFFLINE_QUEUE {
            let frame = DeviceFrame::output("o", i as u64, protocol::Stream::Stdout, "x".into());
            q.push(Outgoing { frame, chain: chain.clone(), signed: true });
        }
        q.push(Outgoing { frame: DeviceFrame::accepted("p", "t-2"), chain: chain.clone(), signed: true });
        assert_eq!(q.frames.len(), OFFLINE_QUEUE + 1, "signed frames stay, over the bound");
        assert_eq!(q.dropped, 0);
        // New output, not yet signed, is what goes then.
        let frame = DeviceFrame::output("q", 0, protocol::Stream::Stdout, "y".into());
        q.push(Outgoing { frame, chain: chain.clone(), signed: false });
        assert_eq!((q.frames.len(), q.dropped), (OFFLINE_QUEUE + 1, 1));
        assert!(q.frames.iter().all(|f| f.signed), "the unsigned output was dropped");
    }

    #[test]
    fn a_full_offline_queue_drops_output_before_results_and_the_chain_says_so() {
        let key = crate::KeyPair::generate().0;
        let run = protocol::Run::signed(&key, "o", "d-1", "x", Default::default(), Utc::now());
        let chain = Arc::new(Mutex::new(Chain::new("d-1", &run)));
        let queued = |frame: DeviceFrame| Outgoing { frame, chain: chain.clone(), signed: false };
        let denied = |i: usize| DeviceFrame::denied(&format!("r{i}"), protocol::DenyCode::Busy, "");
        let mut q = OfflineQueue::default();
        q.push(queued(DeviceFrame::accepted("o", "t-1")));
        q.push(queued(DeviceFrame::output("o", 0, protocol::Stream::Stdout, "x".into())));
        for i in 0..OFFLINE_QUEUE - 2 {
            q.push(queued(denied(i)));
        }
        assert_eq!(q.frames.len(), OFFLINE_QUEUE);
        q.push(queued(DeviceFrame::result(
            "o",
            &crate::protocol::TaskResult {
                status: protocol::Status::Ok,
                exit_code: Some(0),
                duration_ms: 1,
                truncated: false,
                output_bytes: 1,
                output_sha256: String::new(),
                cancelled_by: None,
                reason: None,
            },
        )));
        assert_eq!(q.frames.len(), OFFLINE_QUEUE);
        assert!(q.frames.iter().all(|f| !matches!(f.frame, DeviceFrame::Output { .. })), "the output went first");
        assert_eq!(q.dropped, 1);
        // Sent in order: answer 0 (accepted) says one was left out since the chain began; the result is answer 1.
        let mut sent: Vec<DeviceFrame> = Vec::new();
        while let Some(mut f) = q.frames.pop_front() {
            if f.frame.request_id() == "o" {
                let ToRelay::Answer(frame) = f.seal(&key) else { unreachable!() };
                sent.push(frame);
            }
        }
        let proofs: Vec<(u64, u64)> = sent.iter().map(|f| (f.proof().0, f.proof().1)).collect();
        assert_eq!(proofs, [(0, 1), (1, 0)]);
    }
}
