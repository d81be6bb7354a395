//! The control API's checks on a request's head (method, target,
//! headers), in the order [`super::control`] documents, with no I/O: the
//! server calls [`check_head`] and answers a [`Refused`] as it says, and
//! the fuzz target and the decoder tests call it on arbitrary heads.

use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, HOST, ORIGIN};
use hyper::http::uri::Scheme;
use hyper::{HeaderMap, Method, StatusCode, Uri};

use crate::secret::Secret;

pub use super::http::MAX_BODY;

/// What a request that passed every check asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /v1/status`.
    Status,
    /// `GET /v1/tasks`.
    Tasks,
    /// `GET /v1/tasks/{id}`.
    Task(String),
    /// `POST /v1/tasks/{id}/stop`.
    Stop(String),
    /// `POST /v1/tasks/stop`.
    StopAll,
    /// `POST /v1/consent/changed`.
    ConsentChanged,
    /// `GET /v1/events`.
    Events,
    /// `POST /v1/console/login`: a one-time login link to the owner's console.
    ConsoleLogin,
}

/// Why a request's head was refused, and so how it is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The `Host` or an absolute-form target: 400 or 403, with the message.
    Host(StatusCode, &'static str),
    /// An `Origin` header: 403.
    Origin,
    /// No `Authorization: Bearer <secret>` or the wrong one: 401, and a
    /// `control.unauthorized` record.
    Unauthorized,
    /// No such path: 404.
    NotFound,
    /// A known path with another method: 405, `Allow` naming this one.
    Method(Method),
    /// A declared `Content-Length` over [`MAX_BODY`]: 413.
    TooLarge,
}

/// Checks a request's head: `Host` (RFC 9112 §3.2 and §3.2.2, then DESIGN
/// §6's loopback names for `port`), no `Origin`, the bearer `secret` in
/// constant time, the route and its one method, and a POST's declared
/// length. The body, if any, is the caller's to read within [`MAX_BODY`].
///
/// # Errors
/// The first check that fails, as [`Refused`].
pub fn check_head(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    port: u16,
    secret: &Secret,
) -> Result<Route, Refused> {
    host_ok(uri, headers, port)?;
    if headers.contains_key(ORIGIN) {
        return Err(Refused::Origin);
    }
    if !secret_ok(headers, secret) {
        return Err(Refused::Unauthorized);
    }
    let (want, route) = route(uri.path()).ok_or(Refused::NotFound)?;
    if *method != want {
        return Err(Refused::Method(want));
    }
    if want == Method::POST {
        let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY) {
            return Err(Refused::TooLarge);
        }
    }
    Ok(route)
}

/// RFC 9112 §3.2: exactly one `Host`; §3.2.2: an absolute-form target's
/// authority stands for the host, so one naming another than the `Host`
/// (or another scheme) is refused rather than half-believed. Then DESIGN
/// §6: the one `Host` must name this port on loopback.
fn host_ok(uri: &Uri, headers: &HeaderMap, port: u16) -> Result<(), Refused> {
    check_host(uri, headers, port).map_err(|(status, why)| Refused::Host(status, why))
}

/// The `Host` check alone, shared with the owner's console: the status
/// (400 or 403) and the message of a refusal.
///
/// # Errors
/// See [`check_head`]'s first step.
pub fn check_host(uri: &Uri, headers: &HeaderMap, port: u16) -> Result<(), (StatusCode, &'static str)> {
    let mut hosts = headers.get_all(HOST).iter();
    let (host, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err((StatusCode::BAD_REQUEST, "exactly one Host header is allowed (RFC 9112 §3.2)"));
    }
    let host = host.and_then(|h| h.to_str().ok()).unwrap_or_default();
    if let Some(authority) = uri.authority()
        && (uri.scheme() != Some(&Scheme::HTTP) || !authority.as_str().eq_ignore_ascii_case(host))
    {
        return Err((
            StatusCode::BAD_REQUEST,
            "an absolute-form target must be http:// with the Host's own authority (RFC 9112 §3.2.2)",
        ));
    }
    let p = port;
    if host == format!("127.0.0.1:{p}") || host == format!("localhost:{p}") || host == format!("[::1]:{p}") {
        Ok(())
    } else {
        Err((StatusCode::FORBIDDEN, "Host must be 127.0.0.1:PORT, localhost:PORT or [::1]:PORT"))
    }
}

fn secret_ok(headers: &HeaderMap, secret: &Secret) -> bool {
    let Some(value) = headers.get(AUTHORIZATION) else { return false };
    let Some(token) = value.as_bytes().strip_prefix(b"Bearer ") else { return false };
    secret.eq_bytes(token)
}

/// The routes: path pattern → the one method it takes.
fn route(path: &str) -> Option<(Method, Route)> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        ["", "v1", "status"] => Some((Method::GET, Route::Status)),
        ["", "v1", "tasks"] => Some((Method::GET, Route::Tasks)),
        ["", "v1", "tasks", "stop"] => Some((Method::POST, Route::StopAll)),
        ["", "v1", "tasks", id, "stop"] => Some((Method::POST, Route::Stop(id.to_string()))),
        ["", "v1", "tasks", id] => Some((Method::GET, Route::Task(id.to_string()))),
        ["", "v1", "consent", "changed"] => Some((Method::POST, Route::ConsentChanged)),
        ["", "v1", "events"] => Some((Method::GET, Route::Events)),
        ["", "v1", "console", "login"] => Some((Method::POST, Route::ConsoleLogin)),
        _ => None,
    }
}
