// Patient page: risk timeline (inline SVG), data freshness and contributions of the latest score.
"use strict";

(() => {
  const { el, api, clock, duration } = ICU;
  const SVG = "http://www.w3.org/2000/svg";
  const MODALITIES = [["vitals", "Vital signs"], ["waveforms", "Waveforms (ECG/PPG)"], ["labs", "Labs"], ["cxr", "Chest X-ray"]];
  // Older than this (seconds) is shown in red: vitals and waveforms stream continuously, labs and
  // X-rays come hours or days apart.
  const STALE_AFTER = { vitals: 600, waveforms: 600, labs: 86400, cxr: 3 * 86400 };
  const RISKS = [["deterioration", "Deterioration"], ["sepsis", "Sepsis"]];
  const RISK_NAMES = Object.fromEntries(RISKS);
  const THRESHOLD = 0.5;
  const REFRESH_MS = 30000;

  function patientId() {
    const m = window.location.pathname.match(/\/patients\/([^/]+)\/?$/);
    if (m) return decodeURIComponent(m[1]);
    return new URL(window.location.href).searchParams.get("id") || "";  // static preview: patient.html?id=...
  }

  function s(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) node.setAttribute(k, v);
    for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    return node;
  }

  const STEPS = [60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800].map((x) => x * 1000);

  function chart(scores, alerts) {
    const W = 900, H = 320, L = 46, R = 16, T = 12, B = 36;
    const pw = W - L - R, ph = H - T - B;
    const pts = scores.map((sc) => ({ t: ICU.parseTime(sc.event_time), det: sc.deterioration_risk, sep: sc.sepsis_risk, sc }))
      .filter((p) => p.t !== null).sort((a, b) => a.t - b.t);
    const marks = alerts.map((a) => ({ t: ICU.parseTime(a.event_time), a })).filter((m) => m.t !== null);
    const times = pts.map((p) => p.t).concat(marks.map((m) => m.t));
    let t0 = Math.min(...times), t1 = Math.max(...times);
    if (!(t1 > t0)) { t0 -= 5 * 60000; t1 += 5 * 60000; }
    const x = (t) => L + ((t - t0) / (t1 - t0)) * pw;
    const y = (v) => T + (1 - Math.max(0, Math.min(1, v))) * ph;
    const f = (n) => n.toFixed(1);

    const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
                           "aria-label": "deterioration and sepsis risk over time" });
    for (const v of [0, 0.25, 0.5, 0.75, 1]) {
      svg.append(s("line", { class: "grid", x1: L, x2: W - R, y1: f(y(v)), y2: f(y(v)) }));
      svg.append(s("text", { x: L - 6, y: f(y(v) + 4), "text-anchor": "end" }, v.toFixed(2)));
    }
    const step = STEPS.find((st) => (t1 - t0) / st <= 8) || STEPS[STEPS.length - 1];
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      svg.append(s("line", { class: "grid", x1: f(x(t)), x2: f(x(t)), y1: T, y2: T + ph }));
      svg.append(s("text", { x: f(x(t)), y: H - B + 18, "text-anchor": "middle" }, clock(new Date(t).toISOString())));
    }
    svg.append(s("line", { class: "axis", x1: L, x2: L, y1: T, y2: T + ph }));
    svg.append(s("line", { class: "axis", x1: L, x2: W - R, y1: T + ph, y2: T + ph }));
    svg.append(s("line", { class: "threshold", x1: L, x2: W - R, y1: f(y(THRESHOLD)), y2: f(y(THRESHOLD)) },
                 s("title", {}, "alert threshold " + THRESHOLD)));

    for (const m of marks) {
      const g = s("g", { class: "alert-marker", "data-alert-id": m.a.alert_id },
        s("title", {}, `${m.a.kind} alert (${m.a.state}) at ${clock(m.a.event_time)}, risk ${Number(m.a.risk).toFixed(2)}`),
        s("line", { x1: f(x(m.t)), x2: f(x(m.t)), y1: T + 8, y2: T + ph }),
        s("path", { d: `M${f(x(m.t) - 6)},${T} L${f(x(m.t) + 6)},${T} L${f(x(m.t))},${T + 9} Z` }));
      svg.append(g);
    }
    for (const [key, cls, label] of [["det", "det", "deterioration"], ["sep", "sep", "sepsis"]]) {
      const series = pts.filter((p) => typeof p[key] === "number");
      if (!series.length) continue;
      svg.append(s("polyline", { class: cls, points: series.map((p) => f(x(p.t)) + "," + f(y(p[key]))).join(" ") }));
      if (series.length <= 400) {
        for (const p of series) {
          svg.append(s("circle", { class: cls + " point", cx: f(x(p.t)), cy: f(y(p[key])), r: 3 },
            s("title", {}, `${label} ${p[key].toFixed(2)} at ${clock(p.sc.event_time)} (NEWS2 ${p.sc.news2}, qSOFA ${p.sc.qsofa})`)));
        }
      }
    }
    svg.append(s("text", { x: L, y: H - 4 }, "event time (local)"));
    return svg;
  }

  function staleness(seconds, modality) {
    if (seconds === null || seconds === undefined) return el("td", { class: "stale-never" }, "never");
    const old = seconds > (STALE_AFTER[modality] || Infinity);
    return el("td", { class: old ? "stale-old" : "" }, duration(seconds) + " ago");
  }

  // Per modality, when its data last arrived, measured against now (GET .../feeds: the worker's
  // liveness check), and its age at the latest score beside it.
  function renderFreshness(feeds, latest) {
    const byModality = Object.fromEntries((feeds || []).map((f) => [f.modality, f]));
    const atScore = latest ? (latest.staleness || latest.staleness_s || {}) : {};
    const now = (f) => {
      if (!f) return el("td", { class: "stale-never" }, "never");
      const age = duration((Date.now() - (ICU.parseTime(f.last_received_at) || Date.now())) / 1000);
      return f.silent ? el("td", { class: "stale-old silent", title: "received " + clock(f.last_received_at) }, "no data for " + age)
        : el("td", { title: "received " + clock(f.last_received_at) }, age + " ago");
    };
    document.getElementById("staleness").replaceChildren(
      el("tr", {}, el("th", {}), el("th", {}, "now"), el("th", { class: "muted" }, "at the latest score")),
      ...MODALITIES.map(([key, label]) =>
        el("tr", { dataset: { modality: key, silent: String(Boolean(byModality[key] && byModality[key].silent)) } },
          el("th", {}, label), now(byModality[key]), latest ? staleness(atScore[key], key) : el("td", { class: "muted" }, "–"))));
  }

  // "early_warning v2": a model and, when the score says, the version that gave it.
  function versioned(model, version) {
    return model + (version ? " v" + version : "");
  }

  function renderLatest(latest) {
    const latestTable = document.getElementById("latest");
    const contrib = document.getElementById("contributions");
    if (!latest) {
      latestTable.replaceChildren(el("tr", {}, el("td", { class: "muted" }, "No scores yet.")));
      contrib.replaceChildren(el("p", { class: "muted" }, "No scores yet."));
      return;
    }
    const kv = (k, v) => el("tr", {}, el("th", {}, k), el("td", {}, v));
    latestTable.replaceChildren(
      kv("Observed", clock(latest.event_time) + " (" + ICU.ago(latest.event_time) + ")"),
      kv("Deterioration risk", Number(latest.deterioration_risk).toFixed(2)),
      kv("Sepsis risk", Number(latest.sepsis_risk).toFixed(2)),
      kv("NEWS2 / qSOFA", latest.news2 + " / " + latest.qsofa),
      kv("Model", versioned(latest.model, latest.model_version) +
         (latest.source === "fallback" ? " (fallback rules: Triton unreachable)" : " via " + latest.source)));

    // contributions: {deterioration: {vitals: x, ...}, sepsis: {...}}, for the rule model the risk
    // minus the risk without that modality's data; a flat {modality: x} is shown as one column.
    const c = latest.contributions;
    if (c && typeof c === "object" && Object.keys(c).length) {
      const nested = Object.values(c).some((v) => v && typeof v === "object");
      const table = nested ? c : { contribution: c };
      const rank = (r) => { const i = RISKS.findIndex(([k]) => k === r); return i < 0 ? RISKS.length : i; };
      const risks = Object.keys(table).sort((a, b) => rank(a) - rank(b));
      const names = Object.fromEntries(MODALITIES);
      const modalities = [...new Set(MODALITIES.map(([k]) => k).concat(...risks.map((r) => Object.keys(table[r] || {}))))];
      const max = Math.max(1e-9, ...risks.flatMap((r) => Object.values(table[r] || {}).map((v) => Math.abs(Number(v) || 0))));
      const cell = (v) => (v === undefined || v === null) ? el("td", { class: "muted" }, "–")
        : el("td", {}, el("span", { class: "bar", style: `width:${Math.round(Math.abs(Number(v) || 0) / max * 8)}rem` }),
             (Number(v) > 0 ? "+" : "") + Number(v).toFixed(2));
      contrib.replaceChildren(
        el("table", { class: "kv", id: "contributions-table" },
          el("tr", {}, el("th", {}, "Modality"), risks.map((r) => el("th", { dataset: { risk: r } }, RISK_NAMES[r] || r))),
          modalities.map((m) => el("tr", { dataset: { modality: m } }, el("th", {}, names[m] || m),
                                   risks.map((r) => cell((table[r] || {})[m]))))),
        el("p", { class: "muted" }, "Change in each risk when the modality's data is left out."));
    } else {
      contrib.replaceChildren(el("p", { class: "muted", id: "no-contributions" },
        "Not available for this score" + (latest.model ? " (model " + latest.model + ")." : ".")));
    }
  }

  function renderAlerts(alerts) {
    const body = document.querySelector("#patient-alerts tbody");
    document.getElementById("no-alerts").hidden = alerts.length > 0;
    const sorted = alerts.slice().sort((a, b) => (ICU.parseTime(b.event_time) || 0) - (ICU.parseTime(a.event_time) || 0));
    body.replaceChildren(...sorted.map((a) => {
      let state = a.state;
      if (a.state === "acknowledged") state += " by " + (a.acknowledged_by || "?") + " " + clock(a.acknowledged_at);
      if (a.state === "resolved") state += " by " + (a.resolved_by || "system") + " " + clock(a.resolved_at);
      return el("tr", { class: "alert " + a.state, dataset: { alertId: a.alert_id } },
        el("td", { class: "kind" }, a.kind,
           a.kind === "data_liveness" ? null : el("div", { class: "model muted", title: "the model that opened the alert" },
                                                  versioned(a.model, a.model_version) + (a.source === "fallback" ? " · fallback rules" : ""))),
        el("td", { class: "num risk" }, Number(a.risk).toFixed(2)),
        el("td", {}, clock(a.event_time)),
        el("td", {}, el("span", { class: "badge badge-" + (a.state === "acknowledged" ? "ack" : a.state) }, a.state),
           state.slice(a.state.length)));
    }));
  }

  async function load(pid) {
    const notice = document.getElementById("notice");
    try {
      const [data, feeds] = await Promise.all([api("/api/patients/" + encodeURIComponent(pid) + "/timeline"),
        api("/api/patients/" + encodeURIComponent(pid) + "/feeds").catch(() => [])]);
      notice.textContent = "";
      const p = data.patient || {};
      const facts = [p.unit && "unit " + p.unit, p.bed && "bed " + p.bed,
                     p.age != null && Math.round(p.age) + " y", p.sex].filter(Boolean);
      document.getElementById("patient-facts").textContent = facts.join(" · ");
      document.getElementById("no-adt").hidden = p.admitted !== false;
      const all = (data.scores || []).slice().sort((a, b) => (ICU.parseTime(a.event_time) || 0) - (ICU.parseTime(b.event_time) || 0));
      // Scores of every model come back (a shadow model may score beside the live one): chart the
      // model of the newest score so two models' lines never interleave.
      const model = all.length ? all[all.length - 1].model : null;
      const scores = all.filter((sc) => sc.model === model);
      const others = [...new Set(all.map((sc) => sc.model))].filter((m) => m !== model);
      // A promoted or rolled-back version continues the same model's line; the text names them.
      const versions = [...new Set(scores.map((sc) => sc.model_version).filter(Boolean))];
      const newest = versions.length ? versions[versions.length - 1] : null;
      const earlier = versions.filter((v) => v !== newest);
      document.getElementById("chart-model").textContent = model
        ? "model " + versioned(model, newest) + (earlier.length ? " (earlier scores: v" + earlier.join(", v") + ")" : "") +
          (others.length ? " (also scored by " + others.join(", ") + ", not shown)" : "") : "";
      const alerts = data.alerts || [];
      const box = document.getElementById("chart");
      if (scores.length) box.replaceChildren(chart(scores, alerts));
      else box.replaceChildren(el("p", { class: "muted" }, "No scores yet."));
      renderLatest(scores[scores.length - 1]);
      renderFreshness(feeds, scores[scores.length - 1]);
      renderAlerts(alerts);
      document.getElementById("updated").textContent = "updated " + clock(new Date().toISOString());
    } catch (e) {
      if (e.status === 401) { ICU.clearToken(); window.location.reload(); return; }
      notice.textContent = e.status === 404 ? "No such patient." : "Could not load the timeline: " + e.message;
    }
  }

  const pid = patientId();
  document.getElementById("patient-id").textContent = pid || "(no patient)";
  document.title = "icuwatch — " + pid;
  ICU.login(() => {
    load(pid);
    setInterval(() => load(pid), REFRESH_MS);
  });
})();
