//! Interactive sessions (issue 16) end to end: the real operator CLI on a
//! pseudo-terminal driven from here, a real relay, a real daemon running
//! the shell on a pty of its own. What is typed comes back, a resize
//! reaches `stty size`, Ctrl-C interrupts the foreground job and the shell
//! goes on, `exit 3` exits 3, the owner's `support watch` sees the output
//! and the recording's digest is the one on the record; a stop and a
//! revoke end the session and its tree (checked in /proc); tier 3 is
//! refused; input frames a relay replayed are refused and the session
//! goes on, those it altered, reordered or made up end it. (A relay
//! between the real operator CLI and the device that tampers with a
//! session's frames: tests/shell_forgery.rs.)

mod common;
#[path = "common/operator_pty.rs"]
mod operator_pty;
#[path = "common/shell.rs"]
mod shell;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::lab::records;
use common::net::{Device, Relay};
use shell::{POLICY, gone, operator_shell, paths, pid_after, setup, setup_with};
use support::audit::Event;
use support::protocol::answer::AnswerCheck;
use support::protocol::{DeviceFrame, FromRelay, Keys, SessionInput, ToRelay, encode};

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
    let mut op = operator_shell(&relay, &key, &device.device_id);
    op.expect("accepted as task");
    op.type_text("echo hi-$((6*7))\r");
    let at = op.expect("hi-42\r\n");
    // A resize of the operator's window reaches the remote pty.
    op.resize(120, 50);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut from = at;
    loop {
        op.type_text("stty size\r");
        let end = op.expect_after(from, "stty size\r\n");
        let answer = op.expect_after(end, "\r\n");
        if op.output()[end..answer].trim() == "50 120" {
            break;
        }
        assert!(Instant::now() < deadline, "stty never said 50 120:\n{}", op.output());
        from = answer;
    }
    // Ctrl-C interrupts the foreground job; the shell goes on.
    op.type_text("sleep 30; echo slept\r");
    op.expect("sleep 30; echo slept\r\n");
    let started = Instant::now();
    op.type_text("\x03");
    op.type_text("echo after-$((1+1))\r");
    op.expect("after-2\r\n");
    assert!(started.elapsed() < Duration::from_secs(20), "Ctrl-C did not interrupt the sleep");
    assert!(!op.output().contains("\r\nslept"), "the sleep ran to its end");
    op.type_text("exit 3\r");
    assert_eq!(op.wait_exit(), 3, "{}", op.output());

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
        let mut op = operator_shell(&relay, &key, &device.device_id);
        op.expect("accepted as task");
        // A job in the background, in a process group of its own, and the shell.
        op.type_text("sleep 300 & echo bg=$!; echo sh=$$\r");
        let (bg, sh) = (pid_after(&op, "bg"), pid_after(&op, "sh"));
        assert!(Path::new(&format!("/proc/{bg}")).exists());
        match how {
            "stop" => device.home.run(&["stop", "--all"]).code(0),
            _ => device.home.run(&["revoke"]).code(0),
        };
        let code = op.wait_exit();
        gone(bg);
        gone(sh);
        let text = op.output();
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
    let mut op = operator_shell(&relay, &key, &device.device_id);
    assert_eq!(op.wait_exit(), 4, "{}", op.output());
    assert!(op.output().contains("TIER_INSUFFICIENT"), "{}", op.output());
    assert!(!records(&paths(&device)).iter().any(|r| r.event == Event::ActionStarted));
}

/// A session opened at the protocol level (a test client, not the CLI),
/// its answers checked against the device key as they come.
struct RawSession {
    session: support::operator::Session,
    run: support::Run,
    check: AnswerCheck,
    key: support::KeyPair,
    /// The terminal bytes shown so far.
    shown: Vec<u8>,
}

impl RawSession {
    /// A session of the operator at `key_path` on `device`, read up to the shell's first prompt.
    async fn open(relay: &Relay, device: &Device, key_path: &Path) -> RawSession {
        let key = support::KeyPair::load(key_path).unwrap();
        let mut session = relay.session(key_path).await;
        let device_key = session.device_key(&device.device_id).await.unwrap().unwrap();
        let run = session.command(&device.device_id, "shell", Default::default());
        let check = AnswerCheck::new(device_key, &run);
        session.send_raw(&encode(&ToRelay::Run(run.clone()))).await.unwrap();
        let mut s = RawSession { session, run, check, key, shown: Vec::new() };
        s.answers(Some("# ")).await;
        s
    }

    /// Frame `seq` of the operator's keystrokes `text`, signed as the CLI signs it.
    fn typed(&self, seq: u64, text: &str) -> SessionInput {
        SessionInput::signed(&self.key, &self.run, seq, &Keys::Data(text.as_bytes().to_vec()))
    }

    async fn send(&mut self, frame: &SessionInput) {
        self.session.send_raw(&encode(&ToRelay::Session(frame.clone()))).await.unwrap();
    }

