//! Desktop notifications (issue 14 item 4) through the freedesktop
//! Notifications service on the owner's session D-Bus
//! (`org.freedesktop.Notifications`, Desktop Notifications Specification
//! 1.2), and the summary of every grant that ends, in the daemon's log.
//!
//! Three notifications: a task started (any tier; an agent task, tier 3,
//! and a shell task, tier 4, say so in the title and are sent `critical`),
//! a grant with [`GRANT_WARNING`] left, and a grant that ended, with the
//! summary's one-line gist ([`crate::summary::GrantSummary::gist`]).
//!
//! Where the server advertises the `actions` capability
//! (`GetCapabilities`), a task's notification offers **Stop** (`stop`) and
//! **Open console** (`console`); the warning and the end offer **Open
//! console** only: the console is where the owner revokes or grants
//! anew, and a warning that revoked on one click could end a grant the
//! owner meant to keep. Stop goes through [`Daemon::stop_task`] with
//! [`StoppedBy::Owner`], the path of `support stop`, so its `task.stopped`
//! record says `by: owner`, as `support stop`'s does (the click is the owner's,
//! on the owner's own desktop). Console runs [`open_console`].
//!
//! The action path is checked: an `ActionInvoked` counts only when zbus
//! saw it come from the unique name that owns `org.freedesktop.Notifications`
//! (any other sender's signal is dropped by the proxy's match), and only
//! for an id that this daemon was given back by `Notify` for a task it
//! named; anything else is logged at debug and does nothing.
//!
//! Nothing here may hold up a task: the daemon's event stream feeds a
//! bounded queue ([`QUEUE`], `try_send`: a full queue drops the
//! notification), one task sends, each call bounded by [`SEND_TIMEOUT`].
//! With no session bus (no `DBUS_SESSION_BUS_ADDRESS` and no
//! `$XDG_RUNTIME_DIR/bus`, or one that does not answer) it logs once and
//! sends nothing; summaries still go to the log.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};

use super::Daemon;
use crate::audit::{Event, Record};
use crate::control_api::WatchEvent;
use crate::protocol::StoppedBy;
use crate::summary::Ending;

/// How long before a grant ends its warning is sent: 5 minutes.
pub const GRANT_WARNING: Duration = Duration::from_secs(300);
/// Milliseconds to use instead of [`GRANT_WARNING`] (for tests).
pub const GRANT_WARNING_ENV: &str = "SUPPORT_GRANT_WARNING_MS";
/// The longest one D-Bus call (connect, `Notify`, `GetCapabilities`) may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// Notifications waiting to be sent; more are dropped.
pub const QUEUE: usize = 32;
/// How long an ended grant's summary waits for its tasks' ends and its
/// own end record (`support revoke` writes it after telling the daemon).
const END_WAIT: Duration = Duration::from_secs(5);
/// Notifications whose actions are remembered (oldest forgotten first).
const REMEMBERED: usize = 256;
/// The longest body sent, in characters.
const MAX_BODY: usize = 600;

/// Where notifications go, and when the warning comes.
///
/// # Defaults
/// No bus (nothing is sent), warning [`GRANT_WARNING`] before the end.
/// `support daemon` uses [`NotifyOptions::from_env`].
#[derive(Clone, Debug)]
pub struct NotifyOptions {
    /// A D-Bus address (`unix:path=/run/user/1000/bus`); `None`: no notifications.
    pub bus: Option<String>,
    /// How long before a grant's end the warning is sent.
    pub warn_before: Duration,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions { bus: None, warn_before: GRANT_WARNING }
    }
}

impl NotifyOptions {
    /// The session bus as `dbus-launch` and systemd name it:
    /// `DBUS_SESSION_BUS_ADDRESS`, else `$XDG_RUNTIME_DIR/bus` when it
    /// exists; the warning from [`GRANT_WARNING_ENV`] when it is a number.
    pub fn from_env() -> NotifyOptions {
        let bus = std::env::var("DBUS_SESSION_BUS_ADDRESS").ok().filter(|a| !a.trim().is_empty()).or_else(|| {
            let path = std::path::PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?).join("bus");
            path.exists().then(|| format!("unix:path={}", path.display()))
        });
        let warn_before = std::env::var(GRANT_WARNING_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map_or(GRANT_WARNING, Duration::from_millis);
        NotifyOptions { bus, warn_before }
    }
}

