//! The escalation guard's evidence: whether this process runs inside one
//! of support's tasks, for the commands that grant or widen access
//! (`allow`, `trust add`): a task must not extend or raise its own grant.
//!
//! A task runs as the owner's user, so it can set or strip any environment
//! variable and leave its process group and session (`setsid`). The checks
//! therefore rest on what the task cannot rewrite from inside:
//!
//! 1. the marker variable ([`MARKER_ENV`]): cheap and usually there, but a
//!    task can strip it, so it never stands alone;
//! 2. process ancestry: the daemon's pid comes from the kernel's lock
//!    table (`/proc/locks`, proc(5)), as the holder of the exclusive
//!    flock(2) on `daemon.lock`, not from a file a task could rewrite.
//!    The daemon is a child subreaper (prctl(2) `PR_SET_CHILD_SUBREAPER`),
//!    so a task's orphans (double fork, `setsid`) are re-parented to it:
//!    whatever a task does to its process group, session or environment,
//!    its processes still descend from the daemon;
//! 3. the daemon's own record (`tasks.json`): this process's process group
//!    or session is a running task's, or its cgroup v2 is a task's
//!    (`support-t-...`, see `daemon::tree::Delegated::for_task`).
//!
//! Every read is capped; a read that fails only means that check finds
//! nothing, and the others still run. What a task can still do is in
//! SECURITY.md, "What a task at tiers 3 and 4 can still do".

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use super::tree::{self, MARKER_ENV};
use crate::Paths;
use crate::text::{brief as short, printable};

/// `/proc/locks` is one line per lock (about 60 bytes): room for 64k locks.
const LOCKS_CAP: u64 = 4 << 20;
/// More parent links than any real process tree has; ends a cycle seen
/// through pid reuse mid-walk.
const MAX_HOPS: usize = 4096;
/// Open descriptors looked at when confirming a lock holder.
const MAX_FDS: usize = 4096;

/// The evidence that this process runs inside a support task, as a
/// sentence for the owner (several joined by `; `), or `None` when no check
/// finds any.
///
/// Checks, in this order: the [`MARKER_ENV`] variable; descent from the
/// running daemon, found through `/proc/locks`; a process group, session
/// or cgroup that the daemon's `tasks.json` gives to a task. None of them
/// fails: an unreadable file is no evidence from that check.
pub fn inside_task(paths: &Paths) -> Option<String> {
    let found: Vec<String> =
        [from_marker(), from_ancestry(paths), from_task_record(paths)].into_iter().flatten().collect();
    (!found.is_empty()).then(|| found.join("; "))
}

/// Check 1: the marker every task's environment starts with.
fn from_marker() -> Option<String> {
    let value = std::env::var_os(MARKER_ENV)?;
    Some(format!(
        "its environment carries {MARKER_ENV}={}, the marker of support's tasks",
        short(&value.to_string_lossy())
    ))
}

/// Check 2: the daemon (the holder of `daemon.lock`) is an ancestor.
fn from_ancestry(paths: &Paths) -> Option<String> {
    let daemon = daemon_pid(&paths.daemon_lock())?;
    let me = std::process::id() as i32;
    // A parent started after its child is a recycled pid, not the parent:
    // the walk stops there.
    let parent_of = |pid: i32| {
        let child = tree::stat(pid)?;
        let parent = tree::stat(child.ppid)?;
        (parent.start_ticks <= child.start_ticks).then_some(child.ppid)
    };
    descends_from(me, daemon, parent_of)
        .then(|| format!("this process descends from the support daemon (pid {daemon}), which runs support's tasks"))
}

/// The pid that holds the exclusive flock on `lock`, from the kernel's
/// lock table. A line whose device differs (btrfs subvolumes and overlayfs
/// report another `st_dev` through stat(2) than the lock table shows) is
/// taken only if that process has `lock` open.
fn daemon_pid(lock: &Path) -> Option<i32> {
    let meta = fs::metadata(lock).ok()?;
    let dev = (nix::sys::stat::major(meta.dev()), nix::sys::stat::minor(meta.dev()));
    let text = tree::read_proc(Path::new("/proc/locks"), LOCKS_CAP)?;
    let holders = flock_holders(&String::from_utf8_lossy(&text), meta.ino());
    holders
        .iter()
        .find(|h| h.dev == Some(dev))
        .map(|h| h.pid)
        .or_else(|| holders.iter().map(|h| h.pid).find(|pid| has_open(*pid, meta.dev(), meta.ino())))
}

/// One exclusive flock(2) holder from `/proc/locks`.
#[derive(Debug, PartialEq, Eq)]
struct Holder {
    pid: i32,
    /// (major, minor), when the field parses.
    dev: Option<(u64, u64)>,
}

