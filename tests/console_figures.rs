//! The console's figures, each beside a baseline measured in the same run
//! (ignored by default: it takes a minute or two):
//!
//! - a line: from the moment a task prints it (tests/fixtures/ticker.sh
//!   stamps each line with the wall clock) to its appearance in the page's
//!   DOM (a MutationObserver stamps it), against `support watch --json`
//!   reading the same line from the control API;
//! - a Stop: from the click on the task's Stop button to the last of the
//!   tree's 10 processes gone from /proc, against `support stop TASK_ID`
//!   and the control API's `POST /v1/tasks/ID/stop` (what it sends),
//!   and beside a click on a heading (which does nothing): the browser's
//!   own round trip through WebDriver.
//!
//! `cargo test --test console_figures -- --ignored --nocapture`

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/owner.rs"]
mod owner;

use std::io::BufRead as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use browser::Browser;
use common::lab::survivors;
use owner::{Owner, finished};

/// The page's elements, as the top of the console's app.js documents them.
const LIVE: &str = "#connection[data-connected=\"true\"]";

fn stop_button(id: &str) -> String {
    format!("#tasks tr[data-task-id=\"{id}\"] button.stop")
}

/// Stops measured each way.
const STOPS: usize = 30;

/// An element a click on which does nothing (a heading): the browser's own round trip.
const INERT: &str = "#tasks-heading";

/// Records, for each `tick I NS` text that enters the page, `[I, NS, ms since the epoch]`.
const OBSERVE: &str = r#"
window.__ticks = [];
const seen = new Set();
const scan = (text, t) => {
  for (const m of (text || "").matchAll(/tick (\d+) (\d+)/g)) {
    if (!seen.has(m[1])) { seen.add(m[1]); window.__ticks.push([Number(m[1]), m[2], t]); }
  }
};
new MutationObserver((muts) => {
  const t = performance.timeOrigin + performance.now();
  for (const m of muts) {
    if (m.type === "characterData") scan(m.target.textContent, t);
    for (const n of m.addedNodes) scan(n.textContent, t);
  }
}).observe(document.body, { childList: true, subtree: true, characterData: true });
window.__clicks = [];
document.addEventListener("click", (e) => {
  if (e.target.closest("button.stop")) window.__clicks.push(performance.timeOrigin + performance.now());
}, true);
return true;
"#;

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// The nearest-rank `p`th percentile of `v` (sorted here), in ms.
fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn row(what: &str, v: &mut [f64]) {
    println!("{what:<46} n={:<3} p50 {:>8.1} ms   p99 {:>8.1} ms", v.len(), pct(v, 50.0), pct(v, 99.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures: run with --ignored --nocapture"]
async fn console_figures() {
    let owner = Owner::start();
    owner.allow(1, 60);
    let b = Browser::start(1024, 900).await;
    b.goto(&owner.login_url()).await;
    b.find(LIVE).await;
    assert_eq!(b.js(OBSERVE, vec![]).await, serde_json::json!(true));

    // The baseline reader: `support watch --json`, connected (its first line) before the ticker starts.
    let mut watch = owner.home().cmd(&["watch", "--json"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(u32, u128, u128)>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let out = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        let re = regex::Regex::new(r"tick (\d+) (\d+)").unwrap();
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let at = now_ns();
            let _ = ready_tx.send(());
            if let Some(c) = re.captures(&line) {
                let _ = tx.send((c[1].parse().unwrap(), c[2].parse().unwrap(), at));
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(30)).expect("support watch connects");

    let run = owner.operator(&["run", &owner.device.device_id, "ticker"]).output().unwrap();
    common::Run::from(run).code(0);
    let ticks = b
        .wait_js("return window.__ticks;", "50 ticks in the page", |v| v.as_array().is_some_and(|a| a.len() >= 50))
        .await;
    let mut page: Vec<f64> = ticks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t[2].as_f64().unwrap() - t[1].as_str().unwrap().parse::<u128>().unwrap() as f64 / 1e6)
        .collect();
    let mut cli = Vec::new();
    while cli.len() < 50 {
        let (_, printed, at) = rx.recv_timeout(Duration::from_secs(30)).expect("50 ticks through support watch");
        cli.push((at - printed) as f64 / 1e6);
    }
    let _ = watch.kill();
    let _ = watch.wait();

    let mut click = Vec::new();
    let mut inert = Vec::new();
    let mut in_page = Vec::new();
    let mut cli_stop = Vec::new();
    let heading = b.find(INERT).await;
    let mut api_stop = Vec::new();
    let paths = support::Paths::under(owner.home().path.clone());
    let secret = std::fs::read_to_string(paths.secret()).unwrap().trim().to_string();
    let info: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(paths.daemon_info()).unwrap()).unwrap();
    let control_port = info["control_port"].as_u64().unwrap() as u16;
    for i in 0..STOPS * 3 {
        let (operator, task, pids) = owner.start_tree(&owner.work.path().join(format!("tree-{i}.pids")));
        let started = match i % 3 {
            0 => {
                let button = b.find(&stop_button(&task)).await;
                let t0 = Instant::now();
                heading.click().await.unwrap();
                inert.push(t0.elapsed().as_secs_f64() * 1e3);
                let t0 = Instant::now();
                button.click().await.unwrap();
                t0
            }
            1 => {
                let t0 = Instant::now();
                owner.home().run(&["stop", &task]).code(0);
                t0
            }
            _ => {
                let bearer = format!("Bearer {secret}");
                let t0 = Instant::now();
                let path = format!("/v1/tasks/{task}/stop");
                let r = common::console::request(control_port, "POST", &path, &[("Authorization", &bearer)], "");
                assert_eq!(r.status, 200, "{r:?}");
                t0
            }
        };
        while !survivors(&pids).is_empty() {
            assert!(started.elapsed() < Duration::from_secs(30), "the tree outlived a stop");
            std::thread::sleep(Duration::from_micros(500));
        }
        let took = started.elapsed().as_secs_f64() * 1e3;
        let gone = now_ns() as f64 / 1e6;
        match i % 3 {
            0 => {
                click.push(took);
                let clicks = b.js("return window.__clicks;", vec![]).await;
                let at = clicks
                    .as_array()
                    .and_then(|a| a.last())
                    .and_then(|v| v.as_f64())
                    .expect("the click reached the page");
                in_page.push(gone - at);
            }
            1 => cli_stop.push(took),
            _ => api_stop.push(took),
        }
        finished(operator).code(1);
    }

    println!("\nconsole figures (debug build, this machine; baseline beside each):");
    row("line: task prints -> page DOM", &mut page);
    row("line: task prints -> `support watch` (base)", &mut cli);
    row("stop: click Stop -> tree gone from /proc", &mut click);
    row("stop: the page's click event -> tree gone", &mut in_page);
    row("click on a heading (the browser's round trip)", &mut inert);
    row("stop: `support stop ID` -> tree gone (base)", &mut cli_stop);
    row("stop: control API POST -> tree gone (base)", &mut api_stop);
}
