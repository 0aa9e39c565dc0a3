"""A nurse's resolve does not silence a patient: end to end on real parts (Tansu, a worker
subprocess, tritonserver, SQLite and PostgreSQL, the API).

The defect: after ``POST /api/alerts/{id}/resolve`` a patient whose risk stayed high raised
nothing more, because the worker's episode stayed open. Here the patient's vital signs carry every
NEWS2 red flag throughout, so the risk stays far above the alert threshold; every resolve (through
the API, with a reason) is followed by a new alert once the re-alert time (600 s of event time
here) has passed, also when the resolve happens while the worker is down (its episode state comes
back from the Faust table; the database says resolved).
"""

from __future__ import annotations

import time
import uuid
import warnings

import pytest
from sqlalchemy import select
from stack_fixtures import free_port, postgres_database, running_worker, wait_for

from icuwatch.core import schemas, topics
from icuwatch.storage import db, lifecycle
from icuwatch.storage.models import Alert, Score
from icuwatch.storage.tokens import create_token
from icuwatch.streams.kafka.producer import make_producer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.stack


def _deterioration_threshold() -> float:
    """The served live student's deterioration alert threshold (its ``export.json``)."""
    import json

    from icuwatch.serving import MODEL_REPOSITORY
    from icuwatch.serving.export import newest_version_dir

    served = newest_version_dir(MODEL_REPOSITORY / "student_live")  # what latest: 1 serves
    return float(json.loads((served / "export.json").read_text())["thresholds"]["deterioration"])


REALERT_S = 600.0
STEP_S = 10.0
"""Vital signs every 10 s of event time: with red flags in them, a score about once a minute."""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request, tmp_path):
    """An empty database of each kind, migrated."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'icu.db'}"
        db.upgrade(url)
        yield url
        return
    with postgres_database() as url:
        db.upgrade(url)
        yield url


def test_a_resolved_patient_whose_risk_stays_high_alerts_again(stack, database, tmp_path):
    from icuwatch.api.app import create_app

    base, env = stack
    env = {**env, "ICUWATCH_ALERT_REALERT_AFTER_RESOLVE_S": str(REALERT_S)}
    url = database
    settings = base.model_copy(
        update={
            "database_url": url,
            "app_id": f"icuwatch-resolve-{uuid.uuid4().hex[:8]}",
            "worker_web_port": free_port(),
        }
    )
    engine = db.make_engine(url)
    sessions = db.session_factory(engine)
    with sessions.begin() as s:
        token = create_token(s, "nurse.ade", "nurse")
    api = TestClient(create_app(settings, escalate=False))
    pid = f"rs{uuid.uuid4().hex[:8]}"
    t0 = time.time() - 3 * 3600
    producer = make_producer(settings)
    sent_until = [0.0]

    def send_until(t_end: float) -> None:
        """Vital signs with NEWS2 red flags (a risk far above the threshold) from where the last call stopped."""
        t = sent_until[0]
        while t < t_end:
            v = schemas.Vitals(
                patient_id=pid, event_time=t0 + t, hr=140, rr=32, spo2=86, sbp=85, temp=39.4, consciousness="V"
            )
            producer.send(topics.VITALS, key=pid.encode(), value=v.to_bytes())
            t += STEP_S
        sent_until[0] = t
        producer.flush()

    def alerts() -> list[Alert]:
        with sessions() as s:
            return list(
                s.scalars(
                    select(Alert)
                    .where(Alert.patient_id == pid, Alert.kind == "deterioration")
                    .order_by(Alert.event_time)
                )
            )

    def scores_settled() -> int:
        """Number of stored scores once it stops moving (the worker has caught up)."""

        def count():
            with sessions() as s:
                return len(s.scalars(select(Score.id).where(Score.patient_id == pid)).all())

        last = -1
        while (n := count()) != last:
            last = n
            time.sleep(3.0)
        return n

    def resolve(alert_id: str, reason: str) -> None:
        r = api.post(
            f"/api/alerts/{alert_id}/resolve", json={"reason": reason}, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200, r.text

    log = tmp_path / "worker.log"
    with running_worker(settings, env, log):
        send_until(600)
        assert wait_for(lambda: len(alerts()) == 1, timeout_s=90), f"no first alert; log:\n{log.read_text()[-3000:]}"
        first = alerts()[0]
        assert first.risk >= max(0.5, 2 * _deterioration_threshold()), first.risk  # high, not borderline
        scores_settled()
        resolve(first.alert_id, "reviewed by the physician, fluids running")

        # Still that high: the worker learns of the resolve at its next score, then waits the
        # re-alert time. Before the fix nothing was raised here, however long the risk stayed high.
        send_until(600 + REALERT_S + 300)
        assert wait_for(lambda: len(alerts()) == 2, timeout_s=90), f"no re-alert after the resolve: {alerts()}"
        scores_settled()
        second = alerts()[1]
        quiet = second.event_time.timestamp() - second.episode_start.timestamp()
        assert REALERT_S <= quiet <= REALERT_S + 120, quiet  # the new run starts at the score that saw the resolve
        assert second.episode_start > first.event_time and second.state == "raised"
        with sessions() as s:
            trail = [(e.action, e.actor, e.detail.get("reason")) for e in lifecycle.alert_events(s, first.alert_id)]
        assert trail[-1] == ("resolved", "nurse.ade", "reviewed by the physician, fluids running")

    # Resolved while no worker runs: the restarted worker recovers its episode (open) from the Faust
    # table and learns from the database that it was resolved.
    resolve(second.alert_id, "seen again, plan unchanged")
    with running_worker(settings, env, log):
        send_until(sent_until[0] + REALERT_S + 300)
        assert wait_for(lambda: len(alerts()) == 3, timeout_s=90), f"no re-alert after a restart: {alerts()}"
        scores_settled()
    third = alerts()[2]
    assert third.state == "raised" and third.episode_start > second.event_time
    assert third.event_time.timestamp() - third.episode_start.timestamp() >= REALERT_S
    assert len(alerts()) == 3  # and nothing in between (one alert per quiet period)
    producer.close()
    engine.dispose()
    api.app.state.engine.dispose()
    assert pid not in log.read_text(errors="replace"), "a patient identifier reached the worker's log"
