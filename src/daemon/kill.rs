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
//!   every link above; the kernel also kills what is forked into the
//!   cgroup while it kills (cgroup v2's `cgroup.kill`, Linux 5.14+), so no
//!   fork outruns it. A member that moved itself out of the cgroup is
//!   still found by the links above.
//!
//! An orphan whose marker names another running task is left to that task
//! (whose own kill, or its end, takes it): nothing the daemon can read
//! tells a forged marker from a real one once the parent links are gone.
//! One whose marker is missing, unreadable, or names no running task is
//! killed with the task that is being killed: it fails closed.
//!
//! After a crash the daemon that starts next is no longer the parent, so
//! [`leftovers`] finds them by process group (started no earlier than the
//! task's leader, so a re-used pgid is not mistaken), by marker, and by the
//! task's cgroup.
//!
//! # Freeze, then kill
//!
//! Killing by scans alone loses to a process that loops fork → parent
//! exits → child `setsid()`: each pid it had when a scan saw it is gone by
//! the SIGKILL, and its successor is not in that scan. So a kill first
//! stops the whole tree with SIGSTOP, which a process can neither catch
//! nor ignore (signal(7)), and only then SIGKILLs it (`freeze_and_kill`):
//!
//! 1. SIGSTOP every member found (`Tree::roots`: the leader, the
//!    daemon's orphan children the rules above give to the task, the
//!    task's cgroup) and wait until every thread of each is stopped
//!    ([`tree::state`]). A fork under way when the signal came either
//!    fails or completes before the forker stops; either way, once it is
//!    stopped, its children are all in `/proc/PID/task/*/children`
//!    ([`tree::children`]), and stay there (a stopped process cannot
//!    reap them, and the daemon reaps nothing while a kill runs: `KILLING`).
//! 2. SIGSTOP each of their children, and theirs, down the tree; and
//!    look again at once, before any waiting, while a look finds a new
//!    one (a member that was already exiting when its SIGSTOP came has
//!    handed on to a child, which must be stopped before it forks in turn).
//! 3. Repeat 1 and 2 (the daemon's own children last, so that a member
//!    that exited meanwhile has already handed its children to the
//!    subreaper) until a pass stops nothing new and finds every member it
//!    holds still stopped; then confirm with a full `/proc` scan
//!    ([`members`]), and go on if it finds a live member not held.
//! 4. SIGKILL every member held (SIGKILL ends a stopped process without a
//!    SIGCONT), and start again from 1 until a freeze finds no live
//!    member that was not already killed. A member killed while it forked
//!    may still leave a child: the next round finds it.
//!
//! Every live member is a descendant of a live member or, orphaned, a
//! direct child of the daemon (its nearest subreaper), or of a member that
//! made itself a subreaper; so a closed set of stopped members, none of
//! which can run, is the whole tree. Pids are not re-used under the kill:
//! a stopped member's children cannot be reaped by it (short of an exit
//! reaped at once because it ignores SIGCHLD, which frees a pid only an
//! allocator wrapping around within the microseconds of one pass could
//! hand out again), and the daemon's are reaped only under `KILLING`. A
//! held pid is checked again, by its start time, after the SIGSTOP, and
//! let go with SIGCONT if it is not the process that was read.
//!
//! A thread in uninterruptible sleep (`D`) counts as stopped (see
//! [`State::Stopped`]); a member the daemon may not signal (EPERM: another
//! user's, after a set-user-ID program) is walked but not waited for. A
//! kill gives up after [`KILL_LIMIT`] (processes that neither stop nor
//! die), and says so in the log.
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid, waitpid};
use nix::unistd::Pid;

use super::tree::{self, State, TaskCgroup};

/// The longest one kill tries (processes that will not stop or die:
/// stuck in the kernel); then it gives up, and logs what is left.
pub const KILL_LIMIT: Duration = Duration::from_secs(10);

