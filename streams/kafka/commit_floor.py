"""Never commit an offset past a message the stream has not acknowledged yet.

The worker acknowledges out of order: a patient's messages wait for the checkpoint that covers
them (``streams/kafka/acks.py``), while another patient's on the same partition may already be covered.
Faust (faust-streaming 0.15.3, ``Consumer._new_offset``) commits the first run of consecutive
acknowledged offsets and checks only for a gap of two or more before it:

* with no committed offset yet (a new consumer group, the first seconds of a deployment) it does
  not check at all: acknowledged 5, 6 with 0-4 still held commits 7;
* with committed offset N (the next to read) and N held, N+1 acknowledged, ``N+1 - N > 1`` is
  false and it commits past N.

A worker killed after such a commit never reads the held messages again, and what they carried is
in no checkpoint (the likely cause of an admission lab missing from one ``test_worker_sigkill`` run,
killed seconds after its consumer group started). Here the
offset Faust would commit is capped at the oldest message the consumer handed to a stream and that
is not acknowledged yet (Faust tracks them in ``_unacked_messages``), and nothing is committed while
the committed offset itself is still held.
"""

from __future__ import annotations

from typing import Any

from faust.transport.consumer import Consumer
from faust.utils.functional import consecutive_numbers


def oldest_unacked(consumer: Any) -> dict[Any, int]:
    """Per partition, the lowest offset of a message delivered to a stream and not acknowledged.
    Messages fetched in an earlier group generation do not count: a rebalance sends the partition
    back to its committed offset, and they are read again (or by another worker)."""
    generation = getattr(getattr(consumer, "app", None), "consumer_generation_id", None)
    floors: dict[Any, int] = {}
    for message in list(consumer._unacked_messages):
        if not message.acked and (generation is None or message.generation_id in (None, generation)):
            held = floors.get(message.tp)
            if held is None or message.offset < held:
                floors[message.tp] = message.offset
    return floors


def new_offset(consumer: Any, tp: Any, floor: int | None) -> int | None:
    """Faust's ``_new_offset`` (the offset to commit for ``tp``, or None), never past ``floor``."""
    acked = consumer._acked[tp]
    if not acked:
        return None
    gaps = consumer._gap[tp]
    if gaps:  # offsets missing from the log (compaction, transaction markers) count as acknowledged
        max_offset = max(acked)
        candidates = sorted(gaps.overlap(0, max_offset), key=lambda x: x.begin)
        if candidates:
            filled = [o for entry in candidates for o in range(entry.begin, entry.end)]
            acked.extend(filled)
            gaps.chop(0, max(filled[-1], max_offset + 1))
    acked.sort()
    committed = consumer._committed_offset[tp]
    if committed is not None and acked[0] > committed:
        return None  # the next offset to read is not acknowledged yet
    batch = next(consecutive_numbers(acked))
    if floor is not None:
        batch = [o for o in batch if o < floor]
        if not batch:
            return None
    acked[: len(batch)] = []
    consumer._acked_index[tp].difference_update(batch)
    return batch[-1] + 1


def _filter_committable_offsets(self: Consumer, tps) -> dict:
    floors = oldest_unacked(self)
    out = {}
    for tp in tps:
        offset = new_offset(self, tp, floors.get(tp))
        if offset is not None and self._should_commit(tp, offset):
            out[tp] = offset
    return out


def install() -> None:
    """Patch Faust's consumer (a private method: pinned faust-streaming; an upgrade must pass
    ``tests/streams/kafka/test_commit_floor.py`` again)."""
    if not callable(getattr(Consumer, "_filter_committable_offsets", None)):
        raise RuntimeError(
            "faust-streaming changed: Consumer._filter_committable_offsets is gone; "
            "re-check streams/kafka/commit_floor.py against the new commit logic"
        )
    Consumer._filter_committable_offsets = _filter_committable_offsets  # type: ignore[method-assign]
