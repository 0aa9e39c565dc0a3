"""Silent mode per unit (``storage/units.py``, issue 22 must-have 2) on SQLite and PostgreSQL: a
silent unit's model alerts are recorded but kept from every nurse-facing read, and shown at once
when an engineer turns the unit live; every change audited."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from sqlalchemy.orm import Session, sessionmaker

from icuwatch.core import schemas
from icuwatch.storage import lifecycle, repository, units
from icuwatch.storage.models import Alert

T0 = 1_765_000_000.0


def alert(pid: str, kind: str = "sepsis", t: float = T0) -> schemas.Alert:
    return schemas.Alert(
        patient_id=pid, event_time=t, alert_id=f"{pid}:{kind}:{t:.0f}", kind=kind, risk=0.9, news2=7, qsofa=2,
        model="student_live", source="triton" if kind != "data_liveness" else "liveness", episode_start=t - 60,
        raised_at=t,
    )  # fmt: skip


def score(pid: str, t: float = T0) -> schemas.Score:
    return schemas.Score(
        patient_id=pid, event_time=t, model="student_live", source="triton", deterioration_risk=0.9,
        sepsis_risk=0.9, news2=7, qsofa=2, staleness_s={}, scored_at=t,
    )  # fmt: skip


def ward(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        for pid, unit in (("m1", "MICU"), ("m2", "MICU"), ("s1", "SICU")):
            repository.upsert_patient(s, schemas.Adt(patient_id=pid, event_time=T0 - 3600, event="admit", unit=unit))
        repository.add_scores(s, [score("m1"), score("s1")])
        units.set_mode(s, "MICU", "silent", "eng.ito", "trial of a new model")


def test_a_silent_unit_s_alerts_are_recorded_but_no_nurse_facing_read_shows_them(sessions) -> None:
    ward(sessions)
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    with sessions.begin() as s:
        assert repository.store_alert(s, alert("m1")) == "silent"
        assert repository.store_alert(s, alert("m1")) == "silent"  # redelivered: still not published
        assert repository.store_alert(s, alert("s1")) == "stored"  # the other unit is live
        assert repository.store_alert(s, alert("m2", "data_liveness")) == "stored"  # not the model's
    with sessions() as s:
        assert s.get(Alert, "m1:sepsis:1765000000").silent
        assert {a.patient_id for a in repository.list_alerts(s)} == {"s1", "m2"}
        assert {a.patient_id for a in lifecycle.alerts_changed_since(s, before)} == {"s1", "m2"}
        timeline = lifecycle.patient_timeline(s, "m1")
        assert timeline["scores"] == [] and timeline["alerts"] == []  # no risk on the page either
        assert len(lifecycle.patient_timeline(s, "s1")["scores"]) == 1
        assert lifecycle.alert_quality(s)["alerts"] == 2
        assert repository.open_alert_kinds(s, "m1") == {"sepsis"}  # the worker's episode stays open
    with sessions.begin() as s:
        escalated = lifecycle.escalate_overdue(s, after_s=60, now=T0 + 3600)
    assert "m1:sepsis:1765000000" not in escalated


def test_going_live_shows_the_open_silent_alerts_now_and_audits_it(sessions) -> None:
    ward(sessions)
    with sessions.begin() as s:
        repository.store_alert(s, alert("m1"))
        repository.store_alert(s, alert("m2", t=T0 - 7200))
        repository.resolve(s, "m2:sepsis:1764992800", by="system:episode-closed", reason="closed while silent")
    switched = datetime.now(timezone.utc) - timedelta(seconds=1)
    with sessions.begin() as s:
        result = units.set_mode(s, "MICU", "live", "eng.ito", "trial passed")
    assert result["was"] == "silent" and result["shown"] == ["m1:sepsis:1765000000"]
    with sessions() as s:
        shown = s.get(Alert, "m1:sepsis:1765000000")
        assert not shown.silent and shown.shown_at is not None and shown.shown_at >= switched
        assert [a.alert_id for a in lifecycle.alerts_changed_since(s, switched)] == ["m1:sepsis:1765000000"]
        assert s.get(Alert, "m2:sepsis:1764992800").silent  # a closed episode stays in the record only
        assert units.mode_of(s, "MICU") == "live" and units.mode_of(s, "NICU") == "live"
        log = units.history(s, "MICU")
    assert [(e["mode"], e["by"], e["reason"]) for e in log] == [
        ("silent", "eng.ito", "trial of a new model"),
        ("live", "eng.ito", "trial passed"),
    ]
    with sessions.begin() as s:  # escalation counts from when the nurses could first see it
        assert lifecycle.escalate_overdue(s, after_s=3600) == []
        assert "m1:sepsis:1765000000" in lifecycle.escalate_overdue(
            s, after_s=60, now=datetime.now(timezone.utc) + timedelta(minutes=5)
        )


def test_a_silent_alert_whose_episode_closes_is_resolved_by_the_system(sessions, url) -> None:
    from icuwatch.streams.sink import SILENT_EPISODE_CLOSED_REASON, StorageSink

    ward(sessions)
    with sessions.begin() as s:
        repository.store_alert(s, alert("m1"))
        repository.store_alert(s, alert("s1"))
    sink = StorageSink(url)
    asyncio.run(sink.close_episode("m1:sepsis:1765000000"))
    asyncio.run(sink.close_episode("s1:sepsis:1765000000"))  # unseen and live: stays on the board
    with sessions() as s:
        assert s.get(Alert, "m1:sepsis:1765000000").state == "resolved"
        assert s.get(Alert, "s1:sepsis:1765000000").state == "raised"
        events = lifecycle.alert_events(s, "m1:sepsis:1765000000")
    assert events[-1].detail["reason"] == SILENT_EPISODE_CLOSED_REASON


def test_a_transfer_out_of_a_silent_unit_shows_the_patient_s_open_silent_alert(sessions) -> None:
    ward(sessions)
    with sessions.begin() as s:
        repository.store_alert(s, alert("m1"))
    with sessions.begin() as s:  # moved to SICU, which is live: the deterioration must reach its nurses
        repository.upsert_patient(s, schemas.Adt(patient_id="m1", event_time=T0 + 60, event="transfer", unit="SICU"))
    with sessions() as s:
        shown = s.get(Alert, "m1:sepsis:1765000000")
        assert not shown.silent and shown.shown_at is not None
        assert [a.alert_id for a in repository.list_alerts(s, patient_id="m1")] == [shown.alert_id]
        raised = [e for e in lifecycle.alert_events(s, shown.alert_id) if e.action == "raised"]
        assert raised[-1].detail == {"shown": True, "reason": "patient moved to SICU, not silent"}