/// Held while a kill runs or strays are reaped: the daemon reaps no
/// child while a kill holds pids stopped, so none is re-used under it.
static KILLING: Mutex<()> = Mutex::new(());

/// Spawns so far (counted under `KILLING`, after the leader is registered):
/// a reap whose list of leaders is older than the last spawn skips.
static SPAWNS: AtomicU64 = AtomicU64::new(0);

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
    /// The live members now, by a full `/proc` scan, joined by the cgroup's.
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
            found.extend(cg.members());
        }
        found
    }

    /// Where a freeze starts, read without a scan: the leader, the
    /// daemon's children the module's rules give to this task, and the
    /// cgroup's members. A child of the daemon for which `known` holds
    /// (met already by this freeze) is left out unread.
    fn roots(&self, known: &dyn Fn(i32) -> bool) -> Vec<i32> {
        let me = std::process::id() as i32;
        let others = (self.others)();
        let mut roots = Vec::new();
        if tree::stat(self.pgid).is_some_and(|s| s.start_ticks == self.start_ticks) {
            roots.push(self.pgid);
        }
        // Unreadable (no CONFIG_PROC_CHILDREN): the confirming scan finds them.
        for pid in tree::children(me).unwrap_or_default() {
            if pid != self.pgid && !known(pid) && !others.leaders.contains(&pid) && orphan_is_ours(pid, &others.tasks) {
                roots.push(pid);
            }
        }
        if let Some(cg) = self.cgroup {
            roots.extend(cg.members());
        }
        roots
    }

    fn leaders(&self) -> Vec<i32> {
        let mut leaders = (self.others)().leaders;
        leaders.push(self.pgid);
        leaders
    }
}

/// Whether an orphan re-parented to the daemon is the killing task's: any
/// marker but another running task's, or none (the module's rules).
fn orphan_is_ours(pid: i32, other_tasks: &[String]) -> bool {
    match tree::marker_of(pid) {
        Some(Some(id)) => !other_tasks.contains(&id),
        Some(None) | None => true,
    }
}

/// Kills the whole tree of a task whose leader has not been reaped: the
/// cgroup at once if there is one, then the process group and every
/// member, frozen first (the module's docs). Returns how many processes
/// were killed by pid.
pub fn kill_tree(tree: &Tree<'_>) -> usize {
    kill_all(tree, Some(tree.pgid))
}

fn kill_all(tree: &Tree<'_>, group: Option<i32>) -> usize {
    let _one = crate::lock(&KILLING);
    if let Some(cg) = tree.cgroup {
        cg.kill();
    }
    // Zombies left by members that exited make every scan longer: reap
    // them first (a dead process is nobody's to kill).
    reap_dead_children(&tree.leaders());
    freeze_and_kill(group, &|known| tree.roots(known), &|| tree.find(), tree.pgid)
}

