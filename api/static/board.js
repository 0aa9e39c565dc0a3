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

  const KIND_LABEL = { deterioration: "Deterioration", sepsis: "Sepsis", data_liveness: "No data" };
  const MODALITY_LABEL = { vitals: "vital signs", waveforms: "waveforms", labs: "lab results", cxr: "chest X-rays" };
  const silentRows = document.getElementById("silent-rows");
  const silentSection = document.getElementById("silent");
  const CLINICAL_ROLES = ["nurse", "physician"];  // who may acknowledge and resolve (api/auth.py)

  // The patient's risk now (newest score), or the opening risk when there is no newer score. A
  // patient whose data stopped ranks with the highest risks: silence is not stability.
  function riskNow(a) {
    if (a.kind === "data_liveness") return 1;
    return a.current_risk == null ? a.risk : a.current_risk;
  }

  function active(a) { return a.state === "raised" || a.state === "acknowledged"; }

  function upsert(a) {
    if (!a || !a.alert_id) return;
    if (active(a)) alerts.set(a.alert_id, a); else alerts.delete(a.alert_id);
  }

  // Needs action first (raised), then escalated, then highest current risk, then newest.
  function compare(a, b) {
    const ra = a.state === "raised" ? 0 : 1, rb = b.state === "raised" ? 0 : 1;
    if (ra !== rb) return ra - rb;
    const ea = a.escalation_level || 0, eb = b.escalation_level || 0;
    if (ea !== eb) return eb - ea;
    const na = riskNow(a) || 0, nb = riskNow(b) || 0;
    if (nb !== na) return nb - na;
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
    if (!me || !CLINICAL_ROLES.includes(me.role)) return el("td", { class: "action" });
    let ack = null;
    if (a.state === "raised") {
      const comment = el("input", { type: "text", class: "ack-comment-input", placeholder: "comment (optional)",
                                    "aria-label": "comment for " + a.patient_id, maxlength: "500" });
      const button = el("button", { type: "button", class: "ack", dataset: { alertId: a.alert_id } }, "Acknowledge");
      button.addEventListener("click", () => acknowledge(a.alert_id, button, comment));
      comment.addEventListener("keydown", (ev) => { if (ev.key === "Enter") button.click(); });
      ack = el("div", { class: "ack-line" }, comment, button);
    }
    const reason = el("input", { type: "text", class: "resolve-reason", placeholder: "reason (required)",
                                 "aria-label": "reason for resolving " + a.patient_id, maxlength: "500" });
    const resolveButton = el("button", { type: "button", class: "resolve", dataset: { alertId: a.alert_id } }, "Resolve");
    resolveButton.addEventListener("click", () => resolve(a.alert_id, resolveButton, reason));
    reason.addEventListener("keydown", (ev) => { if (ev.key === "Enter") resolveButton.click(); });
    return el("td", { class: "action" }, ack, el("div", { class: "resolve-line" }, reason, resolveButton));
  }

  // The current value (the newest score; the opening one if there is none), the opening one under it.
  function nowAndOpening(now, opening, digits, title) {
    const fmt = (v) => v == null ? "–" : (digits ? Number(v).toFixed(digits) : String(v));
    const shown = now == null ? opening : now;
    return [el("span", { class: "now", title }, fmt(shown)),
            el("div", { class: "opening", title: "when the alert was raised" }, "opened " + fmt(opening))];
  }

  // Data taken in for a patient ADT never admitted (ICUWATCH_UNADMITTED_DATA=accept).
  function noAdmission() {
    return el("span", { class: "badge badge-no-adt", title: "data received, but ADT has not admitted this patient" },
              "no ADT admission");
  }

  // "early_warning v2 · triton": the model (and version) that scored; the fallback rules say so.
  function modelLabel(model, version, source) {
    const name = model + (version ? " v" + version : "");
    return [name, source === "fallback" ? "fallback rules" : source === "triton" ? "triton" : null].filter(Boolean).join(" · ");
  }

  // Which model opened the alert and, when another one (a promoted version, the fallback) gave the
  // patient's newest score, that one too.
  function modelCell(a) {
    const opened = modelLabel(a.model, a.model_version, a.source);
    const moved = a.kind !== "data_liveness" && a.current_model && (a.current_model !== a.model || (a.current_model_version || null) !== (a.model_version || null));
    return [el("div", { class: "model", title: "the model that opened the alert" }, opened),
            moved ? el("div", { class: "model model-now", title: "the model of the newest score" },
                       "now " + modelLabel(a.current_model, a.current_model_version, null)) : null];
  }

  function row(a) {
    const place = [a.unit, a.bed].filter(Boolean).join(" · ");
    const href = "/patients/" + encodeURIComponent(a.patient_id);
    const latest = a.current_at ? "latest score, observed " + clock(a.current_at) : "no newer score";
    return el("tr", { class: "alert " + a.state + " " + severity(riskNow(a)), dataset: { alertId: a.alert_id, state: a.state } },
      el("td", { class: "patient" }, el("a", { href, class: "patient-link" }, a.patient_id),
         place ? el("div", { class: "place" }, place) : null,
         a.admitted === false ? noAdmission() : null),
      el("td", { class: "kind" }, KIND_LABEL[a.kind] || a.kind, ...modelCell(a)),
      a.kind === "data_liveness"
        ? el("td", { class: "num risk silent", colspan: "2" }, "no vital signs since ",
             el("span", { class: "since", title: a.episode_start || "" }, clock(a.episode_start)))
        : el("td", { class: "num risk" }, nowAndOpening(a.current_risk, a.risk, 2, latest)),
      a.kind === "data_liveness" ? null : el("td", { class: "num news2" }, nowAndOpening(a.current_news2, a.news2, 0, latest)),
      el("td", { class: "num" }, a.qsofa ?? "–"),
      el("td", { class: "when" },
         el("span", { class: "ago", dataset: { time: a.raised_at || a.event_time || "" } }, ago(a.raised_at || a.event_time)),
         el("div", { class: "event-time", title: "event time of the score that raised it" }, "obs " + clock(a.event_time))),
      stateCell(a),
      actionCell(a));
  }

  function render() {
    const list = Array.from(alerts.values()).sort(compare);
    // Keep a comment or reason being typed (and focus) across re-renders.
    const typing = {};
    let focused = null;
    for (const tr of rows.querySelectorAll("tr")) {
      for (const input of tr.querySelectorAll("input")) {
        const k = tr.dataset.alertId + " " + input.className;
        if (input.value) typing[k] = input.value;
        if (document.activeElement === input) focused = k;
      }
    }
    rows.replaceChildren(...list.map(row));
    for (const tr of rows.querySelectorAll("tr")) {
      for (const input of tr.querySelectorAll("input")) {
        const k = tr.dataset.alertId + " " + input.className;
        if (typing[k]) input.value = typing[k];
        if (focused === k) input.focus();
      }
    }
    const raised = list.filter((a) => a.state === "raised").length;
    empty.hidden = list.length > 0;
    summary.textContent = list.length ? raised + " raised, " + (list.length - raised) + " acknowledged" : "";
    document.title = (raised ? "(" + raised + ") " : "") + "icuwatch — active alerts";
  }

  function refreshTimes() {
    for (const span of rows.querySelectorAll(".ago")) span.textContent = ago(span.dataset.time);
  }

  // Feeds silent past their modality's threshold (GET /api/feeds/silent), measured against now.
  async function loadSilent() {
    let feeds;
    try { feeds = await api("/api/feeds/silent?limit=200"); } catch (e) { return; }
    silentRows.replaceChildren(...feeds.map((f) => el("tr", { class: "silent-feed", dataset: { patientId: f.patient_id, modality: f.modality } },
      el("td", {}, el("a", { href: "/patients/" + encodeURIComponent(f.patient_id) }, f.patient_id),
         [f.unit, f.bed].filter(Boolean).length ? el("div", { class: "place" }, [f.unit, f.bed].filter(Boolean).join(" · ")) : null),
      el("td", {}, "no " + (MODALITY_LABEL[f.modality] || f.modality) + " for " + ICU.duration(f.silent_s)),
      el("td", { class: "when", title: f.last_received_at }, "last " + clock(f.last_received_at)))));
    silentSection.hidden = feeds.length === 0;
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

  async function resolve(id, button, reasonInput) {
    const reason = reasonInput.value.trim();
    if (!reason) {
      setNotice("Give a reason to resolve the alert.");
      reasonInput.focus();
      return;
    }
    button.disabled = true;
    button.textContent = "Resolving…";
    try {
      const updated = await api("/api/alerts/" + encodeURIComponent(id) + "/resolve", {
        method: "POST", body: { reason },
      });
      alerts.delete(id);
      if (updated && updated.alert_id) upsert(updated);
      const a = updated || {};
      setNotice("Resolved " + (a.patient_id || id) + ". If the risk stays high it will alert again.");
      render();
    } catch (e) {
      if (e.status === 401) { ICU.clearToken(); window.location.reload(); return; }
      setNotice("Could not resolve " + id + ": " + e.message);
      button.disabled = false;
      button.textContent = "Resolve";
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
    loadSilent();
    setInterval(refreshTimes, 15000);
    setInterval(loadSilent, 15000);
  });
})();
