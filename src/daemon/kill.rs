//! Killing a task's whole process tree: the one place it happens.
//!
//! Entry points:
//!
//! - [`kill_tree`]: SIGKILL every member of a running task's tree now (a
//!   stop, the end of a timeout's grace, pipes held past the drain bound);
//! - [`sweep`]: after a command's leader exited and was reaped, kill what
//!   it left behind; cheap when it provably left nothing;
//! - [`terminate`]: SIGTERM the tree (a timeout, before its grace period);
//! - [`kill_leftovers`]: after a crash, kill what a task of the previous
//!   daemon left;
//! - [`reap_strays`]: reap zombie orphans re-parented to the daemon.
//!
//! # Who is a member
//!
//! A task's tree is every process that descends from its leader, even one
//! that left the leader's process group with `setsid` or double-forked
//! away from its parent. The daemon is a child subreaper
//! (`prctl(PR_SET_CHILD_SUBREAPER)`, prctl(2)), so an orphaned descendant
//! is re-parented to the daemon rather than to init. A process belongs to
//! task T if any of these holds (see [`members`]):
//!
//! - its process group is T's (the leader runs with `process_group(0)`)
//!   and it started no earlier than T's leader;
//! - it descends, by parent links, from T's leader or from a member;
//! - it is an orphan re-parented to the daemon and carries T's marker
//!   ([`MARKER_ENV`](tree::MARKER_ENV)) in its environment, or any marker but another
//!   running task's, or none at all: the daemon's only children are its
//!   tasks, so an orphan no other running task can claim is T's to kill;
//! - it is in T's cgroup, when one is delegated ([`TaskCgroup`]): a kill
//!   writes `cgroup.kill` first, which reaches even a process that escaped
//!   every link above, and what a scan finds is moved into the cgroup.
//!
//! After a crash the daemon that starts next is no longer the parent, so
//! [`leftovers`] finds them by process group (started no earlier than the
//! task's leader, so a re-used pgid is not mistaken), by marker, and by the
//! task's cgroup.
//!
//! # Bounds
//!
//! A kill repeats the `/proc` scan until a pass finds no live member, so a
//! process forked while one pass ran is caught by the next; at most
//! [`KILL_PASSES`] passes, sleeping 1 ms when a pass found only processes
//! already SIGKILLed and still exiting.
//!
//! # Why the sweep may skip the scan
//!
//! A `/proc` scan reads every process's `stat`: about a millisecond on a
//! quiet machine, once per command. [`sweep`] runs it only when something
//! could be left. Once the leader is reaped, every live member has a chain
//! of parent links up to a root, and a root is either in the leader's
//! process group or a child of the daemon (an orphan comes back to the
//! subreaper). So when `kill(-pgid, 0)` fails with `ESRCH` (no process in
//! the group, kill(2)), the daemon has no child at all (`waitid(P_ALL,
//! WNOHANG | WNOWAIT | __WALL)` fails with `ECHILD`, waitid(2): atomic, over
//! all its threads, and moves nothing), and the task's cgroup, if any, is
//! empty, then no member is alive and none can appear: a new member needs a
//! live one to fork it, and an empty group cannot be joined (setpgid(2)).
//! Any other answer, including an error, runs the full kill.

use std::collections::{BTreeSet, HashMap};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid, waitpid};
use nix::unistd::Pid;

use super::tree::{self, TaskCgroup};

/// The most `/proc` scans one kill makes.
pub const KILL_PASSES: usize = 50;

/// The daemon's other running tasks, whose processes are not this task's.
#[derive(Clone, Debug, Default)]
pub struct Others {
    /// Their leaders' pids.
    pub leaders: Vec<i32>,
    /// Their task ids (whose marked orphans are theirs).
    pub tasks: Vec<String>,
}

/// A running task's tree, for killing it.
pub struct Tree<'a> {
    /// `t-` and 16 hex digits: the value of [`MARKER_ENV`](tree::MARKER_ENV) in its processes.
    pub task_id: &'a str,
    /// The current command's leader, which is also its process group id.
    pub pgid: i32,
    /// The leader's start time (clock ticks since boot); members of the
    /// group started no earlier.
    pub start_ticks: u64,
    /// The task's cgroup, when one is delegated.
    pub cgroup: Option<&'a TaskCgroup>,
    /// Asked afresh at every scan: tasks start and end meanwhile.
    pub others: &'a (dyn Fn() -> Others + Send + Sync),
}

