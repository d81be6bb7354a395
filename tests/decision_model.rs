//! A model-based property test of the daemon's whole decision path: random
//! interleavings of grants (tiers, lengths, scopes, budgets), revokes, time
//! passing, the wall clock set forward and back, trust changes, restarts
//! and crashes, an audit store that fails, and commands (valid, untrusted,
//! altered, replayed, stale, future-dated, for another device, unknown),
//! each checked against a small model of what may run (`model.rs`).
//!
//! The daemon runs in this process on a real home (tmpfs when there is
//! one, so 1,000 sequences fit in CI), with real files, real audit records
//! read back from disk, real processes, and a stepped [`support::Clock`].
//! A restart is a new daemon on the same home after `shutdown`; a crash
//! drops the daemon and its runtime without it. After every step the
//! daemon re-reads the grant, as its watcher does at a change or at the
//! grant's end (the watcher's own timing is tested in real time elsewhere:
//! tests/full_disk.rs, tests/grant_lab.rs).
//!
//! Cases: `SUPPORT_PROPTEST_CASES` (default 1000).

#[path = "decision_model/model.rs"]
mod model;
#[path = "decision_model/sut.rs"]
mod sut;

use model::{Cmd, Model, Step, Who};
use proptest::prelude::*;

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![3 => Just(Who::Alice), 1 => Just(Who::Bob)]
}

/// An action by index into [`model::ACTIONS`] (the last is not catalogued).
fn action() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 0..5usize, 1 => Just(5usize)]
}

/// A command's offset from the operator's clock: multiples of 10 s plus
/// 5, so that no freshness check falls within 5 s of its boundary.
fn offset() -> impl Strategy<Value = i64> {
    prop_oneof![(-12i64..12).prop_map(|n| n * 10 + 5), (-60i64..60).prop_map(|n| n * 10 + 5)]
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        8 => (who(), action()).prop_map(|(who, action)| Cmd::Valid { who, action }),
        1 => action().prop_map(|action| Cmd::Stranger { action }),
        1 => action().prop_map(|action| Cmd::Altered { action }),
        1 => action().prop_map(|action| Cmd::OtherDevice { action }),
        2 => (action(), offset()).prop_map(|(action, offset)| Cmd::Skewed { action, offset }),
        3 => (any::<usize>(), any::<bool>())
            .prop_map(|(back, new_request_id)| Cmd::Replay { back, new_request_id }),
    ]
}

fn names(max: usize) -> impl Strategy<Value = Option<Vec<usize>>> {
    prop_oneof![3 => Just(None), 1 => prop::sample::subsequence((0..max).collect::<Vec<_>>(), 1..=max).prop_map(Some)]
}

fn step() -> impl Strategy<Value = Step> {
    // Lengths and moves in whole multiples of 10 s: see `offset`.
    let length = prop_oneof![(1u64..=60).prop_map(|n| n * 10), (1u64..=2880).prop_map(|n| n * 10)];
    prop_oneof![
        4 => (1u8..=4, length, names(2), names(5), prop_oneof![3 => Just(None), 1 => (1u32..=3).prop_map(Some)])
            .prop_map(|(tier, secs, operators, only, max_actions)| Step::Allow { tier, secs, operators, only, max_actions }),
        1 => Just(Step::Revoke),
        2 => prop_oneof![(1i64..=30).prop_map(|n| n * 10), (1i64..=3000).prop_map(|n| n * 10)].prop_map(Step::Pass),
        2 => prop_oneof![(-40i64..=40).prop_map(|n| n * 10), (-3000i64..=3000).prop_map(|n| n * 10)].prop_map(Step::SetWall),
        // Twice the others: a removal must often find bob's task running.
        2 => any::<bool>().prop_map(Step::TrustBob),
        1 => Just(Step::Restart),
        1 => Just(Step::Crash),
        1 => Just(Step::BreakAudit),
        1 => Just(Step::HealAudit),
        12 => cmd().prop_map(Step::Send),
    ]
}

