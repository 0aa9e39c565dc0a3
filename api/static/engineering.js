// Engineering page: GET /api/shadow (as `icuwatch shadow report`) and GET /api/drift (as
// `icuwatch drift report`). Engineer and admin tokens only.
"use strict";

(() => {
  const { el, api, clock } = ICU;
  const REFRESH_MS = 30000;
  const fmt = (v) => (v === null || v === undefined ? "–" : String(v));

  function row(cells, tag) {
    return el("tr", null, ...cells.map((c) => el(tag || "td", null, fmt(c))));
  }

  function render(r) {
    const sides = document.getElementById("sides");
    sides.replaceChildren(
      row(["", "model", "scores", "patients", "alert episodes", "per patient-day"], "th"),
      ...["live", "shadow"].map((role) => {
        const s = r[role];
        return row([role, s.model, s.scores, s.patients, s.alert_episodes, s.episodes_per_patient_day]);
      }),
    );
    const byKind = Object.entries(r.agreement_by_kind).map(([k, v]) => k + " " + fmt(v)).join(", ");
    document.getElementById("agreement").textContent =
      "Paging agreement over " + r.paired_scores + " paired scores: " + fmt(r.agreement) + " (" + byKind + ")" +
      (r.models_without_thresholds.length ? "; no thresholds recorded for " + r.models_without_thresholds.join(", ") : "");
    const lead = r.lead_time_difference;
    document.getElementById("lead").textContent =
      "Shadow minus live first-alert time, median " + fmt(r.lead_time_difference_min) + " min over " + lead.n +
      " patient-kinds alerted by both (negative: the shadow pages earlier); alerted by the live model only " +
      lead.alerted_by_live_only + ", by the shadow only " + lead.alerted_by_shadow_only + ".";
    const units = document.getElementById("units");
    units.replaceChildren(
      row(["unit", "live episodes", "live per patient-day", "shadow episodes", "shadow per patient-day", "agreement"], "th"),
      ...Object.entries(r.per_unit).map(([unit, u]) =>
        row([unit, u.live.alert_episodes, u.live.episodes_per_patient_day, u.shadow.alert_episodes,
          u.shadow.episodes_per_patient_day, u.agreement])),
    );
  }

  function renderDrift(r) {
    const flags = document.getElementById("drift-flags");
    if (!r.windows) {
      document.getElementById("drift-windows").textContent = "No drift counts yet.";
      flags.replaceChildren();
      return;
    }
    document.getElementById("drift-windows").textContent =
      "reference " + r.windows.reference.join(" .. ") + "; current " + r.windows.current.join(" .. ");
    document.getElementById("drift-units").replaceChildren(
      row(["unit", "patient-hours (ref / now)", "alert episodes per patient-day (ref -> now)", "alert volume"], "th"),
      ...Object.entries(r.units).map(([unit, u]) => {
        const a = u.alerts_per_patient_day;
        return row([unit, u.patient_hours.join(" / "), fmt(a.reference_rate) + " -> " + fmt(a.current_rate),
          a.out_of_band ? "OUT OF BAND (operations alarm)" : "in band"]);
      }),
    );
    flags.replaceChildren(...(r.flags.length ? r.flags.map((f) => el("li", { class: "error" },
      f.unit + ": " + f.signal + " " + f.name)) : [el("li", null, "nothing flagged")]));
  }

  async function load() {
    const notice = document.getElementById("notice");
    const hours = document.getElementById("since").value;
    const since = hours ? "?since=" + encodeURIComponent(new Date(Date.now() - hours * 3600000).toISOString()) : "";
    try {
      render(await api("/api/shadow" + since));
      renderDrift(await api("/api/drift"));
      notice.textContent = "";
      document.getElementById("updated").textContent = "updated " + clock(new Date().toISOString());
    } catch (e) {
      if (e.status === 401) { ICU.clearToken(); window.location.reload(); return; }
      notice.textContent = e.status === 403 ? "Engineer or admin tokens only." : "Could not load the report: " + e.message;
    }
  }

  ICU.login(() => {
    document.getElementById("since").addEventListener("change", load);
    load();
    setInterval(load, REFRESH_MS);
  });
})();
