//! A private session bus (`dbus-daemon`, its own config, in a temp dir)
//! and a stand-in for the desktop's notification server on it: it owns
//! `org.freedesktop.Notifications`, records every `Notify` call, and can
//! emit `ActionInvoked` as a real server does when the owner clicks, or
//! from another connection, as any process on the bus could.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use zbus::zvariant::OwnedValue;

const PATH: &str = "/org/freedesktop/Notifications";
const IFACE: &str = "org.freedesktop.Notifications";

/// A `dbus-daemon` of this test's own, killed when dropped.
pub struct Bus {
    _dir: tempfile::TempDir,
    child: Child,
    /// Its address, for `DBUS_SESSION_BUS_ADDRESS`.
    pub address: String,
}

impl Bus {
    /// Starts `dbus-daemon --nofork --print-address` with a session config
    /// that listens in a temp dir and activates no service (so no real
    /// notification server can answer in place of the stand-in).
    pub fn start() -> Bus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("session.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.path().display()
            ),
        )
        .unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("dbus-daemon (Debian package dbus-daemon; .ci/run installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let address = line.trim().to_string();
        assert!(address.starts_with("unix:"), "dbus-daemon printed {line:?}");
        Bus { _dir: dir, child, address }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `Notify` call as the stand-in received it.
#[derive(Clone, Debug)]
pub struct Notified {
    /// The id the stand-in answered.
    pub id: u32,
    pub app_name: String,
    pub summary: String,
    pub body: String,
    /// Key, label, key, label, ...
    pub actions: Vec<String>,
    /// The `urgency` hint: 0 low, 1 normal, 2 critical.
    pub urgency: Option<u8>,
}

#[derive(Default)]
struct Record {
    calls: Mutex<Vec<Notified>>,
    changed: Condvar,
}

struct Server {
    record: Arc<Record>,
    capabilities: Vec<String>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Server {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        hints: HashMap<String, OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let urgency = hints.get("urgency").and_then(|v| u8::try_from(v).ok());
        let mut calls = self.record.calls.lock().unwrap();
        // Ids that do not start at 1, so an id is never right by chance.
        let id = 100 + calls.len() as u32;
        calls.push(Notified { id, app_name, summary, body, actions, urgency });
        self.record.changed.notify_all();
        id
    }

    fn get_capabilities(&self) -> Vec<String> {
        self.capabilities.clone()
    }

    fn close_notification(&self, _id: u32) {}

    fn get_server_information(&self) -> (String, String, String, String) {
        ("stand-in".into(), "support tests".into(), "0".into(), "1.2".into())
    }
}

/// The stand-in, serving on its own runtime so that the test may block.
pub struct NotifyServer {
    rt: tokio::runtime::Runtime,
    conn: zbus::Connection,
    record: Arc<Record>,
    address: String,
}

impl NotifyServer {
    /// Owns `org.freedesktop.Notifications` on `bus`, advertising `capabilities`.
    pub fn start(bus: &Bus, capabilities: &[&str]) -> NotifyServer {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let record = Arc::new(Record::default());
        let server =
            Server { record: record.clone(), capabilities: capabilities.iter().map(|c| c.to_string()).collect() };
        let conn = rt.block_on(async {
            zbus::connection::Builder::address(bus.address.as_str())
                .unwrap()
                .name(IFACE)
                .unwrap()
                .serve_at(PATH, server)
                .unwrap()
                .build()
                .await
                .unwrap()
        });
        NotifyServer { rt, conn, record, address: bus.address.clone() }
    }

    /// Waits (at most 30 s) for a call that `ok` accepts; returns it.
    #[track_caller]
    pub fn wait_for(&self, what: &str, ok: impl Fn(&Notified) -> bool) -> Notified {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut calls = self.record.calls.lock().unwrap();
        loop {
            if let Some(n) = calls.iter().find(|n| ok(n)) {
                return n.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no notification {what} in 30 s; received {calls:#?}");
            calls = self.record.changed.wait_timeout(calls, left).unwrap().0;
        }
    }

    /// Emits `ActionInvoked(id, key)` from the stand-in, as a click does.
    pub fn invoke(&self, id: u32, key: &str) {
        self.rt.block_on(async {
            self.conn.emit_signal(None::<()>, PATH, IFACE, "ActionInvoked", &(id, key)).await.unwrap()
        });
    }

    /// Emits `ActionInvoked(id, key)` from another connection on the bus
    /// (a forger that does not own the name), then waits for the bus to
    /// have handled it (a call to the bus itself on the same connection).
    pub fn forge(&self, id: u32, key: &str) {
        self.rt.block_on(async {
            let forger = zbus::connection::Builder::address(self.address.as_str()).unwrap().build().await.unwrap();
            forger.emit_signal(None::<()>, PATH, IFACE, "ActionInvoked", &(id, key)).await.unwrap();
            let dbus = zbus::fdo::DBusProxy::new(&forger).await.unwrap();
            dbus.get_id().await.unwrap();
        });
    }
}
