//! Interactive sessions (issue 16) end to end: the real operator CLI on a
//! pseudo-terminal driven from here, a real relay, a real daemon running
//! the shell on a pty of its own. What is typed comes back, a resize
//! reaches `stty size`, Ctrl-C interrupts the foreground job and the shell
//! goes on, `exit 3` exits 3, the owner's `support watch` sees the output
//! and the recording's digest is the one on the record; a stop and a
//! revoke end the session and its tree (checked in /proc); tier 3 is
//! refused; frames a relay altered, replayed or made up are refused.

mod common;

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::Home;
use common::lab::records;
use common::net::{Device, Relay, add_policy};
use portable_pty::{CommandBuilder, PtySize, native_pty_system};
use support::audit::Event;

/// The shell the device runs: dash, for a prompt and job control that do not depend on rc files.
const POLICY: &str = "[shell]\nprogram = \"/bin/sh\"\n";

/// The operator CLI on a pty of the test's own.
struct Operator {
    master: Box<dyn portable_pty::MasterPty + Send>,
    writer: Box<dyn std::io::Write + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    seen: Arc<(Mutex<Screen>, Condvar)>,
}

/// What the operator's terminal showed, and whether its reader met the end
/// (every fd of the pty's slave side closed).
type Screen = (Vec<u8>, bool);

