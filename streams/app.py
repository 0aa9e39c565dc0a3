"""The worker's Faust app (faust-streaming's ``app.py``): the app, its topics and its tables,
built from the settings once the Kafka client patches are in. The agents that run on it are in
``worker.py``; what they decide per message is in ``ingest.py``."""

from __future__ import annotations

from typing import Any

import faust

from icuwatch.core import topics
from icuwatch.core.settings import get_settings
from icuwatch.streams.kafka import install_patches
from icuwatch.streams.kafka.lean_monitor import LeanMonitor
from icuwatch.streams.kafka.security import faust_credentials

settings = get_settings()
install_patches(settings)
app = faust.App(
    settings.app_id,
    broker=f"kafka://{settings.broker}",
    broker_credentials=faust_credentials(settings),
    key_serializer="raw",
    value_serializer="json",
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    store="memory://",
    web_enabled=False,
    web_host="127.0.0.1",
    web_port=settings.worker_web_port,
    broker_session_timeout=6,
    broker_heartbeat_interval=1,
    broker_rebalance_timeout=3,
    consumer_auto_offset_reset="earliest",
    stream_wait_empty=False,  # ingest holds acks until a checkpoint: a rebalance must not wait for them
    producer_max_batch_size=settings.worker_producer_max_batch_bytes,
    datadir=str(settings.state_dir / "faust"),
    Monitor=LeanMonitor,
)

raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw", "partitions": settings.partitions}
inputs_topic = app.topic(*topics.INPUTS, **raw)
scores_topic = app.topic(topics.SCORES, **raw)
alerts_topic = app.topic(topics.ALERTS, **raw)
deadletter_topic = app.topic(topics.DEADLETTER, **raw)
shadow_scores_topic = app.topic(topics.SHADOW_SCORES, **raw)

patients = app.Table("patient_state", key_type=bytes, partitions=settings.partitions, use_partitioner=True)
"""Checkpoints of each patient's state; the live copy is in ``worker.live_state`` (see
``patient_state.checkpoint_due``). ``use_partitioner``: checkpoints are also written outside the
ingest stream (once a score is published, for idle patients), so the changelog partition comes from
the key by the same murmur2 partitioner the producers use (tests/streams/kafka/test_acks.py checks
they agree), not from the current event."""
episodes = app.Table("alert_state", key_type=bytes, partitions=settings.partitions, use_partitioner=True)
"""Each patient's alert episodes (``alerting.new_alert_state``). ``use_partitioner`` as for
``patients``: the alert agent takes scores in batches and writes after each batch, outside the
iteration of any one event."""
shadow_episodes = app.Table("shadow_alert_state", key_type=bytes, partitions=settings.partitions, use_partitioner=True)
"""The shadow models' would-be alert episodes (``streams/shadow.py``), per patient a state per shadow
model name, kept like ``episodes``."""
