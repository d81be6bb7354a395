//! An interactive session's process on a pseudo-terminal (portable-pty:
//! openpty(3), then the child made a session leader with the pty as its
//! controlling terminal, setsid(2) and TIOCSCTTY, tty_ioctl(4)).
//!
//! The pty's master is blocking, so three threads of its own serve it:
//! one reads what the pty writes (chunks of at most [`CHUNK_BYTES`] over a
//! bounded channel, so a slow link slows the shell, never the daemon's
//! memory), one writes the operator's keystrokes, one waits for the
//! leader's exit. The leader is a session and process group leader (its
//! pid is its pgid), so the daemon's tree kill ([`super::kill`]) treats it
//! as any task's leader; with a delegated cgroup it starts inside it
//! through `support __enter-cgroup`, as every task does.

use portable_pty::{CommandBuilder, MasterPty, PtySize, native_pty_system};
use std::io::{Read as _, Write as _};
use tokio::sync::{mpsc, oneshot};

use super::exec::{CHUNK_BYTES, Spec};
use super::tree;

/// The terminal type a session's programs are told (`TERM`).
pub(super) const TERM: &str = "xterm-256color";

/// What the pty's reader thread may hold unsent: chunks.
const OUTPUT_QUEUE: usize = 16;

/// A running session's process and its pty.
pub(super) struct Pty {
    /// Writes to the pty and sets its size.
    pub(super) control: Control,
    /// The leader: its pid (= its process group and session id).
    pub(super) pid: i32,
    /// Its start in clock ticks since boot (`/proc/PID/stat`).
    pub(super) start_ticks: u64,
    /// What the pty wrote; closed once every end of its slave side is closed.
    pub(super) output: mpsc::Receiver<Vec<u8>>,
    /// The leader's exit: its code, or `None` when a signal ended it.
    pub(super) exited: oneshot::Receiver<Option<i32>>,
}

/// The pty's input side and its size.
pub(super) struct Control {
    master: Box<dyn MasterPty + Send>,
    input: std::sync::mpsc::SyncSender<Vec<u8>>,
}

/// The program of a session: `[shell] program`, else the daemon user's
/// login shell (passwd(5)), else `$SHELL`, else /bin/sh.
pub(super) fn program(configured: Option<&str>) -> String {
    if let Some(p) = configured {
        return p.to_string();
    }
    let passwd = nix::unistd::User::from_uid(nix::unistd::getuid()).ok().flatten().map(|u| u.shell);
    passwd
        .and_then(|s| s.to_str().map(str::to_string))
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("SHELL").ok().filter(|s| s.starts_with('/')))
        .unwrap_or_else(|| "/bin/sh".into())
}

impl Pty {
    /// Starts `program` (no arguments) on a new pty of `cols` x `rows`,
    /// with `spec`'s environment (and `TERM`), cwd and cgroup. `registered`
    /// runs with the leader's pid and start ticks before any kill may run
    /// again (see [`super::kill::spawning`]).
    ///
    /// # Errors
    /// For people: what could not be opened or started.
    pub(super) fn start(
        spec: &Spec,
        program: &str,
        (cols, rows): (u16, u16),
        registered: impl FnOnce(i32, u64),
    ) -> Result<Pty, String> {
        let pair = native_pty_system()
            .openpty(PtySize { rows, cols, pixel_width: 0, pixel_height: 0 })
            .map_err(|e| format!("could not open a pseudo-terminal: {e}"))?;
        let helper = spec.cgroup.as_ref().and_then(|cg| Some((cg.spawn_with()?, cg.dir().join("cgroup.procs"))));
        let mut cmd = match &helper {
            Some((helper, procs)) => {
                let mut cmd = CommandBuilder::new(helper);
                cmd.arg(tree::ENTER_CGROUP);
                cmd.arg(procs);
                cmd.arg("--");
                cmd.arg(program);
                cmd.arg(program);
                cmd
            }
            None => CommandBuilder::new(program),
        };
        cmd.env_clear();
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        cmd.env("TERM", TERM);
        cmd.cwd(&spec.cwd);
        let (mut child, pid, start_ticks) = super::kill::spawning(|| {
            let child = pair.slave.spawn_command(cmd).map_err(|e| std::io::Error::other(e.to_string()))?;
            let pid = child.process_id().and_then(|p| i32::try_from(p).ok()).unwrap_or(-1);
            if let Some(cg) = &spec.cgroup {
                cg.add(pid);
            }
            let start_ticks = tree::stat(pid).map(|s| s.start_ticks).unwrap_or(0);
            registered(pid, start_ticks);
            Ok::<_, std::io::Error>((child, pid, start_ticks))
        })
        .map_err(|e| format!("could not start `{program}` on a pseudo-terminal: {e}"))?;
        // Only the child may hold the slave side: the reader then sees the end
        // (EIO) once the session's last process has closed it.
        drop(pair.slave);
        let (exited_tx, exited) = oneshot::channel();
        std::thread::Builder::new()
            .name("pty-wait".into())
            .spawn(move || {
                let code = child.wait().ok().and_then(|s| s.signal().is_none().then(|| s.exit_code() as i32));
                let _ = exited_tx.send(code);
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let mut reader = pair.master.try_clone_reader().map_err(|e| format!("the pty cannot be read: {e}"))?;
        let mut writer = pair.master.take_writer().map_err(|e| format!("the pty cannot be written: {e}"))?;
        let (out_tx, output) = mpsc::channel(OUTPUT_QUEUE);
        std::thread::Builder::new()
            .name("pty-read".into())
            .spawn(move || {
                let mut buf = vec![0u8; CHUNK_BYTES];
                // EIO once the slave side is closed everywhere: the end.
                while let Ok(n @ 1..) = reader.read(&mut buf) {
                    if out_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let (input, keys) = std::sync::mpsc::sync_channel::<Vec<u8>>(OUTPUT_QUEUE);
        std::thread::Builder::new()
            .name("pty-write".into())
            .spawn(move || {
                for bytes in keys {
                    if writer.write_all(&bytes).and_then(|()| writer.flush()).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        Ok(Pty { control: Control { master: pair.master, input }, pid, start_ticks, output, exited })
    }
}

impl Control {
    /// Writes `bytes` to the pty's input; `false` when it is gone or its queue is full.
    pub(super) fn write(&self, bytes: Vec<u8>) -> bool {
        self.input.try_send(bytes).is_ok()
    }

    /// Sets the window size (the kernel sends the foreground group SIGWINCH).
    pub(super) fn resize(&self, cols: u16, rows: u16) {
        if let Err(e) = self.master.resize(PtySize { rows, cols, pixel_width: 0, pixel_height: 0 }) {
            tracing::warn!(error = %e, "could not resize the pty");
        }
    }
}