impl Tree<'_> {
    /// The live members now: a `/proc` scan, joined by the cgroup's live
    /// members; what the scan found is moved into the cgroup, so a later
    /// escape cannot leave it.
    fn find(&self) -> BTreeSet<i32> {
        let others = (self.others)();
        let mut found = members(&TaskTree {
            task_id: self.task_id,
            pgid: self.pgid,
            start_ticks: self.start_ticks,
            other_leaders: &others.leaders,
            other_tasks: &others.tasks,
        });
        if let Some(cg) = self.cgroup {
            for p in &found {
                cg.add(*p);
            }
            found.extend(cg.members().into_iter().filter(|p| tree::alive(*p)));
        }
        found
    }
}

/// SIGKILLs the whole tree: the cgroup at once if there is one, then the
/// process group and every member by scans until none is alive (see the
/// module's bounds). Returns how many processes were signalled by pid.
pub fn kill_tree(tree: &Tree<'_>) -> usize {
    if let Some(cg) = tree.cgroup {
        cg.kill();
    }
    kill_until_gone(tree.pgid, KILL_PASSES, || tree.find())
}

/// Kills what a command left behind once its leader has exited and been
/// reaped: [`kill_tree`] when anything could be left, nothing more
/// otherwise (why that is safe: the module's docs). Returns how many
/// processes were signalled by pid.
pub fn sweep(tree: &Tree<'_>) -> usize {
    if let Some(cg) = tree.cgroup {
        cg.kill();
    }
    if could_have_left(tree) { kill_tree(tree) } else { 0 }
}

/// SIGTERMs the process group and every member found now.
pub fn terminate(tree: &Tree<'_>) {
    signal_all(tree.pgid, &tree.find(), Signal::SIGTERM);
}

/// Whether a reaped leader's tree may still have a live member.
fn could_have_left(tree: &Tree<'_>) -> bool {
    let group_empty = tree.pgid > 1 && killpg(Pid::from_raw(tree.pgid), None) == Err(Errno::ESRCH);
    let cgroup_empty = tree.cgroup.is_none_or(|cg| cg.members().is_empty());
    !(group_empty && cgroup_empty && !has_children())
}

/// Whether this process has any child, live or zombie, of any thread.
fn has_children() -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT | WaitPidFlag::__WALL;
    waitid(Id::All, flags) != Err(Errno::ECHILD)
}

/// Kills what a task of a daemon that died left behind: its cgroup
/// (`cgroup`, from `tasks.json`) at once, then [`leftovers`] and the
/// cgroup's live members by scans, and removes the cgroup. `pgid` -1 when
/// the leader's pid is unknown (a crash before the spawn): then by marker
/// only. No `killpg`: by now the group id may be someone else's. Returns
/// how many processes were killed.
pub fn kill_leftovers(task_id: &str, pgid: i32, start_ticks: u64, cgroup: Option<&TaskCgroup>) -> usize {
    if let Some(cg) = cgroup {
        cg.kill();
    }
    let killed = kill_until_gone(-1, KILL_PASSES, || {
        let mut found = leftovers(task_id, pgid, start_ticks);
        if let Some(cg) = cgroup {
            found.extend(cg.members().into_iter().filter(|p| tree::alive(*p)));
        }
        found
    });
    if let Some(cg) = cgroup {
        cg.remove();
    }
    killed
}

/// Who a task is, for finding its tree.
#[derive(Clone, Debug)]
pub struct TaskTree<'a> {
    /// The task's id (its marker's value).
    pub task_id: &'a str,
    /// The leader's pid, which is also the process group id.
    pub pgid: i32,
    /// The leader's start time; members of the group started no earlier.
    pub start_ticks: u64,
    /// The leaders of the daemon's other running tasks.
    pub other_leaders: &'a [i32],
    /// The ids of the daemon's other running tasks (whose marked orphans are theirs).
    pub other_tasks: &'a [String],
}

