// The live board: active alerts (raised + acknowledged) from the server-sent event stream.
"use strict";

(() => {
  const { el, api, ago, clock } = ICU;
  const alerts = new Map();          // alert_id -> Alert JSON; resolved alerts are dropped
  let source = null;
  let retryTimer = null;
  let me = null;

  const rows = document.getElementById("alert-rows");
  const empty = document.getElementById("empty");
  const summary = document.getElementById("summary");
  const notice = document.getElementById("notice");
  const conn = document.getElementById("conn");

  const KIND_LABEL = { deterioration: "Deterioration", sepsis: "Sepsis" };

  function active(a) { return a.state === "raised" || a.state === "acknowledged"; }

  function upsert(a) {
    if (!a || !a.alert_id) return;
    if (active(a)) alerts.set(a.alert_id, a); else alerts.delete(a.alert_id);
  }

  // Needs action first (raised), then escalated, then most severe, then newest.
  function compare(a, b) {
    const ra = a.state === "raised" ? 0 : 1, rb = b.state === "raised" ? 0 : 1;
    if (ra !== rb) return ra - rb;
    const ea = a.escalation_level || 0, eb = b.escalation_level || 0;
    if (ea !== eb) return eb - ea;
    if ((b.risk || 0) !== (a.risk || 0)) return (b.risk || 0) - (a.risk || 0);
    return (ICU.parseTime(b.raised_at) || 0) - (ICU.parseTime(a.raised_at) || 0);
  }

  function setNotice(text) { notice.textContent = text || ""; }

  function setConn(state) {
    conn.className = "conn conn-" + state;
    conn.textContent = { live: "live", connecting: "connecting…", off: "offline" }[state];
  }

  function severity(risk) {
    if (risk >= 0.8) return "sev-high";
    if (risk >= 0.5) return "sev-med";
    return "sev-low";
  }

  function escalationBadge(a) {
    const level = a.escalation_level || 0;
    if (!level && !a.escalated_at) return null;
    const title = a.escalated_at ? "escalated " + ago(a.escalated_at) + " (" + clock(a.escalated_at) + ")" : "";
    return el("span", { class: "badge badge-esc", title }, "escalated" + (level ? " L" + level : ""));
  }

  function stateCell(a) {
    if (a.state === "acknowledged") {
      return el("td", { class: "state" },
        el("span", { class: "badge badge-ack" }, "acknowledged"),
        el("div", { class: "ack-by" }, "by ", el("strong", {}, a.acknowledged_by || "?"), " ",
          el("span", { class: "ack-at", title: a.acknowledged_at || "" }, clock(a.acknowledged_at))),
        a.ack_comment ? el("div", { class: "ack-comment" }, "“" + a.ack_comment + "”") : null,
        escalationBadge(a));
    }
    return el("td", { class: "state" }, el("span", { class: "badge badge-raised" }, "raised"), escalationBadge(a));
  }

  function actionCell(a) {
    if (a.state !== "raised") return el("td", { class: "action" });
    const comment = el("input", { type: "text", class: "ack-comment-input", placeholder: "comment (optional)",
                                  "aria-label": "comment for " + a.patient_id, maxlength: "500" });
    const button = el("button", { type: "button", class: "ack", dataset: { alertId: a.alert_id } }, "Acknowledge");
    button.addEventListener("click", () => acknowledge(a.alert_id, button, comment));
    comment.addEventListener("keydown", (ev) => { if (ev.key === "Enter") button.click(); });
    return el("td", { class: "action" }, comment, button);
  }

  function row(a) {
    const place = [a.unit, a.bed].filter(Boolean).join(" · ");
    const href = "/patients/" + encodeURIComponent(a.patient_id);
    return el("tr", { class: "alert " + a.state + " " + severity(a.risk), dataset: { alertId: a.alert_id, state: a.state } },
      el("td", { class: "patient" }, el("a", { href, class: "patient-link" }, a.patient_id),
         place ? el("div", { class: "place" }, place) : null),
      el("td", { class: "kind" }, KIND_LABEL[a.kind] || a.kind,
         el("div", { class: "model" }, [a.model, a.source === "fallback" ? "fallback rules" : null].filter(Boolean).join(" · "))),
      el("td", { class: "num risk" }, a.risk == null ? "–" : Number(a.risk).toFixed(2)),
      el("td", { class: "num" }, a.news2 ?? "–"),
      el("td", { class: "num" }, a.qsofa ?? "–"),
      el("td", { class: "when" },
         el("span", { class: "ago", dataset: { time: a.raised_at || a.event_time || "" } }, ago(a.raised_at || a.event_time)),
         el("div", { class: "event-time", title: "event time of the score that raised it" }, "obs " + clock(a.event_time))),
      stateCell(a),
      actionCell(a));
  }

  function render() {
    const list = Array.from(alerts.values()).sort(compare);
    // Keep a comment being typed (and focus) across re-renders.
    const typing = {};
    let focused = null;
    for (const tr of rows.querySelectorAll("tr")) {
      const input = tr.querySelector(".ack-comment-input");
      if (input && input.value) typing[tr.dataset.alertId] = input.value;
      if (input && document.activeElement === input) focused = tr.dataset.alertId;
    }
    rows.replaceChildren(...list.map(row));
    for (const tr of rows.querySelectorAll("tr")) {
      const input = tr.querySelector(".ack-comment-input");
      if (!input) continue;
      if (typing[tr.dataset.alertId]) input.value = typing[tr.dataset.alertId];
      if (focused === tr.dataset.alertId) input.focus();
    }
    const raised = list.filter((a) => a.state === "raised").length;
    empty.hidden = list.length > 0;
    summary.textContent = list.length ? raised + " raised, " + (list.length - raised) + " acknowledged" : "";
    document.title = (raised ? "(" + raised + ") " : "") + "icuwatch — active alerts";
  }

  function refreshTimes() {
    for (const span of rows.querySelectorAll(".ago")) span.textContent = ago(span.dataset.time);
  }

  async function acknowledge(id, button, commentInput) {
    button.disabled = true;
    button.textContent = "Acknowledging…";
    const comment = commentInput.value.trim();
    try {
      const updated = await api("/api/alerts/" + encodeURIComponent(id) + "/acknowledge", {
        method: "POST", body: comment ? { comment } : {},
      });
      setNotice("");
      if (updated && updated.alert_id) upsert(updated);
      else {
        const a = alerts.get(id);
        if (a) upsert(Object.assign({}, a, { state: "acknowledged", acknowledged_by: me && me.user,
                                             acknowledged_at: new Date().toISOString(), ack_comment: comment || null }));
      }
      render();
    } catch (e) {
      if (e.status === 401) { ICU.clearToken(); window.location.reload(); return; }
      setNotice("Could not acknowledge " + id + ": " + e.message);
      button.disabled = false;
      button.textContent = "Acknowledge";
      if (e.status === 409 || e.status === 404) reloadAlerts();
    }
  }

  // Fallback and resync: the same list the stream's snapshot carries.
  async function reloadAlerts() {
    try {
      const [raised, acked] = await Promise.all([
        api("/api/alerts?state=raised&limit=500"), api("/api/alerts?state=acknowledged&limit=500")]);
      alerts.clear();
      for (const a of raised.concat(acked)) upsert(a);
      render();
    } catch (e) {
      setNotice("Could not load alerts: " + e.message);
    }
  }

  // How many snapshots (one per (re)connection) and alert events arrived: shown as data-* on the
  // connection badge, for tests and for anyone debugging a board that seems stuck.
  function count(what) { conn.dataset[what] = String(Number(conn.dataset[what] || 0) + 1); }

  function connect() {
    if (source) source.close();
    clearTimeout(retryTimer);
    setConn("connecting");
    source = new EventSource(ICU.streamUrl());
    source.addEventListener("open", () => { setConn("live"); setNotice(""); });
    source.addEventListener("snapshot", (ev) => {
      let list;
      try { list = JSON.parse(ev.data); } catch (e) { return; }
      if (list && !Array.isArray(list)) list = list.alerts || [];
      alerts.clear();
      for (const a of list) upsert(a);
      setConn("live");
      count("snapshots");
      render();
    });
    source.addEventListener("alert", (ev) => {
      try { upsert(JSON.parse(ev.data)); } catch (e) { return; }
      count("events");
      render();
    });
    source.addEventListener("error", async () => {
      setConn("off");
      if (source.readyState === EventSource.CLOSED) {
        // The browser gives up on a non-200 answer (e.g. 401): check the token, then retry.
        try { await api("/api/me"); } catch (e) {
          if (e.status === 401 || e.status === 403) { ICU.clearToken(); window.location.reload(); return; }
        }
        retryTimer = setTimeout(connect, 5000);
      }
      // Otherwise EventSource reconnects by itself and the server sends a fresh snapshot.
    });
  }

  ICU.login((who) => {
    me = who;
    connect();
    setInterval(refreshTimes, 15000);
  });
})();
