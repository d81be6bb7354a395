//! `support demo`: the whole loop on this machine (DESIGN §8), for real,
//! in a temporary directory: a relay with a self-signed certificate on an
//! ephemeral loopback port, a daemon enrolled to it, an operator key the
//! demo home trusts; then a command denied for want of consent, a grant,
//! real diagnostics through the relay, a tier-2 fix denied, a revoke, and
//! the audit trail with its verification. Every step is the real binary;
//! the demo exits 0 only if every step behaved as shown.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::Error;

/// Show the whole loop: relay, daemon, operator, grant, denials, audit.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the temporary directory afterwards and print where it is.
    #[arg(long)]
    keep: bool,
}

/// How long one step may take before the demo calls it failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

struct Demo {
    exe: PathBuf,
    home: PathBuf,
    relay_state: PathBuf,
    env: Vec<(String, String)>,
    failed: Vec<String>,
}

fn fail(what: impl std::fmt::Display) -> Error {
    Error::Failed(format!("demo: {what}"))
}

impl Demo {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(args).env("NO_COLOR", "1").env_remove("SUPPORT_HOME").kill_on_drop(true);
        c.env("SUPPORT_HOME", &self.home);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs `support ARGS`, prints it with its output, and checks the exit
    /// code and that the output holds every string in `expect`.
    async fn step(&mut self, why: &str, args: &[&str], exit: i32, expect: &[&str]) -> String {
        println!("# {why}\n$ support {}", shlex::try_join(args.iter().copied()).unwrap_or_else(|_| args.join(" ")));
        let out = self.command(args).stdin(Stdio::null()).output();
        let (code, text) = match tokio::time::timeout(STEP_TIMEOUT, out).await {
            Ok(Ok(out)) => {
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                (out.status.code().unwrap_or(-1), text)
            }
            Ok(Err(e)) => (-1, format!("cannot run it: {e}\n")),
            Err(_) => (-1, format!("no answer within {} s\n", STEP_TIMEOUT.as_secs())),
        };
        print!("{text}");
        let missing: Vec<_> = expect.iter().filter(|e| !text.contains(**e)).collect();
        if code != exit || !missing.is_empty() {
            println!("!! expected exit {exit} and output containing {missing:?}; got exit {code}");
            self.failed.push(args.join(" "));
        }
        println!();
        text
    }

    /// Starts `support ARGS` in the background, its stderr to `log`.
    fn spawn(&self, args: &[&str], log: &Path) -> Result<Child, Error> {
        let log = std::fs::File::create(log).map_err(fail)?;
        self.command(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log).spawn().map_err(fail)
    }
}

