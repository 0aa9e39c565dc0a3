"""aiokafka clients for tests that drive the broker below Faust: records sent to one partition, and a
consumer in a group that commits only when told (as Faust's consumer does)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from icuwatch.core.settings import Settings


async def send_records(settings: Settings, topic: str, n: int, partition: int = 0) -> None:
    """``n`` empty JSON records keyed ``p1`` to ``partition`` of ``topic``, each acknowledged."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker)
    await producer.start()
    try:
        for _ in range(n):
            await producer.send_and_wait(topic, b"{}", key=b"p1", partition=partition)
    finally:
        await producer.stop()


def group_consumer(settings: Settings, topic: str, group_id: str) -> AIOKafkaConsumer:
    """A consumer of ``topic`` in ``group_id``, without auto-commit, from the log start when the group
    has no commit; not started."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.broker,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
