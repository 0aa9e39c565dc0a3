"""The commit guard on a real broker: a consumer that has lost its group generation cannot commit.

The local broker restarts (memory storage: the group and its offsets are gone) while a consumer is
in its group; before the consumer has rejoined, it commits the offset it had reached. Without the
guard the broker stores it (a commit with generation -1 to a group it does not know)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import CommitFailedError
from kafka_clients import group_consumer, send_records
from stack_fixtures import free_port

from icuwatch.core.settings import Settings
from icuwatch.deploy import broker
from icuwatch.streams.kafka import commit_guard

TOPIC = "icu.vitals"


async def _commits(settings: Settings) -> tuple[int | None, int | None]:
    """(committed offset after a commit attempted outside a generation, after one within the next)."""
    await send_records(settings, TOPIC, 10)
    consumer = group_consumer(settings, TOPIC, "guard-test")
    await consumer.start()
    try:
        tp = TopicPartition(TOPIC, 0)
        while not await consumer.getmany(tp, timeout_ms=1000):
            pass
        broker.stop(settings)
        broker.start(settings)
        consumer._coordinator.reset_generation()  # as aiokafka does on the UnknownMemberId that follows
        with pytest.raises(CommitFailedError, match="already rebalanced"):  # Faust's cue to carry on
            await consumer.commit({tp: 7})
        outside = await consumer.committed(tp)
        for _ in range(30):  # until it has rejoined
            await consumer.getmany(timeout_ms=1000)
            try:
                await consumer.commit({tp: 7})
                break
            except CommitFailedError:
                continue
        return outside, await consumer.committed(tp)
    finally:
        await consumer.stop()


@pytest.mark.timeout(120)
def test_a_consumer_outside_its_group_generation_cannot_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(GroupCoordinator, "_do_commit_offsets", commit_guard._commit_within_a_generation)
    settings = Settings(broker=f"127.0.0.1:{free_port()}", state_dir=tmp_path)
    broker.start(settings)
    try:
        outside, within = asyncio.run(asyncio.wait_for(_commits(settings), 90))
    finally:
        broker.stop(settings)
    assert outside is None, "a commit with generation -1 must not reach the broker"
    assert within == 7