/// The holders of exclusive (`WRITE`) `FLOCK` locks on inode `ino` in the
/// text of `/proc/locks` (proc(5)): `N: FLOCK  ADVISORY  WRITE PID MAJ:MIN:INODE START END`,
/// with major and minor in hex and the inode in decimal. Lines of waiters
/// (`N: -> FLOCK ...`) hold nothing and are skipped.
fn flock_holders(text: &str, ino: u64) -> Vec<Holder> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace().skip(1);
            let (kind, _advisory, mode) = (fields.next()?, fields.next()?, fields.next()?);
            if kind != "FLOCK" || mode != "WRITE" {
                return None;
            }
            let pid: i32 = fields.next()?.parse().ok()?;
            let mut id = fields.next()?.rsplitn(3, ':');
            if id.next()?.parse::<u64>().ok()? != ino || pid <= 0 {
                return None;
            }
            let minor = id.next().and_then(|m| u64::from_str_radix(m, 16).ok());
            let major = id.next().and_then(|m| u64::from_str_radix(m, 16).ok());
            Some(Holder { pid, dev: major.zip(minor) })
        })
        .collect()
}

/// Whether process `pid` has the file (`dev`, `ino`) open.
fn has_open(pid: i32, dev: u64, ino: u64) -> bool {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    dir.take(MAX_FDS)
        .filter_map(Result::ok)
        .any(|fd| fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino))
}