fn cases() -> u32 {
    std::env::var("SUPPORT_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

/// Runs `steps` on a fresh home and its model; the first disagreement fails.
fn check(steps: &[Step]) -> Result<(), TestCaseError> {
    let _one = sut::one_daemon();
    let mut sut = sut::Sut::new();
    let mut model = Model::new();
    model.started();
    for (i, step) in steps.iter().enumerate() {
        sut.apply(i, step, &mut model)?;
    }
    sut.finish(&mut model)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // A failure is shrunk, but not for ever: each run starts a daemon.
        max_shrink_iters: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_decision_agrees_with_the_model(steps in prop::collection::vec(step(), 1..28)) {
        check(&steps)?;
    }
}

/// A sequence run as given (regressions below), failing with its message.
fn replay(steps: &[Step]) {
    if let Err(e) = check(steps) {
        panic!("{e}");
    }
}

#[test]
fn a_valid_command_runs_and_a_replay_of_it_is_refused() {
    use Step::*;
    let grant = Allow { tier: 1, secs: 600, operators: None, only: None, max_actions: None };
    let run = Send(Cmd::Valid { who: Who::Alice, action: 1 });
    let again = Send(Cmd::Replay { back: 0, new_request_id: false });
    replay(&[grant, run, again, Restart]);
}

/// Found by the model: a new grant whose scope leaves a running task out
/// (its action, or its operator) did not stop it; only a lower tier did.
#[test]
fn a_new_grant_that_leaves_a_running_task_out_of_its_scope_stops_it() {
    use Step::*;
    let open = Allow { tier: 2, secs: 600, operators: None, only: None, max_actions: None };
    let slow = Send(Cmd::Valid { who: Who::Alice, action: 1 });
    let other_action = Allow { tier: 2, secs: 600, operators: None, only: Some(vec![4]), max_actions: None };
    replay(&[open.clone(), slow.clone(), other_action]);
    let other_operator = Allow { tier: 2, secs: 600, operators: Some(vec![1]), only: None, max_actions: None };
    replay(&[open, slow, other_operator]);
}

/// Found with the model, by a sequence written while reading replay.rs
/// (the random search had not hit it in 3,000 cases): a nonce pruned while
/// the wall clock was ahead was forgotten, so once the clock was set back
/// the same command was fresh again and ran a second time.
#[test]
fn a_command_is_not_run_again_after_the_clock_is_set_forward_and_back() {
    use Step::*;
    let grant = Allow { tier: 1, secs: 600, operators: None, only: None, max_actions: None };
    let run = Send(Cmd::Valid { who: Who::Alice, action: 0 });
    let first = Send(Cmd::Replay { back: 1, new_request_id: false });
    replay(&[grant.clone(), run.clone(), SetWall(300), run.clone(), SetWall(-300), first.clone()]);
    // The same by time passing on both clocks, then the wall clock set back.
    replay(&[grant, run.clone(), Pass(300), run, SetWall(-300), first]);
}

/// Found with the model, by a sequence written while reading replay.rs:
/// reading the nonces back at a start stopped at the first record older
/// than five minutes, but with the clock set back and forward again an
/// older record (by seq) can be newer (by time), so a command issued
/// ahead of the clock, seen before the restart, ran again after it.
#[test]
fn a_command_seen_before_a_restart_is_not_run_after_it_whatever_the_clock_did() {
    use Step::*;
    let grant = Allow { tier: 1, secs: 600, operators: None, only: None, max_actions: None };
    let ahead = Send(Cmd::Skewed { action: 0, offset: 115 });
    let stranger = Send(Cmd::Stranger { action: 0 });
    let again = Send(Cmd::Replay { back: 1, new_request_id: false });
    replay(&[grant, ahead, SetWall(-400), stranger, SetWall(400), Restart, again]);
}

/// Found by the model (CI, on main): a command refused `AUDIT_UNAVAILABLE`
/// while the audit store failed had its nonce only in the replay cache,
/// since its `action.denied` record could not be written. After the wall
/// clock was set back and the daemon restarted, nothing gave that nonce
/// back and the command was no longer issued before the start, so the
/// same command, replayed, passed the replay check; here, with the grant
/// still live, it would have run although its operator was told nothing
/// ran. Once before the audit store heals and once after, the restart
/// the same.
#[test]
fn a_command_refused_while_the_audit_store_failed_does_not_run_when_replayed_after_a_restart() {
    use Step::*;
    let grant = Allow { tier: 1, secs: 600, operators: None, only: None, max_actions: None };
    let run = Send(Cmd::Valid { who: Who::Alice, action: 0 });
    let again = Send(Cmd::Replay { back: 0, new_request_id: false });
    replay(&[grant.clone(), BreakAudit, run.clone(), HealAudit, SetWall(-10), Restart, again.clone()]);
    replay(&[grant, BreakAudit, run, SetWall(-10), Restart, HealAudit, Restart, again]);
}

/// The process [`a_task_left_by_a_sigkilled_daemon_dies_even_if_the_next_start_fails`]
/// kills: a real daemon with a slow task running, in `MODEL_CRASH_HOME`.
#[test]
#[ignore = "the child process of a_task_left_by_a_sigkilled_daemon_dies_even_if_the_next_start_fails"]
fn crashing_daemon() {
    let home = std::env::var_os("MODEL_CRASH_HOME").expect("run by the crash test, with MODEL_CRASH_HOME");
    let paths = support::Paths::under(home.into());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let daemon = support::Daemon::start(&paths, Default::default()).unwrap();
        let alice = support::KeyPair::load(&paths.home.join("alice.key")).unwrap();
        // A millisecond on: issued_at carries milliseconds, and must not fall before the start.
        let issued = chrono::Utc::now() + chrono::TimeDelta::milliseconds(1);
        let run = support::Run::signed(&alice, "r-left", daemon.device_id(), "slow-1", [].into(), issued);
        let (tx, _rx) = tokio::sync::mpsc::channel(64);
        daemon.submit(run, tx).await.expect("accepted");
        while !daemon.status_view().tasks.iter().any(|t| t.pid.is_some()) {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        println!("READY");
        std::future::pending::<()>().await;
    });
}

/// Found by a real SIGKILL beside the model: a daemon killed mid-task,
/// then a start that fails (its audit store fails) left the task's
/// process running, with nothing to end it at its grant's end.
#[test]
fn a_task_left_by_a_sigkilled_daemon_dies_even_if_the_next_start_fails() {
    use std::io::BufRead as _;
    let _one = sut::one_daemon();
    let (paths, _dir) = sut::home_for_a_real_daemon();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["crashing_daemon", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("MODEL_CRASH_HOME", &paths.home)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("READY"))), "the child daemon never got its task running");
    let tasks: serde_json::Value = serde_json::from_slice(&std::fs::read(paths.tasks()).unwrap()).unwrap();
    let pid = tasks[0]["pid"].as_i64().expect("a pid in tasks.json") as i32;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(sut::alive(pid), "the task outlives its daemon");
    sut::break_audit(&paths);
    assert!(support::Daemon::start(&paths, Default::default()).is_err(), "a start with its audit store failing");
    let left = sut::alive(pid);
    sut::heal_audit(&paths);
    let daemon = support::Daemon::start(&paths, Default::default()).expect("the start after");
    drop(daemon);
    assert!(!left, "the task of the killed daemon still ran after a start that failed");
}

