//! What the kernel tells about processes: `/proc/PID/stat`, a process's
//! marker ([`MARKER_ENV`]), capped reads of kernel files, and cgroup v2
//! ([`Delegated`], [`TaskCgroup`]).
//!
//! Which processes make up a task's tree, and killing them, is in
//! [`super::kill`]; the names re-exported from there here are for the
//! daemon's recovery code.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The environment variable that marks a task's processes: its task id.
/// (Not `SUPPORT_*`: nothing of that prefix reaches a task.)
pub const MARKER_ENV: &str = "SUPPORTD_TASK";

/// The most an `environ` read takes (bytes).
const ENVIRON_CAP: usize = 256 * 1024;

/// One process as `/proc/PID/stat` shows it (proc(5)).
#[derive(Clone, Copy, Debug)]
pub struct ProcStat {
    /// The process id.
    pub pid: i32,
    /// Its parent's.
    pub ppid: i32,
    /// Its process group's.
    pub pgid: i32,
    /// `Z` for a zombie: dead, unless other threads of it still run.
    pub state: u8,
    /// Its threads (`num_threads`): more than one in a `Z` process whose
    /// main thread has exited while others run on.
    pub threads: u64,
    /// Clock ticks since boot.
    pub start_ticks: u64,
}

impl ProcStat {
    /// Whether it is dead for good: a zombie with no thread left running.
    /// A process whose main thread exited shows `Z` while its other threads
    /// run: it is alive, and must be killed like any other.
    pub fn dead(&self) -> bool {
        self.state == b'Z' && self.threads <= 1
    }
}

/// Parses `/proc/PID/stat`; `None` if the process is gone.
pub fn stat(pid: i32) -> Option<ProcStat> {
    // Bytes, not a String: a process may give itself a name that is not
    // UTF-8, and must not vanish from the scan by doing so.
    // One read into room for the whole line: a scan opens every process's
    // stat after each task, so the syscalls per file count (proc(5) lines
    // are well under 1 KiB; 4 KiB caps a hostile one).
    use std::io::Read as _;
    let mut bytes = Vec::with_capacity(1024);
    fs::File::open(format!("/proc/{pid}/stat")).ok()?.take(4096).read_to_end(&mut bytes).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after the last `)`.
    let after = memchr::memrchr(b')', &bytes)? + 2;
    let rest = std::str::from_utf8(bytes.get(after..)?).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.bytes().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    let threads = fields.nth(14)?.parse().ok()?;
    let start_ticks = fields.nth(1)?.parse().ok()?;
    Some(ProcStat { pid, ppid, pgid, state, threads, start_ticks })
}

/// Every process visible in `/proc`.
pub fn all() -> Vec<ProcStat> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).filter_map(stat).collect()
}

/// Whether `pid` is a live process (present and not dead, see [`ProcStat::dead`]).
pub fn alive(pid: i32) -> bool {
    stat(pid).is_some_and(|s| !s.dead())
}

/// Where a process is on its way to a stop (see [`state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Gone, or a zombie with no thread left.
    Dead,
    /// Every live thread stopped (`T`, or `t` for a tracing stop), or in
    /// uninterruptible sleep in the kernel (`D`, as a parent waiting for its
    /// `vfork` child is, which a stopped child would keep there): it runs no
    /// instruction of its own until someone sends it SIGCONT, and a `D`
    /// thread with a SIGSTOP pending stops on its way out of the kernel. (A
    /// fork it was in the middle of may still complete: the kill's next
    /// round finds that child.)
    Stopped,
    /// Some thread still runs (or sleeps, or is in the kernel).
    Running,
}

/// Whether every thread of `pid` is stopped, from each thread's own
/// `/proc/PID/task/TID/stat` (the process's `stat` shows only its main
/// thread, which may have exited while others run).
pub fn state(pid: i32) -> State {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else { return State::Dead };
    let mut live = false;
    for tid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Some(st) = thread_state(pid, tid) else { continue };
        match st {
            b'Z' | b'X' | b'x' => {}
            b'T' | b't' | b'D' => live = true,
            _ => return State::Running,
        }
    }
    if live { State::Stopped } else { State::Dead }
}

/// The state letter of thread `tid` of `pid` (proc(5) field 3).
fn thread_state(pid: i32, tid: i32) -> Option<u8> {
    let bytes = read_proc(Path::new(&format!("/proc/{pid}/task/{tid}/stat")), 4096)?;
    let after = memchr::memrchr(b')', &bytes)? + 2;
    bytes.get(after).copied()
}

