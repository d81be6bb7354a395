// The console's read-only terminal: a task's live pty output in xterm.js
// (vendored, /console/vendor/xterm.js), opened by app.js.
//
// The console's CSP is `default-src 'self'`, with no 'unsafe-inline'.
// xterm.js 6 puts its theme, font and cell size into <style> elements
// inside its own element (DomRenderer, Viewport) and a truecolor cell's
// colour into its style attribute (DomRendererRowFactory._addStyle); the
// CSP blocks both, and the terminal would lose its layout and colours.
// The CSP governs style from markup, not the CSSOM: so for what lies
// inside a terminal's own element only, `adopt` applies the text of those
// <style> elements as constructed style sheets (document.adoptedStyleSheets)
// and those style attributes through element.style. Nothing outside a
// terminal is touched, and the CSP stays as it is for the whole page.
//
// Exposed as window.SupportTerminal.open(container, {cols, rows}) ->
// {write(bytes), resize(cols, rows), dispose()}; the terminal takes no
// input (disableStdin, no onData handler): the owner watches, never types.
"use strict";

(function () {
  const MAX_COLS = 500;
  const MAX_ROWS = 200;
  // Every terminal's constructed sheets, in the order their <style> elements appear.
  const sheetsOf = new Map();
  const pageSheets = [...document.adoptedStyleSheets];

  function publishSheets() {
    const all = [];
    for (const sheets of sheetsOf.values()) all.push(...sheets.values());
    document.adoptedStyleSheets = pageSheets.concat(all);
  }

  function applyStyleAttribute(e) {
    const want = e.getAttribute("style");
    if (want !== null && e.style.cssText !== want) e.style.cssText = want;
  }

  function adopt(root) {
    const sheets = new Map();
    const texts = new WeakMap();
    sheetsOf.set(root, sheets);
    const syncSheets = () => {
      const present = new Set(root.querySelectorAll("style"));
      let changed = false;
      for (const s of present) {
        let sheet = sheets.get(s);
        if (!sheet) {
          sheet = new CSSStyleSheet();
          sheets.set(s, sheet);
          changed = true;
        }
        if (texts.get(sheet) !== s.textContent) {
          sheet.replaceSync(s.textContent);
          texts.set(sheet, s.textContent);
        }
      }
      for (const s of [...sheets.keys()]) {
        if (!present.has(s)) {
          sheets.delete(s);
          changed = true;
        }
      }
      if (changed) publishSheets();
    };
    const observer = new MutationObserver((records) => {
      let styles = false;
      for (const r of records) {
        if (r.type === "attributes") {
          applyStyleAttribute(r.target);
          continue;
        }
        const parent = r.target.nodeType === Node.ELEMENT_NODE ? r.target : r.target.parentElement;
        if (parent && parent.closest("style")) styles = true;
        for (const n of r.addedNodes) {
          if (n.nodeType !== Node.ELEMENT_NODE) continue;
          if (n.tagName === "STYLE" || n.querySelector("style")) styles = true;
          if (n.hasAttribute("style")) applyStyleAttribute(n);
          for (const e of n.querySelectorAll("[style]")) applyStyleAttribute(e);
        }
        if (r.removedNodes.length) styles = true;
      }
      if (styles) syncSheets();
    });
    observer.observe(root, { subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ["style"] });
    return () => {
      observer.disconnect();
      sheetsOf.delete(root);
      publishSheets();
    };
  }

  function clamp(n, max, fallback) {
    n = Number(n);
    return Number.isInteger(n) && n >= 1 ? Math.min(n, max) : fallback;
  }

  function open(container, size) {
    const unadopt = adopt(container);
    const term = new window.Terminal({
      cols: clamp(size && size.cols, MAX_COLS, 80),
      rows: clamp(size && size.rows, MAX_ROWS, 24),
      disableStdin: true,
      cursorBlink: false,
      scrollback: 2000,
      convertEol: false,
      screenReaderMode: false,
      // An OSC 8 hyperlink the remote shell printed does nothing when
      // clicked: the owner is never sent to an address an operator chose
      // (xterm's default asks confirm() and then opens it).
      linkHandler: { activate() {}, allowNonHttpProtocols: false },
    });
    term.open(container);
    return {
      term,
      write(bytes) {
        term.write(bytes);
      },
      resize(cols, rows) {
        term.resize(clamp(cols, MAX_COLS, term.cols), clamp(rows, MAX_ROWS, term.rows));
      },
      dispose() {
        term.dispose();
        unadopt();
      },
    };
  }

  // Base64 (standard, padded) to bytes; null when it is not base64.
  function decode(data) {
    try {
      const text = atob(String(data));
      const bytes = new Uint8Array(text.length);
      for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
      return bytes;
    } catch (_) {
      return null;
    }
  }

  window.SupportTerminal = { open, decode };
})();
