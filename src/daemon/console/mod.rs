//! The owner's console (issue 14): a page on 127.0.0.1, served by the
//! daemon on a second loopback port, that shows the grant, the running
//! tasks and their transcripts, the audit log and the last grant's
//! summary, live, and stops, revokes and allows.
//!
//! Cookies are not isolated by port: a page on any other loopback port is
//! same-site, and its requests carry the console's cookie. So every
//! request is checked in this order, and the first failure answers; the
//! checks are `console_request.rs`, with no I/O (fuzzed, `fuzz/`):
//!
//! 1. the `Host`, as on the control API (`control_request::check_host`:
//!    400, then 403 for DNS rebinding);
//! 2. the route: 404 for an unknown path, 405 for a known path with another
//!    method (GET changes nothing; every change is a POST);
//! 3. the `/console/api/` GETs need the session cookie (401), and a
//!    `Sec-Fetch-Site`, when the browser sends one, of `same-origin` or
//!    `none` (403: another page's `<script>` or `<img>` reads nothing);
//! 4. every POST needs, in this order, the session cookie, an `Origin`
//!    exactly `http://127.0.0.1:PORT`, an `X-CSRF-Token` equal to the
//!    session's (constant time) and `Content-Type: application/json`
//!    (403 each), then a body of at most 64 KiB (413) within 5 s (408),
//!    and an allow's body checked (400).
//!
//! Refusals are audited as `console.refused`, at most one record per
//! [`REFUSED_WINDOW`], the next counting those left out. No CORS header is
//! ever sent; every answer carries [`SECURITY_HEADERS`].
//!
//! # Paths
//! - `GET /console/login?token=T`: a login token (`POST /v1/console/login`
//!   on the control API, see `sessions.rs`) for a session: 303 to
//!   `/console/` with the cookie `support_console=SID; HttpOnly;
//!   SameSite=Strict; Path=/console`; a used, expired or unknown token: 401.
//! - `GET /console/` (the page, or without a session a page saying to run
//!   `support console`), `/console/app.js`, `/console/app.css`,
//!   `/console/terminal.js` (the read-only terminal), and xterm.js under
//!   `/console/vendor/` (`xterm.js`, `xterm.css`, `xterm.LICENSE`): embedded.
//! - `GET /console/api/session` `{"csrf"}`, `/console/api/status`
//!   (`StatusView`), `/console/api/events` (server-sent events),
//!   `/console/api/audit`, `/console/api/summary` (`api.rs`).
//! - `POST /console/api/tasks/{id}/stop`, `/console/api/revoke`,
//!   `/console/api/allow` (`api.rs`); each change is audited with
//!   `via: "console"`.

mod api;
pub(super) mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, LOCATION, SET_COOKIE};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::Daemon;
use super::console_request::{self as request, Admitted, Asset, COOKIE_NAME, Refused};
use super::http::{Body, RateLimit, error};
use crate::audit::{Event, Record};
use crate::control_api::ConsoleLogin;
use sessions::LOGIN_TTL;

/// Connections served at once on the console's port.
pub const MAX_CONNECTIONS: usize = 32;
/// At most one `console.refused` record per window.
pub const REFUSED_WINDOW: Duration = Duration::from_secs(10);
/// Headers on every answer of the console: the page runs only its own
/// script and style, no other page may frame it, nothing is sniffed,
/// cached, or told where the owner came from (the login token is in a URL).
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("content-security-policy", "default-src 'self'; frame-ancestors 'none'"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("x-frame-options", "DENY"),
];

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const TERMINAL_JS: &str = include_str!("assets/terminal.js");
/// xterm.js, vendored byte for byte (`assets/vendor/README.md`: version, source, digests).
const XTERM_JS: &str = include_str!("assets/vendor/xterm.js");
const XTERM_CSS: &str = include_str!("assets/vendor/xterm.css");
const XTERM_LICENSE: &str = include_str!("assets/vendor/xterm.LICENSE");
const SIGNED_OUT_HTML: &str = include_str!("assets/signed-out.html");
const LINK_USED_HTML: &str = include_str!("assets/link-used.html");

/// The console's part of the daemon: its port, login tokens and sessions,
/// and the rate limit of its refusal records.
#[derive(Default)]
pub(super) struct State {
    port: Option<u16>,
    logins: sessions::Logins,
    refused: RateLimit,
}

impl Daemon {
    /// The console's port on 127.0.0.1, once it is served.
    pub fn console_port(&self) -> Option<u16> {
        crate::lock(&self.inner.console).port
    }

