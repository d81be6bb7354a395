//! The console's API, once `mod.rs` has checked the request: what the page
//! reads (`GET /console/api/...`) and the changes it makes (`POST`), each
//! through the same code as the CLI's (`consent_change`, the daemon's stop),
//! audited with `via: "console"`.

use std::ops::ControlFlow;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::super::Daemon;
use super::super::http::{Body, StreamBody, error, respond};
use crate::audit::{Event, Record};
use crate::consent::{Grant, Tier};
use crate::control_api::{Stopped, TaskList, WatchEvent};
use crate::protocol::StoppedBy;
use crate::summary::SummaryError;

/// How often an idle event stream gets a comment line, and its session is checked.
const EVENTS_PING: std::time::Duration = std::time::Duration::from_secs(15);
/// Records per audit page, unless `limit` says fewer.
const AUDIT_PAGE: usize = 50;
/// The most records per audit page.
const AUDIT_PAGE_MAX: usize = 500;
/// What the console writes on every record of a change it makes.
pub(super) const VIA: &str = "console";

/// A read.
pub(super) enum Get {
    Session,
    Status,
    Events,
    Audit,
    Summary,
}

/// A change.
pub(super) enum Post {
    Stop(String),
    Revoke,
    Allow,
}

/// `GET /console/api/session`: the session's CSRF token, and the tiers
/// (number, name, what each allows) for the page's banner and Allow form.
#[derive(Serialize)]
struct SessionView<'a> {
    csrf: &'a str,
    tiers: Vec<TierView>,
}

#[derive(Serialize)]
struct TierView {
    tier: u8,
    name: &'static str,
    allows: &'static str,
    needs_confirmation: bool,
}

pub(super) async fn get(
    daemon: &Daemon,
    what: Get,
    query: &str,
    sid: &str,
    csrf: &crate::Secret,
    stop: watch::Receiver<bool>,
) -> Response<Body> {
    match what {
        Get::Session => {
            let tiers = Tier::ALL
                .iter()
                .map(|t| TierView {
                    tier: t.get(),
                    name: t.name(),
                    allows: t.allows(),
                    needs_confirmation: t.needs_confirmation(),
                })
                .collect();
            respond(StatusCode::OK, &SessionView { csrf: csrf.expose(), tiers })
        }
        Get::Status => respond(StatusCode::OK, &daemon.status_view()),
        Get::Events => events(daemon, sid.to_string(), stop),
        Get::Audit => {
            let query = AuditQuery::parse(query);
            let d = daemon.clone();
            match tokio::task::spawn_blocking(move || audit_page(&d, &query)).await {
                Ok(Ok(page)) => respond(StatusCode::OK, &page),
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &crate::ErrorChain(&e).to_string()),
                Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "reading the audit log failed"),
            }
        }
        Get::Summary => summary(daemon, query).await,
    }
}

/// `GET /console/api/summary?grant=ID` (none: the last grant): the
/// summary as `support summary --json` prints it, plus `text`, as
/// `support summary` prints it. 404 when there is no such grant.
async fn summary(daemon: &Daemon, query: &str) -> Response<Body> {
    let grant = AuditQuery::parse(query).grant;
    let paths = daemon.inner.paths.clone();
    let loaded = tokio::task::spawn_blocking(move || crate::summary::load(&paths, grant.as_deref())).await;
    match loaded {
        Ok(Ok(summary)) => respond(StatusCode::OK, &SummaryView { text: summary.render(), summary: &summary }),
        Ok(Err(e @ (SummaryError::NoGrant | SummaryError::UnknownGrant(_)))) => {
            error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &crate::ErrorChain(&e).to_string()),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "making the summary failed"),
    }
}

#[derive(Serialize)]
struct SummaryView<'a> {
    #[serde(flatten)]
    summary: &'a crate::summary::GrantSummary,
    text: String,
}

/// `?before=SEQ&limit=N&grant=ID&operator=NAME&event=EVENT`.
#[derive(Debug, Default, PartialEq, Eq)]
struct AuditQuery {
    before: Option<u64>,
    limit: usize,
    grant: Option<String>,
    operator: Option<String>,
    event: Option<String>,
}

