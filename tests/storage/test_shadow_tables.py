"""The live shadow's tables and report, on SQLite and PostgreSQL (the ``sessions`` fixture)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from icuwatch.core import schemas
from icuwatch.storage import repository, shadow
from icuwatch.storage.models import Alert, Score, ShadowAlert, ShadowScore
from icuwatch.storage.shadow_report import report

T0 = 1_765_000_000.0
LIVE, SHADOW = "student_live", "early_warning"
LIVE_TH = {"deterioration": 0.2, "sepsis": 0.1}
SHADOW_TH = {"deterioration": 0.5, "sepsis": 0.5}


def score(pid: str, t: float, model: str, det: float, sep: float, source: str = "triton", **kw) -> schemas.Score:
    return schemas.Score(
        patient_id=pid,
        event_time=t,
        model=model,
        model_version="1",
        source=source,
        deterioration_risk=det,
        sepsis_risk=sep,
        news2=3,
        qsofa=1,
        staleness_s={"vitals": 1.0},
        scored_at=t + 1,
        **kw,
    )


def alert(pid: str, kind: str, t: float, model: str) -> schemas.Alert:
    return schemas.Alert(
        patient_id=pid,
        event_time=t,
        alert_id=f"{pid}:{kind}:{t - 60:.0f}",
        kind=kind,
        risk=0.9,
        news2=7,
        qsofa=2,
        model=model,
        source="triton" if kind != "data_liveness" else "liveness",
        episode_start=t - 60,
        raised_at=t + 1,
    )


def test_shadow_scores_are_idempotent_and_a_higher_revision_replaces(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        assert shadow.add_scores(s, [score("p1", T0, SHADOW, 0.1, 0.1), score("p1", T0 + 60, SHADOW, 0.2, 0.1)]) == 2
    with sessions.begin() as s:
        assert shadow.add_scores(s, [score("p1", T0, SHADOW, 0.9, 0.9)]) == 0  # redelivered
        assert shadow.add_scores(s, [score("p1", T0, SHADOW, 0.7, 0.1, revision=1)]) == 1
    with sessions() as s:
        rows = s.scalars(select(ShadowScore).order_by(ShadowScore.event_time)).all()
        assert [(r.deterioration_risk, r.revision) for r in rows] == [(0.7, 1), (0.2, 0)]
        assert s.scalar(select(func.count()).select_from(Score)) == 0  # nothing in the nurses' tables


def test_shadow_alerts_are_stored_once_and_closed_once(sessions: sessionmaker[Session]) -> None:
    a = alert("p1", "sepsis", T0 + 600, SHADOW)
    with sessions.begin() as s:
        shadow.store_batch(s, [], [a, a], {})
    with sessions.begin() as s:
        shadow.store_batch(s, [], [a], {a.alert_id: T0 + 900})
        shadow.close_episodes(s, {a.alert_id: T0 + 1200})  # a redelivered close keeps the first
    with sessions() as s:
        rows = s.scalars(select(ShadowAlert)).all()
        assert len(rows) == 1 and rows[0].closed_at == datetime.fromtimestamp(T0 + 900, timezone.utc)
        assert s.scalar(select(func.count()).select_from(Alert)) == 0


def _fill(sessions: sessionmaker[Session]) -> None:
    """Two patients on two units over one day, scored hourly by both models; the live model pages
    for p1 at hour 3 (deterioration), the shadow at hour 5 and also for p2 (sepsis)."""
    live, shadowed = [], []
    for h in range(25):
        t = T0 + 3600 * h
        live += [score("p1", t, LIVE, 0.3 if h >= 3 else 0.1, 0.05), score("p2", t, LIVE, 0.1, 0.05)]
        shadowed += [
            score("p1", t, SHADOW, 0.6 if h >= 5 else 0.1, 0.1),
            score("p2", t, SHADOW, 0.1, 0.6 if h >= 20 else 0.1),
        ]
    live.append(score("p1", T0 + 3600 * 30, "rules_v1", 0.9, 0.9, source="fallback"))
    with sessions.begin() as s:
        repository.upsert_patient(s, schemas.Adt(patient_id="p1", event_time=T0, event="admit", unit="MICU"))
        repository.upsert_patient(s, schemas.Adt(patient_id="p2", event_time=T0, event="admit", unit="SICU"))
        repository.add_scores(s, live)
        shadow.add_scores(s, shadowed)
        repository.store_alert(s, alert("p1", "deterioration", T0 + 4 * 3600, LIVE))
        repository.store_alert(s, alert("p2", "data_liveness", T0 + 4 * 3600, LIVE))  # not a risk alert
        shadow.add_alerts(
            s, [alert("p1", "deterioration", T0 + 6 * 3600, SHADOW), alert("p2", "sepsis", T0 + 21 * 3600, SHADOW)]
        )
        shadow.add_alerts(s, [alert("p1", "deterioration", T0 + 12 * 3600, SHADOW)])  # a second episode
        shadow.record_served_model(s, LIVE, "live", LIVE_TH)
        shadow.record_served_model(s, SHADOW, "shadow", SHADOW_TH)


def test_report_compares_live_and_shadow(sessions: sessionmaker[Session]) -> None:
    _fill(sessions)
    with sessions() as s:
        r = report(s)
    assert r["live"]["model"] == f"{LIVE}/1" and r["shadow"]["model"] == f"{SHADOW}/1"
    assert r["live"]["scores"] == 50 and r["shadow"]["scores"] == 50 and r["live"]["fallback_scores"] == 1
    assert r["live"]["patient_days"] == pytest.approx(2.0) and r["live"]["alert_episodes"] == 1
    assert r["live"]["episodes_per_patient_day"] == pytest.approx(0.5)
    assert r["shadow"]["alert_episodes"] == 3 and r["shadow"]["episodes_per_patient_day"] == pytest.approx(1.5)
    assert r["paired_scores"] == 50  # the fallback score has no shadow pair
    # p1: the live model pages from hour 3, the shadow from hour 5 (hours 3, 4 differ); p2: sepsis 20-24.
    assert r["agreement_by_kind"]["deterioration"] == pytest.approx(48 / 50)
    assert r["agreement_by_kind"]["sepsis"] == pytest.approx(45 / 50)
    assert r["agreement"] == pytest.approx(43 / 50)
    assert r["lead_time_difference_min"] == pytest.approx(120.0)  # first episodes: hour 6 against hour 4
    assert r["lead_time_difference"]["n"] == 1 and r["lead_time_difference"]["alerted_by_shadow_only"] == 1
    assert r["per_unit"]["MICU"]["live"]["alert_episodes"] == 1
    assert r["per_unit"]["MICU"]["shadow"]["alert_episodes"] == 2
    assert r["per_unit"]["SICU"]["shadow"]["alert_episodes"] == 1
    assert r["per_unit"]["SICU"]["agreement"] == pytest.approx(20 / 25)


def test_report_since_leaves_out_earlier_scores_and_alerts(sessions: sessionmaker[Session]) -> None:
    _fill(sessions)
    with sessions() as s:
        r = report(s, datetime.fromtimestamp(T0 + 10 * 3600, timezone.utc))
    assert r["live"]["scores"] == 30 and r["live"]["alert_episodes"] == 0
    assert r["shadow"]["alert_episodes"] == 2 and r["lead_time_difference_min"] is None


def test_report_without_thresholds_names_the_model_and_pairs_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        repository.add_scores(s, [score("p1", T0, LIVE, 0.3, 0.1)])
        shadow.add_scores(s, [score("p1", T0, SHADOW, 0.3, 0.1)])
    with sessions() as s:
        r = report(s)
    assert r["agreement"] is None and r["models_without_thresholds"] == sorted([LIVE, SHADOW])
