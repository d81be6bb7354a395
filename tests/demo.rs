//! The README's first quick-start command, `support demo`, end to end: a
//! relay, a daemon and an operator as real processes, tiers 1 to 3, and the
//! record. It exits 0 only if every step behaved as it shows.

mod common;

#[test]
fn the_demo_behaves_as_it_shows() {
    let out = std::process::Command::new(common::bin()).arg("demo").env("NO_COLOR", "1").output().unwrap();
    let run = common::Run::from(out);
    run.code(0)
        .says("demo: every step behaved as shown.")
        .says("support is operating your agent:")
        .says("stopped by the owner")
        .says("ok: ");
}
