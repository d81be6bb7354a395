//! `support demo`: the whole loop on this machine (DESIGN §8), for real,
//! in a temporary directory: a relay with a self-signed certificate on an
//! ephemeral loopback port, a daemon enrolled to it, an operator key the
//! demo home trusts; then a command denied for want of consent, a grant,
//! real diagnostics through the relay, a tier-2 fix denied; then tier 3:
//! the operator drives the owner's AI agent (a stand-in script that speaks
//! Claude Code's stream-json, since no real agent may be installed), the
//! owner watches its transcript and stops it; a revoke, and the audit trail
//! with its verification. Every step is the real binary; the demo exits 0
//! only if every step behaved as shown.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use super::out::outln;

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

/// The stand-in for the owner's AI agent: Claude Code's stream-json, a
/// tool call that starts a child process, then it waits to be stopped.
const DEMO_AGENT: &str = r#"#!/bin/sh
prompt=$(head -c 4096 | tr '\n"\\' '   ')
say() { printf '%s\n' "$1"; sleep 0.2; }
say '{"type":"system","subtype":"init","model":"demo-agent","cwd":"'"$PWD"'"}'
say '{"type":"assistant","message":{"content":[{"type":"text","text":"Task: '"$prompt"'. I will look at the print queue first."}]}}'
say '{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Bash","input":{"command":"lpstat -o"}}]}}'
sleep 600 &
say '{"type":"user","message":{"content":[{"type":"tool_result","content":"(no jobs queued)"}]}}'
say '{"type":"assistant","message":{"content":[{"type":"text","text":"The queue is empty. Next I would read the CUPS error log."}]}}'
wait
"#;

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
        let _ =
            outln!("# {why}\n$ support {}", shlex::try_join(args.iter().copied()).unwrap_or_else(|_| args.join(" ")));
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
            let _ = outln!("!! expected exit {exit} and output containing {missing:?}; got exit {code}");
            self.failed.push(args.join(" "));
        }
        let _ = outln!("");
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
        outln!("The demo directory is kept at {}", tmp.keep().display())?;
    }
    result
}

