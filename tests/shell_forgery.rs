//! Issue 16, item 5: a relay that alters, drops or reorders a session's
//! frames is detected, end to end. The real `support operator shell
//! DEVICE` runs on a pty driven from here, through a man in the middle
//! (`common/mitm.rs`) in front of the real relay, to a real daemon running
//! `/bin/sh` on a pty of its own.
//!
//! - A `terminal` answer altered, dropped, or swapped with the next: the
//!   operator CLI refuses it (its signature; its place in the chain), ends
//!   the session, exits 1 naming the failed check, restores the terminal
//!   (`stty -a` run after it, on the same pty, is not raw) and shows
//!   nothing of the forged or later bytes. Its leaving ends the session on
//!   the device and the session's whole tree (checked in /proc), on the
//!   record as stopped by the operator.
//! - An `input` frame (keystrokes) altered on its way to the device: the
//!   device refuses it, so nothing of it runs, and ends the session; the
//!   refusal and why are on the `action.finished` record, and the operator
//!   is told (the signed result's reason) and exits 1.

mod common;
#[path = "common/mitm.rs"]
mod mitm;
#[path = "common/operator_pty.rs"]
mod operator_pty;
#[path = "common/shell.rs"]
mod shell;

use std::process::Command;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::lab::records;
use mitm::{Mitm, Sends, Tamper};
use operator_pty::OnPty;
use serde_json::Value;
use shell::{gone, paths, pid_after, setup};
use support::audit::Event;

/// What the relay does to the session's frames.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Changes a byte of the `terminal` answer that shows [`MARK`].
    AlterOutput,
    /// Leaves that answer out.
    DropOutput,
    /// Sends the next `terminal` answer before it.
    SwapOutputs,
    /// Replaces the keystrokes of the `input` frame that types [`TYPED`].
    AlterInput,
}

/// The line typed, and what the shell prints for it (not in its echo).
const TYPED: &str = "echo mark-$((6*7))\r";
const MARK: &str = "mark-42";
/// What the relay types instead in [`Mode::AlterInput`], and what it would print.
const EVIL: &str = "echo evil-$((2+2))\r";

/// One connection's tamperer: it acts once, on the frame it is after,
/// and says so on `hit`.
struct SessionForger {
    mode: Mode,
    hit: Option<mpsc::Sender<()>>,
    held: Option<Value>,
}

fn data(v: &Value) -> String {
    String::from_utf8_lossy(&STANDARD.decode(v["data"].as_str().unwrap_or_default()).unwrap_or_default()).into_owned()
}

impl Tamper for SessionForger {
    fn on_operator(&mut self, mut v: Value) -> Sends {
        if self.mode == Mode::AlterInput
            && v["type"] == "input"
            && let Some(hit) = self.hit.take_if(|_| data(&v).contains(TYPED))
        {
            v["data"] = STANDARD.encode(data(&v).replace(TYPED, EVIL)).into();
            let _ = hit.send(());
        }
        Sends::up(v)
    }

    fn on_relay(&mut self, mut v: Value) -> Sends {
        if v["type"] != "terminal" || self.mode == Mode::AlterInput {
            return Sends::down(v);
        }
        if let Some(held) = self.held.take() {
            return Sends { up: vec![], down: vec![v, held] };
        }
        let Some(hit) = self.hit.take_if(|_| data(&v).contains(MARK)) else { return Sends::down(v) };
        let _ = hit.send(());
        match self.mode {
            Mode::AlterOutput => {
                v["data"] = STANDARD.encode(data(&v).replace(MARK, "MARK-42")).into();
                Sends::down(v)
            }
            Mode::DropOutput => Sends::none(),
            _ => {
                self.held = Some(v);
                Sends::none()
            }
        }
    }
}

/// The mode of the next connection, and where it says it acted.
type Armed = (Mode, mpsc::Sender<()>);

