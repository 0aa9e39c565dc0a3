"""Storage layer: migrations, idempotent writes, alert lifecycle, out-of-order ADT.

Every test runs against SQLite (a temporary file) and PostgreSQL. The PostgreSQL cases use a fresh,
uniquely named schema per test (prefixed per test session; all dropped at the end) in the database
given by ``ICUWATCH_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``) and are skipped only when nothing listens
there; a server that rejects the connection fails them.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from icuwatch.core import schemas
from icuwatch.core.settings import get_settings
from icuwatch.storage import db
from icuwatch.storage import repository as repo
from icuwatch.storage.models import Alert, Base, Patient, Score

T0 = 1_700_000_000.0


# --------------------------------------------------------------------------------------- fixtures
# pg_admin, backend, url (an empty database on SQLite and on PostgreSQL), engine and sessions
# (on that database, migrated) are in conftest.py.


# ---------------------------------------------------------------------------------------- helpers


def ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, tz=timezone.utc)


def score(pid: str = "p1", t: float = T0, model: str = "ew-v1", **kw: object) -> schemas.Score:
    fields: dict[str, object] = dict(
        patient_id=pid,
        event_time=t,
        model=model,
        source="fallback",
        deterioration_risk=0.2,
        sepsis_risk=0.1,
        news2=3,
        qsofa=1,
        staleness_s={"vitals": 1.0, "labs": None},
        scored_at=t + 0.5,
    )
    fields.update(kw)
    return schemas.Score(**fields)


def alert(pid: str = "p1", kind: str = "deterioration", episode: int = 0, t: float = T0) -> schemas.Alert:
    return schemas.Alert(
        patient_id=pid,
        event_time=t,
        alert_id=f"{pid}:{kind}:{episode}",
        kind=kind,
        risk=0.8,
        news2=7,
        qsofa=2,
        model="ew-v1",
        source="triton",
        episode_start=t - 300,
        raised_at=t + 1,
    )


def adt(event: str, t: float, pid: str = "p1", **kw: object) -> schemas.Adt:
    return schemas.Adt(patient_id=pid, event_time=t, event=event, **kw)


# ------------------------------------------------------------------------------------- migrations


def test_upgrade_creates_schema_and_is_idempotent(url: str) -> None:
    assert db.current_revision(url) is None
    db.upgrade(url)
    head = db.head_revision()
    assert head == "0012"
    assert db.current_revision(url) == head
    db.upgrade(url)  # a second run is a no-op
    assert db.current_revision(url) == head
    eng = db.make_engine(url)
    try:
        names = set(sa.inspect(eng).get_table_names())
    finally:
        eng.dispose()
    assert {"patients", "scores", "alerts", "alert_events", "api_tokens", "data_feeds", "alembic_version"} <= names
    assert {
        "shadow_scores",
        "shadow_alerts",
        "served_models",
        "drift_counts",
        "unit_modes",
        "unit_mode_events",
        "unit_thresholds",
        "model_roles",
    } <= names


def test_models_match_migrations(engine: Engine) -> None:
    """Autogenerate finds nothing to do: the hand-written migration and the models agree."""
    with engine.connect() as conn:
        mc = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(mc, Base.metadata)
    assert diff == []


def test_upgrade_works_from_any_cwd(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    db.upgrade(url)
    assert db.current_revision(url) == db.head_revision()


def test_default_url_comes_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "nested" / "dir" / "icu.db"
    monkeypatch.setenv("ICUWATCH_DATABASE_URL", f"sqlite:///{path}")
    get_settings.cache_clear()
    try:
        db.upgrade()
        assert path.exists()  # parent directories were created
        assert db.current_revision() == db.head_revision()
        eng = db.make_engine()
        assert eng.url.database == str(path)
        eng.dispose()
    finally:
        get_settings.cache_clear()


def test_sqlite_wal_and_busy_timeout(tmp_path: Path) -> None:
    eng = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with eng.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
    finally:
        eng.dispose()


# ----------------------------------------------------------------------------------------- scores


def test_scores_are_idempotent_under_redelivery(sessions: sessionmaker[Session]) -> None:
    batch = [score(pid=f"p{i % 7}", t=T0 + 60 * i) for i in range(300)]
    with sessions.begin() as s:
        assert repo.add_scores(s, batch) == 300
    with sessions.begin() as s:
        assert repo.add_scores(s, batch) == 0  # full redelivery
    more = batch[-5:] + [score(pid="p0", t=T0 + 10**6), score(pid="p0", t=T0, model="ew-v2")]
    with sessions.begin() as s:
        assert repo.add_scores(s, more) == 2  # partial redelivery + two new
        assert repo.add_scores(s, []) == 0
    with sessions() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Score)) == 302
        # Patients seen only through scores got stub rows.
        assert s.scalar(sa.select(sa.func.count()).select_from(Patient)) == 7


def test_a_higher_revision_replaces_the_stored_score_and_a_lower_one_does_not(
    sessions: sessionmaker[Session],
) -> None:
    first = score(pid="p1", t=T0, sepsis_risk=0.1)
    with sessions.begin() as s:
        assert repo.add_scores(s, [first]) == 1
    revised = first.model_copy(update={"sepsis_risk": 0.7, "revision": 2, "trigger": "revision"})
    with sessions.begin() as s:
        assert repo.add_scores(s, [revised]) == 1
        assert repo.add_scores(s, [revised.model_copy(update={"sepsis_risk": 0.2, "revision": 1})]) == 0
        assert repo.add_scores(s, [first]) == 0
    with sessions() as s:
        row = s.scalars(sa.select(Score)).one()
        assert (row.sepsis_risk, row.revision, row.trigger) == (0.7, 2, "revision")


def test_score_round_trip(sessions: sessionmaker[Session]) -> None:
    t = T0 + 0.123456
    with sessions.begin() as s:
        staleness = {"vitals": 2.5, "cxr": None, "labs": float("inf")}
        repo.add_scores(s, [score(t=t, staleness_s=staleness)])
    with sessions() as s:
        row = s.scalars(sa.select(Score)).one()
        assert row.event_time == ts(t)
        assert row.event_time.tzinfo is not None and row.event_time.utcoffset() == timedelta(0)
        assert row.scored_at == ts(t + 0.5)
        assert row.staleness == {"vitals": 2.5, "cxr": None, "labs": None}
        assert (row.model, row.source, row.news2, row.qsofa, row.trigger) == ("ew-v1", "fallback", 3, 1, "cadence")
    # The same event time, redelivered, is recognised as a duplicate.
    with sessions.begin() as s:
        assert repo.add_scores(s, [score(t=t)]) == 0


# ----------------------------------------------------------------------------------------- alerts


def test_alerts_are_idempotent_and_ack_survives_redelivery(sessions: sessionmaker[Session]) -> None:
    a = alert()
    with sessions.begin() as s:
        assert repo.add_alert(s, a) is True
    with sessions.begin() as s:
        assert repo.add_alert(s, a) is False
        repo.acknowledge(s, a.alert_id, by="nurse.kim")
    with sessions.begin() as s:
        assert repo.add_alert(s, a) is False
    with sessions() as s:
        row = s.get(Alert, a.alert_id)
        assert row is not None
        assert row.state == "acknowledged" and row.acknowledged_by == "nurse.kim"
        assert row.episode_start == ts(T0 - 300) and row.raised_at == ts(T0 + 1)
        assert s.get(Patient, "p1") is not None
        assert s.scalar(sa.select(sa.func.count()).select_from(Alert)) == 1


def test_acknowledge_resolve_lifecycle(sessions: sessionmaker[Session]) -> None:
    # Different kinds: only one episode per patient and kind may be open at a time.
    a, b = alert(episode=0), alert(kind="sepsis", episode=1, t=T0 + 3600)
    with sessions.begin() as s:
        repo.add_alert(s, a)
        repo.add_alert(s, b)

    before = datetime.now(timezone.utc)
    with sessions.begin() as s:
        row = repo.acknowledge(s, a.alert_id, by="dr.who", comment="seen, fluids started")
        assert row.state == "acknowledged"
    with sessions() as s:
        row = s.get(Alert, a.alert_id)
        assert row is not None
        assert row.acknowledged_by == "dr.who" and row.ack_comment == "seen, fluids started"
        assert row.acknowledged_at is not None
        assert row.acknowledged_at >= before - timedelta(seconds=1)
        assert row.resolved_at is None

    with sessions.begin() as s, pytest.raises(repo.AlertStateError, match="acknowledged"):
        repo.acknowledge(s, a.alert_id, by="someone.else")
    with sessions.begin() as s, pytest.raises(repo.AlertNotFound, match="nope"):
        repo.acknowledge(s, "nope", by="dr.who")
    with sessions.begin() as s, pytest.raises(repo.AlertNotFound):
        repo.resolve(s, "nope")
    with sessions.begin() as s, pytest.raises(ValueError):
        repo.acknowledge(s, b.alert_id, by="  ")

    with sessions.begin() as s:
        repo.resolve(s, a.alert_id, at=T0 + 900)
        repo.resolve(s, b.alert_id, at=ts(T0 + 4000))  # raised -> resolved directly
    with sessions.begin() as s:
        again = repo.resolve(s, a.alert_id, at=T0 + 5000)  # idempotent: keeps the first time
        assert again.resolved_at == ts(T0 + 900)
    with sessions() as s:
        ra, rb = s.get(Alert, a.alert_id), s.get(Alert, b.alert_id)
        assert ra is not None and rb is not None
        assert (ra.state, ra.resolved_at, ra.acknowledged_by) == ("resolved", ts(T0 + 900), "dr.who")
        assert (rb.state, rb.resolved_at, rb.acknowledged_at) == ("resolved", ts(T0 + 4000), None)
    with sessions.begin() as s, pytest.raises(repo.AlertStateError, match="resolved"):
        repo.acknowledge(s, b.alert_id, by="dr.who")


def test_list_and_count_alerts(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        assert repo.count_alerts(s) == {"raised": 0, "acknowledged": 0, "resolved": 0}
        # One open episode per patient and kind: p1's second sepsis alert comes after its first
        # is resolved, and the fifth alert is another patient's.
        for i in range(5):
            kind = "deterioration" if i % 3 == 0 else "sepsis"
            pid = "p2" if i == 4 else f"p{i % 2}"
            assert repo.add_alert(s, alert(pid=pid, kind=kind, episode=i, t=T0 + i))
    with sessions.begin() as s:
        repo.acknowledge(s, "p0:deterioration:0", by="a")
        repo.resolve(s, "p1:sepsis:1")
        assert repo.add_alert(s, alert(pid="p1", kind="sepsis", episode=5, t=T0 + 5))

    with sessions() as s:
        everything = repo.list_alerts(s)
        assert [a.alert_id for a in everything] == [
            "p1:sepsis:5",
            "p2:sepsis:4",
            "p1:deterioration:3",
            "p0:sepsis:2",
            "p1:sepsis:1",
            "p0:deterioration:0",
        ]  # newest event time first
        assert {a.alert_id for a in repo.list_alerts(s, state="raised")} == {
            "p1:sepsis:5",
            "p2:sepsis:4",
            "p1:deterioration:3",
            "p0:sepsis:2",
        }
        acked = repo.list_alerts(s, state="acknowledged")
        assert [a.alert_id for a in acked] == ["p0:deterioration:0"]
        assert [a.alert_id for a in repo.list_alerts(s, kind="deterioration")] == [
            "p1:deterioration:3",
            "p0:deterioration:0",
        ]
        assert [a.alert_id for a in repo.list_alerts(s, patient_id="p1", kind="sepsis")] == [
            "p1:sepsis:5",
            "p1:sepsis:1",
        ]
        newest = repo.list_alerts(s, state="raised", patient_id="p0", limit=1)
        assert [a.alert_id for a in newest] == ["p0:sepsis:2"]
        assert repo.list_alerts(s, patient_id="nobody") == []
        assert repo.count_alerts(s) == {"raised": 4, "acknowledged": 1, "resolved": 1}
        with pytest.raises(ValueError, match="state"):
            repo.list_alerts(s, state="open")


# -------------------------------------------------------------------------------------------- ADT


def _patient(sessions: sessionmaker[Session], pid: str = "p1") -> Patient:
    with sessions() as s:
        p = s.get(Patient, pid)
        assert p is not None
        return p


def test_adt_in_order(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        p = repo.upsert_patient(s, adt("admit", T0, unit="MICU", bed="4", age=71, sex="F"))
        assert (p.unit, p.bed, p.admitted_at) == ("MICU", "4", ts(T0))
    with sessions.begin() as s:
        repo.upsert_patient(s, adt("transfer", T0 + 100, unit="SICU", bed="9"))
    with sessions.begin() as s:
        repo.upsert_patient(s, adt("discharge", T0 + 200))
    p = _patient(sessions)
    assert (p.unit, p.bed, p.age, p.sex) == ("SICU", "9", 71, "F")
    assert (p.admitted_at, p.discharged_at, p.updated_at) == (ts(T0), ts(T0 + 200), ts(T0 + 200))

    with sessions.begin() as s:  # readmission reopens the stay
        repo.upsert_patient(s, adt("admit", T0 + 1000, unit="CCU", bed="1"))
    p = _patient(sessions)
    assert (p.unit, p.admitted_at, p.discharged_at) == ("CCU", ts(T0 + 1000), None)

    with sessions.begin() as s:  # redelivery of the same event changes nothing
        repo.upsert_patient(s, adt("admit", T0 + 1000, unit="CCU", bed="1"))
    p = _patient(sessions)
    assert (p.unit, p.admitted_at, p.discharged_at) == ("CCU", ts(T0 + 1000), None)
    assert p.updated_at == ts(T0 + 1000)


def test_adt_out_of_order(sessions: sessionmaker[Session]) -> None:
    # The transfer arrives first, then the (older) admit, then a stale transfer.
    with sessions.begin() as s:
        repo.upsert_patient(s, adt("transfer", T0 + 100, unit="SICU", bed="9"))
    with sessions.begin() as s:
        repo.upsert_patient(s, adt("admit", T0, unit="ED", bed="x", age=64, sex="M"))
    with sessions.begin() as s:
        repo.upsert_patient(s, adt("transfer", T0 + 50, unit="MICU", bed="2"))
    p = _patient(sessions)
    assert (p.unit, p.bed) == ("SICU", "9")  # older events did not overwrite the location
    assert (p.age, p.sex) == (64, "M")  # but filled what was missing
    assert (p.admitted_at, p.discharged_at, p.updated_at) == (ts(T0), None, ts(T0 + 100))

    # Discharge, then a readmission, then the old stay's discharge is redelivered late.
    with sessions.begin() as s:
        repo.upsert_patient(s, adt("discharge", T0 + 500))
        repo.upsert_patient(s, adt("admit", T0 + 900, unit="CCU", bed="3"))
        repo.upsert_patient(s, adt("discharge", T0 + 500))
        repo.upsert_patient(s, adt("admit", T0, unit="ED"))
    p = _patient(sessions)
    assert (p.unit, p.bed, p.admitted_at, p.discharged_at) == ("CCU", "3", ts(T0 + 900), None)


def test_patient_arrives_after_scores_and_alerts(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        repo.add_scores(s, [score(pid="late")])
        repo.add_alert(s, alert(pid="late"))
        assert repo.ensure_patient(s, "late") is False
        assert repo.ensure_patient(s, "brand-new") is True
    p = _patient(sessions, "late")
    assert (p.unit, p.admitted_at, p.updated_at) == (None, None, None)
    with sessions.begin() as s:
        repo.upsert_patient(s, adt("admit", T0 - 3600, pid="late", unit="MICU", bed="7"))
    p = _patient(sessions, "late")
    assert (p.unit, p.bed, p.admitted_at) == ("MICU", "7", ts(T0 - 3600))


def test_sqlite_second_writer_waits_instead_of_failing(tmp_path: Path) -> None:
    """Worker and API share the file: a writer blocked by another's transaction waits for it."""
    import threading
    import time

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    db.upgrade(url)
    worker, api = db.make_engine(url), db.make_engine(url)
    try:
        holding = threading.Event()

        def long_write() -> None:
            with db.session_factory(worker).begin() as s:
                repo.add_scores(s, [score(t=T0 + i) for i in range(10)])
                holding.set()
                time.sleep(0.5)

        th = threading.Thread(target=long_write)
        th.start()
        assert holding.wait(5)
        # Without the busy timeout this would raise "database is locked".
        with db.session_factory(api).begin() as s:
            assert repo.add_alert(s, alert())
            with db.session_factory(api)() as reader:  # WAL: reads are not blocked
                assert repo.count_alerts(reader)["raised"] == 0
        th.join()
        with db.session_factory(api)() as s:
            assert s.scalar(sa.select(sa.func.count()).select_from(Score)) == 10
    finally:
        worker.dispose()
        api.dispose()
