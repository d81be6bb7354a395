//! The owner's console in a real browser (headless Chromium through
//! chromedriver, tests/common/browser.rs), against a real daemon linked to
//! a real relay with an operator acting through it: issue 14's "Tests in
//! a real browser". The figures (latency of a line, of a Stop) are in
//! tests/console_figures.rs.

#[path = "common/attacker.rs"]
mod attacker;
#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/owner.rs"]
mod owner;

use std::time::Duration;

use browser::{Browser, REBIND_HOST};
use common::console::request;
use common::lab::survivors;
use common::to_second;
use owner::{Owner, finished};
use serde_json::{Value, json};

/// The page's elements, as the top of the console's app.js documents them.
mod ids {
    pub const ON: &str = "#banner[data-state=\"on\"]";
    pub const OFF: &str = "#banner[data-state=\"off\"]";
    pub const LIVE: &str = "#connection[data-connected=\"true\"]";
    pub const TIER: &str = "#tier";
    pub const COUNTDOWN: &str = "#countdown";
    pub const GRANTED_BY: &str = "#granted-by";
    pub const EXPIRES_AT: &str = "#expires-at";
    pub const TRANSCRIPT: &str = "#transcript";
    pub const REVOKE: &str = "#revoke";
    pub const ALLOW_TIER: &str = "#allow-tier";
    pub const ALLOW_MINUTES: &str = "#allow-minutes";
    pub const ALLOW_REASON: &str = "#allow-reason";
    pub const ALLOW_CONFIRM: &str = "#allow-confirm";
    pub const ALLOW_SUBMIT: &str = "#allow-submit";
    pub const ERROR: &str = "#error";
    pub const LINK_USED: &str = "#link-used";
    pub const SIGNED_OUT: &str = "#signed-out";

    /// The row of task `id`.
    pub fn task(id: &str) -> String {
        format!("#tasks tr[data-task-id=\"{id}\"]")
    }

    /// The Stop button of task `id`.
    pub fn stop(id: &str) -> String {
        format!("{} button.stop", task(id))
    }
}

/// One browser test at a time: each starts a relay, a daemon and a
/// Chromium on a machine shared with builds.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The HTTP status of the page the browser shows now (Navigation Timing).
async fn page_status(b: &Browser) -> u64 {
    b.js("return performance.getEntriesByType('navigation')[0].responseStatus;", vec![]).await.as_u64().unwrap_or(0)
}