    /// Reads answers (each must verify) until the terminal has shown
    /// `until`, or with `None` until the `result` or denial, returned.
    async fn answers(&mut self, until: Option<&str>) -> Option<DeviceFrame> {
        loop {
            let frame = self.session.recv(Duration::from_secs(30)).await.expect("an answer within 30 s");
            let FromRelay::Answer(f) = frame else { continue };
            self.check.check(&f).expect("every answer verifies");
            match &f {
                DeviceFrame::Terminal { data, .. } => {
                    self.shown.extend(base64::engine::general_purpose::STANDARD.decode(data).unwrap());
                    if until.is_some_and(|u| self.text().contains(u)) {
                        return None;
                    }
                }
                DeviceFrame::Result { .. } | DeviceFrame::Denied { .. } => return Some(f),
                _ => {}
            }
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.shown).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_input_frame_is_refused_and_the_session_goes_on_an_altered_reordered_or_foreign_one_ends_it() {
    let (relay, device, key_path) = tokio::task::spawn_blocking(|| setup(4)).await.unwrap();
    // Another key the owner trusts, signing for this very session.
    let (bob, _) = support::KeyPair::generate();
    device.trust("bob", &bob);
    type Forge = fn(&RawSession, &support::KeyPair) -> SessionInput;
    let altered: Forge = |s, _| {
        let mut f = s.typed(2, "echo ok-$((1+1))\r");
        if let SessionInput::Input { data, .. } = &mut f {
            *data = base64::engine::general_purpose::STANDARD.encode("echo evil-$((2+2))\r");
        }
        f
    };
    let foreign: Forge = |s, bob| SessionInput::signed(bob, &s.run, 2, &Keys::Data(b"echo bob-$((3+3))\r".to_vec()));
    let ahead: Forge = |s, _| s.typed(3, "echo three-$((1+2))\r");
    let signature = "`input` frame 2: the signature does not verify with the session's operator key";
    for (forge, check) in [(altered, signature), (foreign, signature), (ahead, "`input` frame 3: frame 2 is due")] {
        let mut s = RawSession::open(&relay, &device, &key_path).await;
        s.send(&s.typed(0, "echo one-$((0+1))\r")).await;
        s.answers(Some("one-1\r\n")).await;
        // The same frame again: refused, and nothing of the operator's is lost.
        s.send(&s.typed(0, "echo one-$((0+1))\r")).await;
        s.send(&s.typed(1, "echo two-$((1+1))\r")).await;
        s.answers(Some("two-2\r\n")).await;
        s.send(&forge(&s, &bob)).await;
        let result = s.answers(None).await.unwrap();
        let DeviceFrame::Result { status, reason: Some(reason), .. } = &result else { panic!("{result:?}") };
        assert_eq!(*status, support::protocol::Status::Failed);
        assert!(reason.contains(check) && reason.ends_with("so the session ends"), "{reason}");
        let text = s.text();
        assert_eq!(text.matches("one-1\r\n").count(), 1, "the replay ran: {text}");
        for never in ["evil-4", "bob-6", "three-3", "ok-2"] {
            assert!(!text.contains(never), "{never} reached the shell: {text}");
        }
        let all = records(&paths(&device));
        let finished = all.iter().rfind(|r| r.event == Event::ActionFinished).unwrap();
        assert_eq!(finished.reason.as_deref(), Some(reason.as_str()));
        assert_eq!(finished.detail.as_deref(), Some("2 operator frame(s) refused (bad signature, order or session)"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_connection_ending_ends_the_session_and_its_tree() {
    let (relay, device, key_path) = tokio::task::spawn_blocking(|| setup(4)).await.unwrap();
    let mut s = RawSession::open(&relay, &device, &key_path).await;
    s.send(&s.typed(0, "sleep 300 & echo bg=$!=$((5*5))\r")).await;
    s.answers(Some("=25\r\n")).await;
    let text = s.text();
    let bg: i32 = text.rsplit("\nbg=").next().unwrap().split('=').next().unwrap().parse().unwrap();
    drop(s);
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
    let device = Device::enrolled_with(&a, POLICY);
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
    let mut op = operator_shell(&b, &key_path, &device.device_id);
    op.expect("accepted as task");
    op.type_text("echo x-$((2*3)); echo y-$((3*3))\r");
    op.expect("x-6\r\ny-9\r\n");
    op.type_text("exit 5\r");
    assert_eq!(op.wait_exit(), 5, "{}", op.output());
}

#[test]
fn the_recordings_cap_and_the_idle_timeout_end_a_session_with_a_clear_message() {
    let (relay, device, key) = setup_with(4, &format!("{POLICY}max_recording_bytes = 4000\nidle_timeout_s = 2\n"));
    let mut op = operator_shell(&relay, &key, &device.device_id);
    op.expect("accepted as task");
    op.type_text("sleep 1000 & yes output | head -c 100000\r");
    assert_eq!(op.wait_exit(), 1, "{}", op.output());
    op.expect("reached its cap of 4000 bytes ([shell] max_recording_bytes), so the session ends");
    let mut op = operator_shell(&relay, &key, &device.device_id);
    op.expect("accepted as task");
    assert_eq!(op.wait_exit(), 1, "{}", op.output());
    op.expect("the session was idle (no input, no output) for 2 s");
}
