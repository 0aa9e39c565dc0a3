"""Shadow comparison: score one source with two models side by side and report where their alerts
differ (patients, hours, lead times), before model B replaces model A.

The source is a folder of PhysioNet-format stays; both models run through ``psv_predict``'s
predictors, so the rule models use the worker's own state and features. An alert is the first hour
of each run of positive labels (what a nurse would be paged for).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from icuwatch.fusion.psv_predict import predictor
from icuwatch.sources.physionet import list_stays, read_psv

ONSET_SHIFT_H = 6
"""SepsisLabel turns 1 six hours before the clinical onset t_sepsis (challenge definition)."""


def alert_hours(labels: np.ndarray) -> list[int]:
    """Row indices where a run of positive labels starts."""
    labels = np.asarray(labels).astype(bool)
    starts = labels & ~np.concatenate([[False], labels[:-1]])
    return [int(i) for i in np.flatnonzero(starts)]


def onset_hour(sepsis_label: np.ndarray | None) -> int | None:
    if sepsis_label is None or not sepsis_label.any():
        return None
    return int(np.argmax(sepsis_label)) + ONSET_SHIFT_H


def compare(source: str | Path, model_a: str, model_b: str, patients: int | None = None, progress: bool = True) -> dict:
    from tqdm import tqdm

    predict_a, th_a = predictor(model_a)
    predict_b, th_b = predictor(model_b)
    rows, totals = [], {"a": 0, "b": 0}
    paths = list_stays(source, limit=patients)
    for path in tqdm(paths, desc=f"shadow {model_a} vs {model_b}", unit="stay", disable=not progress):
        stay = read_psv(path)
        a = alert_hours(predict_a(stay) >= th_a)
        b = alert_hours(predict_b(stay) >= th_b)
        totals["a"] += len(a)
        totals["b"] += len(b)
        if a == b:
            continue
        onset = onset_hour(stay.labels)
        first_a, first_b = (a[0] if a else None), (b[0] if b else None)
        rows.append(
            {
                "patient_id": stay.patient_id,
                "alert_hours_a": a,
                "alert_hours_b": b,
                "only_a": sorted(set(a) - set(b)),
                "only_b": sorted(set(b) - set(a)),
                "sepsis_onset_hour": onset,
                "lead_h_a": None if onset is None or first_a is None else onset - first_a,
                "lead_h_b": None if onset is None or first_b is None else onset - first_b,
            }
        )
    return {
        "source": str(source),
        "data": "real PhysioNet 2019 stays" if "physionet2019" in str(source) else "not PhysioNet 2019 data",
        "model_a": {"name": model_a, "threshold": th_a, "alerts": totals["a"]},
        "model_b": {"name": model_b, "threshold": th_b, "alerts": totals["b"]},
        "patients": len(paths),
        "patients_differing": len(rows),
        "alerted_only_by_a": sum(1 for r in rows if r["alert_hours_a"] and not r["alert_hours_b"]),
        "alerted_only_by_b": sum(1 for r in rows if r["alert_hours_b"] and not r["alert_hours_a"]),
        "differences": rows,
    }


def write_report(summary: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shadow.json").write_text(json.dumps(summary, indent=2))
    a, b = summary["model_a"]["name"], summary["model_b"]["name"]
    lines = [
        f"# Shadow comparison: {a} (live) vs {b} (shadow)",
        "",
        f"Data: {summary['source']} ({summary['data']}). {summary['patients']} patients.",
        "",
        f"| | {a} | {b} |",
        "| --- | --- | --- |",
        f"| threshold | {summary['model_a']['threshold']:.3f} | {summary['model_b']['threshold']:.3f} |",
        f"| alerts | {summary['model_a']['alerts']} | {summary['model_b']['alerts']} |",
        f"| patients alerted by this model only | {summary['alerted_only_by_a']} | {summary['alerted_only_by_b']} |",
        "",
        f"{summary['patients_differing']} patients where the alerts differ:",
        "",
        f"| patient | {a} alert hours | {b} alert hours | sepsis onset hour | lead {a} (h) | lead {b} (h) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["differences"][:200]:
        lines.append(
            f"| {r['patient_id']} | {r['alert_hours_a']} | {r['alert_hours_b']} | "
            f"{r['sepsis_onset_hour']} | {r['lead_h_a']} | {r['lead_h_b']} |"
        )
    path = out / "shadow.md"
    path.write_text("\n".join(lines) + "\n")
    return path
