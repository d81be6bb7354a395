//! `support operator shell DEVICE` with no command: this terminal, raw,
//! on the owner's shell on a pseudo-terminal there.
//!
//! Keystrokes go to the device as they are typed (raw mode, so Ctrl-C is
//! the byte 0x03 for the remote shell, not a signal here), and the window
//! size at the start and on every SIGWINCH; what the remote pty writes
//! comes back as signed `terminal` answers, checked before a byte of them
//! is written here. The terminal is restored on every way out: the
//! session's end, an error, a panic (a guard's `Drop`, and the panic hook
//! for a panic elsewhere).

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::process::ExitCode;

use base64::Engine as _;
use tokio::sync::mpsc;

use super::printable;
use crate::Error;
use crate::operator::Session;
use crate::protocol::DeviceFrame;
use crate::protocol::session::{Keys, MAX_INPUT_BYTES};

/// Keystroke chunks read but not yet sent.
const KEYS_QUEUE: usize = 64;

/// Raw mode while it lives.
struct Raw;

impl Raw {
    fn enter() -> Result<Raw, Error> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = crossterm::terminal::disable_raw_mode();
            previous(info);
        }));
        crossterm::terminal::enable_raw_mode()
            .map_err(|e| Error::Failed(format!("cannot put this terminal in raw mode: {e}")))?;
        Ok(Raw)
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// This terminal's size, clamped to what a session takes.
fn size() -> (u16, u16) {
    let (cols, rows) = crossterm::terminal::size().unwrap_or((80, 24));
    let max = crate::protocol::session::MAX_CELLS;
    (cols.clamp(1, max), rows.clamp(1, max))
}

/// Runs an interactive session on `device`; exits as `run` does (the
/// shell's exit status; 4 if refused; 3 if the device is offline).
///
/// # Errors
/// [`Error::Usage`] when stdin or stdout is not a terminal; else as `run`.
pub(super) async fn interactive(session: &mut Session, device: &str) -> Result<ExitCode, Error> {
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return Err(Error::Usage(
            "an interactive shell needs a terminal on stdin and stdout; give `-- CMD ...` for one command".into(),
        ));
    }
    let (cols, rows) = size();
    let params = BTreeMap::from([("cols".to_string(), cols.to_string()), ("rows".to_string(), rows.to_string())]);
    let run = session.command(device, "shell", params);
    eprintln!("request {} → {device}: interactive shell ({cols}x{rows}); exit the shell to end it", run.request_id);
    let (tx, mut keys) = mpsc::channel(KEYS_QUEUE);
    let typed = tx.clone();
    // Blocking reads of stdin: a thread of its own, left behind at the end (the process exits).
    std::thread::Builder::new()
        .name("keys".into())
        .spawn(move || {
            let mut buf = vec![0u8; MAX_INPUT_BYTES];
            let mut stdin = std::io::stdin().lock();
            while let Ok(n @ 1..) = stdin.read(&mut buf) {
                if typed.blocking_send(Keys::Data(buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Error::Failed(format!("cannot start a thread: {e}")))?;
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .map_err(|e| Error::Failed(format!("cannot watch the window size: {e}")))?;
    tokio::spawn(async move {
        while winch.recv().await.is_some() {
            let (cols, rows) = size();
            if tx.send(Keys::Size { cols, rows }).await.is_err() {
                return;
            }
        }
    });
    let mut raw = None;
    let mut entered = None;
    let on_frame = |f: &DeviceFrame| match f {
        DeviceFrame::Accepted { task_id, .. } => {
            eprintln!("accepted as task {}; the owner is watching", printable(task_id));
            match Raw::enter() {
                Ok(r) => raw = Some(r),
                Err(e) => entered = Some(e),
            }
        }
        DeviceFrame::Terminal { data, .. } => {
            // Checked already (signed, in place); the bytes as the pty wrote them.
            let bytes = base64::engine::general_purpose::STANDARD.decode(data).unwrap_or_default();
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&bytes).and_then(|()| out.flush());
        }
        _ => {}
    };
    let outcome = session.interact(&run, on_frame, &mut keys).await;
    drop(raw);
    if let Some(e) = entered {
        return Err(e);
    }
    let outcome = outcome.map_err(super::operator::failed)?;
    eprintln!();
    super::operator::ended(outcome, &run, false)
}
