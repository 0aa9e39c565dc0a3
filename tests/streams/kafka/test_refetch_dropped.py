"""``streams/kafka/refetch_dropped.py``: the records of a fetched batch that Faust's ``getmany`` does
not deliver (the flow suspended or the generation changed part-way, a partition not active) are
sought back to, so the next fetch reads them; Faust's own getmany leaves the position past them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.transport.utils import DefaultSchedulingStrategy
from faust.types import TP

from icuwatch.streams.kafka import refetch_dropped

LABS_0, LABS_1, VITALS_0 = TP("icu.labs", 0), TP("icu.labs", 1), TP("icu.vitals", 0)


class FakeConsumer:
    """What ``getmany`` reads of Faust's consumer; ``suspend_after`` deliveries suspend the flow."""

    def __init__(self, records: dict, active: set, suspend_after: int | None = None) -> None:
        self.records, self.active, self.suspend_after = records, active, suspend_after
        self.flow_active, self.should_stop, self._buffered_partitions = True, False, set()
        self.app = SimpleNamespace(
            consumer_generation_id=1,
            rebalancing=False,
            _icuwatch_streams_ready_generation=1,
            monitor=SimpleNamespace(track_tp_end_offset=lambda *a: None),
            topics=SimpleNamespace(acks_enabled_for=lambda topic: not topic.endswith("-changelog")),
        )
        self._read_offset: dict = {}
        self.scheduler = DefaultSchedulingStrategy()
        self.seeks: list[tuple] = []
        self._committed_offset: dict = {}

    async def _wait_next_records(self, timeout):
        return self.records, self.active

    def highwater(self, tp):
        return 0

    def _to_message(self, tp, record):
        return record

    def assignment(self):
        return {LABS_0, LABS_1, VITALS_0, TP("icuwatch-patient_state-changelog", 0)}

    async def seek_wait(self, partitions):
        self.seeks.extend(partitions.items())


def batch(offsets) -> list:
    return [SimpleNamespace(offset=o) for o in offsets]


def take(consumer: FakeConsumer) -> list[tuple]:
    async def run():
        out = []
        async for tp, record in refetch_dropped.getmany(consumer, 1.0):
            out.append((tp, record.offset))
            consumer._read_offset[tp] = record.offset  # as Faust's drain loop does after each delivery
            if consumer.suspend_after is not None and len(out) == consumer.suspend_after:
                consumer.flow_active = False
        return out

    return asyncio.run(run())


def test_a_batch_cut_short_by_a_suspended_flow_is_sought_back_to_its_first_undelivered_record():
    consumer = FakeConsumer({LABS_0: batch(range(7, 22)), VITALS_0: batch(range(100, 103))}, None, suspend_after=3)
    delivered = take(consumer)
    assert len(delivered) == 3
    taken = {tp: [o for t, o in delivered if t == tp] for tp in (LABS_0, VITALS_0)}
    assert taken[LABS_0] == list(range(7, 7 + len(taken[LABS_0]))), "in order, from the first"
    expected = {LABS_0: 7 + len(taken[LABS_0]), VITALS_0: 100 + len(taken[VITALS_0])}
    assert dict(consumer.seeks) == expected, "each partition back to its first undelivered record"


def test_records_of_a_partition_not_active_are_sought_back_and_a_whole_batch_needs_no_seek():
    consumer = FakeConsumer({LABS_0: batch([5, 6]), LABS_1: batch([9])}, {LABS_0})
    assert take(consumer) == [(LABS_0, 5), (LABS_0, 6)]
    assert consumer.seeks == [(LABS_1, 9)]
    whole = FakeConsumer({LABS_0: batch([5, 6])}, {LABS_0})
    assert take(whole) == [(LABS_0, 5), (LABS_0, 6)] and whole.seeks == []


def test_a_partition_no_longer_assigned_is_left_to_the_rebalance():
    consumer = FakeConsumer({TP("icu.cxr", 3): batch([1, 2])}, set())
    assert take(consumer) == [] and consumer.seeks == []


