"""Kafka producers for icuwatch's topics (kafka-python)."""

from __future__ import annotations

from kafka import KafkaProducer

from icuwatch.settings import Settings
from icuwatch.streams.kafka_security import kafka_python_config


def make_producer(settings: Settings) -> KafkaProducer:
    """Durable producer: waits for the broker's acknowledgement, retries for up to 10 minutes (a
    stalled broker delays messages rather than dropping them), keeps per-key order."""
    return KafkaProducer(
        bootstrap_servers=settings.broker,
        acks="all",
        linger_ms=10,
        batch_size=512 * 1024,
        delivery_timeout_ms=600_000,
        request_timeout_ms=60_000,
        retries=1_000_000,
        max_in_flight_requests_per_connection=1,
        max_request_size=8 * 1024 * 1024,
        client_id="icuwatch-producer",
        **kafka_python_config(settings),
    )
