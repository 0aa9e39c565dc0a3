"""The worker's storage sink on SQLite and PostgreSQL: a score is stored and, in the same
transaction, the sink tells which of the worker's open episodes a nurse resolved."""

from __future__ import annotations

import asyncio

from icuwatch.core import schemas
from icuwatch.storage import db
from icuwatch.storage import repository as repo
from icuwatch.storage.models import AlertEvent
from icuwatch.streams.sink import StorageSink

T = 1_764_000_000.0


def score(t: float) -> schemas.Score:
    return schemas.Score(
        patient_id="p1",
        event_time=t,
        model="m",
        source="triton",
        deterioration_risk=1.0,
        sepsis_risk=1.0,
        news2=13,
        qsofa=2,
        staleness_s={},
        scored_at=t,
    )


def alert(kind: str) -> schemas.Alert:
    return schemas.Alert(
        patient_id="p1",
        event_time=T,
        alert_id=f"p1:{kind}:{T:.0f}",
        kind=kind,
        risk=1.0,
        news2=13,
        qsofa=2,
        model="m",
        source="triton",
        episode_start=T,
        raised_at=T,
    )


async def store_one(sink: StorageSink, s: schemas.Score, open_kinds: set[str] | None = None) -> set[str]:
    resolved = await sink.store_scores([s], {s.patient_id: open_kinds or set()})
    return resolved.get(s.patient_id, set())


def test_store_score_reports_the_open_episodes_a_nurse_resolved(url):
    db.upgrade(url)
    sink = StorageSink(url)

    async def scenario():
        assert await store_one(sink, score(T)) == set()  # no open episode: nothing asked
        assert await sink.store_alert(alert("deterioration")) == "stored"
        assert await sink.store_alert(alert("sepsis")) == "stored"
        both = {"deterioration", "sepsis"}
        assert await store_one(sink, score(T + 60), both) == set()
        with sink.sessions.begin() as s:
            repo.resolve(s, f"p1:sepsis:{T:.0f}", by="nurse.kim", reason="reviewed")
        assert await store_one(sink, score(T + 120), both) == {"sepsis"}
        assert await store_one(sink, score(T + 120), both) == {"sepsis"}  # redelivered: same answer
        # the episode end resolves an acknowledged alert, with its own reason
        with sink.sessions.begin() as s:
            repo.acknowledge(s, f"p1:deterioration:{T:.0f}", by="nurse.kim")
        await sink.close_episode(f"p1:deterioration:{T:.0f}")
        assert await store_one(sink, score(T + 180), both) == both

    asyncio.run(scenario())
    assert sink.scores_stored == 4
    with sink.sessions() as s:
        (event,) = s.query(AlertEvent).filter_by(alert_id=f"p1:deterioration:{T:.0f}", action="resolved").all()
    assert event.actor == "system:episode-closed" and event.detail["reason"]


def test_store_scores_writes_a_batch_in_one_transaction_and_answers_per_patient(url):
    db.upgrade(url)
    sink = StorageSink(url)

    def of(pid: str, t: float) -> schemas.Score:
        return score(t).model_copy(update={"patient_id": pid})

    async def scenario():
        assert await sink.store_alert(alert("sepsis")) == "stored"  # p1's sepsis alert is open
        batch = [of("p1", T + 60), of("p2", T + 60), of("p1", T + 120), of("p1", T + 120)]  # one redelivered
        assert await sink.store_scores(batch, {"p1": {"sepsis"}, "p2": set()}) == {"p1": set()}
        with sink.sessions.begin() as s:
            repo.resolve(s, f"p1:sepsis:{T:.0f}", by="nurse.kim", reason="reviewed")
        resolved = await sink.store_scores([of("p1", T + 180), of("p2", T + 180)], {"p1": {"sepsis"}, "p2": set()})
        assert resolved == {"p1": {"sepsis"}}

    asyncio.run(scenario())
    assert sink.scores_stored == 5