/// Found by the model in a 10,000-case run (once): a task killed by
/// SIGKILL, by no stop of its own, while its grant covered it. Stopping one
/// task kills the daemon's unclaimed orphans; a task being spawned that
/// very moment (forked, not yet exec'd) carried no task marker yet, so it
/// was taken for one. A race: tried here a hundred times.
#[test]
fn stopping_one_task_does_not_kill_another_being_started() {
    use Step::*;
    for _ in 0..100 {
        let open = Allow { tier: 2, secs: 600, operators: None, only: None, max_actions: None };
        let lower = Allow { tier: 1, secs: 600, operators: None, only: None, max_actions: None };
        let fix = Send(Cmd::Valid { who: Who::Alice, action: 2 });
        let diagnostic = Send(Cmd::Valid { who: Who::Alice, action: 1 });
        replay(&[open, fix, diagnostic, lower]);
    }
}

/// Decided with the owner (issue 18): removing an operator's trust ends
/// the tasks that operator started, at once (`by: trust_removed`), while
/// another operator's task runs on; trusted again, his next command runs.
#[test]
fn removing_bob_s_trust_stops_his_running_task_and_only_his() {
    use Step::*;
    let open = Allow { tier: 2, secs: 600, operators: None, only: None, max_actions: None };
    let bob = Send(Cmd::Valid { who: Who::Bob, action: 1 });
    let alice = Send(Cmd::Valid { who: Who::Alice, action: 2 });
    replay(&[TrustBob(true), open, bob.clone(), alice, TrustBob(false), bob.clone(), TrustBob(true), bob]);
}