/// A browser of `width` x `height` logged in to `owner`'s console.
async fn logged_in(owner: &Owner, width: u32, height: u32) -> Browser {
    let b = Browser::start(width, height).await;
    b.goto(&owner.login_url()).await;
    b.find(ids::LIVE).await;
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_url_logs_in_once_and_leaves_the_address_bar() {
    let _one = SERIAL.lock().await;
    let owner = Owner::start();
    let b = Browser::start(1024, 900).await;
    let url = owner.login_url();
    b.goto(&url).await;
    assert_eq!(b.url().await, format!("{}/console/", owner.origin()), "the token is gone from the address bar");
    b.find(ids::LIVE).await;
    let cookies = b.client().get_all_cookies().await.unwrap();
    let cookie = cookies.iter().find(|c| c.name() == "support_console").expect("the session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(cookie.path(), Some("/console"));
    assert_eq!(cookie.same_site().map(|s| format!("{s:?}")).as_deref(), Some("Strict"));
    // Script cannot read the session cookie.
    assert_eq!(b.js("return document.cookie;", vec![]).await, json!(""));

    // The same link a second time, without the cookie: refused, and no data.
    b.client().delete_all_cookies().await.unwrap();
    b.goto(&url).await;
    assert_eq!(page_status(&b).await, 401);
    let text = b.text(ids::LINK_USED).await;
    assert!(text.contains("used or has expired") && text.contains("support console"), "{text}");
    assert!(b.client().get_all_cookies().await.unwrap().is_empty(), "no session from a used link");
    b.goto(&format!("{}/console/", owner.origin())).await;
    let text = b.text(ids::SIGNED_OUT).await;
    assert!(text.contains("support console"), "the page asks to log in: {text}");
    assert_eq!(b.js("return document.getElementById('tier');", vec![]).await, Value::Null, "no data without a session");

    // A token nobody was given (as an expired one: unknown to the daemon).
    let forged = format!("{}/console/login?token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", owner.origin());
    b.goto(&forged).await;
    assert_eq!(page_status(&b).await, 401);
}

/// A login link lives 60 s (`LOGIN_TTL`); nothing can be awaited but the
/// clock, so this test waits 61 s, without holding [`SERIAL`]: the other
/// browser tests run meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_link_older_than_60_s_is_refused() {
    let owner = Owner::start();
    let url = owner.login_url();
    tokio::time::sleep(Duration::from_secs(61)).await;
    let _one = SERIAL.lock().await;
    let b = Browser::start(1024, 900).await;
    b.goto(&url).await;
    assert_eq!(page_status(&b).await, 401);
    assert!(b.text(ids::LINK_USED).await.contains("used or has expired"));
    assert!(b.client().get_all_cookies().await.unwrap().is_empty(), "no session from an expired link");
    let refused = owner.audit().into_iter().find(|r| r["event"] == "console.refused").expect("console.refused");
    assert!(refused.to_string().contains("login"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banner_shows_the_tier_and_a_countdown_that_goes_down() {
    let _one = SERIAL.lock().await;
    let owner = Owner::start();
    owner.allow(2, 30);
    let b = logged_in(&owner, 1024, 900).await;
    b.find(ids::ON).await;
    assert!(b.text("#support-state").await.contains("ON"), "said in words, not only in colour");
    let by = b.text(ids::GRANTED_BY).await;
    assert!(by.contains("the printer jams"), "the reason: {by}");
    // Instants as the CLI prints them (README, "Scripting"), not in the browser's locale.
    let status = owner.status();
    assert!(by.contains(&format!(" at {}", to_second(&status["granted_at"]))), "{by}");
    assert_eq!(b.text(ids::EXPIRES_AT).await, to_second(&status["expires_at"]));
    let tier = b.wait_text(ids::TIER, "the tier", |t| t.contains("Tier 2")).await;
    assert!(tier.contains("fixes"), "what tier 2 allows: {tier}");
    let first = seconds(&b.wait_text(ids::COUNTDOWN, "a countdown", |t| seconds(t).is_some()).await).unwrap();
    assert!((29 * 60..=30 * 60).contains(&first), "30 minutes left: {first} s");
    let later = b.wait_text(ids::COUNTDOWN, "the countdown goes down", |t| seconds(t).is_some_and(|s| s < first)).await;
    assert!(seconds(&later).unwrap() >= first - 5, "{later} after {first} s");
    // Revoked from the CLI: the banner turns OFF without a reload.
    owner.home().run(&["revoke"]).code(0);
    b.find(ids::OFF).await;
    assert!(b.text("#support-state").await.contains("OFF"));
}

/// The seconds a countdown shows (`29:59`, `1:02:03`), if it shows one.
fn seconds(text: &str) -> Option<u64> {
    let re = regex::Regex::new(r"(?:(\d+):)?(\d{1,2}):(\d{2})").unwrap();
    let c = re.captures(text)?;
    let n = |i: usize| c.get(i).map_or(0, |m| m.as_str().parse::<u64>().unwrap());
    Some(n(1) * 3600 + n(2) * 60 + n(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_works_live_in_the_page_and_one_click_stops_its_whole_tree() {
    let _one = SERIAL.lock().await;
    let owner = Owner::start();
    owner.allow(3, 30);
    let b = logged_in(&owner, 1024, 900).await;
    // The page is loaded before the agent starts: what follows comes live.
    let (operator, task, pids) = owner.start_agent("the printer jams");
    let row = b.find(&format!("{}[data-agent=\"true\"][data-operator=\"desk\"]", ids::task(&task))).await;
    let text = row.text().await.unwrap();
    assert!(text.contains("support is operating your agent"), "{text}");
    let started = owner.tasks().into_iter().find(|t| t["task_id"] == task.as_str()).unwrap()["started_at"].clone();
    assert!(text.contains(&to_second(&started)), "since when, as the CLI shows it: {text}");
    b.wait_text(ids::TRANSCRIPT, "the agent's lines", |t| t.contains("Looking into: the printer jams")).await;
    let transcript = b.wait_text(ids::TRANSCRIPT, "the tool's result", |t| t.contains("no jobs queued")).await;
    assert!(transcript.contains("Bash: lpstat -o"), "the tool use, labelled: {transcript}");
    let when = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$").unwrap();
    let times = b
        .js("return [...document.querySelectorAll('#transcript .when')].map((e) => e.textContent.trim());", vec![])
        .await;
    let times: Vec<&str> = times.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(!times.is_empty() && times.iter().all(|t| when.is_match(t)), "each line's time: {times:?}");
    let shot = browser::target_dir().join("console-screenshot.png");
    b.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a real screenshot");

    b.click(&ids::stop(&task)).await;
    wait_gone(&pids).await;
    let run = finished(operator);
    run.code(1).says("stopped by the owner");
    assert!(!owner.running(&task));
    let stopped = owner.audit().into_iter().find(|r| r["event"] == "task.stopped").expect("task.stopped");
    assert_eq!(stopped["by"], "owner");
    assert_eq!(stopped["via"], "console", "{stopped}");
    b.wait_js(
        &format!("return document.querySelector('{}') === null;", ids::task(&task).replace('\'', "\\'")),
        "the task leaves the list",
        |v| v == &json!(true),
    )
    .await;
}

/// Waits (30 s at most) until none of `pids` is alive.
async fn wait_gone(pids: &[i32]) {
    let deadline = std::time::Instant::now() + browser::PATIENCE;
    while !survivors(pids).is_empty() {
        assert!(std::time::Instant::now() < deadline, "survivors: {:?}", survivors(pids));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_kills_a_running_shell_task() {
    let _one = SERIAL.lock().await;
    let owner = Owner::start();
    owner.allow(4, 30);
    let b = logged_in(&owner, 1024, 900).await;
    let pidfile = owner.work.path().join("shell.pids");
    let cmd = format!("echo $$ >> {0}; sleep 1000 & echo $! >> {0}; wait", pidfile.display());
    let operator = owner.operator_spawn(&["shell", &owner.device.device_id, "--", &cmd]);
    let pids = common::wait_pids(&pidfile, 2);
    b.find("#tasks tr[data-action=\"shell\"]").await;
    b.click(ids::REVOKE).await;
    wait_gone(&pids).await;
    finished(operator).code(1);
    assert_eq!(owner.status()["enabled"], false);
    let revoked = owner.audit().into_iter().find(|r| r["event"] == "consent.revoked").expect("consent.revoked");
    assert_eq!(revoked["via"], "console", "{revoked}");
    b.find(ids::OFF).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_at_tier_3_needs_the_confirmation() {
    let _one = SERIAL.lock().await;
    let owner = Owner::start();
    let b = logged_in(&owner, 1024, 900).await;
    b.find(ids::OFF).await;
    b.find(ids::ALLOW_TIER).await.select_by_value("3").await.unwrap();
    let minutes = b.find(ids::ALLOW_MINUTES).await;
    minutes.clear().await.unwrap();
    minutes.send_keys("15").await.unwrap();
    b.find(ids::ALLOW_REASON).await.send_keys("the agent fixes the printer").await.unwrap();
    let confirm = b.find(ids::ALLOW_CONFIRM).await;
    assert!(confirm.is_displayed().await.unwrap(), "tier 3 shows the confirmation");
    assert!(!confirm.is_selected().await.unwrap(), "never ticked in advance");
    b.click(ids::ALLOW_SUBMIT).await;
    b.wait_text(ids::ERROR, "the page asks for the confirmation", |t| t.contains("confirmation")).await;
    assert_eq!(owner.status()["enabled"], false, "nothing granted without the confirmation");

    // The daemon asks for it too, whatever a page sends: the page's own
    // session and token, tier 3, no confirmation.
    let refused = b
        .js_async(
            "const done = arguments[arguments.length - 1];
             (async () => {
               const s = await (await fetch('/console/api/session')).json();
               const r = await fetch('/console/api/allow', { method: 'POST',
                 headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf },
                 body: JSON.stringify({ tier: 3, minutes: 15, reason: 'no box ticked', confirm: false }) });
               done([r.status, await r.text()]);
             })().catch((e) => done([0, String(e)]));",
        )
        .await;
    assert_eq!(refused[0], 400, "{refused}");
    assert!(refused[1].as_str().unwrap().contains("confirmation is needed"), "{refused}");
    assert_eq!(owner.status()["enabled"], false);

    b.find(ids::ALLOW_CONFIRM).await.click().await.unwrap();
    b.click(ids::ALLOW_SUBMIT).await;
    b.find(ids::ON).await;
    let status = owner.status();
    assert_eq!(status["tier"], 3, "{status}");
    assert_eq!(status["reason"], "the agent fixes the printer");
    let remaining = status["remaining_seconds"].as_u64().unwrap();
    assert!((14 * 60..=15 * 60).contains(&remaining), "{remaining}");
    let granted = owner.audit().into_iter().find(|r| r["event"] == "consent.granted").expect("consent.granted");
    assert_eq!(granted["via"], "console", "{granted}");
    assert_eq!(granted["tier"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_loopback_port_cannot_stop_revoke_allow_or_read() {
    let _one = SERIAL.lock().await;
    let owner = Owner::start();
    owner.allow(1, 30);
    let before = owner.status();
    let (operator, task, pids) = owner.start_tree(&owner.work.path().join("tree.pids"));
    // The owner is logged in, so the browser holds the session cookie.
    let b = logged_in(&owner, 1024, 900).await;
    b.find(&ids::task(&task)).await;
    let seq = owner.last_seq();

    let evil = attacker::serve(attacker::page(owner.console_port(), &task)).await;
    b.goto(&format!("http://127.0.0.1:{}/", evil.port())).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while b.js("return document.body.dataset.done === '1';", vec![]).await != json!(true) {
        assert!(std::time::Instant::now() < deadline, "the attack page never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report: Vec<Value> = serde_json::from_str(&b.text("#report").await).unwrap();
    assert_eq!(report.len(), 40, "every attempt reported: {report:?}");
    for r in &report {
        let read = r["read"].as_str().unwrap_or("");
        assert!(read.is_empty(), "the page read {read:?} through {}", r["what"]);
        let outcome = r["outcome"].as_str().unwrap();
        assert!(!outcome.starts_with("response cors") && !outcome.starts_with("response basic"), "{r}");
        assert!(!outcome.starts_with("message") && !outcome.starts_with("event"), "an event reached it: {r}");
    }

    // Nothing changed: the grant, the task, its tree.
    let after = owner.status();
    assert_eq!(after["enabled"], true);
    assert_eq!(after["grant_id"], before["grant_id"], "the same grant");
    assert_eq!(after["tier"], before["tier"]);
    assert!(owner.running(&task), "the task still runs");
    assert_eq!(survivors(&pids), pids, "its tree is whole");
    let new: Vec<Value> = owner.audit().into_iter().filter(|r| r["seq"].as_u64().unwrap() > seq).collect();
    for r in &new {
        let event = r["event"].as_str().unwrap();
        assert!(!["consent.granted", "consent.revoked", "task.stopped"].contains(&event), "a change: {r}");
    }
    assert!(new.iter().any(|r| r["event"] == "console.refused"), "the refusals are on record: {new:?}");

    // The owner's own console still works, the planted cookie beside its
    // own: the refusals were the checks, not a broken page.
    b.goto(&format!("{}/console/api/session", owner.origin())).await;
    let cookies = b.client().get_all_cookies().await.unwrap();
    assert_eq!(cookies.iter().filter(|c| c.name() == "support_console").count(), 2, "planted: {cookies:?}");
    b.goto(&format!("{}/console/", owner.origin())).await;
    b.click(&ids::stop(&task)).await;
    wait_gone(&pids).await;
    finished(operator).code(1).says("stopped by the owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebinding_host_is_refused() {
    let _one = SERIAL.lock().await;
    let owner = Owner::start();
    let port = owner.console_port();
    // A name that resolves to 127.0.0.1, as DNS rebinding makes it: the
    // browser sends `Host: rebind.test:PORT`, and its token stays unspent.
    let b = Browser::start(1024, 900).await;
    let url = owner.login_url();
    let rebound = url.replace("127.0.0.1", REBIND_HOST);
    b.goto(&rebound).await;
    assert_eq!(page_status(&b).await, 403, "{}", b.text("body").await);
    assert!(b.client().get_all_cookies().await.unwrap().is_empty(), "no cookie for a rebound name");
    b.goto(&format!("http://{REBIND_HOST}:{port}/console/")).await;
    assert_eq!(page_status(&b).await, 403);
    b.goto(&url).await;
    assert_eq!(b.url().await, format!("{}/console/", owner.origin()), "the token still logs in on the real name");

    // A change through the rebound name with everything else right (the
    // browser's own session cookie, the console's Origin, the CSRF token):
    // refused too (tests/console.rs tries the other Hosts on the GETs).
    let cookie = b.client().get_named_cookie("support_console").await.unwrap();
    let cookie = format!("support_console={}", cookie.value());
    let session = request(port, "GET", "/console/api/session", &[("Cookie", &cookie)], "");
    assert_eq!(session.status, 200, "the real Host is served: {session:?}");
    let csrf = session.json()["csrf"].as_str().unwrap().to_string();
    let (host, origin) = (format!("{REBIND_HOST}:{port}"), owner.origin());
    let headers = [
        ("Host", host.as_str()),
        ("Cookie", &cookie),
        ("Origin", &origin),
        ("X-CSRF-Token", &csrf),
        ("Content-Type", "application/json"),
    ];
    let body = r#"{"tier":1,"minutes":5,"reason":"rebound","confirm":true}"#;
    let reply = request(port, "POST", "/console/api/allow", &headers, body);
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.header("access-control-allow-origin").is_none());
    assert_eq!(owner.status()["enabled"], false, "nothing granted through a rebound name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_360_px_window_scrolls_no_wider() {
    let _one = SERIAL.lock().await;
    let owner = Owner::start();
    owner.allow(3, 30);
    let b = logged_in(&owner, 360, 800).await;
    assert_eq!(b.js("return window.innerWidth;", vec![]).await, json!(360), "the window is 360 px wide");
    let (operator, task, pids) =
        owner.start_agent("a prompt long enough to wrap on a narrow screen, unbroken_words_too");
    b.wait_text(ids::TRANSCRIPT, "the agent's lines", |t| t.contains("no jobs queued")).await;
    let widths =
        b.js("return [document.documentElement.scrollWidth, document.documentElement.clientWidth];", vec![]).await;
    assert!(widths[0].as_u64().unwrap() <= 360, "no horizontal scroll at 360 px: {widths}");
    // Nor inside: no box scrolls sideways (the tables' scrollers included).
    let wide = b
        .js(
            "return [...document.querySelectorAll('body *')]
               .filter((e) => e.scrollWidth > e.clientWidth + 1 && ['auto', 'scroll'].includes(getComputedStyle(e).overflowX))
               .map((e) => e.id || e.className || e.tagName);",
            vec![],
        )
        .await;
    assert_eq!(wide, json!([]), "boxes that scroll sideways at 360 px");
    b.screenshot(&browser::target_dir().join("console-360.png")).await;
    b.click(&ids::stop(&task)).await;
    wait_gone(&pids).await;
    finished(operator).code(1);
}
