//! The owner's agent through a real relay and a real daemon, from the
//! operator's side: the environment the agent gets (a real process that
//! prints it), the transcript's digest printed at the end by `support
//! operator agent` and by the owner's `support tasks TASK_ID` alike, and
//! a failure said with its reason on both sides.

mod common;

use std::process::Stdio;

use common::desk::Desk;
use common::net::{Device, add_policy};
use common::{Home, Run};

/// The API key's value: it must reach the agent and nothing else.
const API_KEY: &str = "sk-ant-test-not-a-real-key-4711";

/// A daemon whose `[agent]` is tests/fixtures/agent-env.sh, started with
/// proxy, CA, session and key variables in its environment.
fn env_device(relays: &Desk, key: &support::KeyPair, work: &std::path::Path) -> Device {
    let relay = &relays.device;
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/agent-env.sh");
    let home = Home::new();
    add_policy(
        &home,
        &format!(
            "[agent]\nargv = [\"{fixture}\"]\ncwd = \"{}\"\nplan_args = []\nbuild_args = []\n\
             env = [\"ANTHROPIC_API_KEY\"]\nidle_timeout_s = 1\n",
            work.display()
        ),
    );
    let log = std::fs::File::create(home.path.with_extension("daemon.log")).unwrap();
    let child = home
        .cmd(&["daemon", "--relay", &relay.url()])
        .args(["--relay-ca", relay.ca().to_str().unwrap(), "--enroll", &relay.token()])
        .env("SUPPORT_LOG", "debug")
        .env("HTTPS_PROXY", "http://proxy.example:3128")
        .env("no_proxy", "localhost,127.0.0.1")
        .env("SSL_CERT_FILE", "/etc/ssl/private-ca.pem")
        .env("NODE_EXTRA_CA_CERTS", "/etc/ssl/private-ca.pem")
        .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/1000/bus")
        .env("XDG_RUNTIME_DIR", "/run/user/1000")
        .env("ANTHROPIC_API_KEY", API_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "not-for-the-agent")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut device = Device { home, proc: common::net::Proc(child), device_id: String::new() };
    device.wait_until("connected", |s| s["daemon"]["connected"] == true);
    device.device_id = device.home.status()["device_id"].as_str().unwrap().to_string();
    device.trust("desk", key);
    device.allow(3);
    relays.wait_online(&device.device_id);
    device
}

/// The owner's view of the task that ran last: `support tasks TASK_ID`.
fn owner_view(device: &Device) -> (String, Run) {
    let audit = device.home.run(&["audit", "--json", "--limit", "50"]);
    let finished = audit
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["event"] == "action.finished")
        .expect("action.finished");
    let task_id = finished["task_id"].as_str().unwrap().to_string();
    let view = device.home.run(&["tasks", &task_id]);
    (task_id, view)
}

/// The `transcript: N lines, sha256 X` line of an output.
fn digest_line(out: &str) -> String {
    out.lines().rev().find(|l| l.starts_with("transcript: ")).unwrap_or_default().to_string()
}

#[test]
fn the_agent_gets_proxy_ca_session_and_its_key_and_both_sides_print_one_digest() {
    agent_env_and_digest(&Desk::one());
}

#[test]
fn an_operator_on_another_relay_of_the_cluster_prints_the_same_digest_as_the_owner() {
    agent_env_and_digest(&Desk::across());
}

/// An agent task from `relays`' operator relay: its environment, and one
/// digest of its streamed, signed transcript on both sides.
fn agent_env_and_digest(relays: &Desk) {
    let relay = relays.operator();
    let (key, key_path) = relays.add_operator("desk");
    let work = tempfile::tempdir().unwrap();
    let device = env_device(relays, &key, work.path());
    let out = relay.operator_cli(&key_path, &["agent", &device.device_id, "print your environment"]).output().unwrap();
    let run = Run::from(out);
    run.code(0);
    for want in [
        "HTTPS_PROXY=http://proxy.example:3128",
        "no_proxy=localhost,127.0.0.1",
        "SSL_CERT_FILE=/etc/ssl/private-ca.pem",
        "NODE_EXTRA_CA_CERTS=/etc/ssl/private-ca.pem",
        "DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/1000/bus",
        "XDG_RUNTIME_DIR=/run/user/1000",
        &format!("ANTHROPIC_API_KEY={API_KEY}"),
        "SUPPORTD_TASK=t-",
    ] {
        assert!(run.stdout.contains(want), "the agent lacks {want}: {}", run.stdout);
    }
    for never in ["AWS_SECRET_ACCESS_KEY", "SUPPORT_HOME", "SUPPORT_LOG"] {
        assert!(!run.stdout.contains(never), "{never} reached the agent: {}", run.stdout);
    }
    // Both sides end with the same digest line.
    let theirs = digest_line(&run.stdout);
    assert!(theirs.contains("sha256 "), "the operator prints the digest: {}", run.stdout);
    let (_, view) = owner_view(&device);
    view.code(0);
    assert_eq!(digest_line(&view.stdout), theirs, "owner and operator agree");
    // The key went to the agent only: not to the audit log, nor to the daemon's log.
    let audit = device.home.run(&["audit", "--json", "--limit", "100"]).stdout;
    assert!(!audit.contains(API_KEY), "the key is in the audit log");
    assert!(!device.log().contains(API_KEY), "the key is in the daemon's log");
}

#[test]
fn an_agent_without_progress_fails_with_its_reason_on_both_sides() {
    let relays = Desk::one();
    let relay = relays.operator();
    let (key, key_path) = relays.add_operator("desk");
    let work = tempfile::tempdir().unwrap();
    let device = env_device(&relays, &key, work.path());
    let out = relay.operator_cli(&key_path, &["agent", &device.device_id, "then retry"]).output().unwrap();
    let run = Run::from(out);
    run.code(1).says("failed: no progress for 1 s");
    assert!(!run.stderr.contains("by signal"), "{}", run.stderr);
    let (_, view) = owner_view(&device);
    view.code(0).says("ended: failed: no progress for 1 s after");
    assert_eq!(digest_line(&view.stdout), digest_line(&run.stdout), "owner and operator agree");
}
