//! The console's API, once `mod.rs` has checked the request: what the page
//! reads (`GET /console/api/...`) and the changes it makes (`POST`), each
//! through the same code as the CLI's (`consent_change`, the daemon's stop),
//! audited with `via: "console"`.

use std::ops::ControlFlow;

use bytes::Bytes;
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::super::Daemon;
use super::super::console_request::{AllowRequest, AuditQuery, Get, Post};
use super::super::http::{Body, StreamBody, error, respond};
use crate::audit::{Event, Record};
use crate::consent::{Grant, Tier};
use crate::control_api::{Stopped, TaskList, WatchEvent};
use crate::protocol::StoppedBy;
use crate::summary::SummaryError;

/// How often an idle event stream gets a comment line, and its session is checked.
const EVENTS_PING: std::time::Duration = std::time::Duration::from_secs(15);
/// What the console writes on every record of a change it makes.
pub(super) const VIA: &str = "console";

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
        Get::Audit(query) => {
            let d = daemon.clone();
            match tokio::task::spawn_blocking(move || audit_page(&d, &query)).await {
                Ok(Ok(page)) => respond(StatusCode::OK, &page),
                Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &crate::ErrorChain(&e).to_string()),
                Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "reading the audit log failed"),
            }
        }
        Get::Summary(grant) => summary(daemon, grant).await,
    }
}

/// `GET /console/api/summary?grant=ID` (none: the last grant): the
/// summary as `support summary --json` prints it, plus `text`, as
/// `support summary` prints it. 404 when there is no such grant.
async fn summary(daemon: &Daemon, grant: Option<String>) -> Response<Body> {
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

/// The answer to a change: what was done, for people, and the status after it.
#[derive(Serialize)]
struct Changed {
    message: String,
    status: crate::control_api::StatusView,
}

pub(super) async fn post(daemon: &Daemon, what: Post) -> Response<Body> {
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
        Post::Allow(asked) => allow(daemon, asked).await,
    }
}

fn append(daemon: &Daemon, r: Record) -> Result<Record, crate::Error> {
    let mut written = daemon.audit_sync(vec![r])?;
    written.pop().ok_or_else(|| crate::Error::Failed("the audit record was not written".into()))
}

/// `POST /console/api/allow`: the grant `asked` (checked by
/// `console_request::check_body`), without a scope.
async fn allow(daemon: &Daemon, asked: AllowRequest) -> Response<Body> {
    let AllowRequest { tier, minutes, reason } = asked;
    let duration = std::time::Duration::from_secs(minutes * 60);
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
                format!("Granted tier {}: {}. Ends {}.", g.tier, g.tier.allows(), crate::time::human(g.expires_at));
            respond(StatusCode::OK, &Changed { message, status: daemon.status_view() })
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &crate::ErrorChain(&e).to_string()),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the grant failed"),
    }
}
