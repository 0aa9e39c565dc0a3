"""``streams/kafka/rewind_uncommitted.py`` on a real broker: after a consumer group read past
records it never committed, a seek to the committed offsets takes it back to them (aiokafka alone
leaves it where it was: what Faust dropped during a suspended flow was never read again)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka_clients import group_consumer, send_records
from stack_fixtures import free_port

from icuwatch.core.settings import Settings
from icuwatch.deploy import broker
from icuwatch.streams.kafka import rewind_uncommitted


async def _positions_after_a_seek(settings: Settings, topic: str, patched: bool) -> tuple[int, int]:
    """(position after reading 5 uncommitted records, position after seek_to_committed)."""
    await send_records(settings, topic, 5)
    consumer = group_consumer(settings, topic, f"{topic}-group")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        taken = 0
        while taken < 5:
            taken += len((await consumer.getmany(tp, timeout_ms=1000)).get(tp, []))
        read_to = await consumer.position(tp)
        if patched:
            await rewind_uncommitted_seek(consumer, topic)
        else:  # aiokafka's own (the patch may be installed already: a worker module imported by another test)
            original = AIOKafkaConsumer.seek_to_committed
            await getattr(original, "_icuwatch_original", original)(consumer)
        return read_to, await consumer.position(tp)
    finally:
        await consumer.stop()


async def rewind_uncommitted_seek(consumer: AIOKafkaConsumer, topic: str) -> None:
    before = AIOKafkaConsumer.seek_to_committed
    try:
        rewind_uncommitted.install(lambda name: name == topic)
        await consumer.seek_to_committed()
    finally:
        AIOKafkaConsumer.seek_to_committed = before  # type: ignore[method-assign]


@pytest.mark.timeout(120)
def test_a_seek_to_committed_rewinds_a_partition_the_group_never_committed(tmp_path):
    settings = Settings(broker=f"127.0.0.1:{free_port()}", state_dir=tmp_path)
    broker.start(settings)
    try:
        alone = asyncio.run(asyncio.wait_for(_positions_after_a_seek(settings, "icu.labs", False), 60))
        patched = asyncio.run(asyncio.wait_for(_positions_after_a_seek(settings, "icu.cxr", True), 60))
    finally:
        broker.stop(settings)
    assert alone == (5, 5), "aiokafka alone stays after the uncommitted records"
    assert patched == (5, 0), "patched: back to the start of the log, where a group without a commit starts"
