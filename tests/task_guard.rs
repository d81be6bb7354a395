//! A task cannot widen its own grant: `support allow` and `support trust
//! add` run from inside a task's process tree (even with the marker
//! stripped, in a new session, double-forked away from the task) exit 4,
//! change nothing, and leave `consent.refused` / `trust.refused` on the
//! record. The owner's own `allow`, outside every task, still works while
//! the daemon runs a task.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::lab::{Lab, finish, grant, records};
use common::{Home, Run, bin};
use support::audit::Event;
use support::{Paths, Status, StoppedBy};

/// The tests here run trees that re-parent to this process, which is the
/// subreaper while a lab daemon runs: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The marker a task's environment carries (`daemon::tree::MARKER_ENV`).
const MARKER: &str = "SUPPORTD_TASK";

fn quote(path: &Path) -> String {
    shlex::try_quote(path.to_str().unwrap()).unwrap().into_owned()
}

/// `'BIN' --home 'HOME'`: a task's environment has no `SUPPORT_*`, so the home is named.
fn support_in(paths: &Paths) -> String {
    format!("{} --home {}", quote(&bin()), quote(&paths.home))
}

/// Runs `cmd` as a signed tier-4 `shell` command; returns its exit code and output.
async fn shell(lab: &Lab, cmd: &str) -> (Option<i32>, String) {
    let (outcome, mut rx) = lab.submit(lab.command("shell", &[("cmd", cmd)])).await;
    outcome.expect("the shell command is accepted");
    let (result, output) = finish(&mut rx).await;
    assert!(matches!(result.status, Status::Ok | Status::Failed), "{:?}: {output}", result.status);
    (result.exit_code, output)
}

fn consent_bytes(paths: &Paths) -> Vec<u8> {
    std::fs::read(paths.consent()).expect("consent.json")
}

fn refusals(paths: &Paths, event: Event) -> Vec<support::Record> {
    records(paths).into_iter().filter(|r| r.event == event).collect()
}