/// The children of every thread of `pid` (`/proc/PID/task/TID/children`,
/// Linux 3.5+ with `CONFIG_PROC_CHILDREN`): exact for a stopped process,
/// whose list only grows by a subreaper's adoptions and shrinks by nothing
/// its children do short of being reaped. `None` when the files cannot be read.
pub fn children(pid: i32) -> Option<Vec<i32>> {
    let dir = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut found = Vec::new();
    let mut any = false;
    for tid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        // A task can fork a great many: read at most 4 MiB per thread.
        if let Some(text) = read_proc(Path::new(&format!("/proc/{pid}/task/{tid}/children")), 4 << 20) {
            any = true;
            found.extend(String::from_utf8_lossy(&text).split_ascii_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    any.then_some(found)
}

/// The value of [`MARKER_ENV`] in a process's environment: `Some(None)`
/// when readable without the marker, `None` when unreadable.
pub(super) fn marker_of(pid: i32) -> Option<Option<String>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    fs::File::open(format!("/proc/{pid}/environ")).ok()?.take(ENVIRON_CAP as u64).read_to_end(&mut bytes).ok()?;
    let prefix = format!("{MARKER_ENV}=");
    Some(
        bytes
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
            .map(|v| String::from_utf8_lossy(v).into_owned()),
    )
}

/// This process's cgroup v2 path (`/proc/self/cgroup`, the `0::` line) and,
/// when the cgroup2 mount is found, its directory.
pub fn own_cgroup() -> Option<(String, Option<PathBuf>)> {
    let text = read_proc(Path::new("/proc/self/cgroup"), 64 << 10)?;
    let path = cgroup_v2_path(&String::from_utf8_lossy(&text))?;
    let mountinfo = read_proc(Path::new("/proc/self/mountinfo"), 1 << 20);
    let dir = mountinfo
        .and_then(|m| cgroup2_mount(&String::from_utf8_lossy(&m)))
        .map(|mount| mount.join(path.trim_start_matches('/')));
    Some((path, dir))
}

/// The path on the `0::PATH` line of `/proc/PID/cgroup` (cgroups(7)).
fn cgroup_v2_path(text: &str) -> Option<String> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    (path.starts_with('/') && !path.contains("..")).then(|| path.to_string())
}

/// Where cgroup2 is mounted, from the text of `/proc/PID/mountinfo` (proc(5)).
fn cgroup2_mount(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right.starts_with("cgroup2 ").then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// Reads a kernel file (`/proc`, not the owner's, so no owner check) of
/// at most `cap` bytes; when the cap cut the text, only whole lines.
/// `None` when it cannot be read.
pub fn read_proc(path: &Path, cap: u64) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    fs::File::open(path).ok()?.take(cap).read_to_end(&mut bytes).ok()?;
    if bytes.len() as u64 >= cap {
        let end = memchr::memrchr(b'\n', &bytes).map_or(0, |i| i + 1);
        bytes.truncate(end);
    }
    Some(bytes)
}

/// A cgroup v2 directory delegated to the daemon (systemd `Delegate=yes`,
/// or one made for it): not the root, owned by the daemon's user, with
/// `cgroup.kill` (Linux 5.14+). Tasks get child cgroups in it.
#[derive(Clone, Debug)]
pub struct Delegated {
    dir: std::path::PathBuf,
    helper: Option<PathBuf>,
}

impl Delegated {
    /// Finds the daemon's own cgroup through `/proc/self/cgroup` and the
    /// cgroup2 mount in `/proc/self/mountinfo`; `None` unless it is delegated.
    pub fn detect() -> Option<Delegated> {
        use std::os::unix::fs::MetadataExt;
        let (path, dir) = own_cgroup()?;
        if path == "/" {
            return None;
        }
        let dir = dir?;
        let meta = fs::metadata(dir.join("cgroup.procs")).ok()?;
        if meta.uid() != crate::paths::current_uid() || !dir.join("cgroup.kill").exists() {
            return None;
        }
        Some(Delegated { dir, helper: None })
    }

    /// Starts each task's commands through `helper`, the `support`
    /// binary (see [`TaskCgroup::spawn_with`]); with `None`, a command is
    /// moved into its cgroup only once it runs.
    pub fn spawning_with(self, helper: Option<PathBuf>) -> Delegated {
        Delegated { helper, ..self }
    }

    /// The daemon's cgroup directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Makes the child cgroup for a task; `None` if it cannot.
    pub fn for_task(&self, task_id: &str) -> Option<TaskCgroup> {
        let dir = self.dir.join(format!("support-{task_id}"));
        match fs::create_dir(&dir) {
            Ok(()) => Some(TaskCgroup { dir, helper: self.helper.clone() }),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot make a task cgroup; using /proc only");
                None
            }
        }
    }
}

/// The hidden subcommand of `support` that enters a cgroup and then
/// runs a command ([`enter_and_exec`]).
pub const ENTER_CGROUP: &str = "__enter-cgroup";

/// A task's own cgroup.
#[derive(Clone, Debug)]
pub struct TaskCgroup {
    dir: std::path::PathBuf,
    helper: Option<PathBuf>,
}