/// Whether `target` is an ancestor of `pid` by parent links (at most
/// [`MAX_HOPS`], up to pid 1); `parent_of` gives a process's parent, or
/// `None` when it cannot be read.
fn descends_from(pid: i32, target: i32, parent_of: impl Fn(i32) -> Option<i32>) -> bool {
    let mut pid = pid;
    for _ in 0..MAX_HOPS {
        let Some(parent) = parent_of(pid) else { return false };
        if parent == target {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        pid = parent;
    }
    false
}

/// A task as `tasks.json` lists it: only the fields this check needs, all
/// defaulted and no `deny_unknown_fields`, so a file written by a daemon
/// of another version still counts as evidence.
#[derive(Debug, serde::Deserialize)]
struct TaskEvidence {
    #[serde(default)]
    task_id: String,
    /// The task's process (and process group) leader.
    #[serde(default)]
    pid: Option<i32>,
    #[serde(default)]
    start_ticks: Option<u64>,
    #[serde(default)]
    cgroup: Option<std::path::PathBuf>,
    #[serde(default)]
    boot_id: String,
}

/// Check 3: the daemon's record of its tasks names this process's process
/// group, session or cgroup.
fn from_task_record(paths: &Paths) -> Option<String> {
    let tasks: Vec<TaskEvidence> = super::files::read_tasks(paths).ok()??.ok()?;
    let boot = super::files::boot_id();
    // A stale entry (from before a reboot) means nothing now.
    let tasks: Vec<_> = tasks.into_iter().filter(|t| t.boot_id.is_empty() || t.boot_id == boot).collect();
    if tasks.is_empty() {
        return None;
    }
    let me = tree::stat(std::process::id() as i32);
    let pgid = nix::unistd::getpgrp().as_raw();
    let sid = nix::unistd::getsid(None).ok().map(|p| p.as_raw());
    let cgroup = tree::own_cgroup();
    let mut found = Vec::new();
    for t in &tasks {
        let id = short(&t.task_id);
        // Only a leader still alive with its recorded start time: a stale
        // entry (a daemon that crashed) must not lock the owner out.
        let live = |leader: &i32| tree::stat(*leader).is_some_and(|s| Some(s.start_ticks) == t.start_ticks);
        if let Some(leader) = t.pid.filter(|p| *p > 1).filter(live) {
            // A group id re-used after the task ended belongs to a process
            // that started later than the task: only processes started no
            // earlier than the leader count (as in `kill::leftovers`).
            let since = match (t.start_ticks, me) {
                (Some(ticks), Some(me)) => me.start_ticks >= ticks,
                _ => true,
            };
            if since && pgid == leader {
                found.push(format!("its process group ({pgid}) is support task {id}'s"));
            }
            if since && sid == Some(leader) {
                found.push(format!("its session ({leader}) is support task {id}'s"));
            }
        }
        if let (Some(dir), Some((_, Some(mine)))) = (&t.cgroup, &cgroup)
            && mine.starts_with(dir)
        {
            found.push(format!("its cgroup ({}) is support task {id}'s", printable(&mine.display().to_string())));
        }
    }
    if found.is_empty()
        && let Some((path, _)) = &cgroup
        && path.split('/').any(|c| c.starts_with("support-t-"))
    {
        found.push(format!("its cgroup ({}) is a support task's", short(path)));
    }
    (!found.is_empty()).then(|| found.join("; "))
}

/// The evidence that process `pid`, a caller of the daemon's control API
/// (its pid from `SO_PEERCRED` or [`tcp_peer_pid`]), runs inside one of
/// `tasks` (the daemon's own table): the checks of [`inside_task`], seen
/// from the daemon: the marker in its environment, descent from this
/// process (the daemon, a subreaper), a task's process group, or a task's
/// cgroup. `None` when none finds any.
pub(crate) fn peer_inside_task(pid: i32, tasks: &[crate::control_api::TaskView]) -> Option<String> {
    let mut found = Vec::new();
    if let Some(Some(value)) = tree::marker_of(pid) {
        found.push(format!("its environment carries {MARKER_ENV}={}, the marker of support's tasks", short(&value)));
    }
    let daemon = std::process::id() as i32;
    let parent_of = |p: i32| {
        let child = tree::stat(p)?;
        let parent = tree::stat(child.ppid)?;
        (parent.start_ticks <= child.start_ticks).then_some(child.ppid)
    };
    if descends_from(pid, daemon, parent_of) {
        found.push(format!("process {pid} descends from the support daemon, which runs support's tasks"));
    }
    if let Some(me) = tree::stat(pid) {
        for t in tasks {
            if t.pid == Some(me.pgid) && t.start_ticks.is_none_or(|ticks| me.start_ticks >= ticks) {
                found.push(format!("its process group ({}) is support task {}'s", me.pgid, short(&t.task_id)));
            }
        }
    }
    if let Some(text) = tree::read_proc(Path::new(&format!("/proc/{pid}/cgroup")), 64 << 10)
        && let Some(path) = String::from_utf8_lossy(&text).lines().find_map(|l| l.strip_prefix("0::"))
        && path.split('/').any(|c| c.starts_with("support-t-"))
    {
        found.push(format!("its cgroup ({}) is a support task's", short(path.trim())));
    }
    (!found.is_empty()).then(|| found.join("; "))
}

/// The most processes looked at when finding a connection's owner.
const MAX_PROCS: usize = 65_536;

/// The pid of a process holding the client end of the loopback TCP
/// connection from `peer` to `local` (an IPv4 address pair, as accepted):
/// its inode from `/proc/net/tcp` (proc(5): hex `ADDR:PORT` in the
/// kernel's byte order), then the process with `socket:[INODE]` among its
/// open descriptors. `None` when either is not found (another user's
/// process, whose descriptors cannot be read, or a connection gone).
pub(crate) fn tcp_peer_pid(peer: std::net::SocketAddr, local: std::net::SocketAddr) -> Option<i32> {
    let (std::net::SocketAddr::V4(peer), std::net::SocketAddr::V4(local)) = (peer, local) else { return None };
    let hex = |a: std::net::SocketAddrV4| format!("{:08X}:{:04X}", u32::from_le_bytes(a.ip().octets()), a.port());
    let (want_local, want_remote) = (hex(peer), hex(local));
    let table = tree::read_proc(Path::new("/proc/net/tcp"), 16 << 20)?;
    let inode = String::from_utf8_lossy(&table).lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        (f.len() > 9 && f[1] == want_local && f[2] == want_remote).then(|| f[9].to_string())
    })?;
    let target = format!("socket:[{inode}]");
    let procs = fs::read_dir("/proc").ok()?;
    procs.take(MAX_PROCS).filter_map(Result::ok).find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let fds = fs::read_dir(entry.path().join("fd")).ok()?;
        fds.take(MAX_FDS)
            .filter_map(Result::ok)
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()))
            .then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exclusive_flock_holders_of_an_inode() {
        let locks = "\
1: POSIX  ADVISORY  WRITE 700 fe:00:42 0 EOF
2: FLOCK  ADVISORY  READ 701 fe:00:42 0 EOF
3: FLOCK  ADVISORY  WRITE 702 fe:00:43 0 EOF
4: FLOCK  ADVISORY  WRITE 25702 fe:00:42 0 EOF
4: -> FLOCK  ADVISORY  WRITE 703 fe:00:42 0 EOF
5: FLOCK  ADVISORY  WRITE 704 103:1a:42 0 EOF
6: FLOCK  ADVISORY  WRITE 705 00:2f:420 0 EOF
7: FLOCK  ADVISORY  WRITE x fe:00:42 0 EOF
8: FLOCK  ADVISORY  WRITE 706 fe:00
9: FLOCK
";
        assert_eq!(
            flock_holders(locks, 42),
            vec![Holder { pid: 25702, dev: Some((0xfe, 0)) }, Holder { pid: 704, dev: Some((0x103, 0x1a)) }]
        );
        assert_eq!(flock_holders(locks, 420), vec![Holder { pid: 705, dev: Some((0, 0x2f)) }]);
        assert!(flock_holders("", 42).is_empty());
        assert!(flock_holders("garbage\n\0\u{fffd}", 42).is_empty());
    }

    #[test]
    fn finds_the_process_at_the_other_end_of_a_loopback_connection() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(server.local_addr().unwrap()).unwrap();
        let (_accepted, peer) = server.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        assert_eq!(tcp_peer_pid(peer, server.local_addr().unwrap()), Some(std::process::id() as i32));
        let me = std::process::id() as i32;
        // The test process is no task of its own daemon.
        assert_eq!(peer_inside_task(me, &[]), None);
    }

    #[test]
    fn a_peer_below_the_daemon_or_with_the_marker_is_inside_a_task() {
        // This test process plays the daemon: its child descends from it.
        let mut child = std::process::Command::new("sleep").arg("30").env_remove(MARKER_ENV).spawn().unwrap();
        let found = peer_inside_task(child.id() as i32, &[]).expect("evidence");
        assert!(found.contains("descends from the support daemon"), "{found}");
        let _ = child.kill();
        let _ = child.wait();
        let mut marked =
            std::process::Command::new("sleep").arg("30").env(MARKER_ENV, "t-0123456789abcdef").spawn().unwrap();
        // spawn() returns once the exec has closed its close-on-exec pipe,
        // which the kernel does before it lays out the new environment: for
        // a moment the process is `sleep` with an empty /proc/PID/environ.
        let environ = format!("/proc/{}/environ", marked.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read(&environ).map_or(0, |b| b.len()) == 0 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        let found = peer_inside_task(marked.id() as i32, &[]).expect("evidence");
        assert!(found.contains("SUPPORTD_TASK=t-0123456789abcdef"), "{found}");
        let _ = marked.kill();
        let _ = marked.wait();
    }

    #[test]
    fn walks_parent_links_to_the_target_and_no_further() {
        // 40 -> 30 -> 20 -> 10 -> 1; 50 is unreadable; 60 <-> 61 loop.
        let parent = |pid| match pid {
            40 => Some(30),
            30 => Some(20),
            20 => Some(10),
            10 => Some(1),
            1 => Some(0),
            60 => Some(61),
            61 => Some(60),
            _ => None,
        };
        for (pid, target, expect) in [
            (40, 30, true),
            (40, 10, true),
            (40, 1, true),
            (40, 40, false),
            (20, 30, false),
            (50, 10, false),
            (60, 10, false),
            (60, 61, true),
        ] {
            assert_eq!(descends_from(pid, target, parent), expect, "{pid} from {target}");
        }
    }

    #[test]
    fn finds_this_process_as_the_holder_of_its_own_flock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.lock");
        let file = fs::File::create(&path).unwrap();
        assert_eq!(daemon_pid(&path), None);
        file.lock().unwrap();
        assert_eq!(daemon_pid(&path), Some(std::process::id() as i32));
        // This process descends from its parent, and not from itself.
        let me = std::process::id() as i32;
        let parent = nix::unistd::getppid().as_raw();
        assert!(descends_from(me, parent, |p| tree::stat(p).map(|s| s.ppid)));
        assert!(!descends_from(me, me, |p| tree::stat(p).map(|s| s.ppid)));
    }

    /// Run in a child of its own that leads its own process group: the
    /// check needs the group's leader alive, and the test runner's group
    /// leader may have exited (a job started in the background).
    #[test]
    fn a_task_record_from_another_version_still_counts() {
        const CHILD: &str = "SUPPORT_TEST_GROUP_LEADER";
        if std::env::var_os(CHILD).is_none() {
            use std::os::unix::process::CommandExt;
            let name = "daemon::guard::tests::a_task_record_from_another_version_still_counts";
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD, "1")
                .process_group(0)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("1 passed"),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        }
        assert_eq!(nix::unistd::getpgrp().as_raw(), std::process::id() as i32, "a group leader");
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().join("home"));
        paths.ensure_dirs().unwrap();
        crate::paths::ensure_dir(&paths.run_dir()).unwrap();
        let pgid = nix::unistd::getpgrp().as_raw();
        let ticks = tree::stat(pgid).expect("our group leader is alive").start_ticks;
        let boot = super::super::files::boot_id();
        // A field this version does not know, and one it needs left out.
        let file = format!(
            r#"[{{"task_id":"t-0123456789abcdef","pid":{pgid},"start_ticks":{ticks},"boot_id":"{boot}","newer":1}}]"#
        );
        crate::paths::write_atomic(&paths.tasks(), file.as_bytes()).unwrap();
        let found = from_task_record(&paths).expect("evidence");
        assert!(found.contains(&format!("its process group ({pgid}) is support task t-0123456789abcdef's")), "{found}");
        crate::paths::write_atomic(&paths.tasks(), b"[]").unwrap();
        assert_eq!(from_task_record(&paths), None);
    }
}
