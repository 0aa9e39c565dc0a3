"""``streams/kafka/changelog_writes.py`` with a Faust table and a real broker: a table set hands
out the future of its changelog record, done once the broker has the record."""

from __future__ import annotations

import asyncio

import faust
import pytest
from stack_fixtures import free_port

from icuwatch.core.settings import Settings
from icuwatch.deploy import broker
from icuwatch.streams.kafka.changelog_writes import ChangelogWrites


async def _two_sets(settings: Settings) -> tuple[bool, int, bytes, dict]:
    app = faust.App("changelog-writes-test", broker=f"kafka://{settings.broker}", store="memory://")
    table = app.Table("patient_state", key_type=bytes, partitions=1, use_partitioner=True)
    writes = ChangelogWrites(table)
    await app.producer.start()
    try:
        table[b"p"] = {"now": 1.0}
        table[b"p"] = {"now": 2.0}
        future = writes.take(b"p")
        done_at_set = future.done()
        metadata = await asyncio.wait_for(future, 20)
        return done_at_set, metadata.offset, future.message.value, table[b"p"]
    finally:
        await app.producer.stop()


@pytest.mark.timeout(120)
def test_a_table_set_hands_out_the_future_of_its_changelog_record(tmp_path):
    settings = Settings(broker=f"127.0.0.1:{free_port()}", state_dir=tmp_path)
    broker.start(settings, create_topics=False)
    try:
        broker.ensure_topics(settings, ("changelog-writes-test-patient_state-changelog",), partitions=1)
        done_at_set, offset, value, held = asyncio.run(_two_sets(settings))
    finally:
        broker.stop(settings)
    assert not done_at_set, "the set only queues the record"
    assert offset == 1, "the second write's record, delivered"
    assert b"2.0" in value and held == {"now": 2.0}
