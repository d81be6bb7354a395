//! The owner's console over plain HTTP: the real `support daemon` binary
//! and `support console --no-open` for the login and the web's attacks
//! (Origin, CSRF, cookie, Host, CORS, GET). A real task's live transcript
//! and Stop: `console_tasks.rs`.

mod common;

use std::process::Stdio;

use common::console::{Resp, Session, request, split_url};
use common::lab::records;
use common::net::Device;
use common::{Home, Run};
use support::audit::Event;

/// A daemon (the binary) in a fresh home, with no relay.
fn daemon() -> Device {
    let home = Home::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let child = home.cmd(&["daemon"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    Device::spawned(home, child, false)
}

/// `support console --no-open`: its exit and the login URL it printed.
fn login_url(home: &Home) -> String {
    let run = home.run(&["console", "--no-open"]);
    run.code(0);
    run.stdout.lines().map(str::trim).find(|l| l.starts_with("http://")).expect("a URL").to_string()
}

fn console_port(home: &Home) -> u16 {
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(home.file("daemon.json")).unwrap()).unwrap();
    info["console_port"].as_u64().expect("console_port in daemon.json") as u16
}

/// Every answer the console gives carries the CSP and its other headers, and no CORS header.
#[track_caller]
fn secured(resp: &Resp) {
    assert_eq!(resp.header("content-security-policy"), Some("default-src 'self'; frame-ancestors 'none'"), "{resp:?}");
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(resp.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(resp.header("cache-control"), Some("no-store"));
    assert!(!resp.headers.iter().any(|(n, _)| n.starts_with("access-control-")), "a CORS header: {resp:?}");
}

fn events_of(home: &Home, event: Event) -> Vec<support::Record> {
    records(&support::Paths::under(home.path.clone())).into_iter().filter(|r| r.event == event).collect()
}

#[test]
fn a_login_link_works_once_and_sets_a_strict_http_only_cookie() {
    let d = daemon();
    let url = login_url(&d.home);
    let (port, path) = split_url(&url);
    assert_eq!(port, console_port(&d.home));
    let first = request(port, "GET", &path, &[], "");
    secured(&first);
    assert_eq!(first.status, 303);
    assert_eq!(first.header("location"), Some("/console/"), "the token leaves the address bar");
    let cookie = first.header("set-cookie").unwrap();
    let (pair, flags) = cookie.split_once(';').unwrap();
    assert!(pair.starts_with("support_console=") && pair.len() > 40, "{cookie}");
    let flags: Vec<&str> = flags.split(';').map(str::trim).collect();
    assert_eq!(flags, ["HttpOnly", "SameSite=Strict", "Path=/console"]);
    // The same link again, a made-up one, none: 401, no cookie.
    for path in [path.clone(), "/console/login?token=made-up".into(), "/console/login".into()] {
        let again = request(port, "GET", &path, &[], "");
        secured(&again);
        assert_eq!(again.status, 401, "{path}");
        assert!(again.body.contains("used or has expired"), "{}", again.body);
        assert!(again.header("set-cookie").is_none());
    }
    // The cookie opens the page and the API; without it, neither.
    let session = Session::login(&login_url(&d.home));
    let page = session.get("/console/");
    secured(&page);
    assert!(page.body.contains("id=\"banner\""), "{}", page.body);
    assert!(!page.body.contains("<script>") && !page.body.contains("style="), "no inline script or style");
    let signed_out = request(port, "GET", "/console/", &[], "");
    assert_eq!(signed_out.status, 200);
    assert!(signed_out.body.contains("support console") && !signed_out.body.contains("id=\"banner\""));
    for api in ["/console/api/session", "/console/api/status", "/console/api/audit", "/console/api/events"] {
        let r = request(port, "GET", api, &[("Cookie", "support_console=forged")], "");
        secured(&r);
        assert_eq!(r.status, 401, "{api}");
    }
    let vendor = [
        "/console/terminal.js",
        "/console/vendor/xterm.js",
        "/console/vendor/xterm.css",
        "/console/vendor/xterm.LICENSE",
    ];
    for asset in ["/console/app.js", "/console/app.css"].into_iter().chain(vendor) {
        let r = request(port, "GET", asset, &[], "");
        secured(&r);
        assert_eq!(r.status, 200, "{asset}");
    }
    assert_eq!(events_of(&d.home, Event::ConsoleLogin).len(), 2);
    assert!(!events_of(&d.home, Event::ConsoleRefused).is_empty(), "the bad links are on record");
}

#[test]
fn a_post_without_the_cookie_the_origin_or_the_csrf_token_changes_nothing() {
    let d = daemon();
    let s = Session::login(&login_url(&d.home));
    let port = s.port;
    let origin = s.origin();
    let other = format!("http://127.0.0.1:{}", port.wrapping_add(1));
    let body = r#"{"tier":2,"minutes":5,"reason":"printer","confirm":false}"#;
    let json = ("Content-Type", "application/json");
    let cookie = ("Cookie", s.cookie.as_str());
    let csrf = ("X-CSRF-Token", s.csrf.as_str());
    let attempts: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no cookie", vec![("Origin", &origin), csrf, json]),
        ("forged cookie", vec![("Cookie", "support_console=forged"), ("Origin", &origin), csrf, json]),
        ("no Origin", vec![cookie, csrf, json]),
        ("another port's Origin", vec![cookie, ("Origin", &other), csrf, json]),
        ("localhost Origin", vec![cookie, ("Origin", "http://localhost:1"), csrf, json]),
        ("null Origin", vec![cookie, ("Origin", "null"), csrf, json]),
        ("no CSRF token", vec![cookie, ("Origin", &origin), json]),
        ("wrong CSRF token", vec![cookie, ("Origin", &origin), ("X-CSRF-Token", "wrong"), json]),
        ("a form's type", vec![cookie, ("Origin", &origin), csrf, ("Content-Type", "text/plain")]),
    ];
    for path in ["/console/api/allow", "/console/api/revoke", "/console/api/tasks/t-0000000000000000/stop"] {
        for (what, headers) in &attempts {
            let r = request(port, "POST", path, headers, body);
            secured(&r);
            assert_eq!(r.status, 403, "{what} on {path}: {r:?}");
        }
    }
    assert_eq!(d.home.status()["enabled"], false, "nothing was granted");
    assert!(events_of(&d.home, Event::ConsentGranted).is_empty());
    assert!(events_of(&d.home, Event::ConsentRevoked).is_empty());
    let refused = events_of(&d.home, Event::ConsoleRefused);
    assert!(!refused.is_empty() && refused.len() < 5, "on record, but rate-limited: {} records", refused.len());
    // GET changes nothing: the change routes take POST only.
    for path in ["/console/api/allow?tier=4&minutes=5&confirm=true", "/console/api/revoke"] {
        let r = s.get(path);
        secured(&r);
        assert_eq!(r.status, 405, "{path}");
        assert_eq!(r.header("allow"), Some("POST"));
    }
    assert_eq!(d.home.status()["enabled"], false);
    // With all of them it works.
    let r = s.post("/console/api/allow", body);
    secured(&r);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(d.home.status()["tier"], 2);
}

#[test]
fn rebinding_hosts_are_refused_and_no_cors_header_is_sent() {
    let d = daemon();
    let s = Session::login(&login_url(&d.home));
    for host in ["evil.example", "evil.example:80", "127.0.0.1", "127.0.0.1:1"] {
        let r = request(s.port, "GET", "/console/api/status", &[("Host", host), ("Cookie", &s.cookie)], "");
        secured(&r);
        assert_eq!(r.status, 403, "{host}");
    }
    let cors = [("Origin", "http://evil.example"), ("Access-Control-Request-Method", "POST")];
    for (method, path) in [("OPTIONS", "/console/api/allow"), ("GET", "/console/api/status"), ("GET", "/console/")] {
        let mut headers = cors.to_vec();
        headers.push(("Cookie", &s.cookie));
        let r = request(s.port, method, path, &headers, "");
        secured(&r);
    }
    // Another page's <script src> or <img> (Sec-Fetch-Site: same-site) reads nothing.
    for site in ["same-site", "cross-site"] {
        let r = request(s.port, "GET", "/console/api/audit", &[("Cookie", &s.cookie), ("Sec-Fetch-Site", site)], "");
        assert_eq!(r.status, 403, "{site}");
    }
    let r =
        request(s.port, "GET", "/console/api/audit", &[("Cookie", &s.cookie), ("Sec-Fetch-Site", "same-origin")], "");
    assert_eq!(r.status, 200);
}

#[test]
fn allow_and_revoke_from_the_console_go_the_cli_s_way_and_say_via_console() {
    let d = daemon();
    let s = Session::login(&login_url(&d.home));
    assert_eq!(s.get("/console/api/summary").status, 404, "no grant yet");
    let r = s.post("/console/api/allow", r#"{"tier":3,"minutes":5,"reason":"agent fix"}"#);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("confirmation is needed"), "{r:?}");
    assert_eq!(d.home.status()["enabled"], false);
    let r = s.post("/console/api/allow", r#"{"tier":3,"minutes":5,"reason":"agent fix","confirm":true}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"]["consent"]["tier"], 3, "the daemon enforces it at once");
    let status = d.home.status();
    assert_eq!(status["tier"], 3, "the consent file holds it: {status}");
    let granted = events_of(&d.home, Event::ConsentGranted);
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].via.as_deref(), Some("console"));
    assert_eq!(granted[0].reason.as_deref(), Some("agent fix"));
    let grant_id = granted[0].grant_id.clone().unwrap();
    let r = s.post("/console/api/revoke", "{}");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.json()["message"].as_str().unwrap().contains(&grant_id));
    assert_eq!(r.json()["status"]["consent"]["enabled"], false);
    assert_eq!(d.home.status()["enabled"], false);
    let revoked = events_of(&d.home, Event::ConsentRevoked);
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].via.as_deref(), Some("console"));
    assert_eq!(revoked[0].grant_id.as_deref(), Some(grant_id.as_str()));
    // The audit page: newest first, filtered, paged, and the chain verifies.
    let page = s.get(&format!("/console/api/audit?grant={grant_id}")).json();
    let events: Vec<&str> = page["records"].as_array().unwrap().iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["consent.revoked", "consent.granted"]);
    assert_eq!(page["verified"]["ok"], true);
    let first = s.get("/console/api/audit?limit=1").json();
    let next = first["next_before"].as_u64().expect("more pages");
    let second = s.get(&format!("/console/api/audit?limit=1&before={next}")).json();
    assert!(second["records"][0]["seq"].as_u64().unwrap() < next);
    assert!(support::audit::verify(&support::Paths::under(d.home.path.clone())).is_ok());
    // What ran under it, as `support summary` says.
    let summary = s.get("/console/api/summary");
    assert_eq!(summary.status, 200, "{summary:?}");
    assert_eq!(summary.json()["grant_id"], grant_id.as_str());
    assert!(summary.json()["text"].as_str().unwrap().contains(&grant_id));
    assert_eq!(s.get("/console/api/summary?grant=g-0000000000000000").status, 404);
}

#[test]
fn support_console_refuses_inside_a_task_and_exits_3_without_a_daemon() {
    let home = Home::new();
    Run::from(home.cmd(&["console", "--no-open"]).output().unwrap()).code(3);
    let d = daemon();
    let inside = home_run_with(&d.home, &["console", "--no-open"], ("SUPPORTD_TASK", "t-0123456789abcdef"));
    inside.code(4).says("refused");
    assert!(!inside.stdout.contains("token="), "no link is printed");
    let refused = events_of(&d.home, Event::ConsoleRefused);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].detail.as_deref().unwrap().contains("SUPPORTD_TASK"));
}

fn home_run_with(home: &Home, args: &[&str], env: (&str, &str)) -> Run {
    Run::from(home.cmd(args).env(env.0, env.1).output().unwrap())
}

#[test]
fn the_console_listens_on_console_port_from_daemon_toml() {
    let home = Home::new();
    std::fs::create_dir_all(&home.path).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = home.file("daemon.toml");
    std::fs::write(&config, format!("console_port = {port}\n")).unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let child = home.cmd(&["daemon"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let d = Device::spawned(home, child, false);
    assert_eq!(console_port(&d.home), port);
    assert_eq!(split_url(&login_url(&d.home)).0, port);
}