async fn demo(exe: PathBuf, dir: &Path) -> Result<ExitCode, Error> {
    let mut d =
        Demo { exe, home: dir.join("owner"), relay_state: dir.join("relay"), env: Vec::new(), failed: Vec::new() };
    let state = d.relay_state.display().to_string();
    outln!("support demo: everything lives in {} and ends with the demo.\n", dir.display())?;

    outln!("## The relay: a self-signed certificate on an ephemeral loopback port")?;
    let mut relay = d.spawn(
        &["relay", "--state", &state, "serve", "--listen", "127.0.0.1:0", "--self-signed"],
        &dir.join("relay.log"),
    )?;
    let mut lines = BufReader::new(relay.stdout.take().ok_or_else(|| fail("no relay stdout"))?).lines();
    let addr = tokio::time::timeout(STEP_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = outln!("  relay: {line}");
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
    let ca = crate::paths::RelayPaths::new(&d.relay_state).cert().display().to_string();
    let key = dir.join("operator.key").display().to_string();
    outln!("")?;

    outln!("## An operator key, admitted by the relay and trusted by the owner")?;
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

    set_up_agent(&d.home, dir).map_err(|e| fail(format!("setting up the demo agent: {e}")))?;

    outln!("## The owner's daemon, enrolled to the relay")?;
    outln!("$ support daemon --relay {url} --relay-ca {ca} --enroll et-…   (in the background)\n")?;
    let daemon =
        d.spawn(&["daemon", "--relay", &url, "--relay-ca", &ca, "--enroll", &token], &dir.join("daemon.log"))?;
    let connected = wait_connected(&d).await;
    if !connected {
        outln!("!! the daemon did not connect; see {}", dir.join("daemon.log").display())?;
        d.failed.push("daemon connect".into());
    }
    d.env = vec![
        ("SUPPORT_OPERATOR_RELAY".into(), url.clone()),
        ("SUPPORT_OPERATOR_RELAY_CA".into(), ca.clone()),
        ("SUPPORT_OPERATOR_KEY".into(), key.clone()),
    ];
    outln!("The operator's commands below use SUPPORT_OPERATOR_RELAY={url},")?;
    outln!("SUPPORT_OPERATOR_RELAY_CA={ca} and SUPPORT_OPERATOR_KEY={key}.\n")?;

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
    agent_session(&mut d, &device, dir).await?;
    d.step("The owner revokes.", &["revoke"], 0, &["Revoked"]).await;
    d.step("Diagnostics are refused again at once.", &["operator", "run", &device, "system-info"], 4, &["NO_CONSENT"])
        .await;
    stop(daemon).await;
    stop(relay).await;
    d.step(
        "Every step is on the owner's record: grants, denials, what ran and how it ended.",
        &["audit"],
        0,
        &["action.denied", "action.started", "action.finished", "task.stopped", "by owner", "consent.revoked"],
    )
    .await;
    d.step("And the record's hash chain verifies.", &["audit", "--verify"], 0, &["ok: "]).await;

    if d.failed.is_empty() {
        outln!("demo: every step behaved as shown.")?;
        Ok(ExitCode::SUCCESS)
    } else {
        Err(fail(format!("{} step(s) did not behave as shown: {}", d.failed.len(), d.failed.join("; "))))
    }
}

/// Writes the stand-in agent and a `policy.d/agent.toml` pointing `[agent]`
/// at it, working in `DIR/workspace` (before the daemon starts: it loads
/// the catalogue once).
fn set_up_agent(home: &Path, dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt as _;
    let script = dir.join("demo-agent.sh");
    std::fs::write(&script, DEMO_AGENT).map_err(fail)?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    let workspace = dir.join("workspace");
    std::fs::create_dir_all(&workspace).map_err(fail)?;
    let paths = crate::Paths::under(home.to_path_buf());
    paths.ensure_dirs()?;
    crate::paths::ensure_dir(&paths.policy_dir())?;
    let policy = format!(
        "# The demo's stand-in agent; a real one is e.g.\n\
         # argv = [\"claude\", \"-p\", \"--output-format\", \"stream-json\", \"--verbose\"]\n\
         [agent]\nargv = [{:?}]\nplan_args = []\nbuild_args = []\ncwd = {:?}\ntimeout_s = 120\n",
        script.display().to_string(),
        workspace.display().to_string()
    );
    crate::paths::write_atomic(&paths.policy_dir().join("agent.toml"), policy.as_bytes())?;
    Ok(())
}

/// Tier 3: the operator drives the agent, the owner watches and stops it.
async fn agent_session(d: &mut Demo, device: &str, dir: &Path) -> Result<(), Error> {
    outln!("## Tier 3: the support desk drives the owner's AI agent; the owner watches and stops it")?;
    d.step(
        "The owner lets support operate their AI agent (tier 3), which needs --yes.",
        &["allow", "--tier", "3", "--minutes", "30", "--yes", "--reason", "demo: printing fails"],
        0,
        &["Granted tier 3"],
    )
    .await;
    let watch_log = dir.join("watch.log");
    let mut watch = d.spawn(&["watch"], &dir.join("watch.err"))?;
    let watch_out = watch_log.clone();
    let mut watch_stdout = watch.stdout.take().ok_or_else(|| fail("no watch stdout"))?;
    let copier = tokio::spawn(async move {
        let mut file = tokio::fs::File::create(&watch_out).await.ok()?;
        tokio::io::copy(&mut watch_stdout, &mut file).await.ok()
    });
    let prompt = "Find out why printing fails";
    outln!("$ support operator agent {device} {prompt:?} --mode plan   (the operator, in the background)\n")?;
    let operator = d
        .command(&["operator", "agent", device, prompt, "--mode", "plan"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(fail)?;
    let task_id = wait_agent(d).await;
    let Some(task_id) = task_id else {
        outln!("!! the agent task did not start; see {}", dir.join("daemon.log").display())?;
        d.failed.push("operator agent".into());
        stop(watch).await;
        let _ = operator.wait_with_output().await;
        return Ok(());
    };
    d.step("The owner's view while it runs.", &["status"], 0, &["support is operating your agent:", "support-desk"])
        .await;
    d.step(
        "The agent's transcript so far: its words, its tool calls and their results.",
        &["tasks", &task_id],
        0,
        &["agent:", "tool: Bash: lpstat -o", "result:"],
    )
    .await;
    d.step(
        "The owner stops it: the agent and everything it started are killed.",
        &["stop"],
        0,
        &[&format!("Stopped {task_id}: cancelled by owner")],
    )
    .await;
    let out = tokio::time::timeout(STEP_TIMEOUT, operator.wait_with_output()).await;
    outln!("# What the operator saw:")?;
    match out {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            print!("{text}");
            if out.status.code() != Some(1) || !text.contains("stopped by the owner") {
                outln!("!! expected exit 1 and \"stopped by the owner\"")?;
                d.failed.push("operator agent".into());
            }
        }
        _ => {
            outln!("!! the operator's command did not end")?;
            d.failed.push("operator agent".into());
        }
    }
    stop(watch).await;
    let _ = copier.await;
    let seen = std::fs::read_to_string(&watch_log).unwrap_or_default();
    outln!("\n# What `support watch` showed the owner meanwhile:")?;
    print!("{seen}");
    if !seen.contains("support is operating your agent:") || !seen.contains("tool: Bash") {
        outln!("!! expected the watch to show the agent at work")?;
        d.failed.push("watch".into());
    }
    outln!("")?;
    Ok(())
}

/// Polls `support tasks --json` until the agent's task has its tool
/// result in the transcript; returns its id (30 s at most).
async fn wait_agent(d: &Demo) -> Option<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if let Ok(out) = d.command(&["tasks", "--json"]).output().await
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            && let Some(id) = v["tasks"][0]["task_id"].as_str()
            && let Ok(detail) = d.command(&["tasks", id, "--json"]).output().await
            && String::from_utf8_lossy(&detail.stdout).contains("tool_result")
        {
            return Some(id.to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
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