#[tokio::test]
async fn allow_from_inside_a_task_is_refused_however_the_task_hides() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start();
    let before = lab.grant(4, Duration::from_secs(600));
    let consent = consent_bytes(&lab.paths);
    let support = support_in(&lab.paths);
    let daemon = format!("descends from the support daemon (pid {})", std::process::id());
    let allow = "allow --tier 4 --minutes 480 --yes";

    // 1. Plain: the marker is there, and so is everything else.
    let (code, output) = shell(&lab, &format!("{support} {allow}")).await;
    assert_eq!(code, Some(4), "{output}");
    assert!(output.contains("allow refused: it was run from inside a support task"), "{output}");
    let r = refusals(&lab.paths, Event::ConsentRefused);
    assert_eq!(r.len(), 1, "{r:?}");
    let detail = r[0].detail.clone().unwrap_or_default();
    assert_eq!(r[0].tier, Some(4));
    assert!(detail.contains(&format!("{MARKER}=t-")), "{detail}");
    assert!(detail.contains(&daemon), "{detail}");
    assert!(detail.contains("8h"), "the asked length: {detail}");
    assert_eq!(consent_bytes(&lab.paths), consent, "the grant changed");

    // 2. The marker stripped: the ancestry and the task's process group remain.
    let (code, output) = shell(&lab, &format!("env -u {MARKER} {support} {allow}")).await;
    assert_eq!(code, Some(4), "{output}");
    let r = refusals(&lab.paths, Event::ConsentRefused);
    assert_eq!(r.len(), 2, "{r:?}");
    let detail = r[1].detail.clone().unwrap_or_default();
    assert!(!detail.contains(MARKER), "{detail}");
    assert!(detail.contains(&daemon), "{detail}");
    assert!(detail.contains("process group") && detail.contains("is support task t-"), "{detail}");
    assert_eq!(consent_bytes(&lab.paths), consent, "the grant changed");

    // 3. Stripped, in a new session and process group, double-forked so that
    // its parent is gone: the subreaper is still its ancestor.
    let out = lab.home.path.join("escape");
    std::fs::create_dir(&out).unwrap();
    // Arguments: the output directory, the binary, the home.
    let script = lab.home.path.join("escape.sh");
    std::fs::write(
        &script,
        format!(
            r#"out="$1"
( ( setsid -w sh -c 'cut -d " " -f 1,4-6 /proc/$$/stat > "$1/ids"; exec env -u {MARKER} "$2" --home "$3" {allow}' \
    sh "$@" > "$out/allow.out" 2>&1 < /dev/null; echo "exit=$?" > "$out/exit.tmp"; mv "$out/exit.tmp" "$out/exit" ) & )
i=0
while [ ! -e "$out/exit" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i + 1)); done
echo "leader=$$"
cat "$out/ids" "$out/exit" "$out/allow.out"
"#
        ),
    )
    .unwrap();
    let cmd = format!("sh {} {} {} {}", quote(&script), quote(&out), quote(&bin()), quote(&lab.paths.home));
    let (code, output) = shell(&lab, &cmd).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("exit=4"), "{output}");
    assert!(output.contains("allow refused"), "{output}");
    // `pid ppid pgrp session` of the process that became `support allow`.
    let ids: Vec<i32> =
        std::fs::read_to_string(out.join("ids")).unwrap().split_whitespace().map(|f| f.parse().unwrap()).collect();
    let leader: i32 = output.lines().find_map(|l| l.strip_prefix("leader=")).unwrap().parse().unwrap();
    assert_eq!((ids[2], ids[3]), (ids[0], ids[0]), "its own session and group: {ids:?}");
    assert_ne!(ids[2], leader, "{ids:?}");
    let r = refusals(&lab.paths, Event::ConsentRefused);
    assert_eq!(r.len(), 3, "{r:?}");
    let detail = r[2].detail.clone().unwrap_or_default();
    assert!(!detail.contains(MARKER), "{detail}");
    assert!(detail.contains(&daemon), "{detail}");
    assert_eq!(consent_bytes(&lab.paths), consent, "the grant changed");

    let now = support::consent::read(&lab.paths, chrono::Utc::now());
    let live = now.live().expect("the grant stands");
    assert_eq!(live.grant_id, before.grant_id);
    assert_eq!(live.expires_at, before.expires_at);
    assert!(refusals(&lab.paths, Event::ConsentGranted).is_empty());
    assert!(support::audit::verify(&lab.paths).is_ok());
}

#[tokio::test]
async fn trust_add_from_inside_a_task_is_refused() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start();
    lab.grant(4, Duration::from_secs(600));
    let trusted = support::trust::list(&lab.paths).unwrap();
    let key = common::new_public_key();
    let cmd = format!("env -u {MARKER} {} trust add mallory {key}", support_in(&lab.paths));
    let (code, output) = shell(&lab, &cmd).await;
    assert_eq!(code, Some(4), "{output}");
    assert!(output.contains("trust add refused: it was run from inside a support task"), "{output}");
    assert_eq!(support::trust::list(&lab.paths).unwrap(), trusted, "the trusted operators changed");
    let r = refusals(&lab.paths, Event::TrustRefused);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].operator.as_deref(), Some("mallory"));
    let detail = r[0].detail.clone().unwrap_or_default();
    assert!(detail.contains(&format!("descends from the support daemon (pid {})", std::process::id())), "{detail}");
    assert!(detail.contains("SHA256:"), "the key's fingerprint: {detail}");
    assert!(!detail.contains(&key), "{detail}");
    assert!(refusals(&lab.paths, Event::TrustAdded).is_empty());

    // Narrowing stays allowed from inside a task: `trust remove`, `revoke`.
    let (code, output) = shell(&lab, &format!("{} trust remove alice", support_in(&lab.paths))).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(support::trust::list(&lab.paths).unwrap().is_empty());
}