/// What a notification is about.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Note {
    /// `action.started`.
    TaskStarted { task_id: String, operator: String, action: String, tier: u8, params: BTreeMap<String, String> },
    /// A grant has `left` before it ends.
    GrantWarning { grant_id: String, tier: u8, left: Duration },
    /// A grant ended, how; the summary's gist.
    GrantEnded { ended: Ending, gist: String },
}

/// A notification as sent: title, body, urgency (0 low, 1 normal, 2 critical), actions.
struct Shown {
    summary: String,
    body: String,
    urgency: u8,
    actions: &'static [(&'static str, &'static str)],
    /// The task a `stop` action stops.
    task: Option<String>,
}

const TASK_ACTIONS: &[(&str, &str)] = &[("stop", "Stop"), ("console", "Open console")];
const CONSOLE_ACTION: &[(&str, &str)] = &[("console", "Open console")];

impl Note {
    fn show(&self) -> Shown {
        match self {
            Note::TaskStarted { task_id, operator, action, tier: 4, params }
                if action == "shell" && !params.contains_key("cmd") =>
            {
                let body = format!(
                    "{} opened an interactive shell as you (tier 4, task {task_id}). Every keystroke's effect shows live in the console and `support watch`, and it is recorded; Stop ends it.",
                    crate::text::brief(operator)
                );
                let summary = "Support opened an interactive shell".to_string();
                Shown { summary, body, urgency: 2, actions: TASK_ACTIONS, task: Some(task_id.clone()) }
            }
            Note::TaskStarted { task_id, operator, action, tier, params } => {
                let (summary, urgency) = match tier {
                    3 => ("Support is operating your agent".to_string(), 2),
                    4 => ("Support is running a shell command".to_string(), 2),
                    _ => (format!("Support started {}", crate::text::brief(action)), 1),
                };
                let mut body = format!(
                    "{} runs {} (tier {tier}, task {task_id})",
                    crate::text::brief(operator),
                    crate::text::brief(action)
                );
                for (k, v) in params {
                    body.push_str(&format!("\n{}={}", crate::text::brief(k), crate::text::brief(v)));
                }
                Shown { summary, body, urgency, actions: TASK_ACTIONS, task: Some(task_id.clone()) }
            }
            Note::GrantWarning { grant_id, tier, left } => {
                let minutes = left.as_secs().div_ceil(60).max(1);
                Shown {
                    summary: format!("Support ends in {minutes} minute{}", if minutes == 1 { "" } else { "s" }),
                    body: format!(
                        "Grant {grant_id} (tier {tier}) ends then; `support allow` grants anew, `support revoke` ends it now."
                    ),
                    urgency: 1,
                    actions: CONSOLE_ACTION,
                    task: None,
                }
            }
            Note::GrantEnded { ended, gist } => Shown {
                summary: match ended {
                    Ending::Revoked => "Support has ended: revoked",
                    Ending::Expired => "Support has ended: the grant expired",
                    Ending::Replaced => "Support goes on under a new grant",
                    Ending::NotEnded => "Support has ended",
                }
                .into(),
                body: format!("{gist}\n`support summary` shows what ran."),
                urgency: 1,
                actions: CONSOLE_ACTION,
                task: None,
            },
        }
    }
}

/// Text for a notification body: printable, capped, and, where the
/// server reads markup (the `body-markup` capability), with its characters
/// escaped, so an operator's name or a parameter can neither style nor link anything.
fn body_text(s: &str, markup: bool) -> String {
    let s = crate::text::printable_lines(s);
    let mut out = String::with_capacity(s.len());
    for c in s.chars().take(MAX_BODY) {
        match c {
            '&' if markup => out.push_str("&amp;"),
            '<' if markup => out.push_str("&lt;"),
            '>' if markup => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

#[zbus::proxy(
    interface = "org.freedesktop.Notifications",
    default_service = "org.freedesktop.Notifications",
    default_path = "/org/freedesktop/Notifications",
    gen_blocking = false
)]
trait Notifications {
    /// `Notify(app_name, replaces_id, app_icon, summary, body, actions, hints, expire_timeout) -> id`.
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: &str,
        replaces_id: u32,
        app_icon: &str,
        summary: &str,
        body: &str,
        actions: &[&str],
        hints: HashMap<&str, zbus::zvariant::Value<'_>>,
        expire_timeout: i32,
    ) -> zbus::Result<u32>;

    /// `GetCapabilities() -> as`.
    fn get_capabilities(&self) -> zbus::Result<Vec<String>>;

    /// `ActionInvoked(id, action_key)`.
    #[zbus(signal)]
    fn action_invoked(&self, id: u32, action_key: String) -> zbus::Result<()>;

    /// `NotificationClosed(id, reason)`.
    #[zbus(signal)]
    fn notification_closed(&self, id: u32, reason: u32) -> zbus::Result<()>;
}

