// Shared by the board (index.html) and the patient page (patient.html): the token, API calls,
// time formatting and a tiny DOM helper. Plain browser JavaScript, no libraries.
"use strict";

const ICU = (() => {
  const KEY = "icuwatch.token";

  function token() {
    try { return localStorage.getItem(KEY) || ""; } catch (e) { return ""; }
  }
  function setToken(t) {
    try { localStorage.setItem(KEY, t); } catch (e) { /* private mode: token lives for this page only */ }
    memoryToken = t;
  }
  function clearToken() {
    try { localStorage.removeItem(KEY); } catch (e) { /* ignore */ }
    memoryToken = "";
  }
  let memoryToken = "";
  function currentToken() { return token() || memoryToken; }

  // `?token=...` logs in (so `make demo` can print a ready link), then leaves the address bar.
  function captureUrlToken() {
    const url = new URL(window.location.href);
    const t = url.searchParams.get("token");
    if (t) {
      setToken(t.trim());
      url.searchParams.delete("token");
      window.history.replaceState(null, "", url.pathname + url.search + url.hash);
    }
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, options = {}) {
    const headers = Object.assign({ "Accept": "application/json" }, options.headers || {});
    const t = currentToken();
    if (t) headers["Authorization"] = "Bearer " + t;
    let body = options.body;
    if (body !== undefined && typeof body !== "string") {
      body = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
    const resp = await fetch(path, { method: options.method || "GET", headers, body });
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
    if (!resp.ok) {
      let msg = resp.status + " " + resp.statusText;
      if (data && typeof data === "object") {
        const d = data.detail !== undefined ? data.detail : (data.error || data.message);
        if (d !== undefined) msg = typeof d === "string" ? d : JSON.stringify(d);
      }
      throw new ApiError(resp.status, msg);
    }
    return data;
  }

  // Login box shared by both pages: resolves with /api/me once a token is accepted.
  function login(onReady) {
    const box = document.getElementById("login");
    const form = document.getElementById("login-form");
    const input = document.getElementById("login-token");
    const error = document.getElementById("login-error");
    const main = document.getElementById("app");

    function showLogin(message) {
      main.hidden = true;
      box.hidden = false;
      error.textContent = message || "";
      input.focus();
    }
    async function tryToken() {
      try {
        const me = await api("/api/me");
        box.hidden = true;
        main.hidden = false;
        const who = document.getElementById("who");
        if (who) who.textContent = me.user + " (" + me.role + ")";
        onReady(me);
      } catch (e) {
        if (e.status === 401 || e.status === 403) {
          clearToken();
          showLogin("That token was not accepted (" + e.message + ").");
        } else {
          showLogin("Cannot reach the server: " + e.message);
        }
      }
    }
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = input.value.trim();
      if (!t) { showLogin("Paste your token."); return; }
      setToken(t);
      input.value = "";
      tryToken();
    });
    const logout = document.getElementById("logout");
    if (logout) logout.addEventListener("click", () => { clearToken(); window.location.reload(); });

    captureUrlToken();
    if (currentToken()) tryToken(); else showLogin("");
  }

  function parseTime(iso) {
    if (!iso) return null;
    const t = Date.parse(iso);
    return Number.isNaN(t) ? null : t;
  }

  // Seconds -> "12 s", "4 min", "3 h", "2 d".
  function duration(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 90) return s + " s";
    if (s < 90 * 60) return Math.round(s / 60) + " min";
    if (s < 48 * 3600) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " d";
  }
  function ago(iso) {
    const t = parseTime(iso);
    if (t === null) return "";
    return duration((Date.now() - t) / 1000) + " ago";
  }
  function clock(iso) {
    const t = parseTime(iso);
    if (t === null) return "";
    const d = new Date(t);
    const today = new Date();
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    if (d.toDateString() === today.toDateString()) return hm;
    return d.toLocaleDateString([], { day: "numeric", month: "short" }) + " " + hm;
  }

  // el("td", {class: "x", dataset: {alertId: "1"}}, "text", childNode, ...)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  function streamUrl() {
    return "/api/stream?token=" + encodeURIComponent(currentToken());
  }

  return { token: currentToken, setToken, clearToken, api, ApiError, login, parseTime, duration, ago,
           clock, el, streamUrl };
})();
