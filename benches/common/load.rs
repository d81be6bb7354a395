//! The load the cluster benches put on relays: a `nats-server -js`, many
//! idle devices (real TLS 1.3 WebSockets with the device's own hello and
//! proof, a ping every 20 s as the daemon's link sends, moving to the next
//! relay after a drop with the daemon's backoff), and idle MQTT clients
//! over TLS 1.3 for a loopback `mosquitto`, the baseline.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use support::KeyPair;
use support::dial::{self, DeviceHello, RelayUrl};
use support::protocol::{self, DenyCode, DeviceFrame, FromRelay, Role, ToRelay};

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The source address of load connection `i`: 127.0.0.2 to 127.0.0.201,
/// so no one source runs out of ephemeral ports.
pub fn source(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 2 + (i % 200) as u8], 0))
}

/// A TCP connection to `to` from [`source`]`(i)`.
async fn tcp_from(i: usize, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(source(i))?;
    socket.connect(to).await
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `nats-server -js` on a free loopback port, its store in `dir`.
pub struct Nats {
    pub proc: Proc,
    pub url: String,
}

impl Nats {
    pub fn start(dir: &Path) -> Nats {
        let port = free_port();
        std::fs::create_dir_all(dir).unwrap();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nats.log")).unwrap())
            .spawn()
            .expect("nats-server on PATH (apt-get install nats-server)");
        let t0 = Instant::now();
        loop {
            if let Ok(tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::BufRead as _;
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
                let mut line = String::new();
                if std::io::BufReader::new(tcp).read_line(&mut line).is_ok() && line.contains("\"jetstream\":true") {
                    break;
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(15), "nats-server not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats { proc: Proc(child), url: format!("nats://127.0.0.1:{port}") }
    }
}

/// Where a device of the fleet can connect.
#[derive(Clone)]
pub struct Target {
    pub url: RelayUrl,
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Target {
    pub fn of(relay: &super::Relay) -> Target {
        Target { url: relay.url(), addr: relay.addr.parse().unwrap(), tls: relay.tls() }
    }
}

/// Why connections failed, how often.
pub type Errors = Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>;

/// Devices and where each one is now.
pub struct Fleet {
    /// Per device: 1 + the index of the target it is connected to, 0 while down.
    pub at: Arc<Vec<AtomicU8>>,
    /// Connections that failed (refused, reset, timed out) and were tried again.
    pub retries: Arc<AtomicUsize>,
    /// Runs answered by the fleet.
    pub answered: Arc<AtomicUsize>,
    /// Why connections failed (the error's first words), how often.
    pub errors: Errors,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Fleet {
    /// Starts one task per key: device `i` tries `order(i)` (indices into
    /// `targets`) in turn, the first first, at most `at_once` handshakes at
    /// a time for the first connections (a later reconnect waits for no
    /// one, as a real device does not).
    pub fn start(
        keys: Arc<Vec<KeyPair>>,
        targets: Vec<Target>,
        order: impl Fn(usize) -> Vec<usize>,
        at_once: usize,
    ) -> Fleet {
        let n = keys.len();
        let at: Arc<Vec<AtomicU8>> = Arc::new((0..n).map(|_| AtomicU8::new(0)).collect());
        let (retries, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let errors = Errors::default();
        let (stop, stopped) = watch::channel(false);
        let first = Arc::new(tokio::sync::Semaphore::new(at_once));
        let targets = Arc::new(targets);
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let device = Device {
                i,
                keys: keys.clone(),
                targets: targets.clone(),
                order: order(i),
                at: at.clone(),
                retries: retries.clone(),
                answered: answered.clone(),
                errors: errors.clone(),
            };
            tasks.spawn(device.live(first.clone(), stopped.clone()));
        }
        Fleet { at, retries, answered, errors, stop, tasks }
    }

    /// How many devices are connected to each target.
    pub fn connected(&self, targets: usize) -> Vec<usize> {
        let mut per = vec![0; targets];
        for a in self.at.iter() {
            let a = a.load(Ordering::Relaxed);
            if a > 0 {
                per[a as usize - 1] += 1;
            }
        }
        per
    }

    /// Waits until `want(connected)` holds, at most `limit`; how long it took.
    pub async fn wait(&self, targets: usize, limit: Duration, want: impl Fn(&[usize]) -> bool) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if want(&self.connected(targets)) {
                return Some(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Closes every connection and waits for the tasks.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

struct Device {
    i: usize,
    keys: Arc<Vec<KeyPair>>,
    targets: Arc<Vec<Target>>,
    order: Vec<usize>,
    at: Arc<Vec<AtomicU8>>,
    retries: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    errors: Errors,
}

impl Device {
    /// The daemon's link loop, cut to what the relay sees: connect, stay,
    /// and after a drop wait `backoff(failures)` and try the next relay.
    async fn live(self, first: Arc<tokio::sync::Semaphore>, mut stop: watch::Receiver<bool>) {
        let mut failures = 0usize;
        let mut permit = Some(first.acquire_owned().await.unwrap());
        for (turn, &t) in self.order.iter().cycle().enumerate() {
            if *stop.borrow() {
                return;
            }
            let target = &self.targets[t];
            let dialed = async {
                let tcp = tcp_from(self.i + turn, target.addr).await.map_err(|e| e.to_string())?;
                dial::connect_over(
                    tcp,
                    &target.url,
                    target.tls.clone(),
                    Role::Device,
                    &self.keys[self.i],
                    DeviceHello::default(),
                )
                .await
                .map_err(|e| e.to_string())
            };
            let ws = tokio::select! {
                d = dialed => d,
                _ = stop.changed() => return,
            };
            permit.take();
            match ws {
                Ok((ws, _)) => {
                    self.at[self.i].store(t as u8 + 1, Ordering::Relaxed);
                    let since = Instant::now();
                    let stopped = self.serve(ws, &mut stop).await;
                    self.at[self.i].store(0, Ordering::Relaxed);
                    if stopped {
                        return;
                    }
                    if since.elapsed() >= support::daemon::HEALTHY_AFTER {
                        failures = 0;
                    }
                }
                Err(e) => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    let why: String = e.chars().take(60).collect();
                    *super::lock(&self.errors).entry(why).or_default() += 1;
                }
            }
            let wait = support::daemon::backoff(failures, jitter());
            failures += 1;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Holds `ws`: pings every 20 s, answers each run with a denial (the
    /// operator hears the device itself). True when the fleet was stopped.
    async fn serve(&self, mut ws: dial::Ws, stop: &mut watch::Receiver<bool>) -> bool {
        let mut ping = tokio::time::interval(protocol::PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = ping.tick() => if ws.send(Message::Ping(Vec::new().into())).await.is_err() { return false },
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        if let Ok(FromRelay::Run(run)) = protocol::decode::<FromRelay>(&t) {
                            let no = DeviceFrame::denied(&run.request_id, DenyCode::UntrustedOperator, "bench device");
                            let text = protocol::encode(&ToRelay::Answer(no));
                            if ws.send(Message::text(text)).await.is_err() { return false }
                            self.answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
                    Some(Ok(_)) => {}
                },
                _ = stop.changed() => {
                    let _ = ws.close(None).await;
                    return true;
                }
            }
        }
    }
}

/// A random number in [0, 1] choosing the backoff's jitter, as the daemon's link does.
fn jitter() -> f64 {
    let mut b = [0u8; 2];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
}

/// `mosquitto` on a free loopback port with TLS 1.3 only, the relay's
/// certificate and key from `state` (so both do the same handshake).
pub struct Mosquitto {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub tls: Arc<rustls::ClientConfig>,
    /// The CA file its certificate is checked against (the relay's self-signed `cert.pem`).
    pub ca: PathBuf,
}

impl Mosquitto {
    pub fn start(dir: &Path, state: &Path) -> Mosquitto {
        let port = free_port();
        let conf: PathBuf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\npersistence false\nlog_dest none\nallow_anonymous true\nmax_connections -1\n\
                 listener {port} 127.0.0.1\ncertfile {}\nkeyfile {}\ntls_version tlsv1.3\n",
                state.join("cert.pem").display(),
                state.join("key.pem").display()
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mosquitto.log")).unwrap())
            .spawn()
            .expect("mosquitto on PATH (apt-get install mosquitto)");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let t0 = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        let ca = state.join("cert.pem");
        let tls = support::tls::RelayTrust::CaFile(ca.clone()).client_config().unwrap();
        Mosquitto { proc: Proc(child), addr, tls, ca }
    }

    /// `mosquitto_sub` holding one subscription over TLS 1.3, the
    /// broker's certificate checked against [`Mosquitto::ca`], returned
    /// once it has printed the message retained on its topic (its output
    /// to a pipe is flushed per message, unlike its `-d` lines).
    pub fn subscriber(&self) -> Proc {
        let client = |program: &str| {
            let mut c = Command::new(program);
            c.args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string(), "--tls-version", "tlsv1.3"])
                .arg("--cafile")
                .arg(&self.ca)
                .args(["-t", "support/idle"])
                .stdin(Stdio::null());
            c
        };
        let published = client("mosquitto_pub")
            .args(["-r", "-m", "ready"])
            .status()
            .expect("mosquitto_pub on PATH (apt-get install mosquitto-clients)");
        assert!(published.success(), "mosquitto_pub: {published}");
        let mut child = client("mosquitto_sub").stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        // Drained to the end, so that no write of it ever blocks.
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("mosquitto_sub's first message within 10 s");
        assert_eq!(line, "ready");
        Proc(child)
    }

    /// `n` idle MQTT 3.1.1 clients over TLS 1.3 (CONNECT with keep-alive
    /// 0, CONNACK read), held until the returned streams are dropped.
    pub async fn clients(&self, from: usize, n: usize) -> Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let sem = Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = tokio::task::JoinSet::new();
        for i in from..from + n {
            let (sem, tls, addr) = (sem.clone(), self.tls.clone(), self.addr);
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await.unwrap();
                let tcp = tcp_from(i, addr).await.unwrap();
                let name = rustls_pki_types::ServerName::IpAddress(IpAddr::from(Ipv4Addr::LOCALHOST).into());
                let mut s = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.unwrap();
                let id = format!("bench-{i:06}");
                let mut packet = vec![0x10, (10 + 2 + id.len()) as u8];
                packet.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0]);
                packet.extend_from_slice(&(id.len() as u16).to_be_bytes());
                packet.extend_from_slice(id.as_bytes());
                s.write_all(&packet).await.unwrap();
                let mut ack = [0u8; 4];
                s.read_exact(&mut ack).await.unwrap();
                assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK");
                s
            });
        }
        let mut out = Vec::with_capacity(n);
        while let Some(s) = tasks.join_next().await {
            out.push(s.unwrap());
        }
        out
    }
}