/// Starts the notifier: it follows the daemon's events until `stop`.
pub(super) fn spawn(
    daemon: Daemon,
    options: NotifyOptions,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let sender = tokio::spawn(deliver(daemon.clone(), options.bus.clone(), rx, stop.clone()));
    tokio::spawn(async move {
        follow(daemon, options.warn_before, tx, stop).await;
        let _ = sender.await;
    })
}

/// The grant being followed: its id, tier, when it ends, and whether its warning went.
struct Followed {
    grant_id: String,
    tier: u8,
    expires_at: DateTime<Utc>,
    warned: bool,
}

impl Daemon {
    /// The grant in force as the daemon enforces it, for the notifier.
    fn followed(&self, warn_before: Duration) -> Option<Followed> {
        let state = self.state();
        let g = state.consent.effective.live()?;
        let length = (g.expires_at - g.granted_at).to_std().unwrap_or_default();
        Some(Followed {
            grant_id: g.grant_id.clone(),
            tier: g.tier.get(),
            expires_at: g.expires_at,
            // A grant no longer than the warning never "has 5 minutes left": the owner just set it.
            warned: length <= warn_before,
        })
    }
}

/// Reads the daemon's events: task starts, grant changes, the warning's time.
async fn follow(daemon: Daemon, warn_before: Duration, tx: mpsc::Sender<Note>, mut stop: watch::Receiver<bool>) {
    let mut events = daemon.subscribe();
    let mut grant = daemon.followed(warn_before);
    loop {
        let warn_at = grant.as_ref().filter(|g| !g.warned).map(|g| {
            let left = (g.expires_at - Utc::now()).to_std().unwrap_or_default();
            tokio::time::Instant::now() + left.saturating_sub(warn_before)
        });
        let event = tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            _ = tokio::time::sleep_until(warn_at.unwrap_or_else(tokio::time::Instant::now)), if warn_at.is_some() => {
                if let Some(g) = grant.as_mut() {
                    g.warned = true;
                    let left = (g.expires_at - Utc::now()).to_std().unwrap_or_default();
                    if !left.is_zero() {
                        queue(&tx, Note::GrantWarning { grant_id: g.grant_id.clone(), tier: g.tier, left });
                    }
                }
                continue;
            }
            e = events.recv() => e,
        };
        let json = match event {
            Ok(json) => json,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(missed = n, "the notifier fell behind the daemon's events");
                regrant(&daemon, &mut grant, warn_before, &tx);
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        // Transcript lines are most of the stream and never matter here.
        if json.starts_with(r#"{"kind":"transcript""#) || json.starts_with(r#"{"kind":"ping""#) {
            continue;
        }
        match serde_json::from_str::<WatchEvent>(&json) {
            Ok(WatchEvent::Audit { record }) if record.event == Event::ActionStarted => {
                if let Some(note) = task_started(&record) {
                    queue(&tx, note);
                }
            }
            Ok(WatchEvent::Status { .. } | WatchEvent::Audit { .. }) => regrant(&daemon, &mut grant, warn_before, &tx),
            _ => {}
        }
    }
}

/// Follows the grant now in force; when the one followed is gone, has its summary made.
fn regrant(daemon: &Daemon, grant: &mut Option<Followed>, warn_before: Duration, tx: &mpsc::Sender<Note>) {
    let now = daemon.followed(warn_before);
    let same = |a: &Option<Followed>, b: &Option<Followed>| match (a, b) {
        (Some(a), Some(b)) => a.grant_id == b.grant_id && a.expires_at == b.expires_at,
        (None, None) => true,
        _ => false,
    };
    if same(grant, &now) {
        return;
    }
    if let Some(ended) = grant.take()
        && now.as_ref().is_none_or(|n| n.grant_id != ended.grant_id)
    {
        tokio::spawn(grant_ended(daemon.clone(), ended.grant_id, tx.clone()));
    }
    *grant = now;
}

fn task_started(r: &Record) -> Option<Note> {
    Some(Note::TaskStarted {
        task_id: r.task_id.clone()?,
        operator: r.operator.clone().unwrap_or_default(),
        action: r.action.clone().unwrap_or_default(),
        tier: r.tier.unwrap_or(0),
        params: r.params.clone().unwrap_or_default(),
    })
}

