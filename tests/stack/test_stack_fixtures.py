"""The shared test broker's helper that starts a new worker's consumer group after what earlier tests
sent (``stack_fixtures.start_at_log_end``), on the real Tansu broker."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from stack_fixtures import start_at_log_end

from icuwatch.core import topics

pytestmark = pytest.mark.stack


def test_a_new_group_starts_after_the_last_record_and_a_committed_group_keeps_its_offsets(stack):
    base, _ = stack
    settings = base.model_copy(update={"app_id": f"icuwatch-logend-{uuid.uuid4().hex[:8]}"})
    producer = KafkaProducer(bootstrap_servers=settings.broker, linger_ms=50)  # several records per batch
    for i in range(40):
        producer.send(topics.VITALS, key=f"le-{i}".encode(), value=b"{}")
    producer.flush()

    start_at_log_end(settings)
    consumer = KafkaConsumer(bootstrap_servers=settings.broker, group_id=settings.app_id, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topics.VITALS, p) for p in sorted(consumer.partitions_for_topic(topics.VITALS))]
        committed = {tp: consumer.committed(tp) for tp in parts}
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, committed[tp])
        assert not consumer.poll(timeout_ms=2000), "records before the committed offsets remain unread"
        for tp in parts:
            consumer.seek(tp, max(committed[tp] - 1, 0))
        last = {tp: batch[-1].offset for tp, batch in consumer.poll(timeout_ms=2000).items()}
        assert last and all(last[tp] == committed[tp] - 1 for tp in last)  # the commit is right after the last

        for i in range(5):
            producer.send(topics.VITALS, key=f"le-more-{i}".encode(), value=b"{}")
        producer.flush()
        start_at_log_end(settings)  # the group has committed: nothing moves
        assert {tp: consumer.committed(tp) for tp in parts} == committed
    finally:
        consumer.close()
        producer.close()