impl Operator {
    fn shell(relay: &Relay, key: &Path, device: &str) -> Operator {
        let pair =
            native_pty_system().openpty(PtySize { rows: 24, cols: 80, pixel_width: 0, pixel_height: 0 }).unwrap();
        let mut cmd = CommandBuilder::new(common::bin());
        cmd.args(["operator", "shell", device]);
        cmd.env("SUPPORT_OPERATOR_RELAY", relay.url());
        cmd.env("SUPPORT_OPERATOR_RELAY_CA", relay.ca());
        cmd.env("SUPPORT_OPERATOR_KEY", key);
        cmd.env("NO_COLOR", "1");
        let child = pair.slave.spawn_command(cmd).unwrap();
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let writer = pair.master.take_writer().unwrap();
        let seen = Arc::new((Mutex::new((Vec::new(), false)), Condvar::new()));
        let into = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                into.0.lock().unwrap().0.extend_from_slice(&buf[..n]);
                into.1.notify_all();
            }
            into.0.lock().unwrap().1 = true;
            into.1.notify_all();
        });
        Operator { master: pair.master, writer, child, seen }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.0.lock().unwrap().0).into_owned()
    }

    /// Waits (at most 30 s) until the screen shows `needle` after byte `from`; returns where it ends.
    #[track_caller]
    fn expect_after(&self, from: usize, needle: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = self.seen.0.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&seen.0[from.min(seen.0.len())..]).into_owned();
            if let Some(at) = text.find(needle) {
                return from + at + needle.len();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "never saw {needle:?}; the operator's terminal shows:\n{text}");
            seen = self.seen.1.wait_timeout(seen, left).unwrap().0;
        }
    }

    #[track_caller]
    fn expect(&self, needle: &str) -> usize {
        self.expect_after(0, needle)
    }

    fn type_in(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).unwrap();
        self.writer.flush().unwrap();
    }

    /// The CLI's exit code, waited for (at most 30 s), once all it wrote has been read.
    #[track_caller]
    fn exit_code(&mut self) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut seen = self.seen.0.lock().unwrap();
                while !seen.1 {
                    let left = deadline.saturating_duration_since(Instant::now());
                    assert!(!left.is_zero(), "the operator's terminal never closed");
                    seen = self.seen.1.wait_timeout(seen, left).unwrap().0;
                }
                return status.exit_code();
            }
            assert!(Instant::now() < deadline, "the operator CLI did not exit; it shows:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A relay, a device at tier `tier` running `POLICY`, and an operator it trusts.
fn setup(tier: u8) -> (Relay, Device, std::path::PathBuf) {
    setup_with(tier, POLICY)
}

/// As [`setup`], with the catalogue addition `policy`.
fn setup_with(tier: u8, policy: &str) -> (Relay, Device, std::path::PathBuf) {
    let relay = Relay::start("127.0.0.1:0");
    let home = Home::new();
    add_policy(&home, policy);
    let device = Device::start(
        home,
        &relay.url(),
        &["--relay-ca", relay.ca().to_str().unwrap(), "--enroll", &relay.token()],
        true,
    );
    let (key, path) = relay.operator("alice");
    device.trust("alice", &key);
    device.allow(tier);
    (relay, device, path)
}

fn paths(device: &Device) -> support::Paths {
    support::Paths::under(device.home.path.clone())
}

/// Waits until `pid` is gone from /proc (at most 10 s).
#[track_caller]
fn gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.split(") ").nth(1).is_some_and(|s| s.starts_with('Z')) {
            return;
        }
        assert!(Instant::now() < deadline, "process {pid} outlived its session");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid the session's shell printed after `marker=`.
fn pid_after(op: &Operator, marker: &str) -> i32 {
    let at = op.expect(&format!("\n{marker}="));
    let end = op.expect_after(at, "\r\n");
    op.text()[at..end - 2].trim().parse().unwrap_or_else(|_| panic!("no pid after {marker}=: {}", op.text()))
}

#[test]
fn a_session_echoes_resizes_interrupts_exits_with_the_shells_status_and_is_watched_and_recorded() {
    let (relay, device, key) = setup(4);
    let mut watch = device.home.cmd(&["watch", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let watch_out = watch.stdout.take().unwrap();
    let (first_tx, first) = std::sync::mpsc::channel();
    let watched = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(watch_out)).map_while(Result::ok) {
            let _ = first_tx.send(());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // The stream's first event (the status) says the watch is subscribed.
    first.recv_timeout(Duration::from_secs(30)).expect("support watch printed nothing");
    let mut op = Operator::shell(&relay, &key, &device.device_id);
    op.expect("accepted as task");
    op.type_in("echo hi-$((6*7))\r");
    let at = op.expect("hi-42\r\n");
    // A resize of the operator's window reaches the remote pty.
    op.master.resize(PtySize { rows: 50, cols: 120, pixel_width: 0, pixel_height: 0 }).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut from = at;
    loop {
        op.type_in("stty size\r");
        let end = op.expect_after(from, "stty size\r\n");
        let answer = op.expect_after(end, "\r\n");
        if op.text()[end..answer].trim() == "50 120" {
            break;
        }
        assert!(Instant::now() < deadline, "stty never said 50 120:\n{}", op.text());
        from = answer;
    }
    // Ctrl-C interrupts the foreground job; the shell goes on.
    op.type_in("sleep 30; echo slept\r");
    op.expect("sleep 30; echo slept\r\n");
    let started = Instant::now();
    op.type_in("\x03");
    op.type_in("echo after-$((1+1))\r");
    op.expect("after-2\r\n");
    assert!(started.elapsed() < Duration::from_secs(20), "Ctrl-C did not interrupt the sleep");
    assert!(!op.text().contains("\r\nslept"), "the sleep ran to its end");
    op.type_in("exit 3\r");
    assert_eq!(op.exit_code(), 3, "{}", op.text());

    let all = records(&paths(&device));
    let finished = all.iter().rfind(|r| r.event == Event::ActionFinished).expect("action.finished");
    assert_eq!(finished.action.as_deref(), Some("shell"));
    assert_eq!(finished.exit_code, Some(3));
    let task_id = finished.task_id.clone().unwrap();
    let started_record = all.iter().find(|r| r.event == Event::ActionStarted).unwrap();
    assert_eq!(started_record.task_id.as_deref(), Some(task_id.as_str()));
    // The recording: 0600, its digest on the record, holding what was typed and shown.
    let file = support::recording::dir(&paths(&device).state_dir).join(format!("{task_id}.cast"));
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(common::mode(&file), 0o600);
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
    assert_eq!(finished.recording_sha256.as_deref(), Some(digest.as_str()));
    let cast = String::from_utf8_lossy(&bytes);
    assert!(cast.lines().next().unwrap().contains("\"width\":80"), "{cast}");
    assert!(cast.contains("hi-42") && cast.contains(r#""r", "120x50""#), "{cast}");
    assert!(cast.contains(r#""i", "exit 3\r""#), "input is recorded by default: {cast}");

    // The owner's watch saw the terminal output and the size as they happened.
    watch.kill().unwrap();
    let _ = watch.wait();
    let events = watched.join().unwrap();
    let mut shown = Vec::new();
    let mut sizes = Vec::new();
    for line in events.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        match v["kind"].as_str() {
            Some("terminal") if v["task_id"] == task_id.as_str() => {
                shown.extend(base64::engine::general_purpose::STANDARD.decode(v["data"].as_str().unwrap()).unwrap())
            }
            Some("terminal_size") => sizes.push((v["cols"].as_u64(), v["rows"].as_u64())),
            _ => {}
        }
    }
    assert!(String::from_utf8_lossy(&shown).contains("hi-42"), "{events}");
    // The recording's output events replay to exactly the bytes the owner was shown live.
    let replayed: String = cast
        .lines()
        .skip(1)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap().to_string())
        .collect();
    assert_eq!(replayed.as_bytes(), &shown[..], "the recording replays to other bytes");
    assert_eq!(sizes.first(), Some(&(Some(80), Some(24))), "{events}");
    assert!(sizes.contains(&(Some(120), Some(50))), "{events}");
}

#[test]
fn stop_and_revoke_end_the_session_and_its_whole_tree() {
    let (relay, device, key) = setup(4);
    for how in ["stop", "revoke"] {
        let mut op = Operator::shell(&relay, &key, &device.device_id);
        op.expect("accepted as task");
        // A job in the background, in a process group of its own, and the shell.
        op.type_in("sleep 300 & echo bg=$!; echo sh=$$\r");
        let (bg, sh) = (pid_after(&op, "bg"), pid_after(&op, "sh"));
        assert!(Path::new(&format!("/proc/{bg}")).exists());
        match how {
            "stop" => device.home.run(&["stop", "--all"]).code(0),
            _ => device.home.run(&["revoke"]).code(0),
        };
        let code = op.exit_code();
        gone(bg);
        gone(sh);
        let text = op.text();
        match how {
            "stop" => assert!(code == 1 && text.contains("stopped by the owner"), "{code}: {text}"),
            _ => assert!(code == 1 && text.contains("cancelled by revoke"), "{code}: {text}"),
        }
        device.allow(4);
    }
}

#[test]
fn a_tier_3_grant_refuses_the_session() {
    let (relay, device, key) = setup(3);
    let mut op = Operator::shell(&relay, &key, &device.device_id);
    assert_eq!(op.exit_code(), 4, "{}", op.text());
    assert!(op.text().contains("TIER_INSUFFICIENT"), "{}", op.text());
    assert!(!records(&paths(&device)).iter().any(|r| r.event == Event::ActionStarted));
}

/// Reads the session's answers (each checked against the device key) until
/// its `result`; returns the terminal bytes shown and the result.
async fn answers(
    session: &mut support::operator::Session,
    check: &mut support::protocol::answer::AnswerCheck,
    until: Option<&str>,
    shown: &mut Vec<u8>,
) -> Option<support::protocol::DeviceFrame> {
    use support::protocol::{DeviceFrame, FromRelay};
    loop {
        let frame = session.recv(Duration::from_secs(30)).await.expect("an answer within 30 s");
        let FromRelay::Answer(f) = frame else { continue };
        check.check(&f).expect("every answer verifies");
        match &f {
            DeviceFrame::Terminal { data, .. } => {
                shown.extend(base64::engine::general_purpose::STANDARD.decode(data).unwrap());
                if until.is_some_and(|u| String::from_utf8_lossy(shown).contains(u)) {
                    return None;
                }
            }
            DeviceFrame::Result { .. } | DeviceFrame::Denied { .. } => return Some(f),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_frames_altered_replayed_reordered_or_foreign_are_refused_and_the_session_goes_on() {
    use support::protocol::{Keys, SessionInput, ToRelay, encode};
    let (relay, device, key_path) = tokio::task::spawn_blocking(|| setup(4)).await.unwrap();
    let key = support::KeyPair::load(&key_path).unwrap();
    let mut session = relay.session(&key_path).await;
    let device_key = session.device_key(&device.device_id).await.unwrap().unwrap();
    let run = session.command(&device.device_id, "shell", Default::default());
    let mut check = support::protocol::answer::AnswerCheck::new(device_key, &run);
    session.send_raw(&encode(&ToRelay::Run(run.clone()))).await.unwrap();
    let mut shown = Vec::new();
    let send = async |session: &mut support::operator::Session, frame: &SessionInput| {
        session.send_raw(&encode(&ToRelay::Session(frame.clone()))).await.unwrap();
    };
    answers(&mut session, &mut check, Some("# "), &mut shown).await;
    let typed = |seq, text: &str| SessionInput::signed(&key, &run, seq, &Keys::Data(text.as_bytes().to_vec()));
    // Altered on the way: the signature no longer holds.
    let mut altered = typed(0, "echo ok-$((1+1))\r");
    if let SessionInput::Input { data, .. } = &mut altered {
        *data = base64::engine::general_purpose::STANDARD.encode("echo evil-$((2+2))\r");
    }
    send(&mut session, &altered).await;
    // A frame signed by another key the owner trusts, for this very session.
    let (other, _) = support::KeyPair::generate();
    device.trust("bob", &other);
    send(&mut session, &SessionInput::signed(&other, &run, 0, &Keys::Data(b"echo bob-$((3+3))\r".to_vec()))).await;
    // The real frame 0 passes, then is replayed; frame 2 comes before 1.
    send(&mut session, &typed(0, "echo one-$((0+1))\r")).await;
    answers(&mut session, &mut check, Some("one-1\r\n"), &mut shown).await;
    send(&mut session, &typed(0, "echo one-$((0+1))\r")).await;
    send(&mut session, &typed(2, "echo two-$((1+1))\r")).await;
    send(&mut session, &typed(1, "echo three-$((1+2))\r")).await;
    answers(&mut session, &mut check, Some("three-3\r\n"), &mut shown).await;
    send(&mut session, &typed(2, "exit 0\r")).await;
    let result = answers(&mut session, &mut check, None, &mut shown).await.unwrap();
    assert!(matches!(result, support::protocol::DeviceFrame::Result { exit_code: Some(0), .. }), "{result:?}");
    let text = String::from_utf8_lossy(&shown);
    assert_eq!(text.matches("one-1\r\n").count(), 1, "the replay ran: {text}");
    for never in ["evil-4", "bob-6", "two-2"] {
        assert!(!text.contains(never), "{never} reached the shell: {text}");
    }
    let all = records(&paths(&device));
    let finished = all.iter().rfind(|r| r.event == Event::ActionFinished).unwrap();
    assert_eq!(finished.detail.as_deref(), Some("4 operator frame(s) refused (bad signature, order or session)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_connection_ending_ends_the_session_and_its_tree() {
    use support::protocol::{Keys, SessionInput, ToRelay, encode};
    let (relay, device, key_path) = tokio::task::spawn_blocking(|| setup(4)).await.unwrap();
    let key = support::KeyPair::load(&key_path).unwrap();
    let mut session = relay.session(&key_path).await;
    let device_key = session.device_key(&device.device_id).await.unwrap().unwrap();
    let run = session.command(&device.device_id, "shell", Default::default());
    let mut check = support::protocol::answer::AnswerCheck::new(device_key, &run);
    session.send_raw(&encode(&ToRelay::Run(run.clone()))).await.unwrap();
    let mut shown = Vec::new();
    answers(&mut session, &mut check, Some("# "), &mut shown).await;
    let frame = SessionInput::signed(&key, &run, 0, &Keys::Data(b"sleep 300 & echo bg=$!=$((5*5))\r".to_vec()));
    session.send_raw(&encode(&ToRelay::Session(frame))).await.unwrap();
    answers(&mut session, &mut check, Some("=25\r\n"), &mut shown).await;
    let text = String::from_utf8_lossy(&shown).into_owned();
    let bg: i32 = text.rsplit("\nbg=").next().unwrap().split('=').next().unwrap().parse().unwrap();
    drop(session);
    tokio::task::spawn_blocking(move || gone(bg)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = records(&paths(&device));
        if let Some(f) = all.iter().rfind(|r| r.event == Event::ActionFinished) {
            assert_eq!(f.by.as_deref(), Some("operator"), "{f:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the session did not end with its operator's connection");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_session_works_through_a_relay_of_a_cluster_that_does_not_hold_the_device() {
    use common::nats::{Nats, clustered_relay};
    let nats = Nats::start();
    let (a, b) = (clustered_relay(&nats), clustered_relay(&nats));
    let home = Home::new();
    add_policy(&home, POLICY);
    let device = Device::start(home, &a.url(), &["--relay-ca", a.ca().to_str().unwrap(), "--enroll", &a.token()], true);
    let (key, key_path) = b.operator("desk");
    device.trust("desk", &key);
    device.allow(4);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = common::Run::from(b.operator_cli(&key_path, &["devices", "--json"]).output().unwrap());
        if out.code == 0
            && out
                .json()
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["device_id"] == device.device_id.as_str() && d["online"] == true)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the device never showed online through B: {}", out.stdout);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Keystrokes go B → NATS → A → device in order; the signed output comes back the same way.
    let mut op = Operator::shell(&b, &key_path, &device.device_id);
    op.expect("accepted as task");
    op.type_in("echo x-$((2*3)); echo y-$((3*3))\r");
    op.expect("x-6\r\ny-9\r\n");
    op.type_in("exit 5\r");
    assert_eq!(op.exit_code(), 5, "{}", op.text());
}

#[test]
fn the_recordings_cap_and_the_idle_timeout_end_a_session_with_a_clear_message() {
    let (relay, device, key) = setup_with(4, &format!("{POLICY}max_recording_bytes = 4000\nidle_timeout_s = 2\n"));
    let mut op = Operator::shell(&relay, &key, &device.device_id);
    op.expect("accepted as task");
    op.type_in("sleep 1000 & yes output | head -c 100000\r");
    assert_eq!(op.exit_code(), 1, "{}", op.text());
    op.expect("reached its cap of 4000 bytes ([shell] max_recording_bytes), so the session ends");
    let mut op = Operator::shell(&relay, &key, &device.device_id);
    op.expect("accepted as task");
    assert_eq!(op.exit_code(), 1, "{}", op.text());
    op.expect("the session was idle (no input, no output) for 2 s");
}