/// Kills what a command left behind once its leader has exited and been
/// reaped: as [`kill_tree`] (but no `killpg`: the group id may be re-used
/// by now) when anything could be left, nothing more otherwise (why that
/// is safe: the module's docs). Returns how many processes were killed.
pub fn sweep(tree: &Tree<'_>) -> usize {
    if let Some(cg) = tree.cgroup {
        cg.kill();
    }
    if could_have_left(tree) { kill_all(tree, None) } else { 0 }
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
/// cgroup's members, frozen first, and removes the cgroup. `pgid` -1 when
/// the leader's pid is unknown (a crash before the spawn): then by marker
/// only. No `killpg`: by now the group id may be someone else's. Returns
/// how many processes were killed.
pub fn kill_leftovers(task_id: &str, pgid: i32, start_ticks: u64, cgroup: Option<&TaskCgroup>) -> usize {
    let _one = crate::lock(&KILLING);
    if let Some(cg) = cgroup {
        cg.kill();
    }
    let find = || {
        let mut found = leftovers(task_id, pgid, start_ticks);
        if let Some(cg) = cgroup {
            found.extend(cg.members());
        }
        found
    };
    let killed = freeze_and_kill(None, &|_| find().into_iter().collect(), &find, -1);
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
        if p.pid == me || p.dead() {
            continue;
        }
        let in_group = p.pgid == task.pgid && p.start_ticks >= task.start_ticks;
        let orphan_of_ours = p.ppid == me && p.pid != task.pgid && !task.other_leaders.contains(&p.pid);
        let claimed = orphan_of_ours && orphan_is_ours(p.pid, task.other_tasks);
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

/// Members held by a freeze: pid → start time (clock ticks since boot).
type Held = BTreeMap<i32, u64>;

/// Freezes and kills, round after round, until a freeze finds no live
/// member that was not already killed (the module's docs), or
/// [`KILL_LIMIT`]. `roots` gives cheap starting points (it may leave out
/// the pids its argument says are known), `scan` a full `/proc` scan to
/// confirm a freeze is whole; `group` is SIGSTOPped and
/// SIGKILLed as a whole too. Reaps the dead among them that are this
/// process's children, but not `leader` (tokio reaps it). Returns how
/// many processes were killed.
fn freeze_and_kill(group: Option<i32>, roots: &Roots<'_>, scan: &dyn Fn() -> BTreeSet<i32>, leader: i32) -> usize {
    let give_up_at = Instant::now() + KILL_LIMIT;
    if let Some(g) = group.filter(|g| *g > 1) {
        // Most of a tree at once; the walk finds the rest.
        let _ = killpg(Pid::from_raw(g), Signal::SIGSTOP);
    }
    let mut killed = Held::new();
    loop {
        let held = freeze(roots, scan, &killed, give_up_at);
        if let Some(g) = group.filter(|g| *g > 1) {
            let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
        }
        for pid in held.keys() {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        let fresh = held.len();
        killed.extend(held);
        if fresh == 0 || Instant::now() >= give_up_at {
            break;
        }
    }
    // Gone from /proc, or a zombie, before the task is said to have ended.
    while killed.iter().any(|(pid, ticks)| same(*pid, *ticks) && tree::state(*pid) != State::Dead) {
        if Instant::now() >= give_up_at {
            let left: Vec<i32> = killed.keys().copied().filter(|p| tree::alive(*p)).collect();
            tracing::error!(?left, "processes of a task outlived the kill (stuck in the kernel?)");
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    reap_orphans(&killed.keys().copied().collect(), leader);
    killed.len()
}

/// Whether `pid` is still the process that started at `ticks`.
fn same(pid: i32, ticks: u64) -> bool {
    tree::stat(pid).is_some_and(|s| s.start_ticks == ticks)
}

/// Where a freeze starts (`Tree::roots`): given which pids are known.
type Roots<'a> = dyn Fn(&dyn Fn(i32) -> bool) -> Vec<i32> + 'a;

/// SIGSTOPs every live member not in `killed` and returns them once the
/// set is closed: every one stopped, none with a child outside it or
/// `killed`, the daemon's children (through `roots`) and a full `scan`
/// finding no other. At `give_up_at`, what it holds so far.
fn freeze(roots: &Roots<'_>, scan: &dyn Fn() -> BTreeSet<i32>, killed: &Held, give_up_at: Instant) -> Held {
    let mut f =
        Freeze { held: Held::new(), seen: BTreeSet::new(), dead: BTreeSet::new(), foreign: BTreeSet::new(), killed };
    loop {
        // Chase first: stop what is new until a look finds nothing more,
        // and only then wait for the stopped to be stopped. (A walker that
        // exited just as its SIGSTOP came has handed on to a child by then,
        // which must be caught before it forks and exits in turn.)
        let mut new = false;
        while f.look(roots) {
            new = true;
        }
        let all_stopped = wait_stopped(&f.held, give_up_at);
        if Instant::now() >= give_up_at {
            return f.held;
        }
        if new || !all_stopped {
            continue;
        }
        let mut more = false;
        for pid in scan() {
            more |= f.hold(pid);
        }
        if !more {
            if !f.foreign.is_empty() {
                tracing::warn!(pids = ?f.foreign, "a task's tree holds processes the daemon may not signal (another user's)");
            }
            return f.held;
        }
    }
}

/// What one freeze has found.
struct Freeze<'a> {
    /// Stopped by it (or on their way): pid → start time.
    held: Held,
    /// Every (pid, start time) met, the dead included.
    seen: BTreeSet<(i32, u64)>,
    /// Pids met as zombies. A look skips them, and the held and killed,
    /// unread: a walk leaves the daemon a zombie per generation, and a
    /// look that read each of them again would fall behind the walk. (A
    /// zombie is not reaped under the kill, so its pid is not re-used; the
    /// confirming scan reads every process all the same.)
    dead: BTreeSet<i32>,
    /// Members it may not signal (EPERM: another user's, as after a
    /// set-user-ID program changed its real user): their children are
    /// still walked.
    foreign: BTreeSet<i32>,
    /// Killed by an earlier round: not stopped again, their children walked.
    killed: &'a Held,
}

impl Freeze<'_> {
    /// SIGSTOPs every new child of a member held, killed or foreign, and
    /// every new one of `roots` (the daemon's own children read last: see
    /// the module's step 3). Returns whether any was new.
    fn look(&mut self, roots: &Roots<'_>) -> bool {
        let mut new = false;
        let mut frontier: Vec<i32> = self.held.keys().chain(self.killed.keys()).chain(&self.foreign).copied().collect();
        while let Some(pid) = frontier.pop() {
            for child in tree::children(pid).unwrap_or_default() {
                if !self.known(child) && self.hold(child) {
                    new = true;
                    frontier.push(child);
                }
            }
        }
        for pid in roots(&|pid| self.known(pid)) {
            new |= self.hold(pid);
        }
        new
    }

    /// Whether a look may skip `pid` unread: met as a zombie, or held or
    /// killed by pid (a re-used pid is left to the confirming scan).
    fn known(&self, pid: i32) -> bool {
        self.dead.contains(&pid) || self.held.contains_key(&pid) || self.killed.contains_key(&pid)
    }

    /// SIGSTOPs `pid` and holds it, unless it is dead, held or killed
    /// already. Returns whether it was new (a zombie seen for the first
    /// time counts: something ran).
    fn hold(&mut self, pid: i32) -> bool {
        if pid == std::process::id() as i32 {
            return false;
        }
        let Some(before) = tree::stat(pid) else { return false };
        let first = self.seen.insert((pid, before.start_ticks));
        let known = |h: &Held| h.get(&pid) == Some(&before.start_ticks);
        if before.dead() {
            self.dead.insert(pid);
            return first;
        }
        if known(&self.held) || known(self.killed) || self.foreign.contains(&pid) {
            return first;
        }
        if kill(Pid::from_raw(pid), Signal::SIGSTOP) == Err(Errno::EPERM) {
            self.foreign.insert(pid);
            return first;
        }
        // The pid is this process's child or a stopped member's, so it is not
        // re-used meanwhile; the check costs one read all the same, and a
        // stranger stopped by mistake is let go.
        if same(pid, before.start_ticks) {
            self.held.insert(pid, before.start_ticks);
        } else {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
        true
    }
}

/// Waits until every held member is stopped or dead, sending SIGSTOP
/// again to one that runs (a SIGCONT from outside). Returns whether all are.
fn wait_stopped(held: &Held, give_up_at: Instant) -> bool {
    let mut spins = 0u32;
    loop {
        let running: Vec<i32> = held.keys().copied().filter(|p| tree::state(*p) == State::Running).collect();
        if running.is_empty() {
            return true;
        }
        if Instant::now() >= give_up_at {
            return false;
        }
        spins += 1;
        if spins.is_multiple_of(64) {
            for pid in &running {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGSTOP);
            }
        }
        // A stop takes the target a turn on a CPU: give it ours rather than
        // sleep past it (a sleep's wake-up costs milliseconds on a busy machine).
        if spins < 1024 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
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

/// Runs `spawn` (a task's fork and exec, then its registration as a
/// running task's leader) with no kill running: until its exec has laid
/// out the new environment (after `spawn` returns: the kernel closes the
/// close-on-exec pipe std waits on first), a new child shows the daemon's
/// environment or none, not its task's marker, and until it is registered
/// it is no other task's known leader, so a kill of another task would take
/// it for an unclaimed orphan (counterexamples of tests/decision_model.rs).
pub(super) fn spawning<T>(spawn: impl FnOnce() -> T) -> T {
    let _one = crate::lock(&KILLING);
    let spawned = spawn();
    SPAWNS.fetch_add(1, Ordering::SeqCst);
    spawned
}

/// Reaps every zombie child of ours that is not one of `leaders()`
/// (orphans re-parented to the subreaper after their task ended). With
/// no child at all (the usual case between tasks) it reads no `/proc`.
///
/// A task spawned between the reading of `leaders` and the taking of
/// `KILLING` may be missing from the list while its leader has already
/// exited; reaping that zombie here would leave tokio's `wait` with
/// `ECHILD` and the task with no exit status (a counterexample of
/// tests/decision_model.rs at 69,000 cases: "killed by signal 9"). So a
/// spawn since the reading skips this reap (the next one takes the strays).
/// The list is read outside the lock: reading the daemon's state while
/// holding `KILLING` slowed kills of fork-walkers past their bound.
pub fn reap_strays(leaders: impl FnOnce() -> Vec<i32>) {
    let spawns = SPAWNS.load(Ordering::SeqCst);
    let leaders = leaders();
    let _one = crate::lock(&KILLING);
    if SPAWNS.load(Ordering::SeqCst) == spawns {
        reap_dead_children(&leaders);
    }
}

/// [`reap_strays`], for a caller that holds `KILLING`.
fn reap_dead_children(leaders: &[i32]) {
    if !has_children() {
        return;
    }
    let me = std::process::id() as i32;
    let children = tree::children(me);
    let children = children.unwrap_or_else(|| tree::all().iter().filter(|p| p.ppid == me).map(|p| p.pid).collect());
    for pid in children.into_iter().filter(|p| !leaders.contains(p)) {
        // Reaps a zombie and leaves a live child be (no WUNTRACED: a stopped one too).
        let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
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

    /// Found by tests/decision_model.rs at 69,000 cases: a reap that read
    /// the leaders before a spawn reaped that task's exited leader, and the
    /// task ended "killed by signal 9".
    #[test]
    fn a_reap_whose_leaders_were_read_before_a_spawn_leaves_its_zombie() {
        let registered = Mutex::new(Vec::<i32>::new());
        let (asked, was_asked) = std::sync::mpsc::channel();
        let leaders = || {
            let _ = asked.send(());
            crate::lock(&registered).clone()
        };
        let mut child = std::thread::scope(|s| {
            let (child, reaper) = spawning(|| {
                let reaper = s.spawn(|| reap_strays(leaders));
                // The list is read now, before this spawn registers its leader.
                was_asked.recv_timeout(Duration::from_secs(5)).unwrap();
                let child = std::process::Command::new("true").spawn().unwrap();
                let pid = child.id() as i32;
                crate::lock(&registered).push(pid);
                let give_up = Instant::now() + Duration::from_secs(5);
                while tree::stat(pid).is_some_and(|s| s.state != b'Z') && Instant::now() < give_up {
                    std::thread::yield_now();
                }
                (child, reaper)
            });
            reaper.join().unwrap();
            child
        });
        // Still ours to wait for: its status was not taken by the reap.
        assert!(child.wait().unwrap().success());
    }
}