fn queue(tx: &mpsc::Sender<Note>, note: Note) {
    if tx.try_send(note).is_err() {
        tracing::debug!("the notification queue is full; one notification dropped");
    }
}

/// Waits (at most [`END_WAIT`]) for the grant's tasks to end and its end
/// to be on record, then logs its summary and queues the end notification.
async fn grant_ended(daemon: Daemon, grant_id: String, tx: mpsc::Sender<Note>) {
    let deadline = tokio::time::Instant::now() + END_WAIT;
    let mut summary = None;
    loop {
        let running = daemon.state().tasks.values().any(|t| t.info.grant_id == grant_id);
        if !running {
            let (paths, id) = (daemon.inner.paths.clone(), grant_id.clone());
            summary = tokio::task::spawn_blocking(move || crate::summary::load(&paths, Some(&id))).await.ok();
            if matches!(&summary, Some(Ok(s)) if s.ended != Ending::NotEnded) {
                break;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match summary {
        Some(Ok(s)) => {
            let gist = s.gist();
            tracing::info!(grant = %grant_id, summary = %s.render(), "{gist}");
            queue(&tx, Note::GrantEnded { ended: s.ended, gist });
        }
        Some(Err(e)) => {
            tracing::warn!(grant = %grant_id, error = %crate::ErrorChain(&e), "the grant ended; no summary of it")
        }
        None => tracing::warn!(grant = %grant_id, "the grant ended; its tasks were still running after 5 s"),
    }
}

/// Connects to `address` within [`SEND_TIMEOUT`]; says why not.
async fn connect(address: &str) -> Result<zbus::Connection, String> {
    let build = async { zbus::connection::Builder::address(address)?.method_timeout(SEND_TIMEOUT).build().await };
    match tokio::time::timeout(SEND_TIMEOUT, build).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", SEND_TIMEOUT.as_secs())),
    }
}

/// Sends what is queued, and acts on the actions the owner clicks.
async fn deliver(daemon: Daemon, bus: Option<String>, mut rx: mpsc::Receiver<Note>, mut stop: watch::Receiver<bool>) {
    let drain = |why: String| {
        tracing::info!("no desktop notifications: {why}");
    };
    let Some(address) = bus else {
        drain("no session bus (DBUS_SESSION_BUS_ADDRESS is unset and there is no $XDG_RUNTIME_DIR/bus)".into());
        return discard(rx, stop).await;
    };
    let session = async {
        let conn = connect(&address).await?;
        let proxy = NotificationsProxy::new(&conn).await.map_err(|e| e.to_string())?;
        let invoked = proxy.receive_action_invoked().await.map_err(|e| e.to_string())?;
        let closed = proxy.receive_notification_closed().await.map_err(|e| e.to_string())?;
        let caps = tokio::time::timeout(SEND_TIMEOUT, proxy.get_capabilities()).await;
        let has = |cap: &str| matches!(&caps, Ok(Ok(c)) if c.iter().any(|c| c == cap));
        Ok::<_, String>((conn, proxy, invoked, closed, has("actions"), has("body-markup")))
    };
    let (_conn, proxy, mut invoked, mut closed, with_actions, markup) = match session.await {
        Ok(s) => s,
        Err(e) => {
            drain(format!("the session bus {} does not answer ({e})", crate::text::brief(&address)));
            return discard(rx, stop).await;
        }
    };
    tracing::info!(actions = with_actions, "desktop notifications on the session bus");
    // Notification id → the task its Stop stops (`None`: console only).
    let mut ours: BTreeMap<u32, Option<String>> = BTreeMap::new();
    let mut failed_once = false;
    loop {
        tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            note = rx.recv() => {
                let Some(note) = note else { return };
                let shown = note.show();
                let actions: Vec<&str> = if with_actions {
                    shown.actions.iter().flat_map(|(k, label)| [*k, *label]).collect()
                } else {
                    Vec::new()
                };
                let hints = HashMap::from([("urgency", zbus::zvariant::Value::U8(shown.urgency))]);
                let (title, body) = (crate::text::printable(&shown.summary), body_text(&shown.body, markup));
                let sent = proxy.notify("support", 0, "", &title, &body, &actions, hints, -1);
                match tokio::time::timeout(SEND_TIMEOUT, sent).await {
                    Ok(Ok(id)) => {
                        if with_actions {
                            ours.insert(id, shown.task);
                            while ours.len() > REMEMBERED {
                                ours.pop_first();
                            }
                        }
                    }
                    failure => {
                        let why = match failure { Ok(Err(e)) => e.to_string(), _ => "timed out".into() };
                        if !failed_once {
                            tracing::warn!(error = %why, "a desktop notification could not be sent");
                            failed_once = true;
                        } else {
                            tracing::debug!(error = %why, "a desktop notification could not be sent");
                        }
                    }
                }
            }
            Some(signal) = invoked.next() => {
                let Ok(args) = signal.args() else { continue };
                let (id, key) = (args.id, args.action_key);
                match (ours.get(&id), key.as_str()) {
                    (Some(Some(task_id)), "stop") => {
                        tracing::info!(task = %task_id, "Stop clicked in a desktop notification");
                        let (d, task_id) = (daemon.clone(), task_id.clone());
                        tokio::spawn(async move { d.stop_task(&task_id, StoppedBy::Owner).await });
                    }
                    (Some(_), "console") => open_console(&daemon),
                    _ => tracing::debug!(id, key = %crate::text::brief(&key), "an action for no notification of ours: ignored"),
                }
            }
            Some(signal) = closed.next() => {
                if let Ok(args) = signal.args() {
                    ours.remove(&args.id);
                }
            }
        }
    }
}

/// With nowhere to send: empties the queue until `stop`, so senders never fill it.
async fn discard(mut rx: mpsc::Receiver<Note>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            note = rx.recv() => if note.is_none() { return },
        }
    }
}

