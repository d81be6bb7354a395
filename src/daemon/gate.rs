//! The gate: whether one signed command may run. Pure: it reads only the
//! snapshots it is given and does no I/O, so every branch is unit-tested.
//!
//! The checks run in DESIGN §1 order and the first failure decides:
//! shape (`BAD_FRAME`), a trusted operator key (`UNTRUSTED_OPERATOR`), its
//! signature and device (`BAD_SIGNATURE`), freshness within ±120 s
//! (`STALE_COMMAND`), an unseen nonce (`REPLAY`; `STALE_COMMAND` when
//! issued no later than a nonce the cache forgot; `BUSY` when the replay
//! cache is full), the action (`UNKNOWN_ACTION`), its parameters
//! (`INVALID_PARAMS`), a live grant (`NO_CONSENT`) and its tier
//! (`TIER_INSUFFICIENT`), then the grant's scope (DESIGN §11): the
//! operator (`OPERATOR_NOT_GRANTED`), the action (`ACTION_NOT_GRANTED`)
//! and the budget (`BUDGET_EXHAUSTED`). Writing `action.started` comes
//! after, in the daemon, which checks the budget again where it counts
//! the task ([`budget_left`]).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};

pub use super::replay::ReplayCache;
use crate::consent::{Consent, Grant};
use crate::identity::PublicKey;
use crate::policy::{Action, Catalogue, Rendered};
use crate::protocol::{DenyCode, FRESHNESS_S, Run};
use crate::trust::Operator;

/// What the gate reads besides the command.
#[derive(Clone, Copy)]
pub struct Snapshot<'a> {
    /// This device's id.
    pub device_id: &'a str,
    /// The wall clock when the command arrived.
    pub now: DateTime<Utc>,
    /// The grant as the daemon sees it (its monotonic deadline already applied).
    pub consent: &'a Consent,
    /// The action catalogue.
    pub catalogue: &'a Catalogue,
    /// The operators the owner trusts (`trusted_operators.toml`).
    pub trusted: &'a [Operator],
    /// The nonces seen recently.
    pub replay: &'a ReplayCache,
    /// When this daemon started: a command issued earlier may have been
    /// seen by a predecessor whose replay cache is gone, so it is stale.
    pub not_before: DateTime<Utc>,
    /// Actions started under the live grant so far; `None` when they
    /// cannot be counted (then a budget counts as spent).
    pub used: Option<u32>,
}

/// A command that may run.
#[derive(Clone, Debug)]
pub struct Approved {
    /// The catalogued action.
    pub action: Action,
    /// Its argv (and stdin) rendered from the command's parameters.
    pub rendered: Rendered,
    /// The grant it runs under.
    pub grant: Grant,
    /// The owner's name for the operator (from `trusted_operators.toml`).
    pub operator: String,
}

/// A refusal: the code and a message for both the owner and the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The denial code (DESIGN §7).
    pub code: DenyCode,
    /// What is wrong, for people.
    pub message: String,
}

/// The gate's answer.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// It may run.
    Run(Box<Approved>),
    /// It may not.
    Deny(Denial),
}

/// The answer, and whether the nonce must go into the replay cache: true
/// once the signature, device and freshness checks have passed, whatever
/// comes after, so the same frame can never be tried twice.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Run or deny.
    pub verdict: Verdict,
    /// Whether the nonce goes into the replay cache (see above).
    pub remember_nonce: bool,
    /// The operator's name if trusted, else its key's fingerprint (for the record).
    pub operator: Option<String>,
}

fn deny(code: DenyCode, message: impl Into<String>) -> Verdict {
    Verdict::Deny(Denial { code, message: message.into() })
}