impl TaskCgroup {
    /// An existing task cgroup (from `tasks.json` after a crash).
    pub fn at(dir: std::path::PathBuf) -> TaskCgroup {
        TaskCgroup { dir, helper: None }
    }

    /// The `support` binary that starts a command of the task inside this
    /// cgroup, before the command's first instruction: it is spawned as
    /// `support __enter-cgroup PROCS -- PROGRAM ARGV0 ARGS...`, writes its
    /// own pid into `PROCS` (this cgroup's `cgroup.procs`), then execs
    /// the command in place, pid, process group and all ([`enter_and_exec`]).
    /// `None`: the daemon moves the command in once it runs (a fork in
    /// between stays outside the cgroup, and only the `/proc` links find it).
    pub fn spawn_with(&self) -> Option<&Path> {
        self.helper.as_deref()
    }

    /// Its directory under the delegated cgroup (`support-t-…`).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Moves `pid` in (a process already gone is no error).
    pub fn add(&self, pid: i32) {
        let _ = fs::write(self.dir.join("cgroup.procs"), pid.to_string());
    }

    /// The processes in it.
    pub fn members(&self) -> BTreeSet<i32> {
        // A task can fill its cgroup: read at most 4 MiB (some 500 000 pids).
        let text = read_proc(&self.dir.join("cgroup.procs"), 4 << 20).unwrap_or_default();
        String::from_utf8_lossy(&text).lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// SIGKILLs everything in it, in the kernel, at once.
    pub fn kill(&self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
    }

    /// Removes it once empty (best effort): the kernel empties a killed
    /// cgroup asynchronously, so this retries for up to 100 ms.
    pub fn remove(&self) {
        for _ in 0..100 {
            match fs::remove_dir(&self.dir) {
                Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                _ => return,
            }
        }
        tracing::warn!(dir = %self.dir.display(), "a task cgroup stayed busy; left in place");
    }
}

/// Why [`enter_and_exec`] returned: it returns only when the command did not run.
#[derive(Debug, thiserror::Error)]
pub enum NotRun {
    /// The cgroup could not be entered, so nothing was run.
    #[error("could not enter the task's cgroup ({0}): {1}")]
    Cgroup(String, std::io::Error),
    /// The exec itself failed.
    #[error("could not start `{0}`: {1}")]
    Exec(String, std::io::Error),
}

/// What `support __enter-cgroup PROCS -- PROGRAM ARGV0 ARGS...` does:
/// writes this process's pid into `procs` (a cgroup's `cgroup.procs`),
/// then execs `program` (found on this process's PATH when it has no
/// `/`) with `argv0` and `args`, keeping the pid, the process group, the
/// environment and the open files. Returns only on failure: the cgroup
/// could not be entered ([`NotRun::Cgroup`]: then nothing runs, as a
/// command must not start outside its task's cgroup), or the exec failed
/// ([`NotRun::Exec`]).
pub fn enter_and_exec(
    procs: &Path,
    program: &std::ffi::OsStr,
    argv0: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
) -> NotRun {
    use std::os::unix::process::CommandExt as _;
    if let Err(e) = fs::write(procs, std::process::id().to_string()) {
        return NotRun::Cgroup(procs.display().to_string(), e);
    }
    let e = std::process::Command::new(program).arg0(argv0).args(args).exec();
    NotRun::Exec(argv0.to_string_lossy().into_owned(), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_a_hostile_name() {
        let me = stat(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(me.pgid, nix::unistd::getpgrp().as_raw());
        assert!(me.start_ticks > 0);
        assert!(stat(i32::MAX).is_none());
    }

    #[test]
    fn a_stopped_child_is_seen_stopped_and_among_the_children() {
        use nix::sys::signal::{Signal, kill};
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(children(std::process::id() as i32).unwrap().contains(&pid));
        kill(nix::unistd::Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while state(pid) != State::Stopped {
            assert_eq!(state(pid), State::Running);
            assert!(std::time::Instant::now() < deadline, "never stopped");
            std::thread::yield_now();
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(state(pid), State::Dead);
    }

    #[test]
    fn reads_the_v2_cgroup_and_its_mount() {
        let cgroup = "9:name=systemd:/\n4:memory:/x\n0::/user.slice/support.service/support-t-0123456789abcdef\n";
        assert_eq!(cgroup_v2_path(cgroup).as_deref(), Some("/user.slice/support.service/support-t-0123456789abcdef"));
        assert_eq!(cgroup_v2_path("4:memory:/x\n"), None);
        assert_eq!(cgroup_v2_path("0::/a/../b\n"), None);
        let mountinfo = "22 1 0:21 / /proc rw - proc proc rw\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(mountinfo), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("22 1 0:21 / /proc rw - proc proc rw\n"), None);
    }
}
