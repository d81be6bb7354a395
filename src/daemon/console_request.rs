//! The owner's console's checks on a request, with no I/O: which route it
//! asks for, or which refusal answers it and why, in the order
//! `console/mod.rs` documents. The console server calls [`check_head`] on
//! every request and, for a change it admits, [`check_body`] on the body it
//! then reads (so a refused request's body is never waited for); [`decide`]
//! is the two in that order, for the fuzz target and the decoder tests, so
//! what they search is the code that decides.
//!
//! The state a decision needs is the session table ([`Logins`]), the
//! console's port and the time; a decision may change the table as the
//! server does (a login token is used, a session marked used).

use std::time::Instant;

use hyper::header::{CONTENT_TYPE, COOKIE, HeaderValue, ORIGIN};
use hyper::{HeaderMap, Method, StatusCode, Uri};
use serde::Deserialize;

pub use super::console::sessions::{LOGIN_TTL, Logins, MAX_LOGINS, MAX_SESSIONS, SESSION_IDLE};
pub use super::http::MAX_BODY;
use crate::consent::Tier;
use crate::secret::Secret;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "support_console";
/// The CSRF token's request header.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Records per audit page, unless `limit` says fewer.
pub const AUDIT_PAGE: usize = 50;
/// The most records per audit page.
pub const AUDIT_PAGE_MAX: usize = 500;
/// The longest grant the console makes, in minutes (8 hours, as `support allow`).
pub const MAX_MINUTES: u64 = 480;

/// An embedded file of the page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asset {
    /// `GET /console/app.js`.
    AppJs,
    /// `GET /console/app.css`.
    AppCss,
    /// `GET /console/terminal.js`: the owner's read-only view of an interactive session.
    TerminalJs,
    /// `GET /console/vendor/xterm.js`: xterm.js, vendored (assets/vendor/README).
    XtermJs,
    /// `GET /console/vendor/xterm.css`.
    XtermCss,
    /// `GET /console/vendor/xterm.LICENSE`: xterm.js's licence.
    XtermLicense,
}

/// A read of `/console/api/`, with its query decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Get {
    /// `GET /console/api/session`: the CSRF token and the tiers.
    Session,
    /// `GET /console/api/status`.
    Status,
    /// `GET /console/api/events`: server-sent events.
    Events,
    /// `GET /console/api/audit?...`: a page of records.
    Audit(AuditQuery),
    /// `GET /console/api/summary?grant=ID`: a grant's summary (`None`: the last).
    Summary(Option<String>),
}

/// A change, as its path names it (the body is not read yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `POST /console/api/tasks/{id}/stop`.
    Stop(String),
    /// `POST /console/api/revoke`.
    Revoke,
    /// `POST /console/api/allow`.
    Allow,
}

/// A change with its body decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Post {
    /// Stop the task of this id (its body is not read).
    Stop(String),
    /// Revoke the grant (its body is not read).
    Revoke,
    /// Grant as `support allow` would.
    Allow(AllowRequest),
}

/// `POST /console/api/allow`'s body, checked: a grant as `support allow
/// --tier N --minutes M [--reason R] [--yes]` makes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowRequest {
    /// The tier asked for.
    pub tier: Tier,
    /// Its length, 1 to [`MAX_MINUTES`] minutes.
    pub minutes: u64,
    /// Why, for the owner's record; `None` for none or only blanks.
    pub reason: Option<String>,
}

/// What a request that passed every check of its head asks for (not
/// `PartialEq`: it holds secrets, which are compared only in constant time).
#[derive(Clone, Debug)]
pub enum Admitted {
    /// `GET /console`: 303 to `/console/`.
    Root,
    /// `GET /console/`: the page, or without a session the page saying to
    /// run `support console`.
    Page {
        /// Whether a cookie named a standing session.
        signed_in: bool,
    },
    /// `GET` of an embedded file: `/console/app.js`, `app.css`, `terminal.js`, `vendor/...`.
    Asset(Asset),
    /// `GET /console/login?token=T` with a token that was outstanding: it
    /// is used, and this session begun.
    Login {
        /// The new session's id, for the cookie.
        sid: Secret,
        /// Sessions standing now, this one with them.
        sessions: usize,
    },
    /// A read by a session.
    Read {
        /// What is read.
        get: Get,
        /// The session's id.
        sid: String,
        /// The session's CSRF token (for `GET /console/api/session`).
        csrf: Secret,
    },
    /// A change by a session, whose body [`check_body`] decodes.
    Change {
        /// What is changed.
        change: Change,
        /// The session's id.
        sid: String,
    },
}