/// The notification's **Open console** action: the daemon issues a
/// one-time login link itself ([`Daemon::console_login`]: the owner clicked
/// on their own desktop, and a `support console` started by the daemon
/// would be refused as running inside its tree) and opens it with
/// `xdg-open`; a failure is logged.
pub(super) fn open_console(daemon: &Daemon) {
    let Some(login) = daemon.console_login() else {
        tracing::warn!("Open console: the daemon does not serve the console");
        return;
    };
    tokio::task::spawn_blocking(move || {
        if let Err(why) = super::open_in_browser(&login.url) {
            tracing::warn!(%why, "Open console: could not open a browser");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_and_shell_tasks_stand_out_and_text_cannot_carry_markup() {
        let task = |tier| Note::TaskStarted {
            task_id: "t-1".into(),
            operator: "alice<b>".into(),
            action: "memory".into(),
            tier,
            params: [("unit".to_string(), "<a href=\"x\">cups</a>".to_string())].into(),
        };
        for (tier, title, urgency) in [
            (1, "Support started memory", 1),
            (2, "Support started memory", 1),
            (3, "Support is operating your agent", 2),
            (4, "Support is running a shell command", 2),
        ] {
            let shown = task(tier).show();
            assert_eq!((shown.summary.as_str(), shown.urgency), (title, urgency), "tier {tier}");
            assert_eq!(shown.task.as_deref(), Some("t-1"));
            assert_eq!(shown.actions, TASK_ACTIONS);
            let body = body_text(&shown.body, true);
            assert!(body_text(&shown.body, false).contains("alice<b>"));
            assert!(body.starts_with("alice&lt;b&gt; runs memory (tier"), "{body}");
            assert!(body.contains("unit=&lt;a href=\"x\"&gt;cups&lt;/a&gt;") && !body.contains('<'), "{body}");
        }
        let session = Note::TaskStarted {
            task_id: "t-2".into(),
            operator: "bob<i>".into(),
            action: "shell".into(),
            tier: 4,
            params: [("cols".to_string(), "80".to_string())].into(),
        }
        .show();
        assert_eq!((session.summary.as_str(), session.urgency), ("Support opened an interactive shell", 2));
        assert!(body_text(&session.body, true).starts_with("bob&lt;i&gt; opened an interactive shell as you"));
        assert_eq!((session.actions, session.task.as_deref()), (TASK_ACTIONS, Some("t-2")));
        let warn = Note::GrantWarning { grant_id: "g-1".into(), tier: 2, left: Duration::from_secs(299) }.show();
        assert_eq!(warn.summary, "Support ends in 5 minutes");
        assert_eq!((warn.actions, warn.task), (CONSOLE_ACTION, None));
        assert!(body_text("\u{1b}[31m&", true).starts_with("?[31m&amp;"));
        assert_eq!(body_text(&"x".repeat(5000), false).len(), MAX_BODY);
    }
}
