"""Real local services for end-to-end tests: Tansu, tritonserver, a Faust worker subprocess, and
SQLite / PostgreSQL databases. Test ports differ from the defaults so a developer's own stack can
keep running beside the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from icuwatch.core import topics
from icuwatch.core.settings import Settings
from icuwatch.deploy.worker_process import start_worker, stop_worker

TEST_ENV = {
    "ICUWATCH_BROKER": "127.0.0.1:19092",
    "ICUWATCH_TRITON_URL": "127.0.0.1:18001",
    "ICUWATCH_TRITON_HTTP_PORT": "18000",
    "ICUWATCH_TRITON_METRICS_PORT": "18002",
    "ICUWATCH_TRITON_RETRY_S": "1.0",
    "ICUWATCH_SCORE_INTERVAL_S": "300",
}
POSTGRES_ADMIN_URL = os.environ.get("ICUWATCH_TEST_POSTGRES_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_for(state_dir: Path, **overrides: str) -> tuple[Settings, dict[str, str]]:
    env = {**TEST_ENV, "ICUWATCH_STATE_DIR": str(state_dir), **overrides}
    fields = {k.removeprefix("ICUWATCH_").lower(): v for k, v in env.items()}
    return Settings(**fields), env


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"icuwatch_e2e_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def start_at_log_end(settings: Settings, leave: tuple[str, ...] = ()) -> None:
    """Commit the end of every icuwatch topic's log (but ``leave``'s) for the worker's consumer group
    (``settings.app_id``), when that group has committed nothing yet.

    The tests share one broker, and a group without a commit starts at the beginning of the log
    (``consumer_auto_offset_reset="earliest"``): a test's new worker would first score every patient
    the tests before it sent (~4,000 scores of 26 patients by the middle of the suite, about a minute
    on a loaded CI machine), and a test waiting 60 s for its own patients failed. A group that has
    committed (a restarted worker) keeps its offsets."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    consumer = KafkaConsumer(bootstrap_servers=settings.broker, group_id=settings.app_id, enable_auto_commit=False)
    try:
        existing = consumer.topics()
        parts = [
            TopicPartition(topic, p)
            for topic in topics.ALL
            if topic in existing and topic not in leave
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not parts or any(consumer.committed(tp) is not None for tp in parts):
            return
        ends = true_log_ends(settings, parts)
        consumer.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in parts})
    finally:
        consumer.close()


def read_to_log_end(settings: Settings, topic: str, match: Callable[[Any], bool], timeout_s: float = 60.0) -> list:
    """Every record of ``topic`` now in the log for which ``match(record)`` holds: read from the
    beginning to each partition's true end, for a check that nothing else was sent. (A fixed read
    time is not enough on the shared broker: by the end of the suite ``icu.vitals`` holds every earlier
    test's records, more than ten seconds of polling reads.) Fails when the end is not reached in
    ``timeout_s``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.broker, enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=8 << 20
    )
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = true_log_ends(settings, parts)
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        found: list = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            assert time.monotonic() < deadline, f"{topic}: the end of the log was not reached in {timeout_s:.0f} s"
            for records in consumer.poll(timeout_ms=500, max_records=10_000).values():
                found += [r for r in records if match(r)]
        return found
    finally:
        consumer.close()


def read_matching(
    settings: Settings, topic: str, match: Callable[[Any], bool], expected: int, timeout_s: float = 30.0
) -> list:
    """Records of ``topic`` for which ``match(record)`` holds, read from the beginning of the log until
    ``expected`` are found or ``timeout_s`` passes (the caller asserts on what came back)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=settings.broker, enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=8 << 20
    )
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        found: list = []
        deadline = time.monotonic() + timeout_s
        while len(found) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500, max_records=10_000).values():
                found += [r for r in records if match(r)]
        return found
    finally:
        consumer.close()


def true_log_ends(settings: Settings, parts: list) -> dict:
    """``{TopicPartition: the offset after its last record}``. Tansu's ListOffsets "latest" answers the
    base offset of the last record batch + 1 (``../shared/DESIGN.md``): corrected with the fetch's
    high-water mark, as the worker's table recovery corrects it (``streams/kafka/true_end_offsets.py``)."""
    import asyncio

    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition as AioPartition

    from icuwatch.streams.kafka.true_end_offsets import true_end_offsets

    async def ends() -> dict:
        consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker, enable_auto_commit=False)
        await consumer.start()
        try:
            asked = [AioPartition(tp.topic, tp.partition) for tp in parts]
            return await true_end_offsets(consumer, await consumer.end_offsets(asked))
        finally:
            await consumer.stop()

    # Its own thread and loop: a test may hold an event loop open in this one (Playwright's sync API).
    with ThreadPoolExecutor(max_workers=1) as pool:
        found = pool.submit(asyncio.run, ends()).result()
    return {tp: found[AioPartition(tp.topic, tp.partition)] for tp in parts}


@contextmanager
def running_worker(
    settings: Settings, env: dict[str, str], log_path: Path, from_log_end: bool = True
) -> Iterator[subprocess.Popen]:
    """``icuwatch worker`` in a subprocess, ready (partitions assigned) before the body runs; a new
    consumer group starts at the end of the shared broker's logs unless ``from_log_end`` is false
    (``start_at_log_end``), so a test's worker reads only what the test sends."""
    if from_log_end:
        start_at_log_end(settings)
    proc = start_worker(settings, log_path, env)
    try:
        yield proc
    finally:
        stop_worker(proc)


def wait_for(predicate, timeout_s: float, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval_s)


def wait_for_scores(database_url: str, patient_ids: set[str], timeout_s: float = 90.0, settle_s: float = 3.0):
    """The stored scores of ``patient_ids`` once every one of them has at least one, read again after
    ``settle_s`` (later scores of the same replay may still be landing); fails the test on timeout."""
    from sqlalchemy import select

    from icuwatch.storage import db
    from icuwatch.storage.models import Score

    sessions = db.session_factory(db.make_engine(database_url))

    def stored():
        with sessions() as s:
            rows = s.scalars(select(Score).where(Score.patient_id.in_(patient_ids))).all()
        return rows if {r.patient_id for r in rows} == patient_ids else None

    assert wait_for(stored, timeout_s=timeout_s), "scores for the replayed stays never reached the database"
    time.sleep(settle_s)
    return stored()