/// Why a request was refused, and so how it is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The `Host` or an absolute-form target (as on the control API): 400
    /// or 403, with the message.
    Host(StatusCode, &'static str),
    /// No such path: 404.
    NotFound,
    /// A known path with another method: 405, `Allow` naming this one.
    Method(Method),
    /// A read of `/console/api/` (401) or a change (403) with no cookie of
    /// a standing session.
    NoSession {
        /// Whether it was a change.
        change: bool,
    },
    /// A read whose `Sec-Fetch-Site` is not `same-origin` or `none`: 403.
    CrossSite,
    /// A change whose `Origin` is not exactly `http://127.0.0.1:PORT`: 403.
    Origin,
    /// A change with no or the wrong `X-CSRF-Token`: 403.
    Csrf,
    /// A change whose `Content-Type` is not `application/json`: 403.
    ContentType,
    /// A login token used, expired or never issued: 401, the page saying so.
    LoginUsed,
    /// A body over [`MAX_BODY`]: 413.
    TooLarge,
    /// An allow body that is not `{tier, minutes, reason, confirm}` within
    /// the rules: 400, with why.
    Body(String),
}

impl Refused {
    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::Host(status, _) => *status,
            Refused::NotFound => StatusCode::NOT_FOUND,
            Refused::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refused::NoSession { change: false } | Refused::LoginUsed => StatusCode::UNAUTHORIZED,
            Refused::NoSession { change: true }
            | Refused::CrossSite
            | Refused::Origin
            | Refused::Csrf
            | Refused::ContentType => StatusCode::FORBIDDEN,
            Refused::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refused::Body(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Why, for the owner and the record.
    pub fn why(&self) -> String {
        match self {
            Refused::Host(_, why) => (*why).to_string(),
            Refused::NotFound => "no such page".into(),
            Refused::Method(m) => format!("this path takes {m} only"),
            Refused::NoSession { .. } => "no console session".into(),
            Refused::CrossSite => "read from another origin".into(),
            Refused::Origin => "Origin is not the console's own".into(),
            Refused::Csrf => "no or wrong X-CSRF-Token".into(),
            Refused::ContentType => "Content-Type must be application/json".into(),
            Refused::LoginUsed => "a login link used, expired or unknown".into(),
            Refused::TooLarge => format!("bodies are at most {MAX_BODY} bytes"),
            Refused::Body(why) => why.clone(),
        }
    }

    /// Whether it is recorded as `console.refused`: every refusal of who
    /// asks (host, session, origin, token), not a mistyped path or body.
    pub fn audited(&self) -> bool {
        !matches!(self, Refused::NotFound | Refused::Method(_) | Refused::TooLarge | Refused::Body(_))
    }
}

/// Checks a request's head: `Host` ([`super::control_request::check_host`]),
/// the route and its one method, then a read's session cookie and
/// `Sec-Fetch-Site`, or a change's session cookie, `Origin` (exactly
/// `http://127.0.0.1:port`), `X-CSRF-Token` (constant time) and
/// `Content-Type`, in that order. A login uses its token; a session found
/// is marked used at `now`.
///
/// # Errors
/// The first check that fails, as [`Refused`].
pub fn check_head(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    port: u16,
    logins: &mut Logins,
    now: Instant,
) -> Result<Admitted, Refused> {
    super::control_request::check_host(uri, headers, port).map_err(|(status, why)| Refused::Host(status, why))?;
    let (want, route) = route(uri.path()).ok_or(Refused::NotFound)?;
    if *method != want {
        return Err(Refused::Method(want));
    }
    let query = uri.query().unwrap_or("");
    match route {
        Route::Root => Ok(Admitted::Root),
        Route::Page => Ok(Admitted::Page { signed_in: session(headers, logins, now).is_some() }),
        Route::Asset(asset) => Ok(Admitted::Asset(asset)),
        Route::Login => {
            let token = query.split('&').find_map(|kv| kv.strip_prefix("token=")).unwrap_or("");
            let sid = logins.redeem(token, now).map_err(|_| Refused::LoginUsed)?;
            Ok(Admitted::Login { sid, sessions: logins.sessions() })
        }
        Route::Read(get) => {
            let (sid, csrf) = session(headers, logins, now).ok_or(Refused::NoSession { change: false })?;
            let fetched = headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
            // `none`: the owner typed the address; `same-origin`: the page's own fetch.
            if fetched.is_some_and(|site| site != b"same-origin" && site != b"none") {
                return Err(Refused::CrossSite);
            }
            let get = match get {
                ReadPath::Session => Get::Session,
                ReadPath::Status => Get::Status,
                ReadPath::Events => Get::Events,
                ReadPath::Audit => Get::Audit(AuditQuery::parse(query)),
                ReadPath::Summary => Get::Summary(AuditQuery::parse(query).grant),
            };
            Ok(Admitted::Read { get, sid, csrf })
        }
        Route::Change(change) => {
            let (sid, _) = session(headers, logins, now).ok_or(Refused::NoSession { change: true })?;
            let origin = format!("http://127.0.0.1:{port}");
            if headers.get(ORIGIN).map(HeaderValue::as_bytes) != Some(origin.as_bytes()) {
                return Err(Refused::Origin);
            }
            let presented = headers.get(CSRF_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
            if !logins.csrf_ok(&sid, presented, now) {
                return Err(Refused::Csrf);
            }
            let json = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
                v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
            });
            if !json {
                return Err(Refused::ContentType);
            }
            Ok(Admitted::Change { change, sid })
        }
    }
}

