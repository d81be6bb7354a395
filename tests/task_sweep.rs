//! The end-of-command sweep: a command that exits at once, leaving
//! processes behind (in its group, in new sessions, double-forked, with
//! an emptied environment), leaves none of them alive, whether or not any
//! of them stayed in its process group.

mod common;

use std::time::Duration;

use common::lab::{Lab, finish, survivors};
use support::Status;

/// Both tests leave orphans that re-parent to this process, the subreaper:
/// one at a time, so a sweep never meets the other test's processes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn policy() -> String {
    let leave = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/leave.sh");
    let mut text = String::new();
    for (name, mode) in [("leave", ""), ("leave-escaped", "escaped"), ("leave-threaded", "threaded")] {
        text.push_str(&format!(
            "[[action]]\nname = \"{name}\"\ntier = 1\nkind = \"diagnostic\"\ndescription = \"exits, leaving processes\"\n\
             argv = [\"{leave}\", \"{{pidfile}}\"{}]\ntimeout_s = 60\n\
             [action.params.pidfile]\npattern = \"^/[A-Za-z0-9_./-]+$\"\nmax_len = 512\ndescription = \"pids\"\n\n",
            if mode.is_empty() { String::new() } else { format!(", \"{mode}\"") }
        ));
    }
    text
}

async fn leaves_nothing(action: &str, n: usize) {
    let _one = SERIAL.lock().await;
    let lab = Lab::start_with(&policy());
    lab.grant(1, Duration::from_secs(600));
    let (outcome, mut rx) = lab.submit(lab.tree(action)).await;
    outcome.expect("accepted");
    let (result, output) = finish(&mut rx).await;
    let pids = lab.pids(n).await;
    assert_eq!(result.status, Status::Ok, "{output}");
    assert!(output.contains("ready"), "{output}");
    assert_eq!(survivors(&pids), Vec::<i32>::new(), "left behind by {action}");
    // The leftovers hold the output pipes: only the sweep at the leader's
    // exit ends the task before the 5 s drain bound.
    assert!(result.duration_ms < 4000, "{} ms", result.duration_ms);
}

#[tokio::test]
async fn a_command_that_exits_leaves_nothing_behind() {
    leaves_nothing("leave", 11).await;
}

#[tokio::test]
async fn nothing_left_even_when_the_group_is_empty() {
    leaves_nothing("leave-escaped", 5).await;
}

/// A process whose main thread has exited shows as a zombie while its
/// other threads run: it is killed, not passed over as dead.
#[tokio::test]
async fn a_process_that_looks_like_a_zombie_but_runs_is_killed() {
    leaves_nothing("leave-threaded", 2).await;
}