/// SIGTERM, then wait (a daemon stops its tasks and records daemon.stopped).
async fn stop(mut child: Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

pub(crate) fn run(args: Args) -> Result<ExitCode, Error> {
    let exe = std::env::current_exe().map_err(|e| fail(format!("cannot find the support binary: {e}")))?;
    let tmp = tempfile::Builder::new().prefix("support-demo-").tempdir().map_err(fail)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(fail)?;
    let result = runtime.block_on(demo(exe, tmp.path()));
    if args.keep {
        println!("The demo directory is kept at {}", tmp.keep().display());
    }
    result
}

async fn demo(exe: PathBuf, dir: &Path) -> Result<ExitCode, Error> {
    let mut d =
        Demo { exe, home: dir.join("owner"), relay_state: dir.join("relay"), env: Vec::new(), failed: Vec::new() };
    let state = d.relay_state.display().to_string();
    println!("support demo: everything lives in {} and ends with the demo.\n", dir.display());

    println!("## The relay: a self-signed certificate on an ephemeral loopback port");
    let mut relay = d.spawn(
        &["relay", "--state", &state, "serve", "--listen", "127.0.0.1:0", "--self-signed"],
        &dir.join("relay.log"),
    )?;
    let mut lines = BufReader::new(relay.stdout.take().ok_or_else(|| fail("no relay stdout"))?).lines();
    let addr = tokio::time::timeout(STEP_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("  relay: {line}");
            if let Some(addr) = line.strip_prefix("listening on ") {
                return Some(addr.to_string());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or_else(|| fail(format!("the relay did not start; see {}", dir.join("relay.log").display())))?;
    let url = format!("wss://{addr}");
    let ca = d.relay_state.join("cert.pem").display().to_string();
    let key = dir.join("operator.key").display().to_string();
    println!();

    println!("## An operator key, admitted by the relay and trusted by the owner");
    let public =
        d.step("The support desk makes its key.", &["operator", "keygen", "--out", &key], 0, &["ed25519:"]).await;
    let public = public.lines().next().unwrap_or_default().trim().to_string();
    d.step("The relay admits it.", &["relay", "--state", &state, "add-operator", "support-desk", &public], 0, &[])
        .await;
    d.step("The owner trusts it.", &["trust", "add", "support-desk", &public], 0, &["Trusted"]).await;
    let token = d
        .step(
            "A one-time enrollment token.",
            &["relay", "--state", &state, "enroll-token", "--ttl", "10m"],
            0,
            &["et-"],
        )
        .await;
    let token = token.lines().next().unwrap_or_default().trim().to_string();

    println!("## The owner's daemon, enrolled to the relay");
    println!("$ support daemon --relay {url} --relay-ca {ca} --enroll et-…   (in the background)\n");
    let daemon =
        d.spawn(&["daemon", "--relay", &url, "--relay-ca", &ca, "--enroll", &token], &dir.join("daemon.log"))?;
    let connected = wait_connected(&d).await;
    if !connected {
        println!("!! the daemon did not connect; see {}", dir.join("daemon.log").display());
        d.failed.push("daemon connect".into());
    }
    d.env = vec![
        ("SUPPORT_OPERATOR_RELAY".into(), url.clone()),
        ("SUPPORT_OPERATOR_RELAY_CA".into(), ca.clone()),
        ("SUPPORT_OPERATOR_KEY".into(), key.clone()),
    ];
    println!("The operator's commands below use SUPPORT_OPERATOR_RELAY={url},");
    println!("SUPPORT_OPERATOR_RELAY_CA={ca} and SUPPORT_OPERATOR_KEY={key}.\n");

    d.step("The owner's view: support is off, the daemon is connected.", &["status"], 0, &["OFF", "connected to"])
        .await;
    let listed = d
        .step("The operator sees the device online.", &["operator", "devices", "--json"], 0, &["\"online\":true"])
        .await;
    let device = serde_json::from_str::<serde_json::Value>(listed.lines().next().unwrap_or_default())
        .ok()
        .and_then(|v| v[0]["device_id"].as_str().map(String::from))
        .unwrap_or_else(|| "d-?".into());

    d.step(
        "The operator asks for diagnostics: denied, the owner has granted nothing.",
        &["operator", "run", &device, "system-info"],
        4,
        &["NO_CONSENT"],
    )
    .await;
    d.step(
        "The owner grants diagnostics (tier 1) for 30 minutes.",
        &["allow", "--tier", "1", "--minutes", "30", "--reason", "demo: slow laptop"],
        0,
        &["Granted tier 1"],
    )
    .await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    d.step(
        "Now the same command runs, and its real output comes back through the relay.",
        &["operator", "run", &device, "system-info"],
        0,
        &[&host, "ok ·"],
    )
    .await;
    d.step("Another diagnostic.", &["operator", "run", &device, "memory"], 0, &["Mem", "ok ·"]).await;
    d.step(
        "A fix is tier 2: beyond this grant, so it is denied and nothing runs.",
        &["operator", "run", &device, "clear-print-queue"],
        4,
        &["TIER_INSUFFICIENT"],
    )
    .await;
    d.step("The owner revokes.", &["revoke"], 0, &["Revoked"]).await;
    d.step("Diagnostics are refused again at once.", &["operator", "run", &device, "system-info"], 4, &["NO_CONSENT"])
        .await;
    stop(daemon).await;
    stop(relay).await;
    d.step(
        "Every step is on the owner's record: grants, denials, what ran and how it ended.",
        &["audit"],
        0,
        &["action.denied", "action.started", "action.finished", "consent.revoked"],
    )
    .await;
    d.step("And the record's hash chain verifies.", &["audit", "--verify"], 0, &["ok: "]).await;

    if d.failed.is_empty() {
        println!("demo: every step behaved as shown.");
        Ok(ExitCode::SUCCESS)
    } else {
        Err(fail(format!("{} step(s) did not behave as shown: {}", d.failed.len(), d.failed.join("; "))))
    }
}

/// Polls `support status --json` until the daemon reports its link up (30 s at most).
async fn wait_connected(d: &Demo) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if let Ok(out) = d.command(&["status", "--json"]).output().await
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            && v["daemon"]["connected"] == serde_json::Value::Bool(true)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
