//! The owner's console's requests (`daemon::console_request::decide`, the
//! code the console server decides with): arbitrary and mutated requests
//! never panic, what is admitted is sound, and a request that is not
//! exactly right is refused: a mutated `Origin`, CSRF token, session
//! cookie or login token never passes.

use std::time::Instant;

use hyper::{HeaderMap, Method, StatusCode, Uri};
use proptest::prelude::*;
use support::daemon::console_request::{Admitted, Change, Get, Logins, Post, Refused, check_head, decide};

use super::{edits, head, mutate};

const PORT: u16 = 41_235;

/// A session table with one session and one login token outstanding, as
/// the daemon holds them: (table, sid, csrf, token).
fn table(now: Instant) -> (Logins, String, String, String) {
    let mut logins = Logins::default();
    let first = logins.issue(now);
    let sid = logins.redeem(first.expose(), now).unwrap();
    let csrf = logins.session(sid.expose(), now).unwrap();
    let token = logins.issue(now);
    (logins, sid.expose().to_string(), csrf.expose().to_string(), token.expose().to_string())
}

/// Every route, as the page sends it: (method, target, is a change, body).
const ROUTES: [(&str, &str, bool, &str); 16] = [
    ("GET", "/console", false, ""),
    ("GET", "/console/", false, ""),
    ("GET", "/console/app.js", false, ""),
    ("GET", "/console/app.css", false, ""),
    ("GET", "/console/login?token=$TOKEN", false, ""),
    ("GET", "/console/api/session", false, ""),
    ("GET", "/console/api/status", false, ""),
    ("GET", "/console/api/events", false, ""),
    ("GET", "/console/api/audit?before=120&limit=50&event=action.started", false, ""),
    ("GET", "/console/api/summary?grant=g-1", false, ""),
    ("POST", "/console/api/tasks/t-0123456789abcdef/stop", true, "{}"),
    ("POST", "/console/api/revoke", true, "{}"),
    ("POST", "/console/api/allow", true, r#"{"tier":2,"minutes":30,"reason":"printer"}"#),
    ("POST", "/console/api/allow", true, r#"{"tier":4,"minutes":480,"confirm":true}"#),
    ("POST", "/console/api/allow", true, r#"{"tier":3,"minutes":10}"#),
    ("POST", "/console/api/allow", true, r#"{"tier":1,"minutes":481}"#),
];

/// The headers the page's own request carries (the browser's, and for a
/// change the page's `Origin`, CSRF token and JSON type).
fn exact_headers(sid: &str, csrf: &str, change: bool) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![
        ("host".to_string(), format!("127.0.0.1:{PORT}").into_bytes()),
        ("cookie".to_string(), format!("support_console={sid}").into_bytes()),
        ("sec-fetch-site".to_string(), b"same-origin".to_vec()),
    ];
    if change {
        h.push(("origin".into(), format!("http://127.0.0.1:{PORT}").into_bytes()));
        h.push(("x-csrf-token".into(), csrf.as_bytes().to_vec()));
        h.push(("content-type".into(), b"application/json".to_vec()));
    }
    h
}

/// What may hold of anything `decide` admits, with the table's secrets.
fn admitted_is_sound(
    method: &Method,
    uri: &Uri,
    map: &HeaderMap,
    body: &[u8],
    decided: &(Admitted, Option<Post>),
    secrets: (&str, &str, &str),
) -> Result<(), TestCaseError> {
    let (sid, csrf, token) = secrets;
    let hosts: Vec<_> = map.get_all(hyper::header::HOST).iter().collect();
    prop_assert_eq!(hosts.len(), 1);
    let loopback = [format!("127.0.0.1:{PORT}"), format!("localhost:{PORT}"), format!("[::1]:{PORT}")];
    prop_assert!(loopback.iter().any(|h| h.as_bytes() == hosts[0].as_bytes()));
    let pair = format!("support_console={sid}");
    let has_cookie = map
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(';').any(|p| p.trim() == pair));
    match &decided.0 {
        Admitted::Login { .. } => {
            let want = format!("token={token}");
            prop_assert!(uri.query().is_some_and(|q| q.split('&').any(|kv| kv == want)));
        }
        Admitted::Read { sid: s, csrf: c, .. } => {
            prop_assert_eq!(s, sid);
            prop_assert!(c.eq_bytes(csrf.as_bytes()));
            prop_assert!(has_cookie);
            let site = map.get("sec-fetch-site").map(|v| v.as_bytes());
            prop_assert!(site.is_none_or(|s| s == b"same-origin" || s == b"none"));
        }
        Admitted::Change { sid: s, .. } => {
            prop_assert_eq!(s, sid);
            prop_assert!(has_cookie);
            prop_assert_eq!(method, &Method::POST);
            let origin = format!("http://127.0.0.1:{PORT}");
            prop_assert_eq!(map.get(hyper::header::ORIGIN).map(|v| v.as_bytes()), Some(origin.as_bytes()));
            prop_assert_eq!(map.get("x-csrf-token").map(|v| v.as_bytes()), Some(csrf.as_bytes()));
            let kind = map.get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            prop_assert!(kind.trim_start().to_ascii_lowercase().starts_with("application/json"), "{}", kind);
            if let Some(Post::Allow(allow)) = &decided.1 {
                let sent: serde_json::Value = serde_json::from_slice(body).unwrap();
                prop_assert_eq!(sent["tier"].as_u64(), Some(u64::from(allow.tier.get())));
                prop_assert!((1..=480).contains(&allow.minutes));
                if allow.tier.needs_confirmation() {
                    prop_assert_eq!(&sent["confirm"], &serde_json::Value::Bool(true));
                }
            }
            prop_assert!(decided.1.is_some(), "a change has its body decided");
        }
        Admitted::Root | Admitted::Page { .. } | Admitted::Asset(_) => prop_assert_eq!(method, &Method::GET),
    }
    Ok(())
}

type Decision = Result<(Admitted, Option<Post>), Refused>;
type Parts = (Method, Uri, HeaderMap);

/// `decide` on the parts, `$TOKEN` in the target standing for the token,
/// `$SID` and `$CSRF` in the headers for the session's secrets.
fn run(
    method: &str,
    target: &str,
    headers: &[(String, Vec<u8>)],
    body: &[u8],
) -> Option<(Decision, Parts, (String, String, String))> {
    let now = Instant::now();
    let (mut logins, sid, csrf, token) = table(now);
    let target = target.replace("$TOKEN", &token);
    let headers: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| {
            (n.clone(), String::from_utf8_lossy(v).replace("$SID", &sid).replace("$CSRF", &csrf).into_bytes())
        })
        .collect();
    let (m, u, h) = head(method, &target, &headers)?;
    let decided = decide(&m, &u, &h, body, PORT, &mut logins, now);
    Some((decided, (m, u, h), (sid, csrf, token)))
}

#[test]
fn the_page_s_own_requests_are_admitted_and_each_check_refuses_in_order() {
    let now = Instant::now();
    let (mut logins, sid, csrf, token) = table(now);
    let check = |logins: &mut Logins, method: &str, target: &str, headers: &[(String, Vec<u8>)]| {
        let (m, u, h) = head(method, target, headers).unwrap();
        check_head(&m, &u, &h, PORT, logins, now)
    };
    let read = exact_headers(&sid, &csrf, false);
    let change = exact_headers(&sid, &csrf, true);
    assert!(matches!(
        check(&mut logins, "GET", "/console/api/audit?limit=7", &read),
        Ok(Admitted::Read { get: Get::Audit(q), .. }) if q.limit == 7
    ));
    assert!(matches!(
        check(&mut logins, "POST", "/console/api/tasks/t-1/stop", &change),
        Ok(Admitted::Change { change: Change::Stop(id), .. }) if id == "t-1"
    ));
    let without = |h: &[(String, Vec<u8>)], name: &str| -> Vec<(String, Vec<u8>)> {
        h.iter().filter(|(n, _)| n != name).cloned().collect()
    };
    let with = |h: &[(String, Vec<u8>)], name: &str, value: &str| -> Vec<(String, Vec<u8>)> {
        let mut h = without(h, name);
        h.push((name.into(), value.as_bytes().to_vec()));
        h
    };
    let revoke = |logins: &mut Logins, h: &[(String, Vec<u8>)]| check(logins, "POST", "/console/api/revoke", h);
    let rebound = with(&change, "host", "evil.example:41235");
    assert!(matches!(revoke(&mut logins, &rebound), Err(Refused::Host(StatusCode::FORBIDDEN, _))));
    assert_eq!(check(&mut logins, "GET", "/console/nothing", &read).unwrap_err(), Refused::NotFound);
    assert_eq!(check(&mut logins, "GET", "/console/api/revoke", &read).unwrap_err(), Refused::Method(Method::POST));
    let no_cookie = without(&read, "cookie");
    let refused = check(&mut logins, "GET", "/console/api/status", &no_cookie).unwrap_err();
    assert_eq!((refused.status(), refused.audited()), (StatusCode::UNAUTHORIZED, true));
    let cross = with(&read, "sec-fetch-site", "cross-site");
    assert_eq!(check(&mut logins, "GET", "/console/api/status", &cross).unwrap_err(), Refused::CrossSite);
    let no_cookie = without(&change, "cookie");
    assert_eq!(revoke(&mut logins, &no_cookie).unwrap_err(), Refused::NoSession { change: true });
    let other_port = with(&change, "origin", "http://127.0.0.1:8080");
    assert_eq!(revoke(&mut logins, &other_port).unwrap_err(), Refused::Origin);
    assert_eq!(revoke(&mut logins, &without(&change, "origin")).unwrap_err(), Refused::Origin);
    assert_eq!(revoke(&mut logins, &with(&change, "x-csrf-token", "x")).unwrap_err(), Refused::Csrf);
    let form = with(&change, "content-type", "text/plain");
    assert_eq!(revoke(&mut logins, &form).unwrap_err(), Refused::ContentType);
    // A cookie another loopback page planted does not shadow the owner's.
    let planted = with(&change, "cookie", &format!("support_console=planted; support_console={sid}"));
    assert!(revoke(&mut logins, &planted).is_ok());
    // A login token is used once.
    let host = with(&[], "host", &format!("localhost:{PORT}"));
    let login = format!("/console/login?token={token}");
    assert!(matches!(check(&mut logins, "GET", &login, &host), Ok(Admitted::Login { sessions: 2, .. })));
    assert_eq!(check(&mut logins, "GET", &login, &host).unwrap_err(), Refused::LoginUsed);
    // Bodies: an allow within the rules, and each rule's refusal (not audited).
    let mut allow = |body: &str| decide_allow(&mut logins, &change, body, now);
    assert!(matches!(allow(r#"{"tier":4,"minutes":480,"confirm":true}"#), Ok(Post::Allow(a)) if a.tier.get() == 4));
    for bad in [r#"{"tier":3,"minutes":10}"#, r#"{"tier":5,"minutes":10}"#, r#"{"tier":1,"minutes":0}"#, "{}", "[]"] {
        let refused = allow(bad).unwrap_err();
        assert!(matches!(refused, Refused::Body(_)) && !refused.audited(), "{bad}: {refused:?}");
    }
    let big = format!("{{\"tier\":1,\"minutes\":1,\"reason\":\"{}\"}}", "x".repeat(70_000));
    assert_eq!(allow(&big).unwrap_err(), Refused::TooLarge);
}

fn decide_allow(logins: &mut Logins, headers: &[(String, Vec<u8>)], body: &str, now: Instant) -> Result<Post, Refused> {
    let (m, u, h) = head("POST", "/console/api/allow", headers).unwrap();
    decide(&m, &u, &h, body.as_bytes(), PORT, logins, now).map(|(_, post)| post.expect("a change's body"))
}

/// Which of a change's secret-bearing values a case mutates.
#[derive(Clone, Copy, Debug)]
enum Mutated {
    Origin,
    Csrf,
    Cookie,
    Token,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The page's requests with any headers dropped, replaced, mutated or
    /// added, and mutated bodies: no panic, and what passes is sound.
    #[test]
    fn console_requests(
        pick in any::<prop::sample::Index>(),
        method in prop_oneof![Just(None), Just(Some("GET".to_string())), Just(Some("POST".to_string())), "[A-Z]{1,7}".prop_map(Some)],
        target in prop_oneof![4 => Just(None), 1 => "/console(/[a-z0-9.?=&%$_-]{0,16}){0,4}".prop_map(Some), 1 => "\\PC{0,40}".prop_map(Some)],
        changes in prop::collection::vec((any::<prop::sample::Index>(), 0..4u8, edits(), prop::collection::vec(any::<u8>(), 0..48)), 0..4),
        extra in prop::collection::vec(
            (prop_oneof![Just("host".to_string()), Just("cookie".to_string()), Just("origin".to_string()),
                Just("x-csrf-token".to_string()), Just("content-type".to_string()), Just("sec-fetch-site".to_string()),
                "[a-z-]{1,12}"],
             prop::collection::vec(any::<u8>(), 0..48)),
            0..3),
        body_edits in prop::option::of(edits()),
    ) {
        let (m, t, change, body) = ROUTES[pick.index(ROUTES.len())];
        let mut headers = exact_headers("$SID", "$CSRF", change);
        for (which, how, e, bytes) in &changes {
            if headers.is_empty() { break; }
            let i = which.index(headers.len());
            match how {
                0 => { headers.remove(i); }
                1 => headers[i].1 = bytes.clone(),
                _ => headers[i].1 = mutate(headers[i].1.clone(), e),
            }
        }
        headers.extend(extra);
        let body = match &body_edits { Some(e) => mutate(body.as_bytes().to_vec(), e), None => body.as_bytes().to_vec() };
        let method = method.unwrap_or_else(|| m.to_string());
        let target = target.unwrap_or_else(|| t.to_string());
        if let Some((Ok(decided), (m, u, h), (sid, csrf, token))) = run(&method, &target, &headers, &body) {
            admitted_is_sound(&m, &u, &h, &body, &decided, (&sid, &csrf, &token))?;
        }
    }

    /// The page's own change (or login) with one secret-bearing value
    /// mutated: always refused, by the check of that value.
    #[test]
    fn a_mutated_origin_csrf_token_cookie_or_login_token_never_passes(
        pick in 10..15usize,
        secret in prop_oneof![Just(Mutated::Origin), Just(Mutated::Csrf), Just(Mutated::Cookie), Just(Mutated::Token)],
        e in edits(),
    ) {
        let now = Instant::now();
        let (mut logins, sid, csrf, token) = table(now);
        let (_, target, _, body) = ROUTES[pick];
        let mut headers = exact_headers(&sid, &csrf, true);
        let (method, target, want) = match secret {
            Mutated::Origin => {
                let origin = &mut headers[3].1;
                *origin = mutate(origin.clone(), &e);
                ("POST", target.to_string(), Refused::Origin)
            }
            Mutated::Csrf => {
                let token = &mut headers[4].1;
                *token = mutate(token.clone(), &e);
                ("POST", target.to_string(), Refused::Csrf)
            }
            Mutated::Cookie => {
                let forged = String::from_utf8_lossy(&mutate(sid.clone().into_bytes(), &e)).into_owned();
                // Whitespace around a cookie's value, or what follows a `;`, is not part of it (RFC 6265 §5.2).
                prop_assume!(forged.split(';').next().unwrap_or_default().trim() != sid);
                headers[1].1 = format!("support_console={forged}").into_bytes();
                ("POST", target.to_string(), Refused::NoSession { change: true })
            }
            Mutated::Token => {
                let forged = String::from_utf8_lossy(&mutate(token.clone().into_bytes(), &e)).into_owned();
                prop_assume!(forged != token && !forged.contains(['&', '#']));
                ("GET", format!("/console/login?token={forged}"), Refused::LoginUsed)
            }
        };
        let exact = exact_headers(&sid, &csrf, true);
        prop_assume!(matches!(secret, Mutated::Token) || headers != exact);
        let Some((m, u, h)) = head(method, &target, &headers) else { return Ok(()) };
        let decided = decide(&m, &u, &h, body.as_bytes(), PORT, &mut logins, now);
        prop_assert_eq!(decided.err(), Some(want));
    }

    /// Arbitrary heads and bodies: no panic.
    #[test]
    fn arbitrary_console_requests(
        method in "[A-Z]{1,8}",
        target in "\\PC{0,60}",
        headers in prop::collection::vec(("[a-z-]{1,16}", prop::collection::vec(any::<u8>(), 0..64)), 0..6),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let _ = run(&method, &target, &headers, &body);
    }
}
