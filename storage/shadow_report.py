"""The live shadow's report: the live model's scores and alerts against the shadow's, over the same
patients and times (``icuwatch shadow report``, the engineers' shadow page).

* ``scores``: Triton-scored live scores (the fallback rules' are counted apart: the shadow has none
  for those batches) and shadow scores.
* ``alert_episodes``: risk alerts (deterioration, sepsis) raised in the window from Triton-scored
  scores (the fallback's are left out on both sides, as its scores are), silent ones included;
  ``episodes_per_patient_day`` divides them by the patient-days the model scored (per patient,
  last minus first score time).
* ``agreement``: over score pairs (same patient and event time, both from one batch), the share
  whose paging decision (risk at or above the model's 'on' threshold, as ``served_models`` records
  it) is the same for every kind; ``agreement_by_kind`` per kind. A hysteresis episode needs more
  than one such score, so this is the decision at score level, the strictest comparison.
* ``lead_time_difference_min``: per patient and kind alerted by both, the shadow's first alert time
  minus the live model's, in minutes (negative: the shadow pages earlier), the median;
  ``lead_time_difference`` adds quartiles, n and the patient-kinds alerted by one model only.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from icuwatch.storage.models import Alert, Patient, Score, ServedModel, ShadowAlert, ShadowScore

KINDS = ("deterioration", "sepsis")
UNKNOWN_UNIT = "unknown"


def _patient_days(spans: Iterable[tuple[str, datetime, datetime]]) -> float:
    return sum((last - first).total_seconds() for _, first, last in spans) / 86400.0


def _per_day(episodes: int, days: float) -> float | None:
    return round(episodes / days, 4) if days > 0 else None


def _spans(session: Session, table: Any, since: datetime | None, *where: Any) -> list:
    conditions = [*where] + ([table.event_time >= since] if since is not None else [])
    return list(
        session.execute(
            select(table.patient_id, func.min(table.event_time), func.max(table.event_time))
            .where(*conditions)
            .group_by(table.patient_id)
        )
    )


def _alerts(session: Session, table: Any, since: datetime | None, *where: Any) -> dict[tuple[str, str], list[datetime]]:
    """Per patient and risk kind, the event times of its alert episodes, earliest first."""
    conditions = [table.kind.in_(KINDS), *where] + ([table.event_time >= since] if since is not None else [])
    out: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for pid, kind, t in session.execute(
        select(table.patient_id, table.kind, table.event_time).where(*conditions).order_by(table.event_time)
    ):
        out[(pid, kind)].append(t)
    return out


def _model_counts(session: Session, table: Any, since: datetime | None, *where: Any) -> Counter:
    conditions = [*where] + ([table.event_time >= since] if since is not None else [])
    rows = session.execute(
        select(table.model, table.model_version, func.count())
        .where(*conditions)
        .group_by(table.model, table.model_version)
    )
    return Counter({f"{m}/{v}" if v else m: n for m, v, n in rows})


def _side(counts: Counter, alerts: dict, spans: list, units: dict[str, str]) -> dict:
    days = _patient_days(spans)
    by_unit_days: dict[str, float] = defaultdict(float)
    for pid, first, last in spans:
        by_unit_days[units.get(pid, UNKNOWN_UNIT)] += (last - first).total_seconds() / 86400.0
    by_unit_alerts: Counter = Counter()
    for (pid, _), times in alerts.items():
        by_unit_alerts[units.get(pid, UNKNOWN_UNIT)] += len(times)
    episodes = sum(len(times) for times in alerts.values())
    return {
        "model": counts.most_common(1)[0][0] if counts else None,
        "by_model": dict(counts),
        "scores": sum(counts.values()),
        "patients": len(spans),
        "patient_days": round(days, 4),
        "alert_episodes": episodes,
        "episodes_per_patient_day": _per_day(episodes, days),
        "_units": {u: (by_unit_alerts.get(u, 0), d) for u, d in by_unit_days.items()},
    }


def report(session: Session, since: datetime | None = None) -> dict:
    """The comparison of the live model with the shadow over scores at or after ``since`` (all:
    None). See the module docstring for each figure."""
    units = {pid: unit or UNKNOWN_UNIT for pid, unit in session.execute(select(Patient.patient_id, Patient.unit))}
    thresholds = {m: t for m, t in session.execute(select(ServedModel.model, ServedModel.thresholds))}
    live_alerts = _alerts(session, Alert, since, Alert.source == "triton")  # not the fallback's, as the scores
    shadow_alerts = _alerts(session, ShadowAlert, since)
    live = _side(
        _model_counts(session, Score, since, Score.source == "triton"),
        live_alerts,
        _spans(session, Score, since, Score.source == "triton"),
        units,
    )
    live["fallback_scores"] = session.scalar(
        select(func.count())
        .select_from(Score)
        .where(Score.source == "fallback", *([Score.event_time >= since] if since is not None else []))
    )
    shadow = _side(
        _model_counts(session, ShadowScore, since), shadow_alerts, _spans(session, ShadowScore, since), units
    )

    pairs = select(
        Score.patient_id,
        Score.model,
        Score.deterioration_risk,
        Score.sepsis_risk,
        ShadowScore.model,
        ShadowScore.deterioration_risk,
        ShadowScore.sepsis_risk,
    ).join(
        ShadowScore,
        and_(ShadowScore.patient_id == Score.patient_id, ShadowScore.event_time == Score.event_time),
    )
    pairs = pairs.where(Score.source == "triton", *([Score.event_time >= since] if since is not None else []))
    agree_all: Counter = Counter()
    agree_kind: dict[str, Counter] = {k: Counter() for k in KINDS}
    agree_unit: dict[str, Counter] = defaultdict(Counter)
    missing_thresholds: set[str] = set()
    for pid, live_model, live_det, live_sep, shadow_model, shadow_det, shadow_sep in session.execute(pairs):
        live_th, shadow_th = thresholds.get(live_model), thresholds.get(shadow_model)
        if live_th is None or shadow_th is None:
            missing_thresholds |= {m for m, t in ((live_model, live_th), (shadow_model, shadow_th)) if t is None}
            continue
        same = True
        for kind, lr, sr in (("deterioration", live_det, shadow_det), ("sepsis", live_sep, shadow_sep)):
            agrees = (lr >= live_th[kind]) == (sr >= shadow_th[kind])
            agree_kind[kind][agrees] += 1
            same &= agrees
        agree_all[same] += 1
        agree_unit[units.get(pid, UNKNOWN_UNIT)][same] += 1

    def share(c: Counter) -> float | None:
        n = c[True] + c[False]
        return round(c[True] / n, 4) if n else None

    both = sorted(set(live_alerts) & set(shadow_alerts))
    leads = [(shadow_alerts[k][0] - live_alerts[k][0]).total_seconds() / 60.0 for k in both]
    per_unit = {}
    for unit in sorted(set(live["_units"]) | set(shadow["_units"])):
        entry: dict[str, Any] = {}
        for name, side in (("live", live), ("shadow", shadow)):
            episodes, days = side["_units"].get(unit, (0, 0.0))
            entry[name] = {"alert_episodes": episodes, "episodes_per_patient_day": _per_day(episodes, days)}
        entry["agreement"] = share(agree_unit[unit])
        per_unit[unit] = entry
    for side in (live, shadow):
        del side["_units"]
    return {
        "since": since.isoformat() if since is not None else None,
        "live": live,
        "shadow": shadow,
        "paired_scores": agree_all[True] + agree_all[False],
        "agreement": share(agree_all),
        "agreement_by_kind": {k: share(c) for k, c in agree_kind.items()},
        "models_without_thresholds": sorted(missing_thresholds),
        "per_unit": per_unit,
        "lead_time_difference_min": round(statistics.median(leads), 2) if leads else None,
        "lead_time_difference": {
            "median": round(statistics.median(leads), 2) if leads else None,
            "q1": round(statistics.quantiles(leads, n=4, method="inclusive")[0], 2) if len(leads) >= 2 else None,
            "q3": round(statistics.quantiles(leads, n=4, method="inclusive")[2], 2) if len(leads) >= 2 else None,
            "n": len(leads),
            "alerted_by_live_only": len(set(live_alerts) - set(shadow_alerts)),
            "alerted_by_shadow_only": len(set(shadow_alerts) - set(live_alerts)),
        },
    }
