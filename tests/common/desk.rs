//! Where a test's devices and operators connect: one relay, or two relays
//! of a cluster on a real `nats-server -js` with every device on the first
//! and every operator on the second (issue 15: "a device on relay A and an
//! operator on relay B see exactly what they would on one relay"). The
//! link and tier-3/4 tests take a [`Desk`] and run once each way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::KeyPair;

use super::nats::{Nats, clustered_relay};
use super::net::{Relay, keygen};

/// The relays of one test.
pub struct Desk {
    /// Where devices connect.
    pub device: Relay,
    /// Where operators connect, when not on `device` (a cluster).
    other: Option<Relay>,
    /// The cluster's NATS (killed last, after the relays).
    cluster_nats: Option<Nats>,
}

impl Desk {
    /// One relay, for devices and operators alike.
    pub fn one() -> Desk {
        Desk { device: Relay::start("127.0.0.1:0"), other: None, cluster_nats: None }
    }

    /// Two relays of a cluster: devices on the first, operators on the second.
    pub fn across() -> Desk {
        let nats = Nats::start();
        let (device, other) = (clustered_relay(&nats), clustered_relay(&nats));
        Desk { device, other: Some(other), cluster_nats: Some(nats) }
    }

    /// The cluster's NATS (`None` for one relay).
    pub fn nats(&mut self) -> Option<&mut Nats> {
        self.cluster_nats.as_mut()
    }

    /// Waits (20 s at most) until every relay's `/metrics` says `cluster_connected` is `up`.
    pub fn wait_cluster(&self, up: bool) {
        let want = format!("cluster_connected {}", u8::from(up));
        let deadline = Instant::now() + Duration::from_secs(20);
        for relay in std::iter::once(&self.device).chain(&self.other) {
            while !relay.metrics().contains(&want) {
                assert!(Instant::now() < deadline, "{} never said {want}", relay.addr);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Whether the operators are on another relay than the devices.
    pub fn is_across(&self) -> bool {
        self.other.is_some()
    }

    /// Where operators connect.
    pub fn operator(&self) -> &Relay {
        self.other.as_ref().unwrap_or(&self.device)
    }

    /// A new operator key admitted by the relays (through the operator's
    /// relay's state directory), once the operator's relay admits it.
    pub fn add_operator(&self, name: &str) -> (KeyPair, PathBuf) {
        let (key, path) = keygen(self.device.dir.path(), name);
        self.operator().admin(&["add-operator", name, &key.public_key().to_string()]).code(0);
        self.wait_admitted(&path);
        (key, path)
    }

    /// Waits (15 s at most) until the operator's relay admits the key in `path`.
    pub fn wait_admitted(&self, path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.operator().operator_cli(path, &["devices", "--json"]).output().unwrap();
            if out.status.success() {
                return;
            }
            assert!(Instant::now() < deadline, "never admitted: {}", String::from_utf8_lossy(&out.stderr));
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (15 s at most) until the operator's relay lists `device_id`
    /// online and `ok` holds of its entry (as the relay's admin sees it); returns it.
    pub fn wait_listed(&self, device_id: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let listed = self.operator().admin(&["devices", "--json"]).code(0).json();
            let entry = listed.as_array().unwrap().iter().find(|d| d["device_id"] == device_id).cloned();
            if let Some(entry) = entry.filter(|e| e["online"] == true && ok(e)) {
                return entry;
            }
            assert!(Instant::now() < deadline, "{device_id} never listed so: {listed}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the operator's relay lists `device_id` online.
    pub fn wait_online(&self, device_id: &str) {
        self.wait_listed(device_id, |_| true);
    }
}
