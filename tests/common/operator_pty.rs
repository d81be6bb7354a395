//! A program run on a pseudo-terminal from a test, as a person at a
//! terminal would run it (`support operator shell DEVICE`): what it writes
//! is collected by a reader thread, keystrokes are written to it.
#![allow(dead_code)]

use std::io::{Read as _, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portable_pty::{CommandBuilder, PtySize, native_pty_system};

/// How long anything awaited may take on a machine shared with builds.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A process on its own pty; killed when dropped if still running.
pub struct OnPty {
    child: Box<dyn portable_pty::Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    output: Arc<Mutex<Vec<u8>>>,
    _master: Box<dyn portable_pty::MasterPty + Send>,
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
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        OnPty { child, writer, output, _master: pair.master }
    }

    /// Types `text` (a `\r` is the Enter key).
    pub fn type_text(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).unwrap();
        self.writer.flush().unwrap();
    }

    /// Everything it wrote so far, as text (lossy).
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
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
}

impl Drop for OnPty {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
    }
}
