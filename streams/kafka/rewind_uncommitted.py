"""A seek to the committed offsets also rewinds the partitions that have none yet.

Faust drops what it fetched while the flow was suspended (a rebalance, the table recovery at start)
and relies on a seek to the committed offsets afterwards to read it again (``Consumer.perform_seek``
-> aiokafka's ``seek_to_committed``). aiokafka (0.14.0) seeks only where the committed offset is
above 0 (``if offset and offset > 0``): a partition the group never committed keeps its position,
after the records Faust dropped. Labs and X-rays are sparse, so their partitions are often still
uncommitted: a worker restarted after SIGKILL fetched a partition's first five lab results during
its start-up recovery, delivered one, dropped four, and never read them again
(``test_worker_sigkill``; four patients' labs and one X-ray missing from their state).

Here the stream topics' partitions with no committed offset (or 0) go back to the beginning of
the log, which is where a group without a commit starts (``consumer_auto_offset_reset="earliest"``):
at-least-once by redelivery, the records already applied recognised by their offsets
(``patient_state.redelivered``). Changelog and other internal topics are left as they are (table
recovery positions them itself).
"""

from __future__ import annotations

from collections.abc import Callable

from aiokafka import AIOKafkaConsumer


def install(rewinds: Callable[[str], bool]) -> None:
    """``rewinds(topic)``: whether an uncommitted partition of ``topic`` goes back to its beginning."""
    original = getattr(AIOKafkaConsumer.seek_to_committed, "_icuwatch_original", AIOKafkaConsumer.seek_to_committed)

    async def seek_to_committed(self: AIOKafkaConsumer, *partitions):
        committed = await original(self, *partitions)
        never = [tp for tp, offset in committed.items() if offset is None and rewinds(tp.topic)]
        at_zero = [tp for tp, offset in committed.items() if offset == 0 and rewinds(tp.topic)]
        for tp in at_zero:
            self._fetcher.seek_to(tp, 0)
        if never:
            await self.seek_to_beginning(*never)
        return committed

    seek_to_committed._icuwatch_original = original  # type: ignore[attr-defined]
    AIOKafkaConsumer.seek_to_committed = seek_to_committed