/// Not a test on its own: a daemon in a process of its own, running a
/// `sleep` task, for the test below (run with `--ignored` and `GUARD_HOME`).
/// It prints `READY PID` (the task's leader) and stops when stdin closes.
#[test]
#[ignore = "the daemon process of the_owner_outside_every_task_may_still_allow"]
fn guard_daemon_child() {
    let home = std::env::var_os("GUARD_HOME").expect("run by the owner test, with GUARD_HOME");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let paths = Paths::under(home.into());
        let daemon = support::Daemon::start(&paths, Default::default()).unwrap();
        let operator = support::KeyPair::load(&paths.home.join("operator.key")).unwrap();
        let params = [("cmd".to_string(), "sleep 60".to_string())].into();
        let id = support::protocol::new_request_id();
        let run = support::Run::signed(&operator, &id, daemon.device_id(), "shell", params, chrono::Utc::now());
        let (tx, _rx) = tokio::sync::mpsc::channel(1024);
        let task_id = daemon.submit(run, tx).await.expect("accepted");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let leader = loop {
            if let Some(pid) = daemon.tasks().first().and_then(|t| t.pid) {
                break pid;
            }
            assert!(tokio::time::Instant::now() < deadline, "the task never got a pid");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        println!("READY {leader}");
        let _ = tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink())).await;
        daemon.stop_task(&task_id, StoppedBy::Owner).await;
    });
}

#[tokio::test]
async fn the_owner_outside_every_task_may_still_allow() {
    let _one = SERIAL.lock().await;
    let home = Home::new();
    let paths = Paths::under(home.path.clone());
    Lab::prepare(&paths);
    let before = grant(&paths, 4, Duration::from_secs(600));
    // The daemon runs in a process of its own, as it does for an owner:
    // in this process, everything the test starts would descend from it.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["guard_daemon_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("GUARD_HOME", &home.path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let leader: i32 = lines
        .by_ref()
        .map_while(Result::ok)
        // libtest prints `test NAME ... ` before the line, without a newline.
        .find_map(|l| l.split_once("READY ").map(|(_, p)| p.trim().parse().unwrap()))
        .expect("the child daemon never got its task running");
    std::thread::spawn(move || lines.for_each(drop));
    let tasks = std::fs::read_to_string(paths.tasks()).unwrap();
    assert!(tasks.contains(&format!("\"pid\": {leader}")), "{tasks}");

    let owner = |args: &[&str]| {
        let mut c = home.cmd(args);
        c.env_remove(MARKER);
        Run::from(c.output().unwrap())
    };
    owner(&["allow", "--tier", "4", "--minutes", "480", "--yes"]).code(0).says("Granted tier 4");
    owner(&["trust", "add", "bob", &common::new_public_key()]).code(0).says("Trusted `bob`");
    let live = support::consent::read(&paths, chrono::Utc::now()).live().cloned().expect("a grant");
    assert_ne!(live.grant_id, before.grant_id);
    assert!(refusals(&paths, Event::ConsentRefused).is_empty());
    assert!(refusals(&paths, Event::TrustRefused).is_empty());
    assert_eq!(refusals(&paths, Event::ConsentGranted).len(), 1);

    // Closing its stdin stops the child's task and the child.
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "the child daemon: {status}");
    assert!(!common::lab::alive(leader), "the child's task outlived it");
}

#[tokio::test]
async fn a_refusal_that_cannot_be_recorded_still_refuses() {
    let _one = SERIAL.lock().await;
    let lab = Lab::start();
    lab.grant(4, Duration::from_secs(600));
    let consent = consent_bytes(&lab.paths);
    let log = quote(&lab.paths.audit());
    // A group-writable log is refused by every writer, so the refusal cannot be recorded.
    let cmd = format!(
        "chmod g+w {log}; env -u {MARKER} {} allow --tier 4 --minutes 480 --yes; code=$?; chmod g-w {log}; exit $code",
        support_in(&lab.paths)
    );
    let (code, output) = shell(&lab, &cmd).await;
    assert_eq!(code, Some(4), "{output}");
    assert!(output.contains("allow refused") && output.contains("The refusal could not be recorded"), "{output}");
    assert_eq!(consent_bytes(&lab.paths), consent, "the grant changed");
    assert!(refusals(&lab.paths, Event::ConsentRefused).is_empty());
}
