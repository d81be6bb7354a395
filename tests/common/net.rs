//! A real relay and real daemons (the binary) on ephemeral loopback ports,
//! with rcgen certificates, and operators speaking the protocol from here.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::KeyPair;
use support::dial::{self, RelayUrl};
use support::operator::Session;
use support::tls::RelayTrust;

use super::{Home, Run, bin};

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn term(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.term();
        }
    }
}

pub struct Relay {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub addr: String,
    pub fingerprint: String,
    pub proc: Proc,
}

impl Relay {
    /// `support relay serve --self-signed` on `listen` (e.g. 127.0.0.1:0).
    pub fn start(listen: &str) -> Relay {
        Relay::start_with(listen, &[])
    }

    /// As [`Relay::start`], with `extra` flags for `serve`.
    pub fn start_with(listen: &str, extra: &[&str]) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("relay");
        Relay::start_in(dir, state, listen, extra)
    }

    /// As [`Relay::start_with`], in `dir` with the state directory `state` (made by the caller, or not).
    pub fn start_in(dir: tempfile::TempDir, state: PathBuf, listen: &str, extra: &[&str]) -> Relay {
        Relay::start_env(dir, state, listen, extra, &[])
    }

    /// As [`Relay::start_in`], with `env` set for the relay.
    pub fn start_env(
        dir: tempfile::TempDir,
        state: PathBuf,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Relay {
        let mut child = Command::new(bin())
            .args(["relay", "--state"])
            .arg(&state)
            .args(["serve", "--self-signed", "--listen", listen])
            .args(extra)
            .env("SUPPORT_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join(format!("relay-{}.log", now_ns()))).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = lines.next().unwrap().unwrap().strip_prefix("listening on ").unwrap().to_string();
        let fingerprint = lines.next().unwrap().unwrap().strip_prefix("certificate fingerprint ").unwrap().to_string();
        Relay { dir, state, addr, fingerprint, proc: Proc(child) }
    }

    /// Stops it and starts it again on the same address and state.
    pub fn restart(self) -> Relay {
        let Relay { dir, state, addr, mut proc, .. } = self;
        proc.term();
        Relay::start_in(dir, state, &addr, &[])
    }

    pub fn url(&self) -> String {
        format!("wss://{}", self.addr)
    }

    pub fn ca(&self) -> PathBuf {
        self.state.join("cert.pem")
    }

    pub fn admin(&self, args: &[&str]) -> Run {
        let out = Command::new(bin()).args(["relay", "--state"]).arg(&self.state).args(args).output().unwrap();
        Run::from(out)
    }

    pub fn token(&self) -> String {
        self.admin(&["enroll-token", "--ttl", "10m"]).code(0).stdout.trim().to_string()
    }

    /// A new operator key, admitted by the relay; written to a file too.
    pub fn operator(&self, name: &str) -> (KeyPair, PathBuf) {
        let (key, path) = keygen(self.dir.path(), name);
        self.admin(&["add-operator", name, &key.public_key().to_string()]).code(0);
        (key, path)
    }

    /// `support operator ARGS` against this relay with the key in `key`.
    pub fn operator_cli(&self, key: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("operator")
            .args(args)
            .env("SUPPORT_OPERATOR_RELAY", self.url())
            .env("SUPPORT_OPERATOR_RELAY_CA", self.ca())
            .env("SUPPORT_OPERATOR_KEY", key)
            .env("NO_COLOR", "1");
        cmd
    }

    pub fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(self.ca())
            .arg(format!("https://{}/metrics", self.addr))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value of one metric line, e.g. `handshakes_failed_total{reason="alert"}`.
    pub fn metric(&self, name: &str) -> u64 {
        let text = self.metrics();
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
    }

    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        RelayTrust::CaFile(self.ca()).client_config().unwrap()
    }

    /// An operator session with the key in `path`.
    pub async fn session(&self, path: &Path) -> Session {
        let url: RelayUrl = self.url().parse().unwrap();
        Session::connect(&url, self.client_tls(), KeyPair::load(path).unwrap()).await.unwrap()
    }
}

/// `support operator keygen --out DIR/NAME.key`: the key and its path.
pub fn keygen(dir: &Path, name: &str) -> (KeyPair, PathBuf) {
    let path = dir.join(format!("{name}.key"));
    let out = Command::new(bin()).args(["operator", "keygen", "--out"]).arg(&path).output().unwrap();
    Run::from(out).code(0);
    (KeyPair::load(&path).unwrap(), path)
}

