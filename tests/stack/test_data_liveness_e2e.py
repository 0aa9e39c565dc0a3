"""Silence is never mistaken for stability: end to end on real parts (Tansu, a worker subprocess,
tritonserver, SQLite, the API).

The defect: nothing marked a patient whose data stopped. Here two patients send vital signs every
second; one monitor stops. The worker raises a ``data_liveness`` alert for it alone, the API lists
its feed as silent (measured against now), a nurse's resolve while the silence goes on is followed
by a new alert after the re-alert time, and once the data come back an acknowledged alert is
resolved by the system, as a risk alert's episode would be.
"""

from __future__ import annotations

import threading
import time
import uuid
import warnings

import pytest
from sqlalchemy import select
from stack_fixtures import free_port, running_worker, wait_for

from icuwatch.core import schemas, topics
from icuwatch.storage import db, lifecycle
from icuwatch.storage.models import Alert
from icuwatch.storage.tokens import create_token
from icuwatch.streams.kafka.producer import make_producer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.stack

SILENCE_S = 6.0
REALERT_S = 8.0


def test_a_monitor_that_stops_raises_a_data_liveness_alert_with_the_alert_lifecycle(stack, tmp_path):
    from icuwatch.api.app import create_app

    base, env = stack
    env = {
        **env,
        "ICUWATCH_SILENCE_VITALS_S": str(SILENCE_S),
        "ICUWATCH_LIVENESS_CHECK_S": "1",
        "ICUWATCH_ALERT_REALERT_AFTER_RESOLVE_S": str(REALERT_S),
    }
    url = f"sqlite:///{tmp_path / 'icu.db'}"
    db.upgrade(url)
    settings = base.model_copy(
        update={
            "database_url": url,
            "app_id": f"icuwatch-liveness-{uuid.uuid4().hex[:8]}",
            "worker_web_port": free_port(),
            "silence_vitals_s": SILENCE_S,
        }
    )
    sessions = db.session_factory(db.make_engine(url))
    with sessions.begin() as s:
        token = create_token(s, "nurse.ade", "nurse")
    api = TestClient(create_app(settings, escalate=False))
    auth = {"Authorization": f"Bearer {token}"}
    quiet, steady = f"lq{uuid.uuid4().hex[:8]}", f"ls{uuid.uuid4().hex[:8]}"
    producer = make_producer(settings)
    last_sent: dict[str, float] = {}

    def send(pid: str) -> None:
        now = time.time()
        v = schemas.Vitals(patient_id=pid, event_time=now, hr=78, rr=14, spo2=97, sbp=122, temp=36.8)
        producer.send(topics.VITALS, key=pid.encode(), value=v.to_bytes())
        producer.flush()
        last_sent[pid] = now

    stop = threading.Event()
    quiet_sends = threading.Event()
    quiet_sends.set()

    def monitors() -> None:
        while not stop.is_set():
            send(steady)
            if quiet_sends.is_set():
                send(quiet)
            time.sleep(1.0)

    def liveness_alerts(pid: str) -> list[Alert]:
        with sessions() as s:
            return list(
                s.scalars(
                    select(Alert)
                    .where(Alert.patient_id == pid, Alert.kind == "data_liveness")
                    .order_by(Alert.raised_at)
                )
            )

    def silent_feeds() -> list[dict]:
        """This test's patients' silent feeds (only these two, should anything else reach the worker)."""
        feeds = api.get("/api/feeds/silent", params={"limit": 5000}, headers=auth).json()
        return [f for f in feeds if f["patient_id"] in (quiet, steady)]

    log = tmp_path / "worker.log"
    sender = threading.Thread(target=monitors, daemon=True)
    with running_worker(settings, env, log):
        sender.start()
        try:
            time.sleep(4.0)
            quiet_sends.clear()  # the monitor is switched off
            time.sleep(0.5)
            stopped = last_sent[quiet]
            assert wait_for(lambda: len(liveness_alerts(quiet)) == 1, timeout_s=40), (
                f"no data-liveness alert; log:\n{log.read_text()[-3000:]}"
            )
            first = liveness_alerts(quiet)[0]
            assert first.state == "raised" and first.source == "liveness"
            assert abs(first.episode_start.timestamp() - stopped) < 2.0  # since the last vital sign arrived
            assert first.raised_at.timestamp() - stopped >= SILENCE_S

            feeds = silent_feeds()
            assert [(f["patient_id"], f["modality"]) for f in feeds] == [(quiet, "vitals")]
            assert feeds[0]["silent_s"] >= SILENCE_S and feeds[0]["silence_after_s"] == SILENCE_S
            (steady_vitals,) = api.get(f"/api/patients/{steady}/feeds", headers=auth).json()
            assert not steady_vitals["silent"] and steady_vitals["silent_s"] < SILENCE_S

            # A nurse resolves it while the monitor stays off (the patient is in CT): alerted again
            # after the re-alert time, with a new id.
            r = api.post(f"/api/alerts/{first.alert_id}/resolve", json={"reason": "patient in CT"}, headers=auth)
            assert r.status_code == 200, r.text
            resolved_at = time.time()
            assert wait_for(lambda: len(liveness_alerts(quiet)) == 2, timeout_s=40), "no re-alert after the resolve"
            second = liveness_alerts(quiet)[1]
            assert second.alert_id != first.alert_id and second.state == "raised"
            assert second.raised_at.timestamp() - resolved_at >= REALERT_S - 1.5  # the worker checks once a second

            # The monitor comes back: the acknowledged alert is resolved by the system.
            r = api.post(f"/api/alerts/{second.alert_id}/acknowledge", json={"comment": "checking"}, headers=auth)
            assert r.status_code == 200, r.text
            quiet_sends.set()
            assert wait_for(lambda: liveness_alerts(quiet)[1].state == "resolved", timeout_s=30)
            assert liveness_alerts(quiet)[1].resolved_by == "system:episode-closed"
            with sessions() as s:
                trail = lifecycle.alert_events(s, second.alert_id)
            assert trail[-1].detail["reason"] == "data arriving again after acknowledgement"
            assert wait_for(lambda: not silent_feeds(), timeout_s=15)
            assert liveness_alerts(steady) == []  # the steady patient never alerted
        finally:
            stop.set()
            sender.join(timeout=10)
    producer.close()
    api.app.state.engine.dispose()
    assert quiet not in log.read_text(errors="replace"), "a patient identifier reached the worker's log"