/// Decodes the body of an admitted change: at most [`MAX_BODY`] bytes; a
/// stop's and a revoke's body is not read, an allow's must be
/// `{tier, minutes, reason?, confirm?}` with a tier of 1 to 4, 1 to
/// [`MAX_MINUTES`] minutes, and `confirm` for a tier that needs it (as
/// `support allow --yes`).
///
/// # Errors
/// [`Refused::TooLarge`], or [`Refused::Body`] saying what is wrong.
pub fn check_body(change: &Change, body: &[u8]) -> Result<Post, Refused> {
    if body.len() as u64 > MAX_BODY {
        return Err(Refused::TooLarge);
    }
    match change {
        Change::Stop(id) => Ok(Post::Stop(id.clone())),
        Change::Revoke => Ok(Post::Revoke),
        Change::Allow => allow_body(body).map(Post::Allow).map_err(Refused::Body),
    }
}

/// [`check_head`], then [`check_body`] for a change, as the server runs
/// them: the route and, for a change, its decoded body.
///
/// # Errors
/// The first check that fails, as [`Refused`].
pub fn decide(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    port: u16,
    logins: &mut Logins,
    now: Instant,
) -> Result<(Admitted, Option<Post>), Refused> {
    let admitted = check_head(method, uri, headers, port, logins, now)?;
    let post = match &admitted {
        Admitted::Change { change, .. } => Some(check_body(change, body)?),
        _ => None,
    };
    Ok((admitted, post))
}

/// The session whose id a `support_console` cookie holds, with its CSRF
/// token. Every such cookie is tried: a page on another loopback port may
/// set one of its own (cookies are not isolated by port), which must not
/// shadow the owner's.
fn session(headers: &HeaderMap, logins: &mut Logins, now: Instant) -> Option<(String, Secret)> {
    for header in headers.get_all(COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=')
                && name == COOKIE_NAME
                && let Some(csrf) = logins.session(value, now)
            {
                return Some((value.to_string(), csrf));
            }
        }
    }
    None
}