/// Decides on `run` against `snap`.
pub fn decide(run: &Run, snap: Snapshot<'_>) -> Decision {
    let mut decision = Decision { verdict: deny(DenyCode::BadFrame, ""), remember_nonce: false, operator: None };
    if let Err(why) = run.check_shape() {
        decision.verdict = deny(DenyCode::BadFrame, why);
        return decision;
    }
    let key = match run.operator.parse::<PublicKey>() {
        Ok(k) => k,
        Err(e) => {
            decision.verdict = deny(DenyCode::UntrustedOperator, format!("operator: {e}"));
            return decision;
        }
    };
    let Some(op) = snap.trusted.iter().find(|o| o.public_key.parse::<PublicKey>().is_ok_and(|k| k == key)) else {
        decision.operator = Some(key.fingerprint());
        decision.verdict = deny(
            DenyCode::UntrustedOperator,
            format!("operator key {} is not trusted on this device (support trust add)", key.fingerprint()),
        );
        return decision;
    };
    decision.operator = Some(op.name.clone());
    let sig_ok = URL_SAFE_NO_PAD
        .decode(&run.sig)
        .ok()
        .is_some_and(|sig| sig.len() == 64 && key.verify(&run.signed_bytes(), &sig).is_ok());
    if !sig_ok {
        decision.verdict = deny(DenyCode::BadSignature, "the signature does not verify for this command");
        return decision;
    }
    if run.device_id != snap.device_id {
        decision.verdict = deny(
            DenyCode::BadSignature,
            format!("signed for device {}, not this one ({})", run.device_id, snap.device_id),
        );
        return decision;
    }
    let issued = match crate::time::parse_rfc3339(&run.issued_at) {
        Some(t) => t,
        None => {
            decision.verdict = deny(DenyCode::StaleCommand, "issued_at is not an RFC 3339 time");
            return decision;
        }
    };
    let skew = snap.now.signed_duration_since(issued);
    // Whole seconds, truncated: 120.9 s passes, 121 s does not.
    if skew.num_seconds().abs() > FRESHNESS_S {
        decision.verdict = deny(
            DenyCode::StaleCommand,
            format!(
                "issued {} s {} the device's clock; the limit is {FRESHNESS_S} s",
                skew.num_seconds().abs(),
                if skew < TimeDelta::zero() { "ahead of" } else { "behind" }
            ),
        );
        return decision;
    }
    if issued < snap.not_before {
        decision.verdict = deny(DenyCode::StaleCommand, "issued before the device's daemon (re)started; send it again");
        return decision;
    }
    if snap.replay.contains(&run.nonce) {
        decision.verdict = deny(DenyCode::Replay, "this command's nonce was already used");
        return decision;
    }
    if snap.replay.forgot(issued) {
        decision.verdict = deny(
            DenyCode::StaleCommand,
            "issued no later than a command whose nonce the device no longer holds (its clock was set back?); \
             send it again",
        );
        return decision;
    }
    if snap.replay.is_full() {
        decision.verdict = deny(DenyCode::Busy, "too many commands in the last few minutes; try again shortly");
        return decision;
    }
    decision.remember_nonce = true;
    let action = match snap.catalogue.get(&run.action) {
        Ok(a) => a,
        Err(_) => {
            let message = match run.action.as_str() {
                section @ ("shell" | "agent") => format!(
                    "the owner turned `{section}` off on this device ([{section}] enabled = false in its policy)"
                ),
                other => format!("no action `{other}` in this device's catalogue"),
            };
            decision.verdict = deny(DenyCode::UnknownAction, message);
            return decision;
        }
    };
    let rendered = match action.render(&run.params) {
        Ok(r) => r,
        Err(e) => {
            decision.verdict = deny(DenyCode::InvalidParams, e.to_string());
            return decision;
        }
    };
    let grant = match snap.consent {
        Consent::Live(g) if g.expires_at > snap.now => g,
        Consent::Live(_) => {
            decision.verdict = deny(DenyCode::NoConsent, "the owner's grant has expired");
            return decision;
        }
        Consent::Off(off) => {
            decision.verdict = deny(DenyCode::NoConsent, format!("support is off on this device: {}", off.reason()));
            return decision;
        }
    };
    if grant.tier < action.tier {
        decision.verdict = deny(
            DenyCode::TierInsufficient,
            format!("`{}` needs tier {}; the owner granted tier {}", action.name, action.tier, grant.tier),
        );
        return decision;
    }
    if !grant.allows_operator(&op.name) {
        let granted = grant.operators.as_deref().unwrap_or_default().join(", ");
        decision.verdict = deny(
            DenyCode::OperatorNotGranted,
            format!("the owner's grant is for {granted} only, not for `{}`", op.name),
        );
        return decision;
    }
    if !grant.allows_action(&action.name) {
        let only = grant.only.as_deref().unwrap_or_default().join(", ");
        decision.verdict =
            deny(DenyCode::ActionNotGranted, format!("the owner's grant allows only {only}, not `{}`", action.name));
        return decision;
    }
    if let Err(denial) = budget_left(grant, snap.used) {
        decision.verdict = Verdict::Deny(denial);
        return decision;
    }
    decision.verdict =
        Verdict::Run(Box::new(Approved { action, rendered, grant: grant.clone(), operator: op.name.clone() }));
    decision
}

