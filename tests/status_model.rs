//! A property test: random sequences of allow, revoke and clock moves
//! agree with a simple model of what `status` must say.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use support::Paths;
use support::consent::{self, Consent, Grant, Off, Tier};

#[derive(Clone, Debug)]
enum Op {
    Allow { tier: u8, secs: u64 },
    Revoke,
    Forward(i64),
    Back(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u8..=4, prop_oneof![1u64..120, 1u64..=28_800]).prop_map(|(tier, secs)| Op::Allow { tier, secs }),
        Just(Op::Revoke),
        (0i64..200).prop_map(Op::Forward),
        (0i64..30_000).prop_map(Op::Forward),
        (0i64..700).prop_map(Op::Back),
    ]
}

/// The model: the last grant (tier, granted_at, expires_at) unless revoked.
#[derive(Debug)]
enum Expect {
    On(u8),
    Expired,
    None,
    Suspect,
}

fn expect(model: &Option<(u8, DateTime<Utc>, DateTime<Utc>)>, now: DateTime<Utc>) -> Expect {
    match model {
        None => Expect::None,
        Some((_, granted, _)) if *granted > now + consent::CLOCK_SKEW => Expect::Suspect,
        // No grant ends more than 8 h after the moment it is read (a clock set back cannot add time).
        Some((_, _, expires)) if *expires > now + TimeDelta::minutes(480) => Expect::Suspect,
        Some((_, _, expires)) if now >= *expires => Expect::Expired,
        Some((tier, _, _)) => Expect::On(*tier),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn status_agrees_with_the_model(ops in prop::collection::vec(op(), 1..16)) {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::under(dir.path().join("home"));
        let mut now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z").unwrap().with_timezone(&Utc);
        let mut model = None;
        for op in ops {
            match op {
                Op::Allow { tier, secs } => {
                    let g = Grant::new(Tier::new(tier).unwrap(), Duration::from_secs(secs), None, now).unwrap();
                    consent::write(&paths, &g).unwrap();
                    model = Some((tier, now, now + TimeDelta::seconds(secs as i64)));
                }
                Op::Revoke => {
                    consent::remove(&paths).unwrap();
                    model = None;
                }
                Op::Forward(s) => now += TimeDelta::seconds(s),
                Op::Back(s) => now -= TimeDelta::seconds(s),
            }
            let got = consent::read(&paths, now);
            match (expect(&model, now), &got) {
                (Expect::On(t), Consent::Live(g)) => {
                    prop_assert_eq!(g.tier.get(), t);
                    prop_assert!(g.remaining(now) <= consent::MAX_GRANT);
                    prop_assert!(g.remaining(now) > Duration::ZERO);
                }
                (Expect::Expired, Consent::Off(Off::Expired(_)))
                | (Expect::None, Consent::Off(Off::NoGrant))
                | (Expect::Suspect, Consent::Off(Off::Malformed(_))) => {}
                (want, _) => prop_assert!(false, "at {now}: model says {want:?}, status says {got:?}"),
            }
        }
    }
}