    /// A one-time login link to the console, valid for [`LOGIN_TTL`].
    /// The caller has checked who asks (the control API refuses a caller
    /// inside a task's tree, [`Daemon::console_login_for`]). `None` while the
    /// console is not served.
    pub fn console_login(&self) -> Option<ConsoleLogin> {
        let mut state = crate::lock(&self.inner.console);
        let port = state.port?;
        let token = state.logins.issue(Instant::now());
        let expires = chrono::Utc::now() + chrono::TimeDelta::from_std(LOGIN_TTL).unwrap_or_default();
        Some(ConsoleLogin {
            url: format!("http://127.0.0.1:{port}/console/login?token={}", token.expose()),
            token: token.expose().to_string(),
            expires_at: crate::time::rfc3339(expires),
        })
    }

    /// `POST /v1/console/login` from process `pid` (`None`: it could not
    /// be told): the login link, unless that process runs inside one of
    /// this daemon's tasks (`guard::peer_inside_task`) or cannot be told,
    /// which is refused (403) and audited as `console.refused`, as `allow`
    /// refuses from inside a task. 503 while the console is not served.
    pub(super) async fn console_login_for(&self, pid: Option<i32>) -> Result<ConsoleLogin, (StatusCode, String)> {
        let tasks = self.tasks();
        let evidence = match pid {
            None => Some("the process that asked cannot be told (its connection is not found in /proc)".to_string()),
            Some(pid) => tokio::task::spawn_blocking(move || super::guard::peer_inside_task(pid, &tasks))
                .await
                .unwrap_or_else(|_| Some("the check of the asking process failed".into())),
        };
        if let Some(evidence) = evidence {
            let why = format!(
                "console login refused: it was asked for from inside a support task ({evidence}). \
                 Only the owner, outside support's tasks, may open the console."
            );
            let mut r = Record::new(Event::ConsoleRefused);
            r.reason = Some("login asked for from inside a task".into());
            r.detail = Some(crate::text::brief(&evidence));
            // Every such attempt stands on the record (as `allow`'s), but a
            // task looping on it is counted, not written each time.
            self.record_console_refusal(r).await;
            return Err((StatusCode::FORBIDDEN, why));
        }
        self.console_login()
            .ok_or_else(|| (StatusCode::SERVICE_UNAVAILABLE, "the daemon does not serve the console".to_string()))
    }

    /// Writes a `console.refused` record unless one was written in this
    /// [`REFUSED_WINDOW`]; the next one written says how many were left out.
    async fn record_console_refusal(&self, mut r: Record) {
        let Some(suppressed) = crate::lock(&self.inner.console).refused.admit(REFUSED_WINDOW) else { return };
        if suppressed > 0 {
            let more = format!("{suppressed} more refused since the last record");
            r.detail = Some(match r.detail.take() {
                Some(d) => format!("{d}; {more}"),
                None => more,
            });
        }
        r.via = Some("console".into());
        if let Err(e) = self.audit(vec![r]).await {
            tracing::error!(error = %crate::ErrorChain(&e), "could not record console.refused");
        }
    }
}

/// Serves the console on `listener` (127.0.0.1) until `stop` turns true.
/// Its port is known to [`Daemon::console_login`] from this call on, not
/// only once the returned future is first polled (a login asked for just
/// after the console was spawned is not refused as "not served").
pub fn serve(
    listener: TcpListener,
    daemon: Daemon,
    stop: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let port = listener.local_addr().ok().map(|a| a.port());
    if let Some(port) = port {
        crate::lock(&daemon.inner.console).port = Some(port);
    }
    async move {
        let Some(port) = port else { return };
        let shared = Arc::new(Shared { daemon, port, stop: stop.clone() });
        super::http::accept_loop(listener, MAX_CONNECTIONS, stop, "console", |stream, peer, permit| {
            let shared = shared.clone();
            let span = tracing::debug_span!("console", %peer);
            super::http::spawn_connection(stream, permit, shared.stop.clone(), span, move |req| {
                let shared = shared.clone();
                async move { secured(handle(&shared, req, peer).await) }
            });
        })
        .await;
    }
}

struct Shared {
    daemon: Daemon,
    port: u16,
    stop: watch::Receiver<bool>,
}

impl Shared {
    /// Answers a refusal: `console.refused` on the record (rate-limited)
    /// where [`Refused::audited`] says, then its status and why.
    async fn refuse(&self, req: &Request<Incoming>, peer: SocketAddr, refused: Refused) -> Response<Body> {
        let (status, why) = (refused.status(), refused.why());
        if refused.audited() {
            let path: String = req.uri().path().chars().take(128).filter(|c| c.is_ascii_graphic()).collect();
            let mut r = Record::new(Event::ConsoleRefused);
            r.reason = Some(why.clone());
            r.detail = Some(format!("{} {path} from {peer}: {}", req.method(), status.as_u16()));
            self.daemon.record_console_refusal(r).await;
        }
        match refused {
            Refused::Method(want) => super::http::method_not_allowed(&want),
            Refused::LoginUsed => html(status, LINK_USED_HTML),
            _ => error(status, &why),
        }
    }
}