/// The live members of `task`'s tree now, by one `/proc` scan.
pub fn members(task: &TaskTree<'_>) -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    let procs = tree::all();
    let mut roots: Vec<i32> = Vec::new();
    for p in &procs {
        if p.pid == me {
            continue;
        }
        let in_group = p.pgid == task.pgid && p.start_ticks >= task.start_ticks;
        let orphan_of_ours = p.ppid == me && p.pid != task.pgid && !task.other_leaders.contains(&p.pid);
        let claimed = orphan_of_ours
            && match tree::marker_of(p.pid) {
                Some(Some(id)) => !task.other_tasks.contains(&id),
                Some(None) | None => true,
            };
        let leader = p.pid == task.pgid && p.start_ticks == task.start_ticks;
        if in_group || claimed || leader {
            roots.push(p.pid);
        }
    }
    let mut found = descendants(&procs, roots);
    let dead: HashMap<i32, bool> = procs.iter().map(|p| (p.pid, p.dead())).collect();
    found.retain(|pid| dead.get(pid).is_some_and(|d| !d));
    found
}

/// Leftovers of a task whose daemon died: the process group (started no
/// earlier than the leader) and every process carrying the task's marker,
/// with their descendants.
pub fn leftovers(task_id: &str, pgid: i32, start_ticks: u64) -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    let procs = tree::all();
    let roots: Vec<i32> = procs
        .iter()
        .filter(|p| p.pid != me && !p.dead())
        .filter(|p| {
            p.start_ticks >= start_ticks
                && (p.pgid == pgid || tree::marker_of(p.pid).flatten().as_deref() == Some(task_id))
        })
        .map(|p| p.pid)
        .collect();
    descendants(&procs, roots)
}

/// `roots` and everything below them by parent links, never this process.
fn descendants(procs: &[tree::ProcStat], mut roots: Vec<i32>) -> BTreeSet<i32> {
    let me = std::process::id() as i32;
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut found = BTreeSet::new();
    while let Some(pid) = roots.pop() {
        if pid != me && found.insert(pid) {
            roots.extend(children.get(&pid).into_iter().flatten().copied());
        }
    }
    found
}

/// Sends `signal` to the group `pgid` (when > 1) and to every pid in `found`.
pub fn signal_all(pgid: i32, found: &BTreeSet<i32>, signal: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), signal);
    }
    for pid in found {
        let _ = kill(Pid::from_raw(*pid), signal);
    }
}

/// SIGKILLs the tree `find` describes until a scan finds nothing alive
/// (at most `passes` scans), reaping orphans re-parented to us. Returns
/// how many processes were signalled in all.
pub fn kill_until_gone(pgid: i32, passes: usize, find: impl Fn() -> BTreeSet<i32>) -> usize {
    let mut signalled = BTreeSet::new();
    for _ in 0..passes {
        let found = find();
        if found.is_empty() {
            break;
        }
        let fresh: BTreeSet<i32> = found.difference(&signalled).copied().collect();
        if fresh.is_empty() {
            // Only processes already SIGKILLed, still exiting: give them the
            // CPU rather than rescanning at once.
            reap_orphans(&signalled, pgid);
            std::thread::sleep(std::time::Duration::from_millis(1));
            continue;
        }
        signal_all(pgid, &fresh, Signal::SIGKILL);
        signalled.extend(fresh);
        reap_orphans(&signalled, pgid);
    }
    reap_orphans(&signalled, pgid);
    signalled.len()
}

/// Reaps (without blocking) dead children of ours among `pids`, except
/// the leader `leader`, whose status tokio collects.
fn reap_orphans(pids: &BTreeSet<i32>, leader: i32) {
    let me = std::process::id() as i32;
    for pid in pids {
        if *pid != leader && tree::stat(*pid).is_some_and(|s| s.ppid == me && s.state == b'Z') {
            let _ = waitpid(Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// Reaps every zombie child of ours that is not one of `leaders`
/// (orphans re-parented to the subreaper after their task ended). With
/// no child at all (the usual case between tasks) it reads no `/proc`.
pub fn reap_strays(leaders: &[i32]) {
    if !has_children() {
        return;
    }
    let me = std::process::id() as i32;
    for p in tree::all() {
        if p.ppid == me && p.state == b'Z' && !leaders.contains(&p.pid) {
            let _ = waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_child_is_seen_until_reaped() {
        // The test harness runs tests on threads of one process; a child
        // spawned here must be seen until it is reaped.
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(has_children());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn an_empty_group_is_seen_as_empty() {
        use std::os::unix::process::CommandExt as _;
        let mut child = std::process::Command::new("true").process_group(0).spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        // The pid is reaped and its group is gone (unless re-used at once, which the check would report).
        assert_eq!(killpg(Pid::from_raw(pid), None), Err(Errno::ESRCH));
    }
}
