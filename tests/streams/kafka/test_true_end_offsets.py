"""``streams/kafka/true_end_offsets.py`` on a real broker: the end offsets table recovery reads up to
are the true ends of the partitions, also when the last records were produced in one batch (this
Tansu then reports the batch's base offset + 1)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from stack_fixtures import free_port

from icuwatch.core.settings import Settings
from icuwatch.deploy import broker
from icuwatch.streams.kafka import true_end_offsets

TOPIC = "icu.labs"


async def _produce(settings: Settings) -> dict[TopicPartition, int]:
    """Partition 0: three records one at a time, then ten in one batch; partition 1: one record;
    partition 2: nothing. The true end offset of each partition, from the producer's acknowledgements."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker, linger_ms=50)
    await producer.start()
    try:
        for _ in range(3):
            await producer.send_and_wait(TOPIC, b"{}", key=b"p1", partition=0)
        batch = [await producer.send(TOPIC, b"{}", key=b"p1", partition=0) for _ in range(10)]
        last = (await asyncio.gather(*batch))[-1].offset
        solo = await producer.send_and_wait(TOPIC, b"{}", key=b"p2", partition=1)
    finally:
        await producer.stop()
    return {TopicPartition(TOPIC, 0): last + 1, TopicPartition(TOPIC, 1): solo.offset + 1, TopicPartition(TOPIC, 2): 0}


async def _ends(settings: Settings) -> tuple[dict, dict, dict, dict]:
    truth = await _produce(settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker)
    await consumer.start()
    try:
        tps = list(truth)
        reported = await consumer.end_offsets(tps)
        checked = await true_end_offsets.true_end_offsets(consumer, reported)
        faust_thread = SimpleNamespace(
            consumer=SimpleNamespace(in_transaction=False), _ensure_consumer=lambda: consumer
        )
        from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

        before = AIOKafkaConsumerThread._highwaters
        true_end_offsets.install()
        true_end_offsets.install()  # a second install does not wrap twice
        patched = AIOKafkaConsumerThread._highwaters
        try:
            assert patched._icuwatch_original is getattr(before, "_icuwatch_original", before)  # type: ignore[attr-defined]
            through_faust = await patched(faust_thread, tps)
        finally:
            AIOKafkaConsumerThread._highwaters = before  # as it was (a worker imported earlier installs it too)
        return truth, dict(reported), checked, dict(through_faust)
    finally:
        await consumer.stop()


@pytest.mark.timeout(120)
def test_recovery_reads_to_the_true_end_of_each_changelog_partition(tmp_path, caplog):
    caplog.set_level("INFO", logger=true_end_offsets.__name__)
    settings = Settings(broker=f"127.0.0.1:{free_port()}", state_dir=tmp_path)
    broker.start(settings, create_topics=False)
    try:
        broker.ensure_topics(settings, (TOPIC,), partitions=3)
        truth, reported, checked, through_faust = asyncio.run(asyncio.wait_for(_ends(settings), 60))
    finally:
        broker.stop(settings)
    p0 = TopicPartition(TOPIC, 0)
    assert truth[p0] == 13
    assert reported[p0] < truth[p0], "this Tansu reports the last batch's base offset + 1 (else the patch can go)"
    assert checked == truth
    assert through_faust == truth
    assert "end offsets reported short" in caplog.text and "(4, 13)" in caplog.text
