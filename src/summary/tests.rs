use super::*;
use crate::audit::AuditLog;

/// One step of a log written for a test.
enum Step {
    Granted(&'static str, u8, Option<&'static str>),
    Started(&'static str, &'static str, &'static str, &'static str),
    Finished(&'static str, &'static str, &'static str, Option<i64>),
    Stopped(&'static str, &'static str, &'static str),
    Denied(&'static str, &'static str),
    DeniedAggregated(u64),
    Revoked(&'static str),
    Expired(&'static str),
    DaemonStarted,
}
use Step::*;

fn record(step: &Step) -> Record {
    let task = |event, grant: &str, task: &str| {
        let mut r = Record::new(event);
        r.grant_id = Some(grant.into());
        r.task_id = Some(task.into());
        r.request_id = Some(format!("req-{task}"));
        r.operator = Some("alice".into());
        r.action = Some("memory".into());
        r
    };
    match *step {
        Granted(g, tier, scope) => {
            let mut r = Record::new(Event::ConsentGranted);
            r.grant_id = Some(g.into());
            r.tier = Some(tier);
            r.reason = Some("printer".into());
            r.detail = Some(match scope {
                Some(s) => format!("expires_at 2026-12-01T13:00:00Z; {s}"),
                None => "expires_at 2026-12-01T13:00:00Z".into(),
            });
            r
        }
        Started(g, t, op, action) => {
            let mut r = task(Event::ActionStarted, g, t);
            r.operator = Some(op.into());
            r.action = Some(action.into());
            r.params = Some([("unit".to_string(), "cups.service".to_string())].into());
            r
        }
        Finished(g, t, status, code) => {
            let mut r = task(Event::ActionFinished, g, t);
            r.status = Some(status.into());
            r.exit_code = code;
            r.duration_ms = Some(1500);
            r.output_bytes = Some(2048);
            r
        }
        Stopped(g, t, by) => {
            let mut r = task(Event::TaskStopped, g, t);
            r.by = Some(by.into());
            r
        }
        Denied(op, code) => {
            let mut r = Record::new(Event::ActionDenied);
            r.operator = Some(op.into());
            r.action = Some("shell".into());
            r.code = Some(code.into());
            r.reason = Some("not under this grant".into());
            r
        }
        DeniedAggregated(n) => {
            let mut r = Record::new(Event::ActionDeniedAggregated);
            r.code = Some("UNTRUSTED_OPERATOR".into());
            r.detail = Some(format!("{n} denials in 60 s"));
            r
        }
        Revoked(g) => {
            let mut r = Record::new(Event::ConsentRevoked);
            r.grant_id = Some(g.into());
            r
        }
        Expired(g) => {
            let mut r = Record::new(Event::ConsentExpired);
            r.grant_id = Some(g.into());
            r
        }
        DaemonStarted => Record::new(Event::DaemonStarted),
    }
}

fn write_log(steps: &[Step]) -> (tempfile::TempDir, Paths) {
    let dir = tempfile::tempdir().unwrap();
    let paths = Paths::under(dir.path().join("h"));
    let mut log = AuditLog::open(&paths).unwrap();
    for step in steps {
        log.append(record(step)).unwrap();
    }
    (dir, paths)
}

/// Grant g-1: one action ok, one denial, one stopped by the revoke after
/// it; then g-2, which expires; then g-3, still in force, replaced by nothing.
fn three_grants() -> Vec<Step> {
    vec![
        DaemonStarted,                              // 1
        Granted("g-1", 2, Some("operators alice")), // 2
        Started("g-1", "t-1", "alice", "memory"),   // 3
        Finished("g-1", "t-1", "ok", Some(0)),      // 4
        Denied("bob", "UNTRUSTED_OPERATOR"),        // 5
        Started("g-1", "t-2", "alice", "restart"),  // 6
        Revoked("g-1"),                             // 7
        Stopped("g-1", "t-2", "revoke"),            // 8
        Finished("g-1", "t-2", "cancelled", None),  // 9
        Granted("g-2", 1, None),                    // 10
        DeniedAggregated(7),                        // 11
        Expired("g-2"),                             // 12
        Granted("g-3", 3, None),                    // 13
        Started("g-3", "t-3", "carol", "agent"),    // 14
        Granted("g-4", 1, None),                    // 15: replaces g-3
        Finished("g-3", "t-3", "failed", Some(2)),  // 16: g-3's task ends after
        DaemonStarted,                              // 17
    ]
}

struct Case {
    grant: Option<&'static str>,
    id: &'static str,
    ended: Ending,
    by: Option<&'static str>,
    operators: &'static [&'static str],
    statuses: &'static [Option<&'static str>],
    denied: u64,
    stops: &'static [&'static str],
    span: (u64, u64),
}

#[test]
fn each_grant_s_span_is_summarised_from_a_real_log() {
    let (_dir, paths) = write_log(&three_grants());
    let cases = [
        Case {
            grant: Some("g-1"),
            id: "g-1",
            ended: Ending::Revoked,
            by: Some("owner"),
            operators: &["alice"],
            statuses: &[Some("ok"), Some("cancelled")],
            denied: 1,
            stops: &["revoke"],
            span: (2, 9),
        },
        Case {
            grant: Some("g-2"),
            id: "g-2",
            ended: Ending::Expired,
            by: Some("expiry"),
            operators: &[],
            statuses: &[],
            denied: 7,
            stops: &[],
            span: (10, 12),
        },
        Case {
            grant: Some("g-3"),
            id: "g-3",
            ended: Ending::Replaced,
            by: Some("owner"),
            operators: &["carol"],
            statuses: &[Some("failed")],
            denied: 0,
            stops: &[],
            span: (13, 16),
        },
        Case {
            grant: None,
            id: "g-4",
            ended: Ending::NotEnded,
            by: None,
            operators: &[],
            statuses: &[],
            denied: 0,
            stops: &[],
            span: (15, 17),
        },
    ];
    for c in cases {
        let s = load(&paths, c.grant).unwrap();
        let what = format!("{:?}: {s:#?}", c.grant);
        assert_eq!(s.grant_id, c.id, "{what}");
        assert_eq!(s.ended, c.ended, "{what}");
        assert_eq!(s.by.as_deref(), c.by, "{what}");
        assert_eq!(s.operators, c.operators, "{what}");
        assert_eq!(s.actions.iter().map(|a| a.status.as_deref()).collect::<Vec<_>>(), c.statuses, "{what}");
        assert_eq!(s.denials.iter().map(|d| d.count).sum::<u64>(), c.denied, "{what}");
        assert_eq!(s.stops.iter().map(|s| s.by.as_str()).collect::<Vec<_>>(), c.stops, "{what}");
        assert_eq!((s.chain.first_seq, s.chain.last_seq), c.span, "{what}");
        assert!(s.chain.ok && s.chain.macs_checked && s.chain.error.is_none(), "{what}");
        assert_eq!(s.ends_at.as_deref(), Some("2026-12-01T13:00:00Z"), "{what}");
    }
}

#[test]
fn an_action_carries_its_parameters_and_end_and_the_text_says_it() {
    let (_dir, paths) = write_log(&three_grants());
    let s = load(&paths, Some("g-1")).unwrap();
    assert_eq!(s.scope.as_deref(), Some("operators alice"));
    assert_eq!(s.reason.as_deref(), Some("printer"));
    assert_eq!(s.tier, Some(2));
    let a = &s.actions[0];
    assert_eq!((a.task_id.as_str(), a.request_id.as_deref()), ("t-1", Some("req-t-1")));
    assert_eq!(a.params.get("unit").map(String::as_str), Some("cups.service"));
    assert_eq!((a.exit_code, a.duration_ms, a.output_bytes), (Some(0), Some(1500), Some(2048)));
    assert_eq!(s.actions[1].stopped_by.as_deref(), Some("revoke"));
    assert_eq!(s.denials[0].operator.as_deref(), Some("bob"));
    let text = s.render();
    for want in [
        "Grant g-1: tier 2 (fixes)",
        "Reason: printer",
        "Scope: operators alice",
        "revoked by the owner",
        "Who acted: alice",
        "2 actions:",
        "unit=cups.service",
        "ok (exit 0)",
        "cancelled, stopped by revoke",
        "1s 500ms",
        "2.0 KiB",
        "1 denial:",
        "UNTRUSTED_OPERATOR",
        "1 stop:",
        "seq 2 to 9: verifies.",
    ] {
        assert!(text.contains(want), "`{want}` missing from:\n{text}");
    }
    let gist = s.gist();
    assert!(gist.starts_with("Grant g-1 (tier 2) revoked by the owner at "), "{gist}");
    assert!(gist.contains("2 actions by alice (1 ok), 1 denied, 1 stopped; audit chain verifies."), "{gist}");
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["ended"], "revoked");
    assert_eq!(json["chain"]["ok"], true);
    assert_eq!(json["actions"][0]["params"]["unit"], "cups.service");
}