enum ReadPath {
    Session,
    Status,
    Events,
    Audit,
    Summary,
}

enum Route {
    Root,
    Page,
    Asset(Asset),
    Login,
    Read(ReadPath),
    Change(Change),
}

/// The routes: path → the one method it takes.
fn route(path: &str) -> Option<(Method, Route)> {
    let segments: Vec<&str> = path.split('/').collect();
    let get = |r| Some((Method::GET, r));
    let read = |r| Some((Method::GET, Route::Read(r)));
    let post = |c| Some((Method::POST, Route::Change(c)));
    match segments.as_slice() {
        ["", "console"] => get(Route::Root),
        ["", "console", ""] => get(Route::Page),
        ["", "console", "app.js"] => get(Route::Asset(Asset::AppJs)),
        ["", "console", "app.css"] => get(Route::Asset(Asset::AppCss)),
        ["", "console", "terminal.js"] => get(Route::Asset(Asset::TerminalJs)),
        ["", "console", "vendor", "xterm.js"] => get(Route::Asset(Asset::XtermJs)),
        ["", "console", "vendor", "xterm.css"] => get(Route::Asset(Asset::XtermCss)),
        ["", "console", "vendor", "xterm.LICENSE"] => get(Route::Asset(Asset::XtermLicense)),
        ["", "console", "login"] => get(Route::Login),
        ["", "console", "api", "session"] => read(ReadPath::Session),
        ["", "console", "api", "status"] => read(ReadPath::Status),
        ["", "console", "api", "events"] => read(ReadPath::Events),
        ["", "console", "api", "audit"] => read(ReadPath::Audit),
        ["", "console", "api", "summary"] => read(ReadPath::Summary),
        ["", "console", "api", "tasks", id, "stop"] => post(Change::Stop(id.to_string())),
        ["", "console", "api", "revoke"] => post(Change::Revoke),
        ["", "console", "api", "allow"] => post(Change::Allow),
        _ => None,
    }
}

/// `POST /console/api/allow`'s body as sent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowBody {
    tier: u8,
    minutes: u64,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    confirm: bool,
}

fn allow_body(body: &[u8]) -> Result<AllowRequest, String> {
    let asked: AllowBody = serde_json::from_slice(body)
        .map_err(|e| format!("the body must be {{tier, minutes, reason, confirm}}: {e}"))?;
    let Some(tier) = Tier::new(asked.tier) else {
        return Err(format!("the tier is 1 to 4:\n{}", Tier::table()));
    };
    if !(1..=MAX_MINUTES).contains(&asked.minutes) {
        return Err("minutes are 1 to 480 (8 hours)".into());
    }
    if tier.needs_confirmation() && !asked.confirm {
        return Err(format!("tier {tier} lets support do {}: a confirmation is needed", tier.allows()));
    }
    let reason = asked.reason.filter(|r| !r.trim().is_empty());
    Ok(AllowRequest { tier, minutes: asked.minutes, reason })
}

/// `?before=SEQ&limit=N&grant=ID&operator=NAME&event=EVENT`, each
/// percent-decoded; an empty value is none, a bad number ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only records before this sequence number.
    pub before: Option<u64>,
    /// At most this many, 1 to [`AUDIT_PAGE_MAX`] ([`AUDIT_PAGE`] unless said).
    pub limit: usize,
    /// Only this grant's records.
    pub grant: Option<String>,
    /// Only this operator's records.
    pub operator: Option<String>,
    /// Only records of this event (`action.started`, ...).
    pub event: Option<String>,
}

impl AuditQuery {
    /// The query of a URL (after `?`), never refused.
    pub fn parse(query: &str) -> AuditQuery {
        let mut q = AuditQuery { limit: AUDIT_PAGE, ..AuditQuery::default() };
        for (key, value) in query.split('&').filter_map(|kv| kv.split_once('=')) {
            let value = percent_decode(value);
            let value = (!value.is_empty()).then_some(value);
            match key {
                "before" => q.before = value.and_then(|v| v.parse().ok()),
                "limit" => {
                    q.limit = value.and_then(|v| v.parse().ok()).unwrap_or(AUDIT_PAGE).clamp(1, AUDIT_PAGE_MAX);
                }
                "grant" => q.grant = value,
                "operator" => q.operator = value,
                "event" => q.event = value,
                _ => {}
            }
        }
        q
    }