/// `cmd` run by `/bin/sh` on the same pty, then `stty -a` and its exit code
/// (`cli-exit=N`): how it left the terminal, seen by the next program.
fn then_stty(cmd: &Command) -> Command {
    let mut sh = Command::new("/bin/sh");
    sh.args(["-c", r#""$@"; code=$?; echo; echo "stty-after: $(stty -a | tr "\n" " ")"; echo "cli-exit=$code""#, "sh"]);
    sh.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => sh.env(k, v),
            None => sh.env_remove(k),
        };
    }
    sh
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_alters_drops_or_reorders_a_sessions_frames_is_caught_and_the_session_ends() {
    let (relay, device, key) = tokio::task::spawn_blocking(|| setup(4)).await.unwrap();
    let relay = Arc::new(relay);
    let next: Arc<Mutex<Option<Armed>>> = Arc::default();
    let armed = next.clone();
    let mitm = Mitm::start(relay.clone(), move || {
        let (mode, hit) = armed.lock().unwrap().take().expect("a mode for each connection");
        Box::new(SessionForger { mode, hit: Some(hit), held: None })
    })
    .await;
    let check = |mode: Mode| {
        let (tx, hit) = mpsc::channel();
        *next.lock().unwrap() = Some((mode, tx));
        let ended_before = records(&paths(&device)).iter().filter(|r| r.event == Event::ActionFinished).count();
        let cli = mitm.operator_cli(&key, &["shell", &device.device_id]);
        let mut op = OnPty::spawn(&then_stty(&cli), 80, 24);
        op.expect("accepted as task");
        op.type_text("sleep 300 & echo bg=$!\r");
        let bg = pid_after(&op, "bg");
        let typed_at = op.len();
        op.type_text(TYPED);
        hit.recv_timeout(Duration::from_secs(30)).expect("the relay met the frame it is after");
        if matches!(mode, Mode::DropOutput | Mode::SwapOutputs) {
            // Output after the frame left out or held back: its answer is out of place.
            op.type_text("echo next-$((1+1))\r");
        }
        let left_at = op.expect_after(typed_at, "\nstty-after: ");
        assert_eq!(op.wait_exit(), 0, "{}", op.output());
        let text = op.output();
        let (cli, after) = text.split_at(left_at);
        assert!(after.contains("cli-exit=1"), "{mode:?}: the operator CLI did not exit 1:\n{text}");
        let stty = after.lines().next().unwrap();
        assert!(
            stty.contains(" icanon") && !stty.contains("-icanon") && !stty.contains("-echo "),
            "{mode:?}: raw: {stty}"
        );
        for never in [MARK, "MARK-42", "next-2", "evil-4"] {
            assert!(!cli[typed_at..].contains(never), "{mode:?}: {never:?} was shown:\n{cli}");
        }
        // The device's side: the session and its tree end with the operator's leaving.
        gone(bg);
        let deadline = Instant::now() + Duration::from_secs(10);
        let finished = loop {
            let mut ends: Vec<_> =
                records(&paths(&device)).into_iter().filter(|r| r.event == Event::ActionFinished).collect();
            if ends.len() > ended_before {
                break ends.pop().unwrap();
            }
            assert!(Instant::now() < deadline, "{mode:?}: the session did not end on the device");
            std::thread::sleep(Duration::from_millis(50));
        };
        (cli[typed_at..].to_string(), finished)
    };
    let check = |mode| tokio::task::block_in_place(|| check(mode));

    let cast_of = |finished: &support::audit::Record| {
        let task = finished.task_id.clone().unwrap();
        std::fs::read_to_string(support::recording::dir(&paths(&device).state_dir).join(format!("{task}.cast")))
            .unwrap()
    };

    let (shown, finished) = check(Mode::AlterOutput);
    assert!(shown.contains("the signature does not verify with the device key of"), "{shown}");
    assert_eq!(finished.by.as_deref(), Some("operator"), "{finished:?}");
    // The owner's recording holds what the shell really wrote.
    assert!(cast_of(&finished).contains(MARK));
    for mode in [Mode::DropOutput, Mode::SwapOutputs] {
        let (shown, finished) = check(mode);
        assert!(shown.contains("expected answer") && shown.contains("dropped, reordered or repeated"), "{shown}");
        assert_eq!(finished.by.as_deref(), Some("operator"), "{finished:?}");
    }
    let (shown, finished) = check(Mode::AlterInput);
    let why = "the signature does not verify with the session's operator key";
    assert!(shown.contains("failed: an operator frame was refused (`input` frame ") && shown.contains(why), "{shown}");
    assert!(shown.contains("so the session ends"), "{shown}");
    let reason = finished.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains(why) && reason.contains("the relay altered, dropped, reordered or made up a frame"),
        "{finished:?}"
    );
    assert_eq!(finished.detail.as_deref(), Some("1 operator frame(s) refused (bad signature, order or session)"));
    // Nothing of the relay's keystrokes reached the shell, nor its recording.
    let cast = cast_of(&finished);
    assert!(!cast.contains("evil") && !cast.contains(MARK), "{cast}");
}