/// One request: decided by `console_request` (the code the fuzz target
/// and the decoder tests search), then served.
async fn handle(shared: &Shared, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let decided = {
        let mut state = crate::lock(&shared.daemon.inner.console);
        request::check_head(req.method(), req.uri(), req.headers(), shared.port, &mut state.logins, Instant::now())
    };
    let admitted = match decided {
        Ok(admitted) => admitted,
        Err(refused) => return shared.refuse(&req, peer, refused).await,
    };
    match admitted {
        Admitted::Root => redirect("/console/"),
        Admitted::Page { signed_in: true } => html(StatusCode::OK, INDEX_HTML),
        Admitted::Page { signed_in: false } => html(StatusCode::OK, SIGNED_OUT_HTML),
        Admitted::Asset(Asset::AppJs) => page(StatusCode::OK, APP_JS, "text/javascript; charset=utf-8"),
        Admitted::Asset(Asset::AppCss) => page(StatusCode::OK, APP_CSS, "text/css; charset=utf-8"),
        Admitted::Asset(Asset::TerminalJs) => page(StatusCode::OK, TERMINAL_JS, "text/javascript; charset=utf-8"),
        Admitted::Asset(Asset::XtermJs) => page(StatusCode::OK, XTERM_JS, "text/javascript; charset=utf-8"),
        Admitted::Asset(Asset::XtermCss) => page(StatusCode::OK, XTERM_CSS, "text/css; charset=utf-8"),
        Admitted::Asset(Asset::XtermLicense) => page(StatusCode::OK, XTERM_LICENSE, "text/plain; charset=utf-8"),
        Admitted::Login { sid, sessions } => login(shared, &sid, sessions, peer).await,
        Admitted::Read { get, sid, csrf } => api::get(&shared.daemon, get, &sid, &csrf, shared.stop.clone()).await,
        Admitted::Change { change, sid: _ } => {
            let body = match super::http::read_body(req).await {
                Ok(b) => b,
                Err(refused) => return refused,
            };
            match request::check_body(&change, &body) {
                Ok(post) => api::post(&shared.daemon, post).await,
                // A body's refusal is not audited (`Refused::audited`), so the head is not needed.
                Err(refused) => error(refused.status(), &refused.why()),
            }
        }
    }
}

/// `GET /console/login?token=T` whose token began session `sid`: the
/// cookie, once `console.login` is on the record.
async fn login(shared: &Shared, sid: &crate::Secret, sessions: usize, peer: SocketAddr) -> Response<Body> {
    let mut r = Record::new(Event::ConsoleLogin);
    r.via = Some("console".into());
    r.detail = Some(format!("a browser session began (from {peer}; {sessions} session(s) now)"));
    if let Err(e) = shared.daemon.audit(vec![r]).await {
        // A session no record shows is not begun.
        tracing::error!(error = %crate::ErrorChain(&e), "could not record console.login");
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the audit log cannot be written; no session was begun");
    }
    let mut resp = redirect("/console/");
    let cookie = format!("{COOKIE_NAME}={}; HttpOnly; SameSite=Strict; Path=/console", sid.expose());
    resp.headers_mut().insert(SET_COOKIE, HeaderValue::from_str(&cookie).expect("base64url is a header value"));
    resp
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut resp = page(StatusCode::SEE_OTHER, "", "text/plain; charset=utf-8");
    resp.headers_mut().insert(LOCATION, HeaderValue::from_static(to));
    resp
}

fn html(status: StatusCode, text: &'static str) -> Response<Body> {
    page(status, text, "text/html; charset=utf-8")
}

fn page(status: StatusCode, text: &'static str, kind: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, kind)
        .body(Full::new(Bytes::from_static(text.as_bytes())).boxed())
        .expect("static parts build")
}

/// Every answer with [`SECURITY_HEADERS`], and never a CORS header.
fn secured(mut resp: Response<Body>) -> Response<Body> {
    let headers = resp.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    let cors: Vec<HeaderName> = headers.keys().filter(|k| k.as_str().starts_with("access-control-")).cloned().collect();
    for name in cors {
        headers.remove(name);
    }
    resp
}

/// How long `xdg-open` may take before the browser is taken as started.
const OPEN_WAIT: Duration = Duration::from_secs(10);

/// Opens `url` with `xdg-open` (freedesktop xdg-utils), waiting at most
/// [`OPEN_WAIT`] for it; for `support console` and the notification's
/// Open console action.
///
/// # Errors
/// Why it did not open: no `xdg-open`, or its failure status.
pub(crate) fn open_in_browser(url: &str) -> Result<(), String> {
    use std::process::Stdio;
    let mut child = std::process::Command::new("xdg-open")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("xdg-open: {e}"))?;
    let deadline = Instant::now() + OPEN_WAIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("xdg-open {status}")),
            Ok(None) if Instant::now() >= deadline => return Ok(()),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("xdg-open: {e}")),
        }
    }
}