/// Whether one more action may start under `grant` when `used` have
/// (`None`: they cannot be counted). Checked by [`decide`], and again where
/// the task is counted, under the same lock, so two commands cannot both
/// take the last one.
///
/// # Errors
/// `BUDGET_EXHAUSTED`, saying how many were allowed.
pub fn budget_left(grant: &Grant, used: Option<u32>) -> Result<(), Denial> {
    let Some(max) = grant.max_actions else { return Ok(()) };
    let message = match used {
        Some(n) if n < max => return Ok(()),
        Some(n) => format!("the owner's grant allows {max} action(s) and {n} have started; ask for a new grant"),
        None => "the actions started under the owner's grant cannot be counted (the audit log cannot be read), \
                 so its budget counts as spent"
            .into(),
    };
    Err(Denial { code: DenyCode::BudgetExhausted, message })
}

/// Whether one more task may start beside the `running` ones: at most
/// `max_tasks` at once, and one agent task at a time (`agent_task` names
/// the one running, if any). Checked where the task is registered, under
/// the same lock as the insert, so two commands cannot both pass.
///
/// # Errors
/// `BUSY`, saying which limit was hit.
pub fn room_for(agent: bool, running: usize, max_tasks: usize, agent_task: Option<&str>) -> Result<(), Denial> {
    let busy = |message: String| Err(Denial { code: DenyCode::Busy, message });
    if running >= max_tasks {
        return busy(format!("{max_tasks} tasks are running, the most this device runs at once"));
    }
    match agent_task {
        Some(other) if agent => busy(format!("the agent is already on a task ({other}); one agent task at a time")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::consent::{GrantedBy, Off, Tier};
    use crate::daemon::replay::REPLAY_KEEP_S;
    use crate::identity::KeyPair;

    struct World {
        key: KeyPair,
        trusted: Vec<Operator>,
        catalogue: Catalogue,
        replay: ReplayCache,
        now: DateTime<Utc>,
        consent: Consent,
        used: Option<u32>,
    }

    const DEVICE: &str = "d-0123456789abcdef0123";

    fn grant(tier: u8, expires_in: i64, now: DateTime<Utc>) -> Consent {
        Consent::Live(Grant {
            grant_id: "g-0000000000000000".into(),
            tier: Tier::new(tier).unwrap(),
            granted_at: now - TimeDelta::seconds(10),
            expires_at: now + TimeDelta::seconds(expires_in),
            reason: None,
            granted_by: GrantedBy { user: "owner".into(), uid: 1000 },
            operators: None,
            only: None,
            max_actions: None,
        })
    }

    fn world() -> World {
        let (key, _) = KeyPair::generate();
        // Whole milliseconds, as `issued_at` carries them, so offsets are exact.
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        let trusted =
            vec![Operator { name: "alice".into(), public_key: key.public_key().to_string(), added_at: String::new() }];
        World {
            key,
            trusted,
            catalogue: Catalogue::default_only().unwrap(),
            replay: ReplayCache::new(8),
            now,
            consent: grant(2, 600, now),
            used: Some(0),
        }
    }

    impl World {
        fn run(&self, action: &str, params: &[(&str, &str)], issued_offset_s: i64) -> Run {
            let params = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
            Run::signed(&self.key, "req-1", DEVICE, action, params, self.now - TimeDelta::seconds(issued_offset_s))
        }
        fn decide(&self, run: &Run) -> Decision {
            decide(
                run,
                Snapshot {
                    device_id: DEVICE,
                    now: self.now,
                    consent: &self.consent,
                    catalogue: &self.catalogue,
                    trusted: &self.trusted,
                    replay: &self.replay,
                    not_before: self.now - TimeDelta::seconds(3600),
                    used: self.used,
                },
            )
        }
    }

    fn code(d: &Decision) -> Option<DenyCode> {
        match &d.verdict {
            Verdict::Run(_) => None,
            Verdict::Deny(denial) => Some(denial.code),
        }
    }

    #[test]
    fn a_good_command_runs_with_its_rendered_argv() {
        let w = world();
        let d = w.decide(&w.run("service-status", &[("unit", "cups")], 0));
        let Verdict::Run(ok) = &d.verdict else { panic!("{d:?}") };
        assert_eq!(ok.operator, "alice");
        assert!(ok.rendered.commands[0].contains(&"cups".to_string()), "{:?}", ok.rendered);
        assert!(d.remember_nonce);
    }

    #[test]
    fn every_code_in_order() {
        let mut w = world();
        let good = w.run("disk-usage", &[], 0);
        let mut bad_shape = good.clone();
        bad_shape.request_id = "../x".into();
        bad_shape.sign(&w.key);
        let mut tampered = good.clone();
        tampered.action = "memory".into();
        let mut garbage_sig = good.clone();
        garbage_sig.sig = "!!".into();
        let mut other_device = good.clone();
        other_device.device_id = "d-ffffffffffffffffffff".into();
        other_device.sign(&w.key);
        let (stranger, _) = KeyPair::generate();
        let untrusted = Run::signed(&stranger, "r", DEVICE, "disk-usage", BTreeMap::new(), w.now);
        let mut not_a_key = good.clone();
        not_a_key.operator = "ssh-ed25519 AAAA".into();
        let mut bad_time = good.clone();
        bad_time.issued_at = "yesterday".into();
        bad_time.sign(&w.key);
        let cases: Vec<(&str, Run, Option<DenyCode>, bool)> = vec![
            ("good", good.clone(), None, true),
            ("shape", bad_shape, Some(DenyCode::BadFrame), false),
            ("untrusted", untrusted, Some(DenyCode::UntrustedOperator), false),
            ("not a key", not_a_key, Some(DenyCode::UntrustedOperator), false),
            ("tampered", tampered, Some(DenyCode::BadSignature), false),
            ("garbage sig", garbage_sig, Some(DenyCode::BadSignature), false),
            ("other device", other_device, Some(DenyCode::BadSignature), false),
            ("bad time", bad_time, Some(DenyCode::StaleCommand), false),
            ("stale", w.run("disk-usage", &[], 121), Some(DenyCode::StaleCommand), false),
            ("future", w.run("disk-usage", &[], -121), Some(DenyCode::StaleCommand), false),
            ("unknown", w.run("format-disk", &[], 0), Some(DenyCode::UnknownAction), true),
            ("bad param", w.run("service-status", &[("unit", "; rm -rf ~")], 0), Some(DenyCode::InvalidParams), true),
            ("extra param", w.run("disk-usage", &[("x", "1")], 0), Some(DenyCode::InvalidParams), true),
            ("tier", w.run("agent", &[("prompt", "hi")], 0), Some(DenyCode::TierInsufficient), true),
        ];
        for (name, run, want, remember) in &cases {
            let d = w.decide(run);
            assert_eq!(code(&d), *want, "{name}: {d:?}");
            assert_eq!(d.remember_nonce, *remember, "{name}");
        }
        w.replay.insert(&good.nonce, &good.issued_at, w.now);
        assert_eq!(code(&w.decide(&good)), Some(DenyCode::Replay));
        w.consent = Consent::Off(Off::NoGrant);
        assert_eq!(code(&w.decide(&w.run("disk-usage", &[], 0))), Some(DenyCode::NoConsent));
    }

    #[test]
    fn freshness_boundaries() {
        let w = world();
        for (offset, ok) in
            [(0, true), (119, true), (120, true), (121, false), (-119, true), (-120, true), (-121, false)]
        {
            let d = w.decide(&w.run("disk-usage", &[], offset));
            assert_eq!(code(&d).is_none(), ok, "offset {offset}: {d:?}");
        }
    }

    #[test]
    fn a_command_older_than_the_daemon_is_stale() {
        let w = world();
        let run = w.run("disk-usage", &[], 5);
        let snap = |not_before| {
            decide(
                &run,
                Snapshot {
                    device_id: DEVICE,
                    now: w.now,
                    consent: &w.consent,
                    catalogue: &w.catalogue,
                    trusted: &w.trusted,
                    replay: &w.replay,
                    not_before,
                    used: w.used,
                },
            )
        };
        assert_eq!(code(&snap(w.now - TimeDelta::seconds(6))), None);
        assert_eq!(code(&snap(w.now - TimeDelta::seconds(5))), None, "issued as the daemon started");
        assert_eq!(code(&snap(w.now - TimeDelta::seconds(4))), Some(DenyCode::StaleCommand));
    }

    #[test]
    fn tier_and_expiry_boundaries() {
        let mut w = world();
        // restart-user-service is tier 2.
        let fix = w.run("restart-user-service", &[("unit", "pipewire.service")], 0);
        let fix = || fix.clone();
        w.consent = grant(2, 600, w.now);
        assert_eq!(code(&w.decide(&fix())), None, "tier equal");
        w.consent = grant(1, 600, w.now);
        assert_eq!(code(&w.decide(&fix())), Some(DenyCode::TierInsufficient), "one below");
        w.consent = grant(4, 600, w.now);
        assert_eq!(code(&w.decide(&fix())), None, "above");
        w.consent = grant(2, 1, w.now);
        assert_eq!(code(&w.decide(&fix())), None, "one second left");
        w.consent = grant(2, 0, w.now);
        assert_eq!(code(&w.decide(&fix())), Some(DenyCode::NoConsent), "expiring this second");
        w.consent = grant(2, -1, w.now);
        assert_eq!(code(&w.decide(&fix())), Some(DenyCode::NoConsent), "expired");
    }

    #[test]
    fn room_is_bounded_in_tasks_and_one_agent_at_a_time() {
        assert_eq!(room_for(false, 7, 8, None), Ok(()));
        assert_eq!(room_for(false, 7, 8, Some("t-1")), Ok(()), "an action beside the agent");
        assert_eq!(room_for(true, 7, 8, None), Ok(()));
        let full = room_for(false, 8, 8, None).unwrap_err();
        assert_eq!(full.code, DenyCode::Busy);
        assert!(full.message.contains("8 tasks are running"), "{}", full.message);
        let second = room_for(true, 1, 8, Some("t-1")).unwrap_err();
        assert_eq!(second.code, DenyCode::Busy);
        assert!(second.message.contains("already on a task (t-1)"), "{}", second.message);
    }

    #[test]
    fn the_replay_cache_is_bounded_and_forgets_old_nonces() {
        let mut w = world();
        let now = w.now;
        for i in 0..8 {
            w.replay.insert(&format!("nonce-old-{i:08}"), &crate::time::rfc3339(now), now);
        }
        assert!(w.replay.is_full());
        assert_eq!(code(&w.decide(&w.run("disk-usage", &[], 0))), Some(DenyCode::Busy));
        // A prune at the same moment keeps them all: they could still be fresh.
        w.replay.prune(now);
        assert!(w.replay.is_full());
        // Five minutes on, the old nonces are dropped at the next insert.
        let later = now + TimeDelta::seconds(REPLAY_KEEP_S + 60);
        w.replay.insert("nonce-new-00000000", &crate::time::rfc3339(later), later);
        assert_eq!(w.replay.len(), 1);
        assert!(w.replay.contains("nonce-new-00000000"));
        // A forgotten nonce's command is stale even with the clock set back to it.
        let newest_dropped = crate::time::parse_rfc3339(&crate::time::rfc3339(now)).unwrap();
        assert!(w.replay.forgot(newest_dropped));
        assert!(!w.replay.forgot(newest_dropped + TimeDelta::milliseconds(1)));
        assert_eq!(code(&w.decide(&w.run("disk-usage", &[], 1))), Some(DenyCode::StaleCommand));
        assert_eq!(code(&w.decide(&w.run("disk-usage", &[], -1))), None, "issued after it");
    }

    fn scoped(w: &mut World, operators: Option<&[&str]>, only: Option<&[&str]>, max_actions: Option<u32>) {
        let Consent::Live(g) = &mut w.consent else { panic!("live") };
        let names = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        g.operators = operators.map(names);
        g.only = only.map(names);
        g.max_actions = max_actions;
    }

    #[test]
    fn the_scope_is_checked_after_the_tier_operator_then_action_then_budget() {
        let mut w = world();
        let memory = w.run("memory", &[], 0);
        let fix = w.run("restart-user-service", &[("unit", "pipewire.service")], 0);
        // Unscoped: any trusted operator, any action of the tier.
        assert_eq!(code(&w.decide(&memory)), None);
        scoped(&mut w, Some(&["bob"]), None, None);
        let d = w.decide(&memory);
        assert_eq!(code(&d), Some(DenyCode::OperatorNotGranted));
        let Verdict::Deny(denial) = &d.verdict else { unreachable!() };
        assert!(denial.message.contains("for bob only, not for `alice`"), "{}", denial.message);
        assert!(d.remember_nonce, "a scope denial still uses up the nonce");
        scoped(&mut w, Some(&["bob", "alice"]), None, None);
        assert_eq!(code(&w.decide(&memory)), None);
        scoped(&mut w, None, Some(&["disk-usage"]), None);
        let d = w.decide(&memory);
        assert_eq!(code(&d), Some(DenyCode::ActionNotGranted));
        let Verdict::Deny(denial) = &d.verdict else { unreachable!() };
        assert!(denial.message.contains("only disk-usage, not `memory`"), "{}", denial.message);
        scoped(&mut w, None, Some(&["disk-usage", "memory"]), None);
        assert_eq!(code(&w.decide(&memory)), None);
        // Earlier checks win: tier before operator before action before budget.
        w.consent = grant(1, 600, w.now);
        scoped(&mut w, Some(&["bob"]), Some(&["disk-usage"]), Some(1));
        w.used = Some(1);
        assert_eq!(code(&w.decide(&fix)), Some(DenyCode::TierInsufficient));
        assert_eq!(code(&w.decide(&memory)), Some(DenyCode::OperatorNotGranted));
        scoped(&mut w, Some(&["alice"]), Some(&["disk-usage"]), Some(1));
        assert_eq!(code(&w.decide(&memory)), Some(DenyCode::ActionNotGranted));
        scoped(&mut w, Some(&["alice"]), Some(&["memory"]), Some(1));
        assert_eq!(code(&w.decide(&memory)), Some(DenyCode::BudgetExhausted));
        // And the budget on its own, at its boundary and when it cannot be counted.
        scoped(&mut w, None, None, Some(3));
        for (used, want) in [
            (Some(0), None),
            (Some(2), None),
            (Some(3), Some(DenyCode::BudgetExhausted)),
            (Some(7), Some(DenyCode::BudgetExhausted)),
            (None, Some(DenyCode::BudgetExhausted)),
        ] {
            w.used = used;
            assert_eq!(code(&w.decide(&memory)), want, "{used:?} of 3");
        }
        // Without a budget, an uncountable log does not matter.
        scoped(&mut w, None, None, None);
        assert_eq!(code(&w.decide(&memory)), None);
    }

    #[test]
    fn the_budget_check_names_the_numbers() {
        let Consent::Live(mut g) = grant(2, 600, Utc::now()) else { unreachable!() };
        assert_eq!(budget_left(&g, None), Ok(()), "no budget");
        g.max_actions = Some(2);
        assert_eq!(budget_left(&g, Some(1)), Ok(()));
        let spent = budget_left(&g, Some(2)).unwrap_err();
        assert_eq!(spent.code, DenyCode::BudgetExhausted);
        assert!(spent.message.contains("allows 2 action(s) and 2 have started"), "{}", spent.message);
        assert!(budget_left(&g, None).unwrap_err().message.contains("cannot be counted"));
    }
}