#[test]
fn unknown_grants_and_an_empty_log_are_errors() {
    let (_dir, paths) = write_log(&three_grants());
    assert!(matches!(load(&paths, Some("g-9")), Err(SummaryError::UnknownGrant(id)) if id == "g-9"));
    let (_dir, empty) = write_log(&[DaemonStarted]);
    assert!(matches!(load(&empty, None), Err(SummaryError::NoGrant)));
    let (_dir, none) = write_log(&[]);
    assert!(matches!(load(&none, None), Err(SummaryError::NoGrant)));
}

/// Rewrites the `n`th line (1-based) of the log with `f`.
fn alter_line(paths: &Paths, n: usize, f: impl Fn(&str) -> String) {
    let text = std::fs::read_to_string(paths.audit()).unwrap();
    let lines: Vec<String> = text.lines().enumerate().map(|(i, l)| if i + 1 == n { f(l) } else { l.into() }).collect();
    std::fs::write(paths.audit(), lines.join("\n") + "\n").unwrap();
}

#[test]
fn a_break_in_the_span_or_in_its_link_to_the_record_before_fails_only_that_span() {
    // (line altered, how, grants whose span fails, grants whose span holds)
    type Alter = fn(&str) -> String;
    let cases: [(usize, Alter, &[&str], &[&str]); 4] = [
        // An edited parameter inside g-1's span.
        (3, |l| l.replace("cups.service", "evil.service"), &["g-1"], &["g-2", "g-3"]),
        // An edited task end written after g-1's revoke still belongs to g-1.
        (9, |l| l.replace("cancelled", "ok"), &["g-1"], &["g-2"]),
        // The mac of the record just before g-2's grant: g-2's first record no longer links.
        (9, |l| format!("{}{}\"}}", &l[..l.len() - 66], "0".repeat(64)), &["g-1", "g-2"], &["g-3"]),
        // The record before g-1's span (not part of it) altered but still linked: g-1 holds.
        (1, |l| l.replace("daemon.started", "daemon.stopped"), &[], &["g-1", "g-2", "g-3"]),
    ];
    for (line, alter, fail, hold) in cases {
        let (_dir, paths) = write_log(&three_grants());
        alter_line(&paths, line, alter);
        for g in fail {
            let s = load(&paths, Some(g)).unwrap();
            assert!(!s.chain.ok && s.chain.error.is_some(), "line {line}, {g}: {:?}", s.chain);
            assert!(s.render().contains("DOES NOT VERIFY"), "line {line}, {g}");
            assert!(s.gist().ends_with("AUDIT CHAIN DOES NOT VERIFY."), "line {line}, {g}");
        }
        for g in hold {
            let s = load(&paths, Some(g)).unwrap();
            assert!(s.chain.ok, "line {line}, {g}: {:?}", s.chain);
        }
    }
}

#[test]
fn records_alone_are_checked_for_links_and_need_the_record_before_the_span() {
    let (_dir, paths) = write_log(&three_grants());
    let all: Vec<Record> = audit::list(&paths, 0).unwrap().records.into_iter().map(|l| l.record.unwrap()).collect();
    let s = summarize(&all, Some("g-2")).unwrap();
    assert!(s.chain.ok && !s.chain.macs_checked, "{:?}", s.chain);
    assert!(s.render().contains("links only"));
    // From g-2's grant on, the record it links to is missing.
    let cut = summarize(&all[9..], Some("g-2")).unwrap();
    assert!(!cut.chain.ok, "{:?}", cut.chain);
    assert!(cut.chain.error.as_deref().unwrap().contains("seq 10"), "{:?}", cut.chain);
    // A record taken out of the span.
    let mut gap = all.clone();
    gap.remove(10);
    let s = summarize(&gap, Some("g-2")).unwrap();
    assert!(!s.chain.ok && s.chain.error.as_deref().unwrap().contains("seq 12 follows seq 10"), "{:?}", s.chain);
}
