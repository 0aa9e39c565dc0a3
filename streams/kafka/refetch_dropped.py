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

Records of the input topics are not delivered at all while a rebalance is under way (until
:func:`.streams_ready.ready`, whose module says why: Faust empties the streams' buffers after its
seek, so what was delivered before was lost); they are sought back like the rest. Seen in the chaos
drill's rebalance scenario with every delivery logged: the worker taking a partition over delivered
290 records in that window, the ingest agent saw 4 of them, and only the jump check below brought
the rest back. The seek goes to the first held record: Faust forgets the committed offsets of
revoked partitions, and aiokafka starts each newly assigned partition at its committed offset, which
the position never passes while records are held, so this seek and the recovery's seek to the
committed offsets agree whichever comes last (where Faust does know a committed offset, the lower
of the two is taken, as above).

Records the fetch skipped are read again too. Faust's drain loop takes a record more than one
offset past the last one read as a hole in the log (compaction, transaction markers) and books the
offsets between as acknowledged (``Consumer._add_gap``). The input topics here have no holes; the
jumps seen were records skipped by the client while a restarted worker sought its partitions to
their committed offsets (chaos drill, worker SIGKILL, with every jump logged: each partition
delivered its committed record, then one 4 to 60 offsets later; eight patients' admission labs were
among the skipped records, and the commit passed them). So a record that follows the last one read
by more than one is not delivered; its partition is sought back to the last one read (re-read
records are recognised, ``patient_state.redelivered``). Delivering it first would not do: its offset,
applied, would make the skipped records of the same patient look like re-reads. Only when the same
jump comes again from the same place is it taken as a real hole and left to Faust (and, as there,
only topics whose messages are acknowledged are checked: not the changelogs, compacted on a Kafka
cluster).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from faust.transport.consumer import Consumer

from icuwatch.streams.kafka import streams_ready

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
    reread: dict[Any, int] = {}
    """Partitions whose fetch skipped records: the last offset read, to read on from."""
    held: set[Any] = set()
    """Input partitions whose records wait for the rebalance to end."""
    jumps = self.__dict__.setdefault("_icuwatch_jumps", {})
    for tp, record in self.scheduler.iterate(records):
        if not self.flow_active or self.app.consumer_generation_id != generation_id:
            break
        if tp in reread or tp in held:
            continue
        if active_partitions is None or tp in active_partitions or tp in self._buffered_partitions:
            acknowledged = self.app.topics.acks_enabled_for(tp.topic)  # the inputs; not the changelogs
            if acknowledged and not streams_ready.ready(self.app):
                held.add(tp)
                continue
            read = self._read_offset.get(tp) or 0  # the last offset read (the committed one after a seek)
            skipped = record.offset - read - 1 if read else 0  # 0: nothing to compare with, as in Faust
            if skipped > 0 and acknowledged:  # as Faust's gaps
                if jumps.get(tp) != (read, record.offset):
                    jumps[tp] = (read, record.offset)
                    reread[tp] = read
                    log.warning("a fetch skipped %d records of a partition: read again", skipped)
                    continue
                log.warning("the same jump of %d records came twice: taken as a hole in the log", skipped)
            self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            delivered[tp] = delivered.get(tp, 0) + 1
            yield tp, self._to_message(tp, record)
    left = {**undelivered(records, delivered), **reread}
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
            log.info(
                "records fetched and not delivered, sought back: %d partitions (%d held for a rebalance)",
                len(targets),
                len(held & targets.keys()),
            )


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
