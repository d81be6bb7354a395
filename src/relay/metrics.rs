//! The relay's counters and their Prometheus text (`GET /metrics`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::lock;

/// What `/metrics` counts besides the connected peers (which the hub knows).
#[derive(Default)]
pub(crate) struct Metrics {
    commands_routed: AtomicU64,
    frames_rejected: Mutex<BTreeMap<&'static str, u64>>,
    handshakes_failed: Mutex<BTreeMap<&'static str, u64>>,
    audit_alerts: Mutex<BTreeMap<&'static str, u64>>,
    witness_write_failures: AtomicU64,
    accept_paused: AtomicU64,
}

impl Metrics {
    /// An operator's command reached a device's queue.
    pub(crate) fn routed(&self) {
        self.commands_routed.fetch_add(1, Ordering::Relaxed);
    }

    /// A frame after `hello` was refused, for `reason` (`malformed`, `bad_run`, …).
    pub(crate) fn rejected(&self, reason: &'static str) {
        bump(&self.frames_rejected, reason);
    }

    /// A TLS handshake, upgrade or `hello` failed, for `reason` (`timeout`, `origin`, …).
    pub(crate) fn handshake_failed(&self, reason: &'static str) {
        bump(&self.handshakes_failed, reason);
    }

    /// The accept loop found `--max-unauthenticated` connections waiting for
    /// `hello` and stopped accepting until one of them is through or gone.
    pub(crate) fn accept_paused(&self) {
        self.accept_paused.fetch_add(1, Ordering::Relaxed);
    }

    /// A device's audit chain failed the witness, of `kind` (`truncated`, …),
    /// and no alert stood against it yet.
    pub(crate) fn audit_alert(&self, kind: &'static str) {
        bump(&self.audit_alerts, kind);
    }

    /// Witnessed heads could not be written to the registry (they stay pending).
    pub(crate) fn witness_write_failed(&self) {
        self.witness_write_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4), with the hub's gauges
    /// (`devices_audit_alert`: devices with a standing audit alert, from the registry).
    pub(crate) fn text(
        &self,
        devices_connected: usize,
        operators_connected: usize,
        devices_audit_alert: usize,
    ) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: usize| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(&mut out, "devices_connected", "Devices with an authenticated connection.", devices_connected);
        gauge(&mut out, "operators_connected", "Operator connections.", operators_connected);
        let alerted = "Enrolled devices with a standing audit alert (until the admin clears it).";
        gauge(&mut out, "devices_audit_alert", alerted, devices_audit_alert);
        let routed = self.commands_routed.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP commands_routed_total Operator commands delivered to a device.\n# TYPE commands_routed_total counter\ncommands_routed_total {routed}"
        );
        for (name, help, map) in [
            ("frames_rejected_total", "Frames refused, by reason.", &self.frames_rejected),
            ("handshakes_failed_total", "TLS handshakes and hellos that failed, by reason.", &self.handshakes_failed),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (reason, n) in lock(map).iter() {
                let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
            }
        }
        let name = "audit_alerts_total";
        let _ =
            writeln!(out, "# HELP {name} Audit alerts raised since the relay started, by kind.\n# TYPE {name} counter");
        for (kind, n) in lock(&self.audit_alerts).iter() {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {n}");
        }
        let name = "witness_write_failures_total";
        let failed = self.witness_write_failures.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP {name} Registry writes of witnessed audit heads that failed (retried).\n# TYPE {name} counter\n{name} {failed}"
        );
        let name = "accept_paused_total";
        let paused = self.accept_paused.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP {name} Times accepting paused at --max-unauthenticated (further connections waited in the kernel's backlog).\n# TYPE {name} counter\n{name} {paused}"
        );
        out
    }

    /// How often `reason` was counted as a failed handshake (for tests).
    #[cfg(test)]
    pub(crate) fn handshakes_failed(&self, reason: &str) -> u64 {
        lock(&self.handshakes_failed).get(reason).copied().unwrap_or(0)
    }

    /// How often `reason` was counted as a rejected frame (for tests).
    #[cfg(test)]
    pub(crate) fn rejected_count(&self, reason: &str) -> u64 {
        lock(&self.frames_rejected).get(reason).copied().unwrap_or(0)
    }
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, reason: &'static str) {
    *lock(map).entry(reason).or_default() += 1;
}
