"""Alert lifecycle in storage: audit trail, one open episode per patient and kind, escalation,
change feed, timeline, alert quality, API tokens, and migration 0003 over 0002 data.

Every test runs on SQLite and PostgreSQL with the fixtures of tests/conftest.py and
tests/storage/test_storage.py (a fresh schema per PostgreSQL test).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.orm import Session, sessionmaker
from test_storage import (  # noqa: F401  (fixtures)
    T0,
    adt,
    alert,
    score,
    ts,
)

from icuwatch.storage import db, lifecycle, tokens
from icuwatch.storage import repository as repo
from icuwatch.storage.models import Alert, ApiToken, Base, UTCDateTime

H, D = 3600.0, 86400.0


def _events(s: Session, alert_id: str) -> list[tuple[str, str]]:
    return [(e.action, e.actor) for e in lifecycle.alert_events(s, alert_id)]


# ----------------------------------------------------------------------------------- audit trail


def test_raise_acknowledge_resolve_writes_a_complete_audit_trail(
    sessions: sessionmaker[Session],
) -> None:
    a = alert()
    with sessions.begin() as s:
        assert repo.add_alert(s, a)
    with sessions() as s:
        row = s.get(Alert, a.alert_id)
        assert row is not None
        assert (row.escalation_level, row.escalated_at, row.resolved_by) == (0, None, None)
        assert row.updated_at == row.stored_at
        stored_at = row.updated_at
        (raised,) = lifecycle.alert_events(s, a.alert_id)
        assert (raised.action, raised.actor, raised.at) == ("raised", "system", ts(T0 + 1))
        assert raised.detail["risk"] == 0.8 and raised.detail["model"] == "ew-v1"

    with sessions.begin() as s:
        repo.acknowledge(s, a.alert_id, by=" nurse.kim ", comment="at bedside", at=T0 + 61)
    with sessions.begin() as s:
        repo.resolve(s, a.alert_id, by="dr.who", at=T0 + 900, reason=" sepsis ruled out, antibiotics stopped ")
    with sessions.begin() as s:
        repo.resolve(s, a.alert_id, by="someone.else", at=T0 + 999, reason="again")  # idempotent, no event
        assert repo.add_alert(s, a) is False  # redelivery: no event either

    with sessions() as s:
        events = lifecycle.alert_events(s, a.alert_id)
        assert [(e.action, e.actor, e.at) for e in events] == [
            ("raised", "system", ts(T0 + 1)),
            ("acknowledged", "nurse.kim", ts(T0 + 61)),
            ("resolved", "dr.who", ts(T0 + 900)),
        ]
        assert events[1].detail == {"comment": "at bedside"}
        assert events[2].detail == {"from_state": "acknowledged", "reason": "sepsis ruled out, antibiotics stopped"}
        row = s.get(Alert, a.alert_id)
        assert row is not None
        assert (row.state, row.resolved_by, row.resolved_at) == ("resolved", "dr.who", ts(T0 + 900))
        assert row.updated_at > stored_at  # wall clock of the last change, not the 'at' given
        assert lifecycle.alert_events(s, "no-such-alert") == []


def test_failed_transitions_write_no_event_and_system_resolve(
    sessions: sessionmaker[Session],
) -> None:
    a = alert()
    with sessions.begin() as s:
        repo.add_alert(s, a)
    with sessions.begin() as s:
        repo.resolve(s, a.alert_id)  # by the system (episode end), straight from raised
    with sessions.begin() as s, pytest.raises(repo.AlertStateError):
        repo.acknowledge(s, a.alert_id, by="nurse.kim")
    with sessions() as s:
        assert _events(s, a.alert_id) == [("raised", "system"), ("resolved", "system")]
        row = s.get(Alert, a.alert_id)
        assert row is not None and row.resolved_by is None
        assert lifecycle.alert_events(s, a.alert_id)[1].detail == {"from_state": "raised", "reason": None}


def test_open_alert_kinds_is_what_the_worker_asks_after_a_resolve(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        assert repo.open_alert_kinds(s, "p1") == set()
        repo.add_alert(s, alert(kind="deterioration"))
        repo.add_alert(s, alert(kind="sepsis"))
        repo.add_alert(s, alert(pid="p2", kind="sepsis"))
        repo.acknowledge(s, "p1:sepsis:0", by="nurse.kim")
    with sessions.begin() as s:
        assert repo.open_alert_kinds(s, "p1") == {"deterioration", "sepsis"}  # raised or acknowledged
        repo.resolve(s, "p1:deterioration:0", by="nurse.kim", reason="reviewed")
    with sessions.begin() as s:
        assert repo.open_alert_kinds(s, "p1") == {"sepsis"}
        assert repo.open_alert_kinds(s, "p2") == {"sepsis"}


# ----------------------------------------------------------------------------------- suppression


def test_one_open_episode_per_patient_and_kind(sessions: sessionmaker[Session]) -> None:
    first = alert(episode=0, t=T0)
    second = alert(episode=1, t=T0 + 600)
    third = alert(episode=2, t=T0 + 1200)
    with sessions.begin() as s:
        assert repo.add_alert(s, first)
        assert repo.add_alert(s, second) is False  # first is raised
    with sessions.begin() as s:
        assert repo.add_alert(s, second) is False  # redelivered: still one suppressed event
        assert repo.add_alert(s, alert(kind="sepsis", episode=1, t=T0 + 600))  # other kind
        assert repo.add_alert(s, alert(pid="p2", episode=1, t=T0 + 600))  # other patient
        repo.acknowledge(s, first.alert_id, by="nurse.kim")
    with sessions.begin() as s:
        assert repo.add_alert(s, third) is False  # acknowledged is still open
    with sessions() as s:
        assert s.get(Alert, second.alert_id) is None and s.get(Alert, third.alert_id) is None
        events = lifecycle.alert_events(s, first.alert_id)
        assert [e.action for e in events] == ["raised", "suppressed", "acknowledged", "suppressed"]
        sup = [e for e in events if e.action == "suppressed"]
        assert [e.detail["suppressed_alert_id"] for e in sup] == [second.alert_id, third.alert_id]
        assert sup[0].actor == "system"
        assert sup[0].detail["event_time"] == ts(T0 + 600).isoformat()
        assert sup[0].detail["source"] == second.source
        assert lifecycle.alert_events(s, second.alert_id) == []

    with sessions.begin() as s:
        repo.resolve(s, first.alert_id, by="nurse.kim")
        assert repo.add_alert(s, third)  # the episode is closed: a new one may be stored
    with sessions() as s:
        assert _events(s, third.alert_id) == [("raised", "system")]
        assert repo.count_alerts(s) == {"raised": 3, "acknowledged": 0, "resolved": 1}


# ------------------------------------------------------------------------------------ escalation


def test_escalation_once_per_interval(sessions: sessionmaker[Session]) -> None:
    a = alert(pid="p1", t=T0)  # raised_at T0 + 1
    b = alert(pid="p2", t=T0 + 100)  # raised_at T0 + 101
    c = alert(pid="p3", t=T0)  # acknowledged: never escalated
    with sessions.begin() as s:
        for x in (a, b, c):
            repo.add_alert(s, x)
        repo.acknowledge(s, c.alert_id, by="nurse.kim", at=T0 + 30)

    def esc(now: float) -> list[str]:
        with sessions.begin() as s:
            return lifecycle.escalate_overdue(s, after_s=300, now=now)

    assert esc(T0 + 300) == []  # a is 299 s old
    assert esc(T0 + 302) == [a.alert_id]
    assert esc(T0 + 302) == []  # same moment again
    assert esc(T0 + 402) == [b.alert_id]  # a escalated 100 s ago: not again yet
    assert esc(T0 + 601) == []  # a's last escalation is exactly 299 s ago
    assert esc(T0 + 603) == [a.alert_id]
    with sessions.begin() as s:
        repo.acknowledge(s, b.alert_id, by="dr.who")
    assert esc(T0 + 2000) == [a.alert_id]  # b is acknowledged now

    with sessions() as s:
        ra, rb, rc = (s.get(Alert, x.alert_id) for x in (a, b, c))
        assert ra is not None and rb is not None and rc is not None
        assert (ra.escalation_level, ra.escalated_at) == (3, ts(T0 + 2000))
        assert (rb.escalation_level, rb.escalated_at) == (1, ts(T0 + 402))
        assert (rc.escalation_level, rc.escalated_at) == (0, None)
        events = lifecycle.alert_events(s, a.alert_id)
        assert [(e.action, e.at, e.detail.get("level")) for e in events] == [
            ("raised", ts(T0 + 1), None),
            ("escalated", ts(T0 + 302), 1),
            ("escalated", ts(T0 + 603), 2),
            ("escalated", ts(T0 + 2000), 3),
        ]
        assert ra.updated_at > ra.stored_at
    with sessions.begin() as s, pytest.raises(ValueError):
        lifecycle.escalate_overdue(s, after_s=0)


def test_escalation_refreshes_alerts_already_loaded_in_the_session(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as s:
        repo.add_alert(s, alert())
    with sessions.begin() as s:
        loaded = s.get(Alert, alert().alert_id)
        assert loaded is not None and loaded.escalation_level == 0
        assert lifecycle.escalate_overdue(s, after_s=60) == [loaded.alert_id]  # now = wall clock
        assert loaded.escalation_level == 1


# ----------------------------------------------------------------------------------- change feed


def test_alerts_changed_since_orders_by_change_time_and_pages(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as s:
        for i in range(4):
            repo.add_alert(s, alert(pid=f"p{i}", t=T0 + i))
    with sessions() as s:
        everything = lifecycle.alerts_changed_since(s, None)
        assert [a.patient_id for a in everything] == ["p0", "p1", "p2", "p3"]
        mark = everything[-1].updated_at
        assert lifecycle.alerts_changed_since(s, mark) == []

    with sessions.begin() as s:
        repo.acknowledge(s, "p1:deterioration:0", by="nurse.kim")
    with sessions.begin() as s:  # one statement: p0, p2, p3 share one updated_at
        assert len(lifecycle.escalate_overdue(s, after_s=60)) == 3
    with sessions() as s:
        changed = lifecycle.alerts_changed_since(s, mark)
        assert [a.patient_id for a in changed] == ["p1", "p0", "p2", "p3"]
        assert [a.updated_at for a in changed] == sorted(a.updated_at for a in changed)
        assert changed[1].updated_at == changed[3].updated_at

        # Paging through ties with (updated_at, alert_id) as the cursor.
        page1 = lifecycle.alerts_changed_since(s, mark, limit=2)
        last = page1[-1]
        page2 = lifecycle.alerts_changed_since(s, last.updated_at, limit=2, after_id=last.alert_id)
        assert [a.patient_id for a in page1 + page2] == ["p1", "p0", "p2", "p3"]
        assert lifecycle.alerts_changed_since(s, mark, limit=0) == []


# ----------------------------------------------------------------------------------- unit filter


def test_list_alerts_by_unit(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        repo.upsert_patient(s, adt("admit", T0, pid="p1", unit="MICU"))
        repo.upsert_patient(s, adt("admit", T0, pid="p2", unit="SICU"))
        for i, pid in enumerate(["p1", "p2", "p3"]):
            repo.add_alert(s, alert(pid=pid, t=T0 + i))
        repo.add_alert(s, alert(pid="p1", kind="sepsis", t=T0 + 5))
    with sessions() as s:
        assert [a.alert_id for a in repo.list_alerts(s, unit="MICU")] == ["p1:sepsis:0", "p1:deterioration:0"]
        assert [a.patient_id for a in repo.list_alerts(s, unit="SICU", state="raised")] == ["p2"]
        assert repo.list_alerts(s, unit="MICU", kind="sepsis", limit=5)[0].kind == "sepsis"
        assert repo.list_alerts(s, unit="CCU") == []
        assert len(repo.list_alerts(s)) == 4


# -------------------------------------------------------------------------------------- timeline


def test_patient_timeline(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        # Out of order, two models, another patient's score in between.
        repo.add_scores(
            s,
            [
                score(t=T0 + 120, staleness_s={"vitals": 5.0, "labs": None}),
                score(t=T0),
                score(pid="other", t=T0 + 30),
                score(t=T0 + 60, model="ew-v2", source="triton"),
                score(t=T0 + 180),
            ],
        )
        repo.add_scores(s, [score(t=T0 + 60, model="ew-v2", source="triton", revision=1, news2=9)])
        repo.add_alert(s, alert(kind="sepsis", t=T0 + 180))
        repo.add_alert(s, alert(t=T0 + 120))
        repo.upsert_patient(s, adt("admit", T0 - 600, unit="MICU", bed="3"))

    with sessions() as s:
        tl = lifecycle.patient_timeline(s, "p1")
        assert tl["patient"] is not None and tl["patient"].bed == "3"
        assert [(x.event_time, x.model) for x in tl["scores"]] == [
            (ts(T0), "ew-v1"),
            (ts(T0 + 60), "ew-v2"),
            (ts(T0 + 120), "ew-v1"),
            (ts(T0 + 180), "ew-v1"),
        ]
        revised = tl["scores"][1]
        assert (revised.source, revised.revision, revised.news2) == ("triton", 1, 9)
        assert tl["scores"][2].staleness == {"vitals": 5.0, "labs": None}
        assert [a.kind for a in tl["alerts"]] == ["deterioration", "sepsis"]
        assert tl["truncated"] is False

        recent = lifecycle.patient_timeline(s, "p1", since=T0 + 60, limit=2)
        assert [x.event_time for x in recent["scores"]] == [ts(T0 + 120), ts(T0 + 180)]
        assert recent["truncated"] is True
        assert len(lifecycle.patient_timeline(s, "p1", since=ts(T0 + 150))["alerts"]) == 1

        nobody = lifecycle.patient_timeline(s, "nobody")
        assert nobody == {"patient": None, "scores": [], "alerts": [], "truncated": False}


def test_latest_scores_are_each_patients_newest(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        repo.add_scores(
            s,
            [
                score(t=T0 + 600, deterioration_risk=1.0, news2=16),
                score(t=T0, deterioration_risk=0.66, news2=7),
                score(pid="p2", t=T0 + 30, sepsis_risk=0.4),
                score(pid="p2", t=T0 + 30, model="ew-v2", sepsis_risk=0.5),  # same time, stored later
                score(pid="p3", t=T0 + 900),
            ],
        )
        repo.add_scores(s, [score(t=T0 + 600, deterioration_risk=0.9, revision=1)])  # late data: revised
    with sessions() as s:
        latest = lifecycle.latest_scores(s, ["p1", "p2", "p2", "nobody"])
        assert set(latest) == {"p1", "p2"}
        assert (latest["p1"].event_time, latest["p1"].deterioration_risk, latest["p1"].news2) == (ts(T0 + 600), 0.9, 3)
        assert (latest["p2"].model, latest["p2"].sepsis_risk) == ("ew-v2", 0.5)
        assert lifecycle.latest_scores(s, []) == {}
        assert set(lifecycle.latest_scores(s, [f"x{i}" for i in range(1200)] + ["p3"])) == {"p3"}  # chunked


# ---------------------------------------------------------------------------------- alert quality


def test_alert_quality_on_a_hand_made_ward(sessions: sessionmaker[Session]) -> None:
    """A: admitted T0, discharged T0+2d (2 patient-days); B: no ADT, scores T0..T0+1d (1);
    C: admitted, no discharge and no scores (0). Six alerts, four acknowledged after 60, 120,
    180 and 600 s, one escalated, one suppressed."""
    with sessions.begin() as s:
        repo.upsert_patient(s, adt("admit", T0, pid="A", unit="MICU"))
        repo.upsert_patient(s, adt("discharge", T0 + 2 * D, pid="A"))
        repo.upsert_patient(s, adt("admit", T0 + D, pid="C", unit="SICU"))
        repo.add_scores(s, [score(pid="A", t=T0 + H * k) for k in range(1, 48)])
        repo.add_scores(s, [score(pid="B", t=T0 + H * k) for k in range(0, 25)])
        alerts = {
            "a1": alert(pid="A", kind="deterioration", t=T0 + 2 * H),
            "a2": alert(pid="A", kind="sepsis", t=T0 + 3 * H),
            "a3": alert(pid="B", kind="deterioration", t=T0 + 4 * H),
            "a4": alert(pid="B", kind="sepsis", t=T0 + 30 * H),
            "a5": alert(pid="C", kind="deterioration", t=T0 + D + 2 * H),
            "a6": alert(pid="C", kind="sepsis", t=T0 + D + 3 * H),
        }
        for a in alerts.values():
            assert repo.add_alert(s, a)
        assert not repo.add_alert(s, alert(pid="A", episode=9, t=T0 + 5 * H))  # suppressed
        for name, wait in [("a1", 60), ("a2", 120), ("a3", 180), ("a4", 600)]:
            a = alerts[name]
            repo.acknowledge(s, a.alert_id, by="nurse.kim", at=a.raised_at + wait)
        repo.resolve(s, alerts["a2"].alert_id, by="nurse.kim")
        escalated = lifecycle.escalate_overdue(s, after_s=300, now=alerts["a5"].raised_at + 301)
        assert escalated == [alerts["a5"].alert_id]  # a6 was raised an hour later

    with sessions() as s:
        q = lifecycle.alert_quality(s)
        assert q["alerts"] == 6
        assert q["patient_days"] == pytest.approx(3.0)
        assert q["alerts_per_patient_day"] == pytest.approx(2.0)
        assert q["acknowledged"] == 4
        assert q["median_time_to_ack_s"] == pytest.approx(150.0)
        assert q["p90_time_to_ack_s"] == pytest.approx(474.0)  # 180 + 0.7 * (600 - 180)
        assert q["by_state"] == {"raised": 2, "acknowledged": 3, "resolved": 1}
        assert q["by_kind"] == {"deterioration": 3, "sepsis": 3}
        assert (q["escalated"], q["suppressed"], q["since"]) == (1, 1, None)

        # From day 2: A counts 1 day (clipped), B's only score then is T0+1d itself (0 days).
        q = lifecycle.alert_quality(s, since=T0 + D)
        assert q["since"] == ts(T0 + D)
        assert q["alerts"] == 3
        assert q["patient_days"] == pytest.approx(1.0)
        assert q["alerts_per_patient_day"] == pytest.approx(3.0)
        assert (q["acknowledged"], q["median_time_to_ack_s"], q["p90_time_to_ack_s"]) == (
            1,
            pytest.approx(600.0),
            pytest.approx(600.0),
        )
        assert q["by_state"] == {"raised": 2, "acknowledged": 1, "resolved": 0}
        assert (q["escalated"], q["suppressed"]) == (1, 0)  # the suppressed one was at T0+5h


def test_alert_quality_of_an_empty_database(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        q = lifecycle.alert_quality(s)
    assert q["alerts"] == 0 and q["patient_days"] == 0.0
    assert q["alerts_per_patient_day"] is None
    assert q["median_time_to_ack_s"] is None and q["p90_time_to_ack_s"] is None


# ---------------------------------------------------------------------------------------- tokens


def test_tokens(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        nurse = tokens.create_token(s, "nurse.kim", "nurse")
        admin = tokens.create_token(s, "ops", "admin")
        with pytest.raises(ValueError, match="role"):
            tokens.create_token(s, "x", "janitor")
        with pytest.raises(ValueError):
            tokens.create_token(s, " ", "nurse")
    assert nurse != admin and len(nurse) >= 40
    with sessions() as s:
        assert tokens.authenticate(s, nurse) == ("nurse.kim", "nurse")
        assert tokens.authenticate(s, admin) == ("ops", "admin")
        assert tokens.authenticate(s, nurse + "x") is None
        assert tokens.authenticate(s, "") is None
        rows = s.scalars(sa.select(ApiToken).order_by(ApiToken.id)).all()
        assert [r.token_sha256 for r in rows] == [tokens.token_sha256(nurse), tokens.token_sha256(admin)]
        assert all(nurse not in (r.token_sha256, r.user) for r in rows)  # no plaintext stored

    with sessions.begin() as s:
        assert tokens.revoke_token(s, nurse) is True
        assert tokens.revoke_token(s, nurse) is False  # already revoked
        assert tokens.revoke_token(s, "never-issued") is False
    with sessions() as s:
        assert tokens.authenticate(s, nurse) is None
        assert tokens.authenticate(s, admin) == ("ops", "admin")
        revoked = s.scalars(sa.select(ApiToken).where(ApiToken.user == "nurse.kim")).one()
        assert revoked.revoked_at is not None

    with sessions.begin() as s, pytest.raises(sa.exc.IntegrityError):  # CHECK on role
        s.add(ApiToken(token_sha256="0" * 64, user="x", role="janitor", created_at=ts(T0)))
        s.flush()


# ------------------------------------------------------------------------------------- migration


def test_upgrade_from_0002_keeps_data_and_backfills_the_audit_trail(url: str) -> None:
    db.upgrade(url, "0002")
    eng = db.make_engine(url)
    t = UTCDateTime()
    alerts_0002 = sa.table(
        "alerts",
        *(sa.column(c) for c in ("alert_id", "patient_id", "kind", "model", "source", "state")),
        *(sa.column(c) for c in ("risk", "news2", "qsofa", "acknowledged_by", "ack_comment")),
        *(
            sa.column(c, t)
            for c in ("episode_start", "event_time", "raised_at", "stored_at", "acknowledged_at", "resolved_at")
        ),
    )
    base = dict(
        kind="sepsis",
        model="m",
        source="triton",
        risk=0.7,
        news2=5,
        qsofa=2,
        episode_start=ts(T0),
        event_time=ts(T0),
        raised_at=ts(T0 + 1),
        stored_at=ts(T0 + 2),
        acknowledged_by=None,
        ack_comment=None,
        acknowledged_at=None,
        resolved_at=None,
    )
    rows = [
        dict(base, alert_id="old:raised", patient_id="p1", state="raised"),
        dict(
            base,
            alert_id="old:acked",
            patient_id="p2",
            state="acknowledged",
            acknowledged_by="nurse.kim",
            ack_comment="ok",
            acknowledged_at=ts(T0 + 60),
        ),
        dict(
            base,
            alert_id="old:resolved",
            patient_id="p3",
            state="resolved",
            acknowledged_by="dr.who",
            acknowledged_at=ts(T0 + 60),
            resolved_at=ts(T0 + 600),
        ),
    ]
    try:
        with eng.begin() as conn:
            conn.execute(sa.insert(alerts_0002), rows)
            conn.execute(sa.text("INSERT INTO patients (patient_id) VALUES ('p1'), ('p2'), ('p3')"))
        db.upgrade(url)
        assert db.current_revision(url) == db.head_revision()  # 0003 and later

        with eng.connect() as conn:  # the migrated schema is exactly the models'
            mc = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(mc, Base.metadata) == []

        sessions = db.session_factory(eng)
        with sessions() as s:
            got = {a.alert_id: a for a in s.scalars(sa.select(Alert))}
            assert got["old:raised"].updated_at == ts(T0 + 2)
            assert got["old:acked"].updated_at == ts(T0 + 60)
            assert got["old:resolved"].updated_at == ts(T0 + 600)
            assert {a.escalation_level for a in got.values()} == {0}
            assert {a.resolved_by for a in got.values()} == {None}
            trail = lifecycle.alert_events(s, "old:resolved")
            assert [(e.action, e.actor, e.at) for e in trail] == [
                ("raised", "system", ts(T0 + 1)),
                ("acknowledged", "dr.who", ts(T0 + 60)),
                ("resolved", "system", ts(T0 + 600)),
            ]
            assert all(e.detail["backfilled"] is True for e in trail)
            assert _events(s, "old:acked") == [("raised", "system"), ("acknowledged", "nurse.kim")]

        with sessions.begin() as s:  # the lifecycle works on migrated rows
            assert not repo.add_alert(s, alert(pid="p1", kind="sepsis", episode=7))  # p1 open
            assert lifecycle.escalate_overdue(s, after_s=300) == ["old:raised"]
            repo.acknowledge(s, "old:raised", by="nurse.kim")
        with sessions() as s:
            assert [e.action for e in lifecycle.alert_events(s, "old:raised")] == [
                "raised",
                "suppressed",
                "escalated",
                "acknowledged",
            ]
            with pytest.raises(sa.exc.IntegrityError):  # the state CHECK survived the rebuild
                s.execute(sa.update(Alert).values(state="bogus"))
    finally:
        eng.dispose()


def test_store_alert_tells_duplicate_from_suppressed(sessions: sessionmaker[Session]) -> None:
    """The worker republishes a duplicate (it may have died after storing, before publishing) and
    publishes nothing for a suppressed alert."""
    first = alert(episode=0, t=T0)
    with sessions.begin() as s:
        assert repo.store_alert(s, first) == "stored"
    with sessions.begin() as s:
        assert repo.store_alert(s, first) == "duplicate"
        assert repo.store_alert(s, alert(episode=1, t=T0 + 600)) == "suppressed"
