"""Services started before what they need wait for it, then work (issue 18).

Regressions: the worker exited with a traceback (aiokafka's producer gives up at once on a refused
bootstrap), so it had to be restarted by hand once the broker was up; ``icuwatch api`` died in its
migration when PostgreSQL was not up yet."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from kafka import KafkaProducer
from sqlalchemy.engine import make_url
from stack_fixtures import free_port, postgres_database, running_worker, settings_for, wait_for

from icuwatch.benchmarks.fault_proxy import FaultProxy
from icuwatch.core import schemas, topics
from icuwatch.deploy import broker
from icuwatch.storage import db
from icuwatch.streams.stats import stats_path


@pytest.mark.timeout(90)
def test_worker_started_before_the_broker_connects_once_it_is_up(tmp_path):
    settings, env = settings_for(
        tmp_path,
        ICUWATCH_BROKER=f"127.0.0.1:{free_port()}",
        ICUWATCH_DATABASE_URL=f"sqlite:///{tmp_path / 'icuwatch.db'}",
        ICUWATCH_APP_ID=f"icuwatch-wait-{uuid.uuid4().hex[:8]}",
        ICUWATCH_WORKER_WEB_PORT=str(free_port()),
    )
    env["ICUWATCH_BROKER"] = settings.broker
    log = tmp_path / "worker.log"
    stop = threading.Event()

    def start_broker_once_the_worker_waits() -> None:
        """The broker comes up only after the worker has found nothing (not after a fixed delay: the
        worker's start-up time varies with the machine's load)."""
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            if log.exists() and "is not reachable; waiting for it" in log.read_text(errors="replace"):
                break
            time.sleep(0.1)
        if not stop.is_set():
            broker.start(settings)

    late = threading.Thread(target=start_broker_once_the_worker_waits, daemon=True)
    late.start()
    try:
        with running_worker(settings, env, log, from_log_end=False):  # the broker is not up yet
            text = log.read_text()
            assert text.count("is not reachable; waiting for it") == 1 and "Traceback" not in text
            producer = KafkaProducer(bootstrap_servers=settings.broker)
            msg = schemas.Vitals(patient_id="wait-1", event_time=time.time() - 5, hr=90)
            producer.send(topics.VITALS, key=msg.key(), value=msg.to_bytes()).get(timeout=20)
            producer.close()

            def processed():
                path = stats_path(settings)
                return path.exists() and json.loads(path.read_text())["processed"] >= 1

            assert wait_for(processed, timeout_s=30), log.read_text()[-3000:]
    finally:
        stop.set()
        late.join()
        broker.stop(settings)


@pytest.mark.timeout(60)
def test_migration_waits_for_a_database_that_comes_up(pg_admin):
    """PostgreSQL "comes up" on a port nothing listens on yet (a proxy to the test server, opened late)."""
    port = free_port()
    proxy = FaultProxy(port, ("127.0.0.1", 5432))
    late = threading.Timer(2.0, proxy.start)
    with postgres_database() as url:
        late_url = make_url(url).set(host="127.0.0.1", port=port)
        late.start()
        try:
            started = time.monotonic()
            db.upgrade(late_url, wait_s=30)
            assert time.monotonic() - started >= 2.0
            assert db.current_revision(late_url) == db.head_revision()
        finally:
            late.cancel()
            late.join()
            proxy.stop()