fn now_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// A daemon (the binary) in its own home, linked to `relay`.
pub struct Device {
    pub home: Home,
    pub proc: Proc,
    pub device_id: String,
}

impl Device {
    /// Starts a daemon with `extra` link flags (after `--relay URL`), and
    /// waits until it is connected when `wait` is set.
    pub fn start(home: Home, url: &str, extra: &[&str], wait: bool) -> Device {
        let log = std::fs::File::create(home.path.with_extension("daemon.log")).unwrap();
        std::fs::create_dir_all(&home.path).unwrap();
        let child = home
            .cmd(&["daemon", "--relay", url])
            .args(extra)
            .env("SUPPORT_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Device::spawned(home, child, wait)
    }

    /// A daemon already spawned in `home` (with settings of the caller's
    /// own): waits until it is connected when `wait` is set, else running.
    pub fn spawned(home: Home, child: std::process::Child, wait: bool) -> Device {
        let mut device = Device { home, proc: Proc(child), device_id: String::new() };
        if wait {
            device.wait_until("connected", |s| s["daemon"]["connected"] == true);
        } else {
            device.wait_until("running", |s| !s["daemon"].is_null());
        }
        device.device_id = device.home.status()["device_id"].as_str().unwrap().to_string();
        device
    }

    /// Enrolled with a token, pinning the relay by its CA file.
    pub fn enrolled(relay: &Relay) -> Device {
        Device::enrolled_in(Home::new(), relay)
    }

    /// As [`Device::enrolled`], with the catalogue addition `policy` ([`add_policy`]).
    pub fn enrolled_with(relay: &Relay, policy: &str) -> Device {
        let home = Home::new();
        add_policy(&home, policy);
        Device::enrolled_in(home, relay)
    }

    /// As [`Device::enrolled`], in `home`.
    pub fn enrolled_in(home: Home, relay: &Relay) -> Device {
        Device::start(
            home,
            &relay.url(),
            &["--relay-ca", relay.ca().to_str().unwrap(), "--enroll", &relay.token()],
            true,
        )
    }

    /// Polls `status --json` until `ok` (30 s at most).
    pub fn wait_until(&self, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.home.run(&["status", "--json"]).json();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "daemon never {what}: {s}\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path.with_extension("daemon.log")).unwrap_or_default()
    }

    /// Trusts `key` as `name` in this device's home.
    pub fn trust(&self, name: &str, key: &KeyPair) {
        self.home.run(&["trust", "add", name, &key.public_key().to_string()]).code(0);
    }

    pub fn allow(&self, tier: u8) {
        self.home.run(&["allow", "--tier", &tier.to_string(), "--minutes", "10", "--yes"]).code(0);
    }
}

/// Runs `run` on `session`, cancels it as soon as the device accepted it,
/// and asserts the device ended it as cancelled by the operator.
pub async fn cancel_once_accepted(session: &mut Session, run: &support::Run) {
    use support::protocol::{DeviceFrame, Status, StoppedBy};
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let on_frame = |f: &support::protocol::DeviceFrame| {
        if matches!(f, support::protocol::DeviceFrame::Accepted { .. }) {
            let _ = tx.take().map(|t| t.send(()));
        }
    };
    let outcome = session.run(run, on_frame, async { rx.await.unwrap_or(()) }).await.unwrap();
    assert!(
        matches!(
            outcome,
            support::operator::Outcome::Finished(DeviceFrame::Result {
                status: Status::Cancelled,
                cancelled_by: Some(StoppedBy::Operator),
                ..
            })
        ),
        "{outcome:?}"
    );
}

/// A raw TLS WebSocket to `path` on the relay, for framing tests.
pub async fn raw_ws(relay: &Relay, path: &str) -> dial::Ws {
    let tcp = tokio::net::TcpStream::connect(&relay.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(relay.client_tls())
        .connect(support::tls::server_name("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let url = format!("wss://{}{path}", relay.addr);
    tokio_tungstenite::client_async_with_config(url, tls, Some(support::protocol::ws_config())).await.unwrap().0
}

/// Writes a catalogue addition into `home` (`policy.d/test.toml`) before the daemon starts.
pub fn add_policy(home: &Home, toml: &str) {
    let dir = home.path.join("policy.d");
    std::fs::create_dir_all(&home.path).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    for d in [&home.path, &dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let file = dir.join("test.toml");
    std::fs::write(&file, toml).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
}
