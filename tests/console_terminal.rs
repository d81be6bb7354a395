//! Issue 16's live view in the owner's console: an operator's interactive
//! shell, opened through a real relay from a terminal (a pty the test
//! drives), shows in the page's read-only xterm.js terminal beside the
//! task's Stop button, with xterm's own styles applied under the console's
//! CSP; the owner's keys go nowhere; Stop ends the session and its shell.

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/operator_pty.rs"]
mod operator_pty;
#[path = "common/owner.rs"]
mod owner;

use std::time::{Duration, Instant};

use browser::Browser;
use common::lab::survivors;
use fantoccini::actions::{InputSource as _, KeyAction, KeyActions, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use operator_pty::OnPty;
use owner::Owner;
use serde_json::json;

/// The terminal row of task `id` (app.js documents it).
fn terminal(id: &str) -> String {
    format!("#tasks tr.terminal-row[data-terminal-for=\"{id}\"]")
}

/// The text xterm.js shows in task `id`'s terminal.
async fn shown(b: &Browser, id: &str) -> String {
    b.text(&format!("{} .xterm-rows", terminal(id))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_shell_shows_live_in_a_read_only_terminal_beside_stop_and_one_click_ends_it() {
    let owner = Owner::start();
    owner.allow(4, 30);
    let b = Browser::start(1200, 900).await;
    b.goto(&owner.login_url()).await;
    b.find("#connection[data-connected=\"true\"]").await;

    let mut op = OnPty::spawn(&owner.operator(&["shell", &owner.device.device_id]), 100, 30);
    let out = op.wait_for("the session starts", "the owner is watching").await;
    let task = out
        .split("accepted as task ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or_else(|| panic!("no task id in {out:?}"))
        .to_string();
    let pidfile = owner.work.path().join("shell.pid");
    op.type_text(format!("echo $$ > {}; echo hello-$((6*7))\r", pidfile.display()));
    op.wait_for("the operator sees the shell's answer", "hello-42").await;

    // Live in the page, in its own terminal, the row right after the task's (with its Stop).
    let rows = format!("{} .xterm-rows", terminal(&task));
    b.wait_text(&rows, "the owner sees the shell live", |t| t.contains("hello-42")).await;
    let beside = b
        .js(
            "const t = document.querySelector(arguments[0]); const prev = t && t.previousElementSibling;
             return !!prev && prev.dataset.taskId === arguments[1] && !!prev.querySelector('button.stop');",
            vec![json!(terminal(&task)), json!(task)],
        )
        .await;
    assert_eq!(beside, json!(true), "the terminal is not right after its task's row");
    let box_ = format!("{} .terminal", terminal(&task));
    let size = b
        .js(
            "const e = document.querySelector(arguments[0]); return [e.dataset.cols, e.dataset.rows];",
            vec![json!(box_)],
        )
        .await;
    assert_eq!(size, json!(["100", "30"]), "the session's size from terminal_size");

    // xterm.js's own styles hold under `default-src 'self'`: its theme (a
    // <style> it writes) and a truecolor cell (a style attribute it sets).
    op.type_text("printf '\\033[38;2;255;0;0mRED-%s\\033[0m\\n' $((2+3))\r");
    b.wait_text(&rows, "the coloured line", |t| t.contains("RED-5")).await;
    let colours = b
        .js(
            "const rows = document.querySelector(arguments[0]);
             const red = [...rows.querySelectorAll('span')].find((s) => s.textContent.includes('RED-5'));
             return [getComputedStyle(rows).color, red ? getComputedStyle(red).color : null,
                     getComputedStyle(rows.querySelector('span')).display];",
            vec![json!(rows)],
        )
        .await;
    assert_eq!(
        colours,
        json!(["rgb(255, 255, 255)", "rgb(255, 0, 0)", "inline-block"]),
        "xterm's styles under the CSP"
    );

    // A hyperlink the shell prints (OSC 8) does nothing when the owner clicks it:
    // no confirm(), no window, no navigation (xterm's default would ask, then open it).
    op.type_text("printf '\\033]8;;http://127.0.0.1:9/owned\\033\\\\LINK-%s\\033]8;;\\033\\\\\\n' 7\r");
    b.wait_text(&rows, "the hyperlink", |t| t.contains("LINK-7")).await;
    let at = b
        .js(
            "window.__asked = 0; window.__opened = 0;
             window.confirm = () => { window.__asked++; return true; };
             window.open = () => { window.__opened++; return null; };
             const rows = document.querySelector(arguments[0]);
             const link = [...rows.querySelectorAll('span')].find((s) => s.textContent.includes('LINK-7'));
             const r = link.getBoundingClientRect();
             return [r.left + 8, r.top + r.height / 2];",
            vec![json!(rows)],
        )
        .await;
    let (x, y) = (at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
    let url = b.url().await;
    let mouse = MouseActions::new("owner-mouse".into())
        .then(PointerAction::MoveTo { duration: None, x, y })
        .pause(Duration::from_millis(100))
        .then(PointerAction::MoveBy { duration: None, x: 2.0, y: 0.0 })
        .pause(Duration::from_millis(100))
        .then(PointerAction::Down { button: MOUSE_BUTTON_LEFT })
        .then(PointerAction::Up { button: MOUSE_BUTTON_LEFT });
    b.client().perform_actions(mouse).await.unwrap();
    let hovered = b.js("return document.querySelector(arguments[0]).matches(':hover');", vec![json!(box_)]).await;
    assert_eq!(hovered, json!(true), "the pointer was over the terminal");
    let after = b.js("return [window.__asked, window.__opened];", vec![]).await;
    assert_eq!(after, json!([0, 0]), "a click on the link asked or opened");
    assert_eq!(b.url().await, url);
    assert_eq!(b.client().windows().await.unwrap().len(), 1);

    // The owner cannot type into it: keys pressed in the terminal reach neither shell nor operator.
    b.click(&box_).await;
    let mut keys = KeyActions::new("owner-keys".into());
    for c in "zzz-owner\u{E007}".chars() {
        keys = keys.then(KeyAction::Down { value: c }).then(KeyAction::Up { value: c });
    }
    b.client().perform_actions(keys).await.unwrap();
    op.type_text("echo after-$((1+1))\r");
    op.wait_for("the shell goes on", "after-2").await;
    let text = b.wait_text(&rows, "the line after the owner's keys", |t| t.contains("after-2")).await;
    assert!(!text.contains("zzz-owner"), "the owner's keys reached the shell: {text}");
    assert!(!op.output().contains("zzz-owner"), "the owner's keys reached the operator");

    let shot = browser::target_dir().join("console-terminal.png");
    b.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "a real screenshot");

    // In a 360 px window the page still scrolls no wider: the terminal scrolls inside its own box.
    b.client().set_window_size(360, 800).await.unwrap();
    let widths = b
        .wait_js("return [document.documentElement.scrollWidth, window.innerWidth];", "the window narrows", |v| {
            v[1].as_u64().is_some_and(|w| w <= 400)
        })
        .await;
    assert!(widths[0].as_u64() <= widths[1].as_u64(), "the page scrolls sideways at {widths}");
    b.client().set_window_size(1200, 900).await.unwrap();

    // One click on Stop ends the session: the shell is gone, the operator is told, the terminal closes.
    let shell: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let clicked = Instant::now();
    b.click(&format!("#tasks tr[data-task-id=\"{task}\"] button.stop")).await;
    let code = op.exit_code().await;
    assert_ne!(code, 0, "the operator's session ended by a Stop: {:?}", op.output());
    // Its last words may still be on their way from the pty when it has exited.
    op.wait_for("the operator is told", "stopped by the owner").await;
    while !survivors(&[shell]).is_empty() {
        assert!(clicked.elapsed() < browser::PATIENCE, "the shell {shell} survived the Stop");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.wait_js(
        &format!("return document.querySelector('{}') === null;", terminal(&task).replace('\'', "\\'")),
        "the terminal closes when the task ends",
        |v| v == &json!(true),
    )
    .await;
    let stopped = owner.audit().into_iter().find(|r| r["event"] == "task.stopped").expect("task.stopped");
    assert_eq!((&stopped["task_id"], &stopped["via"]), (&json!(task), &json!("console")), "{stopped}");
    assert!(shown(&b, &task).await.is_empty());

    // The session was recorded: its digest is on the record, and it plays back.
    let deadline = Instant::now() + browser::PATIENCE;
    let listed = loop {
        let out = owner.home().run(&["recordings", "--json"]).code(0).stdout.clone();
        let row = out
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["id"] == task.as_str());
        if let Some(row) = row.filter(|r| r["matches_record"] == json!(true)) {
            break row;
        }
        assert!(Instant::now() < deadline, "no recording of {task} matching its record: {out}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(listed["title"].as_str().is_some(), "{listed}");
    let played = owner.home().cmd(&["play", &task, "--speed", "1000"]).output().unwrap();
    assert!(played.status.success(), "{}", String::from_utf8_lossy(&played.stderr));
    let played = String::from_utf8_lossy(&played.stdout);
    assert!(played.contains("hello-42") && played.contains("after-2"), "{played:?}");
}
