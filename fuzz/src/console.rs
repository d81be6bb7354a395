//! The owner's console's requests: [`console_request`].

use std::time::Instant;

use support::daemon::console_request::{self, Admitted, COOKIE_NAME, CSRF_HEADER, Logins, Post};

/// The console's port for the console target.
pub const CONSOLE_PORT: u16 = 41_235;
/// In a console seed, stands for the session's id (as the cookie holds it).
pub const SID: &[u8] = b"$SID";
/// In a console seed, stands for the session's CSRF token.
pub const CSRF: &[u8] = b"$CSRF";
/// In a console seed, stands for an outstanding login token.
pub const TOKEN: &[u8] = b"$TOKEN";

/// A session table as the daemon holds one: a session begun from one login
/// token and another token outstanding. Its secrets are random (made as
/// the daemon makes them), so a seed names them by [`SID`], [`CSRF`] and
/// [`TOKEN`].
struct Table {
    logins: Logins,
    sid: String,
    csrf: String,
    token: String,
}

impl Table {
    fn new(now: Instant) -> Table {
        let mut logins = Logins::default();
        let first = logins.issue(now);
        let sid = logins.redeem(first.expose(), now).expect("a token just issued is taken");
        let csrf = logins.session(sid.expose(), now).expect("the session just begun");
        let token = logins.issue(now);
        Table {
            sid: sid.expose().to_string(),
            csrf: csrf.expose().to_string(),
            token: token.expose().to_string(),
            logins,
        }
    }
}

/// `data` with each placeholder replaced by its secret.
fn fill(data: &[u8], table: &Table) -> Vec<u8> {
    let names: [(&[u8], &str); 3] = [(SID, &table.sid), (CSRF, &table.csrf), (TOKEN, &table.token)];
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut i = 0;
    'bytes: while i < data.len() {
        for (name, secret) in names {
            if data[i..].starts_with(name) {
                out.extend_from_slice(secret.as_bytes());
                i += name.len();
                continue 'bytes;
            }
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

/// A console request (head and body), parsed by httparse as hyper does,
/// with [`SID`], [`CSRF`] and [`TOKEN`] standing for the table's secrets,
/// then decided by `console_request::decide` as the server decides it.
/// What it admits must hold: one loopback `Host` of this port; a login
/// only with the outstanding token; a read or change only with the
/// session's cookie; a read not from another site; a change only with
/// `Origin` exactly the console's, the session's CSRF token and a JSON
/// content type; an allow only within its rules.
pub fn console_request(data: &[u8]) {
    let now = Instant::now();
    let mut table = Table::new(now);
    let data = fill(data, &table);
    let Some((method, uri, map, head_len)) = crate::parse_head(&data) else { return };
    let body = &data[head_len..];
    let Ok((admitted, post)) = console_request::decide(&method, &uri, &map, body, CONSOLE_PORT, &mut table.logins, now)
    else {
        return;
    };
    let p = CONSOLE_PORT;
    let hosts: Vec<_> = map.get_all(http::header::HOST).iter().collect();
    assert_eq!(hosts.len(), 1);
    let host = hosts[0].to_str().expect("an admitted Host is text");
    assert!([format!("127.0.0.1:{p}"), format!("localhost:{p}"), format!("[::1]:{p}")].iter().any(|h| h == host));
    let cookie_pairs: Vec<String> = map
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';').map(|p| p.trim().to_string()).collect::<Vec<_>>())
        .collect();
    let has_cookie = cookie_pairs.contains(&format!("{COOKIE_NAME}={}", table.sid));
    match admitted {
        Admitted::Login { .. } => {
            let query = uri.query().expect("a login has a query");
            assert!(query.split('&').any(|kv| kv == format!("token={}", table.token)));
        }
        Admitted::Read { sid, csrf, .. } => {
            assert_eq!(sid, table.sid);
            assert!(csrf.eq_bytes(table.csrf.as_bytes()));
            assert!(has_cookie);
            let site = map.get("sec-fetch-site").map(http::HeaderValue::as_bytes);
            assert!(site.is_none_or(|s| s == b"same-origin" || s == b"none"));
        }
        Admitted::Change { sid, .. } => {
            assert_eq!(sid, table.sid);
            assert!(has_cookie);
            assert_eq!(
                map.get(http::header::ORIGIN).expect("an Origin").as_bytes(),
                format!("http://127.0.0.1:{p}").as_bytes()
            );
            assert_eq!(map.get(CSRF_HEADER).expect("a CSRF token").as_bytes(), table.csrf.as_bytes());
            let kind = map.get(http::header::CONTENT_TYPE).expect("a Content-Type").to_str().expect("text");
            assert!(kind.trim_start().to_ascii_lowercase().starts_with("application/json"));
            assert_eq!(method, http::Method::POST);
            match post.expect("a change has its body decided") {
                Post::Allow(allow) => {
                    let sent: serde_json::Value = serde_json::from_slice(body).expect("an admitted body is JSON");
                    assert_eq!(sent["tier"].as_u64(), Some(u64::from(allow.tier.get())));
                    assert!((1..=console_request::MAX_MINUTES).contains(&allow.minutes));
                    if allow.tier.needs_confirmation() {
                        assert_eq!(sent["confirm"], serde_json::Value::Bool(true));
                    }
                }
                Post::Stop(_) | Post::Revoke => {}
            }
        }
        Admitted::Root | Admitted::Page { .. } | Admitted::Asset(_) => assert_eq!(method, http::Method::GET),
    }
}
