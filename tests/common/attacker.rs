//! A hostile page on another loopback port: a tiny hyper server whose one
//! page, loaded in the same browser as the owner's console, tries every
//! way a web page has to change or read the console (fetch with and
//! without guessed headers, a beacon, form posts, `<img>`, `<script>`,
//! `EventSource`, an `<iframe>`, a planted cookie of the console's name)
//! and writes what it got into its DOM
//! (`#report`, a JSON array of `{what, outcome, read}`) for the test to
//! read. Cookies are not isolated by port, so this page is same-site with
//! the console and the browser sends the session cookie along: only the
//! console's own checks stand between it and the owner's grant.
#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;

/// Serves `html` at `/` on 127.0.0.1:0 (404 elsewhere) until the test ends.
pub async fn serve(html: String) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let html = html.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (status, body) =
                        if req.uri().path() == "/" { (200, html.clone()) } else { (404, String::new()) };
                    async move {
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", "text/html; charset=utf-8")
                            .body(Full::new(Bytes::from(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The attack page against the console on `console_port`, which knows
/// (the worst case: guessed or leaked) the running task's id `task_id`.
/// When it is done, `document.body.dataset.done` is `"1"`.
pub fn page(console_port: u16, task_id: &str) -> String {
    ATTACK.replace("CONSOLE_ORIGIN", &format!("http://127.0.0.1:{console_port}")).replace("TASK_ID", task_id)
}

const ATTACK: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>a page on another port</title></head>
<body><h1>Nothing to see here</h1><pre id="report"></pre>
<script>
"use strict";
const C = "CONSOLE_ORIGIN";
const TASK = "TASK_ID";
const results = [];
const note = (what, outcome, read) => results.push({ what, outcome, read });
// Each attempt gets 3 s: a stream (the events) never ends on its own.
const capped = (p) => Promise.race([p, new Promise((r) => setTimeout(() => r("timeout"), 3000))]);

async function tryFetch(what, path, init) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 3000);
  try {
    const r = await fetch(C + path, Object.assign({ credentials: "include", signal: ctl.signal }, init));
    let body = null;
    try { body = await r.text(); } catch (e) { body = null; }
    note(what, "response " + r.type + " " + r.status, body);
  } catch (e) {
    note(what, "blocked: " + e.name, null);
  } finally {
    clearTimeout(timer);
  }
}

function tag(what, kind, path) {
  return capped(new Promise((resolve) => {
    const el = document.createElement(kind);
    el.onload = () => { note(what, "loaded", null); resolve(); };
    el.onerror = () => { note(what, "error", null); resolve(); };
    el.src = C + path;
    document.body.appendChild(el);
  })).then((r) => { if (r === "timeout") note(what, "timeout", null); });
}

let frames = 0;
function formPost(what, path, enctype, fields) {
  return capped(new Promise((resolve) => {
    const name = "sink" + (frames++);
    const frame = document.createElement("iframe");
    frame.name = name;
    document.body.appendChild(frame);
    const form = document.createElement("form");
    form.method = "POST";
    form.action = C + path;
    form.enctype = enctype;
    form.target = name;
    for (const [k, v] of Object.entries(fields)) {
      const input = document.createElement("input");
      input.type = "hidden"; input.name = k; input.value = v;
      form.appendChild(input);
    }
    document.body.appendChild(form);
    frame.onload = () => {
      let read = null;
      try { read = frame.contentDocument ? frame.contentDocument.body.innerText : null; } catch (e) { read = null; }
      note(what, "submitted", read);
      resolve();
    };
    form.submit();
  })).then((r) => { if (r === "timeout") note(what, "timeout", null); });
}

function eventSource(what, path) {
  return capped(new Promise((resolve) => {
    const es = new EventSource(C + path, { withCredentials: true });
    es.onmessage = (e) => { note(what, "message", e.data); es.close(); resolve(); };
    for (const ev of ["status", "tasks", "line"]) {
      es.addEventListener(ev, (e) => { note(what, "event " + ev, e.data); es.close(); resolve(); });
    }
    es.onerror = () => { note(what, "error", null); es.close(); resolve(); };
  })).then((r) => { if (r === "timeout") note(what, "timeout", null); });
}

function frameRead(what, path) {
  return capped(new Promise((resolve) => {
    const frame = document.createElement("iframe");
    frame.onload = () => {
      let read = null;
      try { read = frame.contentDocument ? frame.contentDocument.body.innerText : null; } catch (e) { read = null; }
      note(what, "framed", read);
      resolve();
    };
    frame.src = C + path;
    document.body.appendChild(frame);
  })).then((r) => { if (r === "timeout") note(what, "timeout", null); });
}

async function main() {
  // Cookies are not isolated by port: plant one of the console's name on
  // a longer path (sent first), hoping it shadows the owner's session.
  document.cookie = "support_console=planted-by-another-port; path=/console/api";
  note("planted cookie", "tried", null);
  const json = { "Content-Type": "application/json" };
  const guessed = { "Content-Type": "application/json", "X-CSRF-Token": "guessed-token", "Origin": C };
  const changes = [
    ["stop", "/console/api/tasks/" + TASK + "/stop", "{}"],
    ["revoke", "/console/api/revoke", "{}"],
    ["allow", "/console/api/allow", JSON.stringify({ tier: 4, minutes: 480, reason: "attacker", confirm: true })],
  ];
  for (const [name, path, body] of changes) {
    await tryFetch(name + " fetch no-cors text/plain", path, { method: "POST", mode: "no-cors", body });
    await tryFetch(name + " fetch no-cors json", path,
      { method: "POST", mode: "no-cors", headers: { "Content-Type": "application/json" }, body });
    await tryFetch(name + " fetch cors json", path, { method: "POST", headers: json, body });
    await tryFetch(name + " fetch cors json + guessed csrf", path, { method: "POST", headers: guessed, body });
    note(name + " beacon", "queued " + navigator.sendBeacon(C + path, body), null);
    // A JSON body smuggled through a text/plain form: name + "=" + value.
    const smuggled = body === "{}" ? '{"x":"' : body.slice(0, -1) + ',"x":"';
    await formPost(name + " form text/plain", path, "text/plain", { [smuggled]: '"}' });
    await formPost(name + " form urlencoded", path, "application/x-www-form-urlencoded", { tier: "4", confirm: "true" });
  }
  for (const path of ["/console/api/revoke", "/console/api/tasks/" + TASK + "/stop", "/console/api/events", "/console/api/audit"]) {
    await tag("img GET " + path, "img", path);
    await tag("script GET " + path, "script", path);
  }
  for (const path of ["/console/api/events", "/console/api/audit", "/console/api/session", "/console/api/summary"]) {
    await tryFetch("read " + path + " cors", path, {});
    await tryFetch("read " + path + " no-cors", path, { mode: "no-cors" });
  }
  await eventSource("EventSource /console/api/events", "/console/api/events");
  await frameRead("iframe /console/", "/console/");
  document.getElementById("report").textContent = JSON.stringify(results);
  document.body.dataset.done = "1";
}
main();
</script></body></html>
"#;
