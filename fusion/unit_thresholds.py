"""A unit's own alert threshold, tuned on what the unit recorded (``icuwatch tune-thresholds --unit``).

Input: the scores of the unit's patients (their current unit, from ADT) since a time, from the live
model (``scores``: a silent unit's included, shown or not) or from the shadow (``shadow_scores``),
and the outcomes: which patients deteriorated (and had sepsis) and when. Outcomes come as a JSON
list of ``{"patient_id", "onset_time" (epoch s, null for none), "condition"}``, the simulator's
ground truth file; a hospital's would come from its outcome records (not wired here).

For each candidate threshold the patients' scores are run through the same episode rules as the
worker (``streams/alerting.py``: confirm, clear, quiet periods; 'off' at the settings' off/on
ratio). A positive patient is caught when an episode opens before ``onset + late_h``; the
threshold kept is the one that catches the most positives with at most ``max_per_day`` alert
episodes per patient-day (ties: the higher threshold). Nothing is written here:
``storage/unit_thresholds.record`` versions the result.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from icuwatch.core import schemas
from icuwatch.core.errors import BadFile, OperatorError
from icuwatch.storage.models import Patient, Score, ShadowScore
from icuwatch.streams import alerting

KINDS = ("deterioration", "sepsis")
N_CANDIDATES = 60


def read_outcomes(path: str | Path) -> dict[str, dict[str, Any]]:
    """Per patient id, ``{"onset_time", "condition"}`` from a ground-truth-style JSON list."""
    try:
        rows = json.loads(Path(path).read_text())
        return {r["patient_id"]: {"onset_time": r.get("onset_time"), "condition": r.get("condition")} for r in rows}
    except (ValueError, KeyError, TypeError) as exc:
        raise BadFile(path, f"not a JSON list of {{patient_id, onset_time, condition}}: {exc}") from None


def positive(kind: str, outcome: dict[str, Any] | None) -> float | None:
    """The onset time when the patient is a positive for ``kind``, else None."""
    if outcome is None or outcome.get("onset_time") is None:
        return None
    if kind == "sepsis" and outcome.get("condition") != "sepsis":
        return None
    return float(outcome["onset_time"])


def unit_scores(session: Session, unit: str, since: datetime | None, source: str) -> dict[str, list[Any]]:
    """Per patient of the unit, (event time s, deterioration risk, sepsis risk, model) in time order."""
    table: Any = ShadowScore if source == "shadow" else Score
    q = (
        select(table.patient_id, table.event_time, table.deterioration_risk, table.sepsis_risk, table.model)
        .join(Patient, Patient.patient_id == table.patient_id)
        .where(Patient.unit == unit)
        .order_by(table.patient_id, table.event_time)
    )
    if source != "shadow":
        q = q.where(Score.source == "triton")
    if since is not None:
        q = q.where(table.event_time >= since)
    out: dict[str, list[Any]] = defaultdict(list)
    for pid, t, det, sep, model in session.execute(q):
        out[pid].append((t.timestamp(), det, sep, model))
    return out


def _as_scores(rows: list[Any]) -> list[schemas.Score]:
    return [
        schemas.Score(
            patient_id="p",
            event_time=t,
            model=model,
            source="triton",
            deterioration_risk=det,
            sepsis_risk=sep,
            news2=0,
            qsofa=0,
            staleness_s={},
            scored_at=t,
        )  # fmt: skip
        for t, det, sep, model in rows
    ]


def _episodes(scores: list[schemas.Score], kind: str, th: alerting.Thresholds) -> list[float]:
    """Event times at which episodes of ``kind`` open for one patient's scores."""
    state = alerting.new_alert_state()
    other = "sepsis" if kind == "deterioration" else "deterioration"
    never = alerting.Thresholds(2.0, 1.5)  # the other kind never alerts here
    opened = []
    for score in scores:
        opened += [a.event_time for a in alerting.update(state, score, {kind: th, other: never})]
    return opened


def tune(
    scores: dict[str, list[Any]],
    outcomes: dict[str, dict[str, Any]],
    kind: str,
    base: alerting.Thresholds,
    max_per_day: float,
    late_h: float = 2.0,
) -> dict[str, Any]:
    """The threshold for ``kind`` (see the module docstring) and the figures at it and at ``base``."""
    positives = {pid: positive(kind, outcomes.get(pid)) for pid in scores}
    n_pos = sum(v is not None for v in positives.values())
    if n_pos == 0:
        raise OperatorError(f"no patient of these scores is a positive for {kind} in the outcomes: nothing to tune on")
    days = sum((rows[-1][0] - rows[0][0]) for rows in scores.values()) / 86400.0
    if days <= 0:
        raise OperatorError("the scores span no time: nothing to tune on")
    risks = np.array([r[1 if kind == "deterioration" else 2] for rows in scores.values() for r in rows])
    grid = np.unique(np.quantile(risks, np.linspace(0.5, 0.999, N_CANDIDATES)))
    ratio = base.off / base.on if base.on > 0 else 0.6
    as_scores = {pid: _as_scores(rows) for pid, rows in scores.items()}

    def figures(on: float) -> dict[str, Any]:
        th = alerting.Thresholds(
            on, on * ratio, base.confirm, base.clear, base.refractory_s, base.realert_after_resolve_s
        )
        episodes, caught = 0, 0
        for pid, patient_scores in as_scores.items():
            opened = _episodes(patient_scores, kind, th)
            episodes += len(opened)
            onset = positives[pid]
            if onset is not None and any(t <= onset + late_h * 3600 for t in opened):
                caught += 1
        return {
            "threshold": round(float(on), 6),
            "sensitivity": round(caught / n_pos, 4),
            "caught": caught,
            "episodes": episodes,
            "episodes_per_patient_day": round(episodes / days, 4),
        }

    candidates = [figures(float(c)) for c in grid]
    within = [c for c in candidates if c["episodes_per_patient_day"] <= max_per_day]
    if not within:
        raise OperatorError(
            f"{kind}: no threshold keeps alert episodes at or below {max_per_day} per patient-day on these scores"
        )  # only when every candidate alerts too often (the highest quantiles usually alert on no one)
    best = max(within, key=lambda c: (c["caught"], c["threshold"]))
    if best["caught"] == 0:
        raise OperatorError(
            f"{kind}: within {max_per_day} alert episodes per patient-day no threshold catches any of the "
            f"{n_pos} positives; nothing written"
        )
    return {
        "kind": kind,
        "chosen": best,
        "model_threshold": figures(base.on),
        "positives": n_pos,
        "patients": len(scores),
        "patient_days": round(days, 4),
        "max_episodes_per_patient_day": max_per_day,
        "late_h": late_h,
    }