impl AuditQuery {
    fn parse(query: &str) -> AuditQuery {
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

    fn matches(&self, r: &Record) -> bool {
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

#[derive(Serialize)]
struct AuditPage {
    records: Vec<Record>,
    next_before: Option<u64>,
    verified: ChainStatus,
}

#[derive(Serialize)]
struct ChainStatus {
    ok: bool,
    records: u64,
    error: Option<String>,
}

fn audit_page(daemon: &Daemon, q: &AuditQuery) -> Result<AuditPage, crate::AuditError> {
    let paths = &daemon.inner.paths;
    let mut records = Vec::new();
    let mut more = false;
    crate::audit::newest_first(paths, |r| {
        if !q.matches(&r) {
            return ControlFlow::Continue(());
        }
        if records.len() == q.limit {
            more = true;
            return ControlFlow::Break(());
        }
        records.push(r);
        ControlFlow::Continue(())
    })?;
    let next_before = if more { records.last().map(|r| r.seq) } else { None };
    let verified = match crate::audit::verify(paths) {
        Ok(v) => ChainStatus { ok: true, records: v.records, error: None },
        Err(e) => ChainStatus { ok: false, records: 0, error: Some(crate::ErrorChain(&e).to_string()) },
    };
    Ok(AuditPage { records, next_before, verified })
}

/// One `event: NAME` / `data: JSON` message of a server-sent event stream
/// (HTML, "Server-sent events"); JSON has no line break to escape.
fn sse(name: &str, data: &impl Serialize) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {}\n\n", serde_json::to_string(data).unwrap_or_default()))
}

/// A transcript line as the console shows it: the task, the line and the
/// label `support watch` gives it.
#[derive(Serialize)]
struct LineView<'a> {
    task_id: &'a str,
    #[serde(flatten)]
    line: &'a crate::transcript::Line,
    label: &'static str,
}

/// `GET /console/api/events`: `status` and `tasks` first, then `status`
/// on each change of the grant, `tasks` when one starts or ends, `line`
/// for each transcript line, `audit` for each record written, `lagged`;
/// a comment every [`EVENTS_PING`], when the stream also ends if its
/// session has gone.
fn events(daemon: &Daemon, sid: String, mut stop: watch::Receiver<bool>) -> Response<Body> {
    let (tx, body) = StreamBody::channel(64);
    let mut bus = daemon.subscribe();
    let daemon = daemon.clone();
    tokio::spawn(async move {
        let first = [sse("status", &daemon.status_view()), sse("tasks", &TaskList { tasks: daemon.tasks() })];
        for item in first {
            if tx.send(item).await.is_err() {
                return;
            }
        }
        let mut ping = tokio::time::interval(EVENTS_PING);
        ping.tick().await;
        loop {
            let items: Vec<Bytes> = tokio::select! {
                _ = tx.closed() => return,
                _ = crate::stopped(&mut stop) => return,
                _ = ping.tick() => {
                    if crate::lock(&daemon.inner.console).logins.session(&sid, std::time::Instant::now()).is_none() {
                        return;
                    }
                    vec![Bytes::from_static(b": ping\n\n")]
                }
                e = bus.recv() => match e {
                    Ok(text) => translate(&daemon, &text),
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        vec![sse("lagged", &serde_json::json!({ "missed": missed })), sse("status", &daemon.status_view())]
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            for item in items {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        }
    });
    body.respond("text/event-stream")
}

/// One event of the daemon's bus as the console's events.
fn translate(daemon: &Daemon, text: &str) -> Vec<Bytes> {
    let Ok(event) = serde_json::from_str::<WatchEvent>(text) else { return Vec::new() };
    match event {
        WatchEvent::Status { status } => vec![sse("status", &status)],
        WatchEvent::Transcript { task_id, line } => {
            vec![sse("line", &LineView { task_id: &task_id, line: &line, label: line.label() })]
        }
        WatchEvent::Audit { record } => {
            let mut out = vec![sse("audit", &record)];
            if matches!(record.event, Event::ConsentRevoked | Event::ConsentExpired) {
                out.push(sse("summary", &serde_json::json!({ "grant_id": record.grant_id })));
            }
            if matches!(record.event, Event::ActionStarted | Event::ActionFinished | Event::TaskAborted) {
                // An ended task leaves the table just after its record.
                let ended = (record.event != Event::ActionStarted).then_some(record.task_id.as_deref()).flatten();
                let tasks = daemon.tasks().into_iter().filter(|t| Some(t.task_id.as_str()) != ended).collect();
                out.push(sse("tasks", &TaskList { tasks }));
            }
            out
        }
        // An interactive session's pty, for the console's terminal widget.
        e @ WatchEvent::Terminal { .. } => vec![sse("terminal", &e)],
        e @ WatchEvent::TerminalSize { .. } => vec![sse("terminal_size", &e)],
        WatchEvent::Lagged { missed } => vec![sse("lagged", &serde_json::json!({ "missed": missed }))],
        WatchEvent::Ping => Vec::new(),
    }
}

/// `POST /console/api/allow`'s body.
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

/// The answer to a change: what was done, for people, and the status after it.
#[derive(Serialize)]
struct Changed {
    message: String,
    status: crate::control_api::StatusView,
}

pub(super) async fn post(daemon: &Daemon, what: Post, body: &[u8]) -> Response<Body> {
    match what {
        Post::Stop(id) => {
            if !daemon.tasks().iter().any(|t| t.task_id == id) {
                return error(StatusCode::NOT_FOUND, "no such running task");
            }
            let result = daemon.stop_task_via(&id, StoppedBy::Owner, Some(VIA)).await;
            respond(StatusCode::OK, &Stopped { task_id: id, result })
        }
        Post::Revoke => {
            let d = daemon.clone();
            let done = tokio::task::spawn_blocking(move || {
                crate::consent_change::revoke(
                    &d.inner.paths,
                    chrono::Utc::now(),
                    Some(VIA),
                    || {
                        d.refresh_consent_sync();
                        true
                    },
                    &mut |r| append(&d, r),
                )
            })
            .await;
            match done {
                Ok(Ok(revoked)) => {
                    respond(StatusCode::OK, &Changed { message: revoked.message, status: daemon.status_view() })
                }
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &crate::ErrorChain(&e).to_string()),
                Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the revocation failed"),
            }
        }
        Post::Allow => allow(daemon, body).await,
    }
}

fn append(daemon: &Daemon, r: Record) -> Result<Record, crate::Error> {
    let mut written = daemon.audit_sync(vec![r])?;
    written.pop().ok_or_else(|| crate::Error::Failed("the audit record was not written".into()))
}

/// `POST /console/api/allow`: a grant as `support allow --tier N --minutes
/// M [--reason R] [--yes]` makes it (tiers 3 and 4 need `confirm`, as
/// `--yes`), without a scope.
async fn allow(daemon: &Daemon, body: &[u8]) -> Response<Body> {
    let asked: AllowBody = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the body must be {{tier, minutes, reason, confirm}}: {e}"),
            );
        }
    };
    let Some(tier) = Tier::new(asked.tier) else {
        return error(StatusCode::BAD_REQUEST, &format!("the tier is 1 to 4:\n{}", Tier::table()));
    };
    if !(1..=480).contains(&asked.minutes) {
        return error(StatusCode::BAD_REQUEST, "minutes are 1 to 480 (8 hours)");
    }
    if tier.needs_confirmation() && !asked.confirm {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("tier {tier} lets support do {}: a confirmation is needed", tier.allows()),
        );
    }
    let reason = asked.reason.filter(|r| !r.trim().is_empty());
    let duration = std::time::Duration::from_secs(asked.minutes * 60);
    let grant = match Grant::new(tier, duration, reason, chrono::Utc::now()) {
        Ok(g) => g,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    let d = daemon.clone();
    let made = tokio::task::spawn_blocking(move || {
        crate::consent_change::grant(&d.inner.paths, &grant, Some(VIA), &mut |r| append(&d, r))?;
        // A lower tier than before stops the tasks above it now.
        d.refresh_consent_sync();
        Ok::<_, crate::Error>(grant)
    })
    .await;
    match made {
        Ok(Ok(g)) => {
            let message =
                format!("Granted tier {}: {}. Ends {}.", g.tier, g.tier.allows(), crate::time::rfc3339(g.expires_at));
            respond(StatusCode::OK, &Changed { message, status: daemon.status_view() })
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &crate::ErrorChain(&e).to_string()),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the grant failed"),
    }
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
}
