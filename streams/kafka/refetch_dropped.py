"""Records Faust fetched and then did not deliver are fetched again.

Faust (faust-streaming 0.15.3, ``Consumer.getmany``) stops handing out a fetched batch when the
flow is suspended or the group generation changes part-way, and skips the records of a partition
that is not active at that moment. aiokafka's position has already moved past all of them, so
unless a seek to the committed offsets follows for that partition, they are never read: the next
record delivered is ahead of the last by more than one, and Faust books the difference as a gap in
the log (``Consumer._add_gap``), which counts as acknowledged, so the commit moves past records
no checkpoint holds. Seen in the chaos drill's SIGKILL scenario: the restarted worker took one lab
result of a partition while it joined the group, dropped the next fourteen of the same fetch, and
went on from the fifteenth: three patients' admission labs lost.

Here every partition with records left over when ``getmany`` stops is sought back
(``Consumer.seek_wait``, on the consumer's thread, which also resets Faust's read offset), so the
next fetch reads them: to the first of them, or to the partition's committed offset if lower
(the records between were delivered and are re-read as duplicates; the committed offset is also
where a rebalance that suspended the flow seeks, so the two seeks agree whichever comes last).
After a generation change nothing is sought: the rebalance seeks every partition to its committed
offset, and a seek past it would skip what the revoked books held. A partition no longer assigned
is left to the rebalance too.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from faust.transport.consumer import Consumer

log = logging.getLogger(__name__)

_MARK = "_icuwatch_refetch_dropped"


def undelivered(records: Mapping[Any, list], delivered: dict[Any, int]) -> dict[Any, int]:
    """Per partition with records left over, the offset of the first one not delivered."""
    return {
        tp: batch[delivered.get(tp, 0)].offset for tp, batch in records.items() if delivered.get(tp, 0) < len(batch)
    }


async def getmany(self: Consumer, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
    """Faust's ``Consumer.getmany`` (0.15.3), counting what it delivers and seeking the rest back."""
    records, active_partitions = await self._wait_next_records(timeout)
    generation_id = self.app.consumer_generation_id
    if records is None or self.should_stop:
        return
    if not self.flow_active:
        try:
            await self.perform_seek()
        except Exception as exc:
            log.warning("exception performing seek when flow not active %s", exc)
        return
    delivered: dict[Any, int] = {}
    for tp, record in self.scheduler.iterate(records):
        if not self.flow_active or self.app.consumer_generation_id != generation_id:
            break
        if active_partitions is None or tp in active_partitions or tp in self._buffered_partitions:
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            delivered[tp] = delivered.get(tp, 0) + 1
            yield tp, self._to_message(tp, record)
    left = undelivered(records, delivered)
    if left and self.app.consumer_generation_id == generation_id:
        assigned = self.assignment()
        targets = {}
        for tp, offset in left.items():
            if tp in assigned:
                committed = self._committed_offset.get(tp)
                targets[tp] = offset if committed is None else min(offset, committed)
        if targets:
            try:  # seek_wait: on the consumer's own thread, and it resets Faust's read offsets
                await self.seek_wait(targets)
            except Exception as exc:  # a rebalance under way: it seeks to the committed offsets
                log.warning("records not delivered were not sought back (%s)", type(exc).__name__)
            log.info("records fetched and not delivered, sought back: %d partitions", len(targets))


def install() -> None:
    if getattr(Consumer.getmany, _MARK, False):
        return
    source = inspect.getsource(Consumer.getmany)
    for expected in ("if not self.flow_active:", "new_generation_id != generation_id", "self._buffered_partitions"):
        if expected not in source:
            raise RuntimeError(
                "faust-streaming changed: Consumer.getmany is not the one streams/kafka/refetch_dropped.py "
                "replaces; re-check it against the new code"
            )
    setattr(getmany, _MARK, True)
    Consumer.getmany = getmany  # type: ignore[method-assign]
