//! A program run on a pseudo-terminal from a test or a bench, as a person
//! at a terminal would run it (`support operator shell DEVICE`, `ssh -tt`):
//! what it writes is collected by a reader thread, keystrokes are written
//! to it. The one pty driver of the shell tests and of `benches/shell.rs`.
#![allow(dead_code)]

use std::io::{Read as _, Write};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use portable_pty::{CommandBuilder, PtySize, native_pty_system};

/// How long anything awaited may take on a machine shared with builds.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// What the terminal showed, and whether its reader met the end (every
/// fd of the pty's slave side closed: the program and all it started
/// there are gone, and everything they wrote has been read).
#[derive(Default)]
struct Screen {
    bytes: Vec<u8>,
    closed: bool,
}

/// A process on its own pty; killed when dropped if still running.
pub struct OnPty {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    seen: Arc<(Mutex<Screen>, Condvar)>,
    master: Box<dyn portable_pty::MasterPty + Send>,
    patience: Duration,
}

fn lock(m: &Mutex<Screen>) -> MutexGuard<'_, Screen> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl OnPty {
    /// Runs `cmd` (its program, arguments, environment and directory) on
    /// a new `cols` x `rows` pty.
    pub fn spawn(cmd: &Command, cols: u16, rows: u16) -> OnPty {
        let pair = native_pty_system().openpty(PtySize { rows, cols, pixel_width: 0, pixel_height: 0 }).unwrap();
        let mut b = CommandBuilder::new(cmd.get_program());
        b.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => b.env(k, v),
                None => b.env_remove(k),
            }
        }
        b.cwd(cmd.get_current_dir().map(Into::into).unwrap_or_else(|| std::env::current_dir().unwrap()));
        let child = pair.slave.spawn_command(b).unwrap();
        drop(pair.slave);
        let mut reader = pair.master.try_clone_reader().unwrap();
        let writer = pair.master.take_writer().unwrap();
        let seen = Arc::new((Mutex::new(Screen::default()), Condvar::new()));
        let into = seen.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                lock(&into.0).bytes.extend_from_slice(&buf[..n]);
                into.1.notify_all();
            }
            lock(&into.0).closed = true;
            into.1.notify_all();
        });
        OnPty { child, writer, seen, master: pair.master, patience: PATIENCE }
    }

    /// The same, waiting up to `patience` (not [`PATIENCE`]) for what it awaits.
    pub fn with_patience(mut self, patience: Duration) -> OnPty {
        self.patience = patience;
        self
    }

    /// Types `text` (a `\r` is the Enter key).
    pub fn type_text(&mut self, text: impl AsRef<[u8]>) {
        self.writer.write_all(text.as_ref()).unwrap();
        self.writer.flush().unwrap();
    }

    /// The window is now `cols` x `rows` (the program gets SIGWINCH).
    pub fn resize(&self, cols: u16, rows: u16) {
        self.master.resize(PtySize { rows, cols, pixel_width: 0, pixel_height: 0 }).unwrap();
    }

    /// How many bytes it wrote so far.
    pub fn len(&self) -> usize {
        lock(&self.seen.0).bytes.len()
    }

    /// Everything it wrote so far, as text (lossy).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&lock(&self.seen.0).bytes).into_owned()
    }

    /// Waits (at most its patience) until `needle` shows after byte
    /// `from`; returns the byte where it ends. Each byte is searched once,
    /// so a 50 MiB stream costs a linear scan.
    #[track_caller]
    pub fn expect_after(&self, from: usize, needle: impl AsRef<[u8]>) -> usize {
        let needle = needle.as_ref();
        let deadline = Instant::now() + self.patience;
        let mut checked = from;
        let mut seen = lock(&self.seen.0);
        loop {
            let start = checked.saturating_sub(needle.len()).max(from);
            let hay = &seen.bytes[start.min(seen.bytes.len())..];
            if let Some(at) = hay.windows(needle.len()).position(|w| w == needle) {
                return start + at + needle.len();
            }
            checked = seen.bytes.len();
            let left = deadline.saturating_duration_since(Instant::now());
            let tail = &seen.bytes[seen.bytes.len().saturating_sub(2000)..];
            assert!(
                !left.is_zero(),
                "never saw {:?}; the terminal's last bytes:\n{}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(tail)
            );
            seen = self.seen.1.wait_timeout(seen, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
    }

    /// [`OnPty::expect_after`] from the start.
    #[track_caller]
    pub fn expect(&self, needle: impl AsRef<[u8]>) -> usize {
        self.expect_after(0, needle)
    }

    /// Waits (polling every 10 ms, at most [`PATIENCE`]) until its output
    /// contains `needle`; returns the output. Panics with `what`.
    pub async fn wait_for(&self, what: &str, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let out = self.output();
            if out.contains(needle) {
                return out;
            }
            assert!(Instant::now() < deadline, "{what}: no {needle:?} in {out:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (at most [`PATIENCE`]) for it to exit; its exit code.
    pub async fn exit_code(&mut self) -> u32 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.exit_code();
            }
            assert!(Instant::now() < deadline, "still running; it wrote {:?}", self.output());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (at most its patience, blocking) for it to exit and for all it
    /// wrote to be read; its exit code.
    #[track_caller]
    pub fn wait_exit(&mut self) -> u32 {
        let deadline = Instant::now() + self.patience;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut seen = lock(&self.seen.0);
                while !seen.closed {
                    let left = deadline.saturating_duration_since(Instant::now());
                    assert!(!left.is_zero(), "the terminal never closed");
                    seen = self.seen.1.wait_timeout(seen, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
                }
                return status.exit_code();
            }
            assert!(Instant::now() < deadline, "it did not exit; it shows:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Kills it if it still runs.
    pub fn kill(&mut self) {
        if !self.exited() {
            let _ = self.child.kill();
        }
    }
}

impl Drop for OnPty {
    fn drop(&mut self) {
        self.kill();
    }
}
