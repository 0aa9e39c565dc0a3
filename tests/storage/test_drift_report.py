"""``storage/drift_report.py`` on SQLite and PostgreSQL: counts written as the worker writes them
(``streams/drift.py``), scores and alerts as the worker stores them; what moved is flagged, what
did not is not."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from icuwatch.core import features as F
from icuwatch.core import schemas
from icuwatch.storage import drift_counts, repository
from icuwatch.storage.drift_report import report
from icuwatch.streams.drift import DriftCounts

T0 = 1_765_000_800.0 - 1_765_000_800.0 % 3600  # an hour's start
HOURS, PATIENTS = 12, 4
UNITS = ("MICU", "SICU")


def _row(rng, spo2_offset: float, cxr_age_s: float) -> np.ndarray:
    x = F.empty(1)
    x[0, F.INDEX["hr"]], x[0, F.INDEX["spo2"]] = rng.normal(85, 10), rng.normal(96, 1.5) - spo2_offset
    x[0, F.INDEX["creatinine"]] = rng.gamma(4, 0.3)
    x[0, F.INDEX["stale_vitals_s"]], x[0, F.INDEX["stale_cxr_s"]] = 1.0, cxr_age_s
    return x


def _fill(sessions: sessionmaker[Session]) -> None:
    """Twelve hours of two units; from hour 6 MICU's monitors read SpO2 6 low and its X-rays stop,
    and SICU's patients alert far more often than before (1 episode in the first six hours, 8
    after; one open alert per patient and kind, so two kinds). Two workers share the patients."""
    rng = np.random.default_rng(1)
    writers = [DriftCounts("w1"), DriftCounts("w2")]
    scores, alerts = [], []
    for h in range(HOURS):
        late = h >= 6
        for unit in UNITS:
            micu_late = late and unit == "MICU"
            for p in range(PATIENTS):
                pid = f"{unit}-{p}"
                counts = writers[p % 2]
                for k in range(12):  # a score every 5 min
                    t = T0 + 3600 * h + 300 * k
                    counts.scored(unit, t, _row(rng, 6.0 if micu_late else 0.0, 3600.0 if not micu_late else 4e5))
                    counts.arrived(unit, pid, t, "icu.vitals")
                    risk = float(np.clip(rng.beta(2, 8), 0, 1))
                    scores.append(_score(pid, t, risk))
                if not micu_late and (h + p) % 2 == 0:
                    counts.arrived(unit, pid, T0 + 3600 * h + 1800, "icu.cxr")
                if unit == "SICU" and ((h == 2 and p == 0) or h in (6, 8)):
                    alerts.append(_alert(pid, T0 + 3600 * h + 600, "deterioration" if h < 8 else "sepsis"))
    with sessions.begin() as s:
        for unit in UNITS:
            for p in range(PATIENTS):
                repository.upsert_patient(
                    s, schemas.Adt(patient_id=f"{unit}-{p}", event_time=T0, event="admit", unit=unit)
                )
        repository.add_scores(s, scores)
        for a in alerts:
            repository.store_alert(s, a)
        for counts in writers:
            drift_counts.record(s, counts.take())


def _score(pid: str, t: float, risk: float) -> schemas.Score:
    return schemas.Score(
        patient_id=pid, event_time=t, model="student_live", source="triton", deterioration_risk=risk,
        sepsis_risk=risk / 2, news2=1, qsofa=0, staleness_s={}, scored_at=t,
    )  # fmt: skip


def _alert(pid: str, t: float, kind: str) -> schemas.Alert:
    return schemas.Alert(
        patient_id=pid, event_time=t, alert_id=f"{pid}:{kind}:{t:.0f}", kind=kind, risk=0.9,
        news2=7, qsofa=1, model="student_live", source="triton", episode_start=t - 300, raised_at=t,
    )  # fmt: skip


def test_what_moved_is_flagged_and_what_did_not_is_not(sessions: sessionmaker[Session]) -> None:
    _fill(sessions)
    with sessions() as s:
        r = report(s, current=timedelta(hours=6), reference=timedelta(hours=6))
    assert r["windows"]["current"][1] == datetime.fromtimestamp(T0 + HOURS * 3600, timezone.utc).isoformat()
    flags = {(f["unit"], f["signal"], f["name"]) for f in r["flags"]}
    assert flags == {
        ("MICU", "inputs", "spo2"),
        ("MICU", "modalities", "cxr"),
        ("MICU", "feeds", "icu.cxr"),
        ("SICU", "alert_volume", "high"),
    }, r["flags"]
    micu, sicu = r["units"]["MICU"], r["units"]["SICU"]
    assert micu["inputs"]["spo2"]["psi"] > 1.0 and micu["inputs"]["hr"]["psi"] < 0.1
    assert micu["feeds"]["icu.cxr"]["observed"] == 0 and micu["feeds"]["icu.cxr"]["direction"] == "low"
    assert micu["patient_hours"] == [24.0, 24.0]  # two writers' counts added
    assert sicu["alerts_per_patient_day"]["out_of_band"] and not micu["alerts_per_patient_day"]["out_of_band"]
    assert all(not v["flagged"] for v in sicu["inputs"].values()) and not sicu["feeds"]["icu.vitals"]["flagged"]
    assert sicu["scores"]["deterioration"]["n"] == [288, 288] and not sicu["scores"]["deterioration"]["flagged"]


def test_a_flush_written_twice_counts_once(sessions: sessionmaker[Session]) -> None:
    counts = DriftCounts("w1")
    counts.arrived("MICU", "p1", T0, "icu.vitals")
    rows = counts.take()
    with sessions.begin() as s:
        drift_counts.record(s, rows)
        drift_counts.record(s, rows)
    with sessions() as s:
        r = report(s, current=timedelta(hours=1), reference=timedelta(hours=1))
    assert r["units"]["MICU"]["feeds"]["icu.vitals"]["observed"] == 1


def test_no_counts_no_report(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        assert report(s) == {"windows": None, "units": {}, "flags": []}


def test_a_unit_whose_feeds_all_stop_is_flagged_from_its_adt_census(sessions: sessionmaker[Session]) -> None:
    counts = DriftCounts("w1")
    for h in range(6):  # then nothing at all arrives from the unit for six hours
        for p in range(4):
            for k in range(60):
                counts.arrived("CCU", f"c{p}", T0 + 3600 * h + 60 * k, "icu.vitals")
    with sessions.begin() as s:
        for p in range(4):
            repository.upsert_patient(s, schemas.Adt(patient_id=f"c{p}", event_time=T0, event="admit", unit="CCU"))
        drift_counts.record(s, counts.take())
    with sessions() as s:
        r = report(
            s,
            current=timedelta(hours=6),
            reference=timedelta(hours=6),
            until=datetime.fromtimestamp(T0 + 12 * 3600, timezone.utc),
        )
    ccu = r["units"]["CCU"]
    assert ccu["patient_hours"] == [24.0, 24.0]  # admitted all along, by ADT
    assert ccu["feeds"]["icu.vitals"]["observed"] == 0 and ccu["feeds"]["icu.vitals"]["flagged"]
