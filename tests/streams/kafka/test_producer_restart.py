"""Producers survive a broker restart on their own (real Tansu on a port of its own).

The local Tansu keeps topics in memory: after a restart it has lost every record, and it answers
the idempotent producer's ``InitProducerId`` with an error that is fatal to a plain
``KafkaProducer``. :class:`ResilientProducer` replaces itself and ``send_paced`` sends again what
was reported undelivered, so the feed resumes and every message after the restart arrives."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, TopicPartition
from stack_fixtures import free_port

from icuwatch.core import schemas, topics
from icuwatch.core.settings import Settings
from icuwatch.deploy import broker
from icuwatch.sources.pacing import send_paced
from icuwatch.streams.kafka.producer import make_producer


def vitals(i: int) -> schemas.Vitals:
    return schemas.Vitals(patient_id=f"p{i % 3}", event_time=1_764_000_000.0 + i, hr=80)


def read_all(settings: Settings) -> list[bytes]:
    consumer = KafkaConsumer(bootstrap_servers=settings.broker, enable_auto_commit=False, consumer_timeout_ms=2000)
    parts = [TopicPartition(topics.VITALS, p) for p in range(settings.partitions)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    values = [r.value for r in consumer]
    consumer.close()
    return values


@pytest.mark.timeout(180)
def test_a_producer_resumes_after_the_broker_restarts(tmp_path):
    settings = Settings(broker=f"127.0.0.1:{free_port()}", state_dir=tmp_path)
    broker.start(settings)
    try:
        producer = make_producer(settings)
        send_paced([(0.0, topics.VITALS, vitals(i)) for i in range(50)], producer, speed=0)
        assert len(read_all(settings)) == 50
        broker.stop(settings)
        time.sleep(1.0)
        broker.start(settings)  # memory storage: empty again
        after = [vitals(i) for i in range(50, 150)]
        counts = send_paced([(0.0, topics.VITALS, m) for m in after], producer, speed=0)
        assert counts == {topics.VITALS: 100}
        assert producer.replaced == 1, "the restart should have ended the first producer"
        assert sorted(read_all(settings)) == sorted(m.to_bytes() for m in after)
        producer.close()
    finally:
        broker.stop(settings)
