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

import heapq
import itertools
import weakref
from typing import Any
from weakref import WeakSet

from faust.transport.consumer import Consumer
from faust.utils.functional import consecutive_numbers


class HeldMessages(WeakSet):
    """Faust's set of messages handed to a stream and not acknowledged (``_unacked_messages``, a
    WeakSet) that also keeps, per partition, a heap of (offset, sequence, weak reference) of what
    it was given, so that :func:`oldest_unacked` need not scan every held message. Faust's stream
    iterator adds to the set directly (it inlines ``Consumer.track_message``), so the set is where
    to hook."""

    def __init__(self, data: Any = None) -> None:
        self.heaps: dict[Any, list] = {}
        self.entries = 0
        super().__init__(data)  # adds ``data`` through :meth:`add`

    def add(self, message: Any) -> None:
        super().add(message)
        heapq.heappush(self.heaps.setdefault(message.tp, []), (message.offset, next(_sequence), weakref.ref(message)))
        self.entries += 1
        if self.entries > 2 * len(self) + REBUILD_SLACK:
            self.rebuild()

    def rebuild(self) -> None:
        """Heaps of the messages still in the set only. Entries leave a heap from its top, so one
        message held long (a checkpoint waiting for a score) kept every later, long-acknowledged one
        in it: the heaps are rebuilt once they hold twice what the set does."""
        heaps: dict[Any, list] = {}
        for message in list(self):
            if not message.acked:
                heaps.setdefault(message.tp, []).append((message.offset, next(_sequence), weakref.ref(message)))
        for heap in heaps.values():
            heapq.heapify(heap)
        self.heaps = heaps
        self.entries = sum(len(h) for h in heaps.values())

    def floors(self, generation: int | None) -> dict[Any, int]:
        """Per partition, the lowest offset still held (see :func:`oldest_unacked`)."""
        floors: dict[Any, int] = {}
        for tp, heap in self.heaps.items():
            while heap and not _counts(heap[0][2](), generation):
                heapq.heappop(heap)
                self.entries -= 1
            if heap:
                floors[tp] = heap[0][0]
        return floors


REBUILD_SLACK = 4096


_sequence = itertools.count()


def fetched_in(message: Any, generation: int | None) -> bool:
    """Whether ``message`` was fetched in the consumer group's ``generation`` (None: not known). One
    fetched before a rebalance is read again from the committed offset, here or by another worker."""
    return generation is None or message.generation_id in (None, generation)


def _counts(message: Any, generation: int | None) -> bool:
    """Whether ``message`` (None: garbage-collected) still holds its partition's commits."""
    return message is not None and not message.acked and fetched_in(message, generation)


def oldest_unacked(consumer: Any) -> dict[Any, int]:
    """Per partition, the lowest offset of a message delivered to a stream and not acknowledged.
    Messages fetched in an earlier group generation do not count: a rebalance sends the partition
    back to its committed offset, and they are read again (or by another worker).

    From the heaps :class:`HeldMessages` keeps, popping what was acknowledged since (each message
    is pushed and popped once: the scan of every held message on every commit was 5 % of the
    worker's busy time at 1,000 beds, with ~100,000 messages held for checkpoints); a consumer
    without them (Faust's own books on a bare object) is scanned."""
    generation = getattr(getattr(consumer, "app", None), "consumer_generation_id", None)
    if isinstance(consumer._unacked_messages, HeldMessages):
        return consumer._unacked_messages.floors(generation)
    floors: dict[Any, int] = {}
    for message in list(consumer._unacked_messages):
        if _counts(message, generation):
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
    init = Consumer.__init__

    def init_with_held_messages(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self._unacked_messages = HeldMessages()

    if not getattr(init, "_held_messages", False):
        init_with_held_messages._held_messages = True  # type: ignore[attr-defined]
        Consumer.__init__ = init_with_held_messages  # type: ignore[method-assign]
