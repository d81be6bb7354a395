//! A real `nats-server -js` (Debian's `nats-server`) on an ephemeral
//! loopback port with its JetStream store in a temporary directory:
//! killed when dropped, restartable on the same port and store (the
//! NATS-restart tests).

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::net::{Proc, Relay};

/// How long the server may take to answer with JetStream on.
const READY_WITHIN: Duration = Duration::from_secs(15);

pub struct Nats {
    pub dir: tempfile::TempDir,
    pub port: u16,
    proc: Option<Proc>,
}

impl Nats {
    /// Whether `nats-server` is on PATH (`.ci/run` installs it).
    pub fn available() -> bool {
        Command::new("nats-server").arg("--version").output().is_ok_and(|o| o.status.success())
    }

    /// `nats-server -js -a 127.0.0.1 -p PORT -sd DIR` on a free port, once it serves clients.
    pub fn start() -> Nats {
        Nats::start_with("")
    }

    /// As [`Nats::start`], with `config` (nats-server's configuration
    /// syntax, e.g. `max_payload: 4MB`) as its configuration file.
    pub fn start_with(config: &str) -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut nats = Nats { dir: tempfile::tempdir().unwrap(), port, proc: None };
        std::fs::write(nats.dir.path().join("nats.conf"), config).unwrap();
        nats.up();
        nats
    }

    /// Kills it (SIGKILL): no goodbye to its clients.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGTERM, then SIGKILL): clients see the server gone.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.term();
        }
    }

    /// Starts it again on the same port and store.
    pub fn up(&mut self) {
        assert!(self.proc.is_none(), "already running");
        let store: PathBuf = self.dir.path().join("store");
        let log = std::fs::File::create(self.dir.path().join(format!("nats-{}.log", self.port))).unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(self.dir.path().join("nats.conf"))
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server on PATH (apt-get install nats-server; .ci/run does)");
        self.proc = Some(Proc(child));
        self.wait_ready();
    }

    /// Polls until the server's INFO line says JetStream is on, at most [`READY_WITHIN`].
    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(tcp) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
                let mut line = String::new();
                if BufReader::new(tcp).read_line(&mut line).is_ok() && line.contains("\"jetstream\":true") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "nats-server on port {} not ready within {READY_WITHIN:?}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A relay of the cluster on `nats`: `support relay serve` whose state
/// directory holds a `relay.toml` naming the cluster, so every admin
/// command of [`Relay`] (`admin`, `token`, `operator`) goes to the cluster too.
pub fn clustered_relay(nats: &Nats) -> Relay {
    clustered(nats, None)
}

/// As [`clustered_relay`], with `other`'s certificate and key: relays
/// behind one name, which a daemon given all of them recognises by one CA.
pub fn clustered_relay_like(nats: &Nats, other: &Relay) -> Relay {
    clustered(nats, Some(other))
}

/// As [`clustered_relay`], with `extra` flags for `serve` and `env` for the relay.
pub fn clustered_relay_with(nats: &Nats, extra: &[&str], env: &[(&str, &str)]) -> Relay {
    clustered_in(nats, None, extra, env)
}

fn clustered(nats: &Nats, like: Option<&Relay>) -> Relay {
    clustered_in(nats, like, &[], &[])
}

fn clustered_in(nats: &Nats, like: Option<&Relay>, extra: &[&str], env: &[(&str, &str)]) -> Relay {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("relay");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(state.join("relay.toml"), format!("cluster = \"{}\"\n", nats.url())).unwrap();
    if let Some(other) = like {
        for file in ["cert.pem", "key.pem"] {
            std::fs::copy(other.state.join(file), state.join(file)).unwrap();
            std::fs::set_permissions(state.join(file), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    Relay::start_env(dir, state, "127.0.0.1:0", extra, env)
}