    /// Whether record `r` is on the page this query asks for.
    pub fn matches(&self, r: &crate::audit::Record) -> bool {
        self.before.is_none_or(|b| r.seq < b)
            && self.grant.as_ref().is_none_or(|g| r.grant_id.as_ref() == Some(g))
            && self.operator.as_ref().is_none_or(|o| r.operator.as_ref() == Some(o))
            && self.event.as_ref().is_none_or(|e| r.event.as_str() == e)
    }
}

/// `%XX` and `+` decoded (application/x-www-form-urlencoded); a bad
/// escape stays as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit));
                match hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_queries_parse_and_clamp() {
        let q = AuditQuery::parse("before=40&limit=9999&grant=g-1&operator=al%20ice&event=action.started&x=1");
        assert_eq!(q.before, Some(40));
        assert_eq!(q.limit, AUDIT_PAGE_MAX);
        assert_eq!(q.grant.as_deref(), Some("g-1"));
        assert_eq!(q.operator.as_deref(), Some("al ice"));
        assert_eq!(q.event.as_deref(), Some("action.started"));
        let q = AuditQuery::parse("limit=0&grant=&before=x");
        assert_eq!(q, AuditQuery { limit: 1, ..AuditQuery::default() });
        assert_eq!(AuditQuery::parse("").limit, AUDIT_PAGE);
    }

    #[test]
    fn percent_escapes_decode_and_bad_ones_stay() {
        assert_eq!(percent_decode("a%2Cb+c"), "a,b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    /// Every path of the console names its one route and method, and no
    /// other path does (each arm's deletion passed every earlier test: a
    /// page the proptests never asked for, or one whose refusal is sound).
    #[test]
    fn every_path_names_its_route_and_its_one_method() {
        type Is = fn(&Route) -> bool;
        let (get, post) = (Method::GET, Method::POST);
        let routes: [(&str, &Method, Is); 17] = [
            ("/console", &get, |r| matches!(r, Route::Root)),
            ("/console/", &get, |r| matches!(r, Route::Page)),
            ("/console/app.js", &get, |r| matches!(r, Route::Asset(Asset::AppJs))),
            ("/console/app.css", &get, |r| matches!(r, Route::Asset(Asset::AppCss))),
            ("/console/terminal.js", &get, |r| matches!(r, Route::Asset(Asset::TerminalJs))),
            ("/console/vendor/xterm.js", &get, |r| matches!(r, Route::Asset(Asset::XtermJs))),
            ("/console/vendor/xterm.css", &get, |r| matches!(r, Route::Asset(Asset::XtermCss))),
            ("/console/vendor/xterm.LICENSE", &get, |r| matches!(r, Route::Asset(Asset::XtermLicense))),
            ("/console/login", &get, |r| matches!(r, Route::Login)),
            ("/console/api/session", &get, |r| matches!(r, Route::Read(ReadPath::Session))),
            ("/console/api/status", &get, |r| matches!(r, Route::Read(ReadPath::Status))),
            ("/console/api/events", &get, |r| matches!(r, Route::Read(ReadPath::Events))),
            ("/console/api/audit", &get, |r| matches!(r, Route::Read(ReadPath::Audit))),
            ("/console/api/summary", &get, |r| matches!(r, Route::Read(ReadPath::Summary))),
            ("/console/api/tasks/t-1/stop", &post, |r| matches!(r, Route::Change(Change::Stop(id)) if id == "t-1")),
            ("/console/api/revoke", &post, |r| matches!(r, Route::Change(Change::Revoke))),
            ("/console/api/allow", &post, |r| matches!(r, Route::Change(Change::Allow))),
        ];
        for (path, method, is) in routes {
            let (m, r) = route(path).unwrap_or_else(|| panic!("{path}: no route"));
            assert_eq!(&m, method, "{path}");
            assert!(is(&r), "{path}: another route");
        }
        for path in
            ["", "/", "/console/api", "/console/vendor", "/console/api/tasks/t-1", "/console/app.js/", "/Console"]
        {
            assert!(route(path).is_none(), "{path}");
        }
    }

    /// Each refusal says its own why, for the owner and the record.
    #[test]
    fn every_refusal_says_its_own_why() {
        let whys = [
            (
                Refused::Host(StatusCode::FORBIDDEN, "Host is not the console's"),
                "Host is not the console's".to_string(),
            ),
            (Refused::NotFound, "no such page".into()),
            (Refused::Method(Method::POST), "this path takes POST only".into()),
            (Refused::NoSession { change: true }, "no console session".into()),
            (Refused::CrossSite, "read from another origin".into()),
            (Refused::Origin, "Origin is not the console's own".into()),
            (Refused::Csrf, "no or wrong X-CSRF-Token".into()),
            (Refused::ContentType, "Content-Type must be application/json".into()),
            (Refused::LoginUsed, "a login link used, expired or unknown".into()),
            (Refused::TooLarge, "bodies are at most 65536 bytes".into()),
            (Refused::Body("the tier is 1 to 4".into()), "the tier is 1 to 4".into()),
        ];
        for (refused, why) in whys {
            assert_eq!(refused.why(), why, "{refused:?}");
        }
    }

    /// A body of exactly [`MAX_BODY`] bytes is read, one byte more is not;
    /// a reason of only blanks is none, any other is kept as written.
    #[test]
    fn bodies_are_read_up_to_max_body_and_a_blank_reason_is_none() {
        let at_cap = vec![b' '; 64 * 1024];
        assert_eq!(check_body(&Change::Revoke, &at_cap), Ok(Post::Revoke));
        assert_eq!(check_body(&Change::Revoke, &[at_cap.as_slice(), b" "].concat()), Err(Refused::TooLarge));
        let reason = |body: &str| match check_body(&Change::Allow, body.as_bytes()) {
            Ok(Post::Allow(allow)) => allow.reason,
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(reason(r#"{"tier":2,"minutes":30,"reason":" printer "}"#).as_deref(), Some(" printer "));
        assert_eq!(reason(r#"{"tier":2,"minutes":30,"reason":" \t "}"#), None);
        assert_eq!(reason(r#"{"tier":2,"minutes":30}"#), None);
    }

    /// A query keeps a record only where every part it names holds: `before`
    /// is exclusive, and a record without a grant or operator is not one's.
    #[test]
    fn an_audit_query_keeps_a_record_only_where_every_part_holds() {
        use crate::audit::{Event, Record};
        let record = |seq: u64, grant: Option<&str>, operator: Option<&str>, event: Event| {
            let mut r = Record::new(event);
            r.seq = seq;
            r.grant_id = grant.map(String::from);
            r.operator = operator.map(String::from);
            r
        };
        let q = AuditQuery::parse("before=5&grant=g-1&operator=al&event=action.started");
        assert!(q.matches(&record(4, Some("g-1"), Some("al"), Event::ActionStarted)));
        for (why, r) in [
            ("seq 5, before 5", record(5, Some("g-1"), Some("al"), Event::ActionStarted)),
            ("another grant", record(4, Some("g-2"), Some("al"), Event::ActionStarted)),
            ("no grant", record(4, None, Some("al"), Event::ActionStarted)),
            ("another operator", record(4, Some("g-1"), Some("bo"), Event::ActionStarted)),
            ("no operator", record(4, Some("g-1"), None, Event::ActionStarted)),
            ("another event", record(4, Some("g-1"), Some("al"), Event::ActionDenied)),
        ] {
            assert!(!q.matches(&r), "{why}");
        }
        let all = AuditQuery::parse("");
        assert!(all.matches(&record(u64::MAX, None, None, Event::ActionDenied)));
        let before = AuditQuery::parse("before=5");
        assert!(before.matches(&record(4, None, None, Event::ActionDenied)));
        assert!(!before.matches(&record(6, None, None, Event::ActionDenied)));
    }
}