def test_the_seek_never_passes_the_committed_offset_and_a_new_generation_seeks_nothing():
    consumer = FakeConsumer({LABS_0: batch([5, 6]), LABS_1: batch([9])}, {LABS_0})
    consumer._committed_offset = {LABS_1: 4}
    take(consumer)
    assert consumer.seeks == [(LABS_1, 4)], "back to the committed offset, below the first dropped record"
    rebalanced = FakeConsumer({LABS_0: batch(range(7, 22))}, None)

    async def run():
        async for _tp, _record in refetch_dropped.getmany(rebalanced, 1.0):
            rebalanced.app.consumer_generation_id = 2

    asyncio.run(run())
    assert rebalanced.seeks == [], "the rebalance seeks to the committed offset; a seek past it would skip"


def test_the_patch_replaces_fausts_getmany_it_was_written_for():
    from faust.transport.consumer import Consumer

    refetch_dropped.install()
    assert Consumer.getmany is refetch_dropped.getmany


def test_records_the_fetch_skipped_are_read_again_before_the_record_after_them():
    """Seen after a SIGKILL restart: the committed record delivered, then one 16 offsets on. The jump
    is not delivered (its offset, applied, would make the skipped records look like re-reads); the
    partition goes back to the last offset read. Other partitions are not held up."""
    consumer = FakeConsumer({LABS_0: batch([18, 34, 35]), VITALS_0: batch([100, 101])}, None)
    consumer._read_offset = {LABS_0: 17}
    delivered = take(consumer)
    assert [o for tp, o in delivered if tp == LABS_0] == [18], "nothing after the jump"
    assert [o for tp, o in delivered if tp == VITALS_0] == [100, 101]
    assert consumer.seeks == [(LABS_0, 18)], "back to the last offset read"


def test_the_same_jump_from_the_same_place_twice_is_a_real_hole_and_left_to_faust():
    consumer = FakeConsumer({LABS_0: batch([40, 45])}, None)
    consumer._read_offset = {LABS_0: 40}
    assert [o for _, o in take(consumer)] == [40] and consumer.seeks == [(LABS_0, 40)], "the first time: read again"
    consumer.seeks.clear()
    consumer.records = {LABS_0: batch([40, 45, 46])}
    assert [o for _, o in take(consumer)] == [40, 45, 46] and consumer.seeks == []


def test_changelogs_and_a_partition_without_a_read_offset_are_not_checked_for_jumps():
    changelog = TP("icuwatch-patient_state-changelog", 0)
    consumer = FakeConsumer({changelog: batch([3, 9]), LABS_1: batch([7, 8])}, None)
    consumer._read_offset = {changelog: 2}
    assert sorted(o for _, o in take(consumer)) == [3, 7, 8, 9] and consumer.seeks == []


def test_input_records_wait_out_a_rebalance_while_the_changelogs_are_read():
    """Faust resumes the stream partitions, seeks them to the committed offsets and only then resumes
    its flow control, which empties the streams' buffers: input records delivered before that were
    lost. They are sought back instead (to the committed offset where that is lower), changelog
    records go on to the table recovery, and once the rebalance is over the inputs flow again."""
    changelog = TP("icuwatch-patient_state-changelog", 0)
    consumer = FakeConsumer({VITALS_0: batch(range(500, 790)), changelog: batch([3, 4]), LABS_0: batch([9])}, None)
    consumer.app.rebalancing = True
    consumer._committed_offset = {LABS_0: 7}
    assert sorted(o for _, o in take(consumer)) == [3, 4]
    assert dict(consumer.seeks) == {VITALS_0: 500, LABS_0: 7}
    consumer.app.rebalancing, consumer.seeks = False, []
    assert [o for tp, o in take(consumer) if tp == VITALS_0] == list(range(500, 790)) and consumer.seeks == []


def test_input_records_wait_for_the_current_generations_recovery_not_just_the_flag():
    """A recovery finishing generation 1 clears ``app.rebalancing`` although the next rebalance has
    begun; once generation 2 is assigned its own recovery has to end before inputs flow."""
    consumer = FakeConsumer({VITALS_0: batch([700, 701])}, None)
    consumer.app.consumer_generation_id = 2  # assigned; its recovery has not resumed the streams yet
    assert take(consumer) == [] and consumer.seeks == [(VITALS_0, 700)]
    consumer.app._icuwatch_streams_ready_generation, consumer.seeks = 2, []
    assert [o for _, o in take(consumer)] == [700, 701] and consumer.seeks == []
