"""Drift and alert-volume guards: a current window of event time against the reference window
before it, per unit (``icuwatch drift report``, ``/api/drift``, the ``icuwatch_drift_*`` metrics).

From the workers' counts (``drift_counts``, ``streams/drift.py``):

* **inputs**: per feature-row column, PSI of the value histograms (``core/drift.py`` bins) and the
  change in the missing share; per modality, the change in the share of scores without it;
* **feeds**: messages per patient-hour by topic (patient-hours from the unit's ADT census, so a
  unit whose feeds all stop keeps its exposure; without ADT, the patients counted), flagged when
  the rate leaves ``RATE_BAND`` (half to twice the reference rate) and a one-sided Poisson test
  finds the current count unlikely under the reference rate (a feed that stops, a monitor that
  floods).

From the database:

* **scores**: PSI of the live model's risks (20 bins over [0, 1]);
* **alert volume** (the alert budget): risk alert episodes per patient-day against the reference
  rate, the same band and test. Out of band is an operations alarm for the engineers (a flag here
  and a metric); it never holds back, drops or changes a clinical alert.

A flag needs ``MIN_COUNT`` values in both windows (inputs, scores), or for feeds and alerts an
expected count of at least ``MIN_EXPECTED`` (a drop) or as many observed (a rise); PSI and
missing-share flags use ``core/drift.py``'s limits.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from scipy import stats
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from icuwatch.core import drift
from icuwatch.storage.models import Alert, DriftCount, Patient, Score

RATE_P_FLAG = 0.001
"""A feed or alert count this unlikely (one-sided Poisson) under the reference rate is flagged."""
MIN_EXPECTED = 5.0
EVENT_FEEDS = {"arrivals:icu.adt"}
"""Feeds that follow events (admissions, transfers), not a rate per patient-hour: not tested."""
RATE_BAND = (0.5, 2.0)
"""A feed's or a unit's alert rate is in band between half and twice its reference rate."""
SCORE_BINS = 20
UNKNOWN_UNIT = "unknown"
RISKS = {"deterioration": Score.deterioration_risk, "sepsis": Score.sepsis_risk}


def _sum_counts(session: Session, start: datetime, end: datetime) -> dict[str, dict[str, np.ndarray]]:
    """Per unit and column, the counts of every writer and hour in [start, end)."""
    out: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    rows = session.execute(
        select(DriftCount.unit, DriftCount.column, DriftCount.counts).where(
            DriftCount.bucket_start >= start, DriftCount.bucket_start < end
        )
    )
    for unit, column, counts in rows:
        arr = np.asarray(counts, dtype=np.int64)
        held = out[unit].get(column)
        out[unit][column] = arr if held is None or len(held) != len(arr) else held + arr
    return out


def _counted_hours(counts: dict[str, np.ndarray]) -> float:
    """Patient-hours as the workers counted them: per hour, the patients something arrived for."""
    return float(counts.get("patients", np.zeros(1))[0])


def _census_hours(session: Session, start: datetime, end: datetime) -> dict[str, float]:
    """Per unit (each patient's current one), the hours its admitted patients spent in [start, end)
    by ADT: the exposure that stays when every feed of a unit stops."""
    out: dict[str, float] = defaultdict(float)
    rows = session.execute(
        select(Patient.unit, Patient.admitted_at, Patient.discharged_at).where(
            Patient.admitted_at.is_not(None), Patient.admitted_at < end
        )
    )
    for unit, admitted, discharged in rows:
        stay_end = min(end, discharged) if discharged is not None else end
        hours = (stay_end - max(start, admitted)).total_seconds() / 3600.0
        if hours > 0:
            out[unit or UNKNOWN_UNIT] += hours
    return out


def _exposure(census: float, counts: dict[str, np.ndarray]) -> float:
    """Patient-hours of a unit in a window: the ADT census, or without ADT what the workers counted."""
    return census if census > 0 else _counted_hours(counts)


def _rate_change(ref_n: float, ref_exposure: float, cur_n: float, cur_exposure: float) -> dict[str, Any]:
    """The current count against what the reference rate expects over the current exposure."""
    if ref_exposure <= 0 or cur_exposure <= 0:
        return {
            "reference_rate": None,
            "current_rate": None,
            "expected": None,
            "observed": int(cur_n),
            "flagged": False,
        }
    rate = ref_n / ref_exposure
    expected = rate * cur_exposure
    low = float(stats.poisson.cdf(cur_n, expected)) if expected > 0 else 1.0
    high = float(stats.poisson.sf(cur_n - 1, expected)) if expected > 0 else (0.0 if cur_n > 0 else 1.0)
    # A drop needs enough expected to be seen, a rise enough observed; either must also leave the
    # band (a regular 1 Hz feed makes a 2 % change "significant").
    ratio = cur_n / expected if expected > 0 else math.inf
    in_band = RATE_BAND[0] <= ratio <= RATE_BAND[1]
    flagged = not in_band and bool(
        (expected >= MIN_EXPECTED and low < RATE_P_FLAG) or (cur_n >= MIN_EXPECTED and high < RATE_P_FLAG)
    )
    return {
        "reference_rate": round(rate, 6),
        "current_rate": round(cur_n / cur_exposure, 6),
        "expected": round(expected, 2),
        "observed": int(cur_n),
        "p_low": round(low, 6),
        "p_high": round(high, 6),
        "flagged": flagged,
        "direction": None if not flagged else ("low" if low < high else "high"),
    }


def _input_drift(ref: dict[str, np.ndarray], cur: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in drift.DRIFT_FEATURES:
        r, c = ref.get(name), cur.get(name)
        if r is None or c is None:
            continue
        r_vals, c_vals = r[:-1], c[:-1]
        n_ref, n_cur = int(r_vals.sum()), int(c_vals.sum())
        miss_ref, miss_cur = r[-1] / max(1, r.sum()), c[-1] / max(1, c.sum())
        value_psi = drift.psi(r_vals, c_vals) if n_ref and n_cur else None
        enough = n_ref >= drift.MIN_COUNT and n_cur >= drift.MIN_COUNT
        enough_rows = r.sum() >= drift.MIN_COUNT and c.sum() >= drift.MIN_COUNT
        out[name] = {
            "psi": None if value_psi is None else round(value_psi, 4),
            "missing_share": [round(float(miss_ref), 4), round(float(miss_cur), 4)],
            "n": [n_ref, n_cur],
            "flagged": bool(
                (enough and value_psi is not None and value_psi >= drift.PSI_FLAG)
                or (enough_rows and abs(miss_cur - miss_ref) >= drift.MISSING_SHARE_FLAG)
            ),
        }
    return out


def _presence(ref: dict[str, np.ndarray], cur: dict[str, np.ndarray]) -> dict[str, Any]:
    out = {}
    for modality in drift.PRESENT_WITHIN_S:
        r, c = ref.get(f"present:{modality}"), cur.get(f"present:{modality}")
        if r is None or c is None:
            continue
        absent_ref, absent_cur = r[0] / max(1, r.sum()), c[0] / max(1, c.sum())
        enough = r.sum() >= drift.MIN_COUNT and c.sum() >= drift.MIN_COUNT
        out[modality] = {
            "absent_share": [round(float(absent_ref), 4), round(float(absent_cur), 4)],
            "flagged": bool(enough and abs(absent_cur - absent_ref) >= drift.MISSING_SHARE_FLAG),
        }
    return out


def _feeds(ref: dict[str, np.ndarray], cur: dict[str, np.ndarray], hours: tuple[float, float]) -> dict[str, Any]:
    out = {}
    for column in sorted(c for c in set(ref) | set(cur) if c.startswith("arrivals:") and c not in EVENT_FEEDS):
        r, c = ref.get(column, np.zeros(1)), cur.get(column, np.zeros(1))
        out[column.split(":", 1)[1]] = _rate_change(float(r[0]), hours[0], float(c[0]), hours[1])
    return out


def _score_histograms(session: Session, start: datetime, end: datetime) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = defaultdict(lambda: {r: np.zeros(SCORE_BINS, np.int64) for r in RISKS})
    for risk, column in RISKS.items():
        # CASE rather than CAST or FLOOR: PostgreSQL's cast rounds, SQLite may lack floor().
        bucket = case(*[(column < (i + 1) / SCORE_BINS, i) for i in range(SCORE_BINS - 1)], else_=SCORE_BINS - 1)
        rows = session.execute(
            select(Patient.unit, bucket, func.count())
            .select_from(Score)
            .join(Patient, Patient.patient_id == Score.patient_id, isouter=True)
            .where(Score.source == "triton", Score.event_time >= start, Score.event_time < end)
            .group_by(Patient.unit, bucket)
        )
        for unit, b, n in rows:
            out[unit or UNKNOWN_UNIT][risk][min(int(b), SCORE_BINS - 1)] += int(n)
    return out


def _alert_counts(session: Session, start: datetime, end: datetime) -> dict[str, int]:
    rows = session.execute(
        select(Patient.unit, func.count())
        .select_from(Alert)
        .join(Patient, Patient.patient_id == Alert.patient_id, isouter=True)
        .where(Alert.kind.in_(tuple(RISKS)), Alert.event_time >= start, Alert.event_time < end)
        .group_by(Patient.unit)
    )
    return {unit or UNKNOWN_UNIT: int(n) for unit, n in rows}


def newest_bucket_end(session: Session) -> datetime | None:
    newest = session.scalar(select(func.max(DriftCount.bucket_start)))
    return None if newest is None else newest + timedelta(hours=1)


def report(
    session: Session,
    current: timedelta = timedelta(hours=6),
    reference: timedelta = timedelta(days=7),
    until: datetime | None = None,
) -> dict:
    """Per unit, the current window ``[until - current, until)`` against the reference window of
    length ``reference`` just before it. ``until``: default the end of the newest hour counted
    (event time, so replays and simulations of the past report on their own time)."""
    until = until or newest_bucket_end(session)
    if until is None:
        return {"windows": None, "units": {}, "flags": []}
    cur_start = until - current
    ref_start = cur_start - reference
    ref_counts, cur_counts = _sum_counts(session, ref_start, cur_start), _sum_counts(session, cur_start, until)
    ref_scores, cur_scores = (
        _score_histograms(session, ref_start, cur_start),
        _score_histograms(session, cur_start, until),
    )
    ref_alerts, cur_alerts = _alert_counts(session, ref_start, cur_start), _alert_counts(session, cur_start, until)
    ref_census, cur_census = _census_hours(session, ref_start, cur_start), _census_hours(session, cur_start, until)
    units: dict[str, Any] = {}
    flags: list[dict[str, Any]] = []
    for unit in sorted(set(ref_counts) | set(cur_counts) | set(cur_census)):
        ref, cur = ref_counts.get(unit, {}), cur_counts.get(unit, {})
        hours = (_exposure(ref_census.get(unit, 0.0), ref), _exposure(cur_census.get(unit, 0.0), cur))
        scores = {}
        for risk in RISKS:
            r, c = ref_scores[unit][risk], cur_scores[unit][risk]
            enough = r.sum() >= drift.MIN_COUNT and c.sum() >= drift.MIN_COUNT
            value = drift.psi(r, c) if r.sum() and c.sum() else None
            scores[risk] = {
                "psi": None if value is None else round(value, 4),
                "n": [int(r.sum()), int(c.sum())],
                "flagged": bool(enough and value is not None and value >= drift.PSI_FLAG),
            }
        alerts = _rate_change(ref_alerts.get(unit, 0), hours[0] / 24.0, cur_alerts.get(unit, 0), hours[1] / 24.0)
        entry: dict[str, Any] = {
            "patient_hours": [round(hours[0], 2), round(hours[1], 2)],
            "inputs": _input_drift(ref, cur),
            "modalities": _presence(ref, cur),
            "feeds": _feeds(ref, cur, hours),
            "scores": scores,
            "alerts_per_patient_day": {**alerts, "out_of_band": alerts["flagged"]},
        }
        units[unit] = entry
        for group in ("inputs", "modalities", "feeds", "scores"):
            flags += [{"unit": unit, "signal": group, "name": n} for n, v in entry[group].items() if v["flagged"]]
        if alerts["flagged"]:
            flags.append({"unit": unit, "signal": "alert_volume", "name": alerts["direction"]})
    return {
        "windows": {
            "reference": [ref_start.isoformat(), cur_start.isoformat()],
            "current": [cur_start.isoformat(), until.isoformat()],
        },
        "units": units,
        "flags": flags,
    }
