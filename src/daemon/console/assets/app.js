// The owner's console: live view of the daemon, Stop / Revoke / Allow.
// Served by the daemon from 127.0.0.1 under a CSP of `default-src 'self'`:
// no inline script or style, no framework, nothing from elsewhere. Text
// from the daemon (transcripts, reasons, names) is only ever set with
// textContent, never parsed as HTML.
//
// Elements tests can find (stable):
//   #banner [data-state=on|off|unknown]   the banner; #support-state "ON"/"OFF"
//   #tier            tier, name and what it allows (or "No grant")
//   #countdown       time left, [data-seconds] = whole seconds left
//   #expires-at      when the grant ends (local time)
//   #granted-by      who granted it and why; #scope the grant's scope; #off-reason why support is off
//   #connection      [data-connected=true|false] the live stream
//   #revoke          button: revoke the grant
//   #tasks           table; its rows tr[data-task-id][data-agent][data-action][data-operator],
//                    each with a button.stop; an agent task's row says
//                    "support is operating your agent" (.agent-note); #no-tasks when none
//   #transcript      ol of li[data-task-id][data-n][data-kind], each with .when, .task, .label, .text;
//                    #transcript-task selects whose lines show
//   #allow-form, #allow-tier, #allow-minutes, #allow-reason,
//   #allow-confirm (checkbox, shown for tiers 3 and 4 in #allow-confirm-row), #allow-submit
//   #audit           table; rows tr[data-seq][data-event], newest first; #audit-more for older;
//                    #audit-filter with #audit-grant, #audit-operator, #audit-event, #audit-apply, #audit-clear
//   #audit-verified  the chain's status, [data-ok=true|false]
//   tr.terminal-row[data-terminal-for=ID]  right after task ID's row (beside its Stop): the live,
//                    read-only terminal of an interactive session (terminal.js), opened by the
//                    first `terminal`/`terminal_size` event, closed when the task ends;
//                    its .terminal[data-cols][data-rows] holds the xterm.js element
//   #summary         the last grant's summary
//   #error           the last error (hidden when none); #notice the last change made
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const MAX_LINES = 2000;
  let csrf = "";
  let tiers = [];
  let status = null;
  let auditFilter = {};
  let auditNext = null;
  const knownTasks = new Map();
  // Interactive sessions' terminals: task id -> {row, box, widget, listed}.
  const terminals = new Map();
  // Tasks whose end is on record: late bytes open no terminal for them.
  const endedTasks = new Set();

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    }
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function showNotice(message) {
    const box = $("notice");
    box.textContent = message;
    box.hidden = !message;
  }

  // Every instant on the page as the CLI prints it (README, "Scripting"):
  // RFC 3339 in UTC to the second, 2026-11-22T10:36:26Z, in any locale.
  function instant(rfc3339) {
    const d = new Date(rfc3339);
    return isNaN(d) ? String(rfc3339 || "") : d.toISOString().replace(/\.\d+Z$/, "Z");
  }

  function tierText(n) {
    const t = tiers.find((t) => t.tier === n);
    return t ? `Tier ${n} (${t.name}): ${t.allows}` : `Tier ${n}`;
  }

  async function api(method, path, body) {
    const opts = { method, credentials: "same-origin", headers: {} };
    if (method === "POST") {
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-CSRF-Token"] = csrf;
      opts.body = JSON.stringify(body || {});
    }
    const resp = await fetch(path, opts);
    let data = null;
    try {
      data = await resp.json();
    } catch (_) {
      data = null;
    }
    if (!resp.ok) {
      const why = data && data.error ? data.error : `the daemon answered ${resp.status}`;
      const err = new Error(why);
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  // The banner.
  function renderStatus(s) {
    status = s;
    const c = s.consent || {};
    const banner = $("banner");
    banner.dataset.state = c.enabled ? "on" : "off";
    $("support-state").textContent = c.enabled ? "ON" : "OFF";
    $("tier").textContent = c.enabled ? tierText(c.tier) : "No grant: support can do nothing.";
    $("ends").hidden = !c.enabled;
    $("expires-at").textContent = c.expires_at ? instant(c.expires_at) : "";
    const by = $("granted-by");
    by.hidden = !c.enabled;
    if (c.enabled) {
      const who = c.granted_by ? `Granted by ${c.granted_by}` : "Granted";
      const when = c.granted_at ? ` at ${instant(c.granted_at)}` : "";
      by.textContent = `${who}${when}; reason: ${c.reason ? c.reason : "none given"}. Grant ${c.grant_id}.`;
    }
    const scope = $("scope");
    const sc = c.scope;
    const parts = [];
    if (sc && sc.operators) parts.push(`only operators ${sc.operators.join(", ")}`);
    if (sc && sc.only) parts.push(`only actions ${sc.only.join(", ")}`);
    if (sc && sc.max_actions) parts.push(`at most ${sc.max_actions} actions (${sc.actions_used || 0} used)`);
    scope.hidden = parts.length === 0;
    scope.textContent = parts.length ? `Scope: ${parts.join("; ")}.` : "";
    const off = $("off-reason");
    off.hidden = c.enabled || !c.off_reason;
    off.textContent = c.off_reason ? `Why: ${c.off_reason}.` : "";
    $("revoke").disabled = !c.enabled;
    tick();
    if (Array.isArray(s.tasks)) renderTasks(s.tasks);
  }

  function tick() {
    const cd = $("countdown");
    const c = status && status.consent;
    if (!c || !c.enabled || !c.expires_at) {
      cd.textContent = "–";
      cd.dataset.seconds = "";
      return;
    }
    const left = Math.max(0, Math.floor((new Date(c.expires_at) - Date.now()) / 1000));
    const h = Math.floor(left / 3600);
    const m = Math.floor((left % 3600) / 60);
    const sec = left % 60;
    const pad = (n) => String(n).padStart(2, "0");
    cd.textContent = h > 0 ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
    cd.dataset.seconds = String(left);
  }

  // The running tasks.
  function renderTasks(tasks) {
    const body = $("tasks").querySelector("tbody");
    body.replaceChildren();
    $("no-tasks").hidden = tasks.length > 0;
    for (const t of tasks) {
      knownTasks.set(t.task_id, t);
      const row = el("tr", {
        "data-task-id": t.task_id,
        "data-agent": t.agent ? "true" : "false",
        "data-action": t.action,
        "data-operator": t.operator,
      });
      const first = el("td", { "data-label": "Task" }, t.task_id);
      if (t.agent) first.append(el("span", { class: "agent-note" }, "support is operating your agent"));
      row.append(
        first,
        el("td", { "data-label": "Operator" }, t.operator),
        el("td", { "data-label": "Action" }, `${t.action} (tier ${t.tier})`),
        el("td", { "data-label": "Since" }, instant(t.started_at)),
      );
      const cell = el("td");
      const stop = el("button", { type: "button", class: "stop", "aria-label": `Stop task ${t.task_id} (${t.action})` }, "Stop");
      stop.addEventListener("click", () => stopTask(t.task_id, stop));
      cell.append(stop);
      row.append(cell);
      body.append(row);
      const term = terminals.get(t.task_id);
      if (term) {
        term.listed = true;
        body.append(term.row);
      }
    }
    const listed = new Set(tasks.map((t) => t.task_id));
    for (const [id, term] of terminals) {
      if (!listed.has(id) && term.listed) closeTerminal(id);
    }
    const select = $("transcript-task");
    for (const t of tasks) {
      if (!select.querySelector(`option[value="${CSS.escape(t.task_id)}"]`)) {
        select.append(el("option", { value: t.task_id }, `${t.task_id} (${t.action})`));
      }
    }
  }

  async function stopTask(id, button) {
    button.disabled = true;
    try {
      const r = await api("POST", `/console/api/tasks/${encodeURIComponent(id)}/stop`, {});
      showError("");
      showNotice(`Stopped ${r.task_id}${r.result ? ` (${r.result.status})` : ""}.`);
    } catch (e) {
      showError(`Stop failed: ${e.message}`);
      button.disabled = false;
    }
  }

  // An interactive session's live terminal, read only.
  function openTerminal(id, size) {
    let term = terminals.get(id);
    if (term || endedTasks.has(id) || !window.SupportTerminal) return term;
    const row = el("tr", { class: "terminal-row", "data-terminal-for": id });
    const cell = el("td", { colspan: "5" });
    const label = `Live terminal of task ${id}, read only: you watch, you cannot type`;
    const box = el("div", { class: "terminal", role: "region", "aria-label": label });
    cell.append(el("p", { class: "terminal-note" }, label), box);
    row.append(cell);
    const taskRow = $("tasks").querySelector(`tr[data-task-id="${CSS.escape(id)}"]`);
    if (taskRow) taskRow.after(row);
    else $("tasks").querySelector("tbody").append(row);
    const widget = window.SupportTerminal.open(box, size);
    term = { row, box, widget, listed: !!taskRow };
    box.dataset.cols = String(widget.term.cols);
    box.dataset.rows = String(widget.term.rows);
    terminals.set(id, term);
    return term;
  }

  function closeTerminal(id) {
    const term = terminals.get(id);
    if (!term) return;
    terminals.delete(id);
    term.widget.dispose();
    term.row.remove();
  }

  function terminalData(ev) {
    const bytes = window.SupportTerminal && window.SupportTerminal.decode(ev.data);
    if (!bytes) return;
    const term = openTerminal(ev.task_id);
    if (term) term.widget.write(bytes);
  }

  function terminalSize(ev) {
    const term = openTerminal(ev.task_id, { cols: ev.cols, rows: ev.rows });
    if (!term) return;
    term.widget.resize(ev.cols, ev.rows);
    term.box.dataset.cols = String(term.widget.term.cols);
    term.box.dataset.rows = String(term.widget.term.rows);
  }

  // The transcript.
  function addLine(l) {
    const list = $("transcript");
    const item = el("li", { "data-task-id": l.task_id, "data-n": String(l.n), "data-kind": l.kind });
    item.append(el("span", { class: "when" }, `${instant(l.ts)} `), el("span", { class: "task" }, `[${l.task_id}] `));
    if (l.label) item.append(el("span", { class: "label" }, `${l.label} `));
    item.append(el("span", { class: "text" }, l.text));
    const wanted = $("transcript-task").value;
    item.hidden = wanted !== "" && wanted !== l.task_id;
    const atEnd = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
    list.append(item);
    while (list.children.length > MAX_LINES) list.firstElementChild.remove();
    if (atEnd) list.scrollTop = list.scrollHeight;
  }

  function filterTranscript() {
    const wanted = $("transcript-task").value;
    for (const li of $("transcript").children) li.hidden = wanted !== "" && wanted !== li.dataset.taskId;
  }

  // The audit log.
  function recordDetails(r) {
    const keys = ["grant_id", "tier", "operator", "action", "task_id", "status", "exit_code", "by", "via", "code", "reason", "detail"];
    return keys.filter((k) => r[k] !== undefined && r[k] !== null).map((k) => `${k}: ${r[k]}`).join("; ");
  }

  function auditRow(r) {
    const row = el("tr", { "data-seq": String(r.seq), "data-event": r.event });
    row.append(
      el("td", { "data-label": "Seq" }, r.seq),
      el("td", { "data-label": "When" }, instant(r.ts)),
      el("td", { "data-label": "Event" }, r.event),
      el("td", { "data-label": "Details" }, recordDetails(r)),
    );
    return row;
  }

  function matchesFilter(r) {
    return (!auditFilter.grant || r.grant_id === auditFilter.grant)
      && (!auditFilter.operator || r.operator === auditFilter.operator)
      && (!auditFilter.event || r.event === auditFilter.event);
  }

  function renderVerified(v) {
    const p = $("audit-verified");
    p.dataset.ok = v.ok ? "true" : "false";
    p.textContent = v.ok
      ? `Chain verified: ${v.records} records, unbroken.`
      : `CHAIN BROKEN: ${v.error || "the log does not verify"}. Records from there on cannot be trusted.`;
  }

  async function loadAudit(more) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(auditFilter)) if (v) q.set(k, v);
    if (more && auditNext !== null) q.set("before", String(auditNext));
    try {
      const page = await api("GET", `/console/api/audit?${q}`);
      const body = $("audit").querySelector("tbody");
      if (!more) body.replaceChildren();
      for (const r of page.records) body.append(auditRow(r));
      auditNext = page.next_before;
      $("audit-more").hidden = auditNext === null || auditNext === undefined;
      renderVerified(page.verified);
    } catch (e) {
      showError(`Reading the audit log failed: ${e.message}`);
    }
  }

  function liveRecord(r) {
    if ((r.event === "action.finished" || r.event === "task.aborted") && r.task_id) {
      endedTasks.add(r.task_id);
      closeTerminal(r.task_id);
    }
    if (matchesFilter(r)) {
      const body = $("audit").querySelector("tbody");
      if (!body.querySelector(`tr[data-seq="${r.seq}"]`)) body.prepend(auditRow(r));
    }
    if (/^consent\./.test(r.event)) loadSummary();
  }

  // The last grant's summary.
  async function loadSummary() {
    const box = $("summary");
    try {
      const s = await api("GET", "/console/api/summary");
      box.replaceChildren(el("pre", {}, s.text || JSON.stringify(s, null, 2)));
    } catch (e) {
      box.replaceChildren(el("p", {}, e.status === 404 ? "No grant yet." : `No summary: ${e.message}.`));
    }
  }

  // The Allow form.
  function fillTiers() {
    const select = $("allow-tier");
    select.replaceChildren();
    for (const t of tiers) select.append(el("option", { value: String(t.tier) }, `${t.tier}: ${t.name}`));
    tierChanged();
  }

  function tierChanged() {
    const t = tiers.find((t) => String(t.tier) === $("allow-tier").value);
    $("allow-tier-allows").textContent = t ? `Lets support do ${t.allows}.` : "";
    const row = $("allow-confirm-row");
    row.hidden = !(t && t.needs_confirmation);
    if (row.hidden) $("allow-confirm").checked = false;
    if (t) $("allow-confirm-label").textContent = `I understand: tier ${t.tier} lets support do ${t.allows}.`;
  }

  async function allow(ev) {
    ev.preventDefault();
    const tier = Number($("allow-tier").value);
    const t = tiers.find((t) => t.tier === tier);
    const confirm = $("allow-confirm").checked;
    if (t && t.needs_confirmation && !confirm) {
      showError(`Tier ${tier} needs the confirmation: tick the box first.`);
      $("allow-confirm").focus();
      return;
    }
    const button = $("allow-submit");
    button.disabled = true;
    try {
      const r = await api("POST", "/console/api/allow", {
        tier,
        minutes: Number($("allow-minutes").value),
        reason: $("allow-reason").value,
        confirm,
      });
      showError("");
      showNotice(r.message);
      renderStatus(r.status);
      $("allow-confirm").checked = false;
    } catch (e) {
      showError(`Allow failed: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  }

  async function revoke() {
    const button = $("revoke");
    button.disabled = true;
    try {
      const r = await api("POST", "/console/api/revoke", {});
      showError("");
      showNotice(r.message);
      renderStatus(r.status);
    } catch (e) {
      showError(`Revoke failed: ${e.message}`);
      button.disabled = false;
    }
  }

  // The live stream.
  function connect() {
    const source = new EventSource("/console/api/events");
    const conn = $("connection");
    source.addEventListener("open", () => {
      conn.dataset.connected = "true";
      conn.textContent = "Live: this page updates by itself.";
    });
    source.addEventListener("error", () => {
      conn.dataset.connected = "false";
      conn.textContent = "Disconnected from the daemon; retrying… (if this lasts, run `support console` again)";
    });
    const on = (name, f) => source.addEventListener(name, (e) => {
      try {
        f(JSON.parse(e.data));
      } catch (err) {
        showError(`A ${name} event could not be read: ${err.message}`);
      }
    });
    on("status", renderStatus);
    on("tasks", (t) => renderTasks(t.tasks || []));
    on("line", addLine);
    on("terminal", terminalData);
    on("terminal_size", terminalSize);
    on("audit", liveRecord);
    on("summary", () => loadSummary());
    on("lagged", (l) => showNotice(`${l.missed} events were missed; the view was refreshed.`));
  }

  async function start() {
    $("revoke").addEventListener("click", revoke);
    $("allow-form").addEventListener("submit", allow);
    $("allow-tier").addEventListener("change", tierChanged);
    $("transcript-task").addEventListener("change", filterTranscript);
    $("audit-filter").addEventListener("submit", (ev) => {
      ev.preventDefault();
      auditFilter = { grant: $("audit-grant").value.trim(), operator: $("audit-operator").value.trim(), event: $("audit-event").value.trim() };
      loadAudit(false);
    });
    $("audit-clear").addEventListener("click", () => {
      for (const id of ["audit-grant", "audit-operator", "audit-event"]) $(id).value = "";
      auditFilter = {};
      loadAudit(false);
    });
    $("audit-more").addEventListener("click", () => loadAudit(true));
    try {
      const s = await api("GET", "/console/api/session");
      csrf = s.csrf;
      tiers = s.tiers || [];
      fillTiers();
    } catch (e) {
      showError(e.status === 401 ? "This browser is not logged in: run `support console` again." : e.message);
      return;
    }
    connect();
    loadAudit(false);
    loadSummary();
    setInterval(tick, 1000);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
