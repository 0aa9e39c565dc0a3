"""Faust commits past messages it has not seen acknowledged (faust-streaming 0.15.3); the worker's
patch (``streams/kafka/commit_floor.py``) does not. Pure: Faust's own bookkeeping on a bare object."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace

from faust.transport.consumer import Consumer
from intervaltree import IntervalTree

from icuwatch.streams.kafka.commit_floor import _filter_committable_offsets, new_offset, oldest_unacked

TP = ("icu.labs", 2)


@dataclass(eq=False)
class Message:
    tp: tuple
    offset: int
    acked: bool
    generation_id: int | None = None


def books(committed: int | None, acked: list[int], held: list[int]) -> SimpleNamespace:
    """A consumer's books: ``acked`` offsets acknowledged, ``held`` delivered and not acknowledged."""
    messages = [Message(TP, o, False) for o in held]
    messages += [Message(TP, o, True) for o in acked]
    c = SimpleNamespace(
        _acked=defaultdict(list, {TP: list(acked)}),
        _acked_index=defaultdict(set, {TP: set(acked)}),
        _gap=defaultdict(IntervalTree),
        _committed_offset=defaultdict(lambda: None, {TP: committed}),
        _unacked_messages=set(messages),
    )
    c._should_commit = lambda tp, offset: Consumer._should_commit(c, tp, offset)
    return c


def test_faust_alone_commits_past_held_messages():
    """The hole the patch closes: both cases lose the held messages to a worker killed after the commit."""
    fresh_group = books(committed=None, acked=[5, 6], held=[0, 1, 2, 3, 4])
    assert Consumer._new_offset(fresh_group, TP) == 7
    one_held = books(committed=10, acked=[11, 12], held=[10])
    assert Consumer._new_offset(one_held, TP) == 13


def test_the_patch_never_commits_past_the_oldest_held_message():
    assert _filter_committable_offsets(books(committed=None, acked=[5, 6], held=[0, 1, 2, 3, 4]), [TP]) == {}
    assert _filter_committable_offsets(books(committed=10, acked=[11, 12], held=[10]), [TP]) == {}
    # held in the middle: commit up to it, keep the rest of the acknowledged offsets for later
    c = books(committed=10, acked=[10, 11, 13, 14], held=[12])
    assert _filter_committable_offsets(c, [TP]) == {TP: 12}
    assert c._acked[TP] == [13, 14] and c._acked_index[TP] == {13, 14}
    # held after a run that Faust too would stop at: the same answer as Faust
    assert new_offset(books(committed=None, acked=[0, 1, 2], held=[3]), TP, floor=3) == 3
    assert Consumer._new_offset(books(committed=None, acked=[0, 1, 2], held=[3]), TP) == 3


def test_nothing_held_commits_what_faust_commits():
    for committed, acked in ((None, [0, 1, 2]), (4, [4, 5, 6, 9]), (7, [7])):
        assert new_offset(books(committed, acked, []), TP, floor=None) == Consumer._new_offset(
            books(committed, acked, []), TP
        )


def test_gaps_in_the_log_count_as_acknowledged():
    c = books(committed=0, acked=[0, 1, 5], held=[])
    c._gap[TP].addi(2, 5)  # offsets 2-4 are not in the log (compacted away)
    assert new_offset(c, TP, floor=None) == 6


def test_the_floor_is_the_oldest_unacknowledged_offset_per_partition():
    c = books(committed=0, acked=[0, 1], held=[7, 3])
    other = ("icu.vitals", 0)
    c._unacked_messages.add(Message(other, 42, False))
    assert oldest_unacked(c) == {TP: 3, other: 42}


def test_messages_of_an_earlier_generation_do_not_hold_commits_back():
    """After a rebalance the partition is read again from its committed offset: a message object
    left over from before (unacknowledged, still referenced somewhere) must not block commits."""
    c = books(committed=3, acked=[3, 4, 5], held=[])
    c._unacked_messages.add(Message(TP, 4, False, generation_id=1))
    c.app = SimpleNamespace(consumer_generation_id=2)
    assert oldest_unacked(c) == {}
    c._unacked_messages.add(Message(TP, 5, False, generation_id=2))
    assert oldest_unacked(c) == {TP: 5}


def test_the_held_heaps_give_the_floor_a_scan_of_every_held_message_gives():
    """``HeldMessages`` keeps a heap per partition; acknowledging in any order, forgetting messages
    of an old generation, and messages garbage-collected unacknowledged (Faust's books are a
    WeakSet), the floor is the scan's at every step."""
    import random
    import weakref

    from icuwatch.streams.kafka import commit_floor

    @dataclass(eq=False)
    class Held:
        tp: tuple
        offset: int
        acked: bool = False
        generation_id: int | None = 1

    rng = random.Random(7)
    tps = [("icu.vitals", 0), ("icu.waveforms", 1)]
    app = SimpleNamespace(consumer_generation_id=1)
    held = commit_floor.HeldMessages()
    consumer = SimpleNamespace(app=app, _unacked_messages=held)
    scan = SimpleNamespace(app=app, _unacked_messages=weakref.WeakSet())  # Faust's own set: the scan
    alive, next_offset, floors_seen = [], {tp: 0 for tp in tps}, 0
    for step in range(3000):
        tp = rng.choice(tps)
        message = Held(tp, next_offset[tp], generation_id=app.consumer_generation_id)
        next_offset[tp] += 1
        alive.append(message)
        held.add(message)  # as Faust's stream iterator does
        scan._unacked_messages.add(message)
        for m in alive:
            m.acked = rng.random() < 0.05  # out of order, ~20 held at a time
        if step == 1500:
            app.consumer_generation_id = 2  # a rebalance: everything fetched before no longer counts
        if step % 97 == 0 and alive:
            alive.pop(rng.randrange(len(alive)))  # dropped unacknowledged (garbage-collected)
        alive = [m for m in alive if not m.acked]
        floors = commit_floor.oldest_unacked(consumer)
        assert floors == commit_floor.oldest_unacked(scan), step
        floors_seen += len(floors)
    assert floors_seen > 3000  # most steps hold something on both partitions
    assert sum(len(h) for h in held.heaps.values()) < 200  # popped as acknowledged


def test_the_worker_s_consumer_holds_its_messages_in_the_heaped_set():
    from icuwatch.streams.app import app
    from icuwatch.streams.kafka.commit_floor import HeldMessages

    assert isinstance(app.consumer._unacked_messages, HeldMessages)


def test_one_message_held_long_does_not_grow_the_heaps_without_bound():
    """Entries leave a heap from its top: with one message held throughout, every later one stays
    until the heaps are rebuilt from what the set still holds."""
    from icuwatch.streams.kafka import commit_floor

    @dataclass(eq=False)
    class Held:
        tp: tuple
        offset: int
        acked: bool = False
        generation_id: int | None = None

    held = commit_floor.HeldMessages()
    consumer = SimpleNamespace(app=SimpleNamespace(consumer_generation_id=None), _unacked_messages=held)
    first = Held(TP, 0)
    held.add(first)
    for offset in range(1, 50_000):
        message = Held(TP, offset)
        held.add(message)
        message.acked = True  # acknowledged at once; it stays referenced nowhere else
        if offset % 1000 == 0:
            assert commit_floor.oldest_unacked(consumer) == {TP: 0}
    assert sum(len(h) for h in held.heaps.values()) <= 2 * len(held) + commit_floor.REBUILD_SLACK + 1
    first.acked = True
    assert commit_floor.oldest_unacked(consumer) == {}
    assert held.copy() is not None  # WeakSet's own methods still work on the subclass
