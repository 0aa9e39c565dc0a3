import asyncio

from icuwatch.streams.kafka.acks import PendingAcks


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_release_gives_back_everything_but_the_recent_waveform_window():
    acks = PendingAcks(hold_s=10.0)
    acks.add(b"p", "vitals@100")
    acks.add(b"p", "ecg@95", waveform_end_t=95.0)
    acks.add(b"p", "ecg@105", waveform_end_t=105.0)
    acks.add(b"p", "ecg@112", waveform_end_t=112.0)
    assert acks.release(b"p") == ["vitals@100", "ecg@95"]
    assert acks.unacknowledged() == 2
    assert acks.release(b"p", everything=True) == ["ecg@105", "ecg@112"]
    assert acks.release(b"p") == []


def test_no_checkpoint_while_a_score_waits_to_be_published():
    acks = PendingAcks(hold_s=10.0)
    acks.add(b"p", "e1")
    acks.score_submitted(b"p")
    acks.score_submitted(b"p")
    assert not acks.can_checkpoint(b"p")
    acks.score_published(b"p")
    assert not acks.can_checkpoint(b"p")
    acks.score_published(b"p")
    assert acks.can_checkpoint(b"p")
    acks.score_published(b"p")  # an extra call never goes below zero
    acks.score_submitted(b"p")
    assert not acks.can_checkpoint(b"p")
    assert acks.can_checkpoint(b"other")


def test_idle_patients_are_found_by_wall_time_since_their_last_message():
    clock = Clock()
    acks = PendingAcks(hold_s=10.0, clock=clock)
    acks.add(b"quiet", "e1")
    clock.t = 8.0
    acks.add(b"busy", "e2")
    clock.t = 12.0
    assert acks.idle(10.0) == [b"quiet"]
    acks.release(b"quiet", everything=True)
    assert acks.idle(10.0) == []


def test_clear_forgets_everything_after_a_revocation():
    acks = PendingAcks(hold_s=10.0)
    acks.add(b"p", "e1")
    acks.score_submitted(b"p")
    before = acks.generation
    acks.clear()
    assert acks.unacknowledged() == 0 and acks.can_checkpoint(b"p")
    acks.add(b"p", "e1 read again")
    acks.score_submitted(b"p")
    acks.score_published(b"p", before)  # the score submitted before the revocation reports late
    assert not acks.can_checkpoint(b"p"), "an old score must not free the new books"
    acks.score_published(b"p", acks.generation)
    assert acks.can_checkpoint(b"p")


def test_changelog_partitioner_agrees_with_the_producers():
    """The worker writes checkpoints with aiokafka's partitioner (``use_partitioner``); the input
    topics are keyed by kafka-python's. A patient's checkpoint must land in the partition of its
    messages, or another worker would own it after a rebalance."""
    from aiokafka.partitioner import DefaultPartitioner as AioPartitioner
    from kafka.partitioner.default import murmur2

    parts = list(range(4))
    for i in range(500):
        key = f"sim-{i:04d}".encode()
        assert AioPartitioner()(key, parts, parts) == (murmur2(key) & 0x7FFFFFFF) % 4


class Event:
    def __init__(self, name: str, acked: list[str]) -> None:
        self.name, self.acked = name, acked

    def ack(self) -> None:
        self.acked.append(self.name)


def _written_and_events() -> tuple[PendingAcks, asyncio.Future, list[str]]:
    acks, acked = PendingAcks(hold_s=10.0), []
    acks.add(b"p", Event("e1", acked))
    acks.add(b"p", Event("e2", acked))
    written = asyncio.get_running_loop().create_future()
    acks.ack_once_written(b"p", acks.release(b"p"), written)
    return acks, written, acked


def test_a_checkpoints_events_are_acknowledged_once_its_changelog_write_is_delivered():
    async def run() -> tuple[list[str], int, list[str], int]:
        acks, written, acked = _written_and_events()
        before = (list(acked), acks.unacknowledged())
        written.set_result("record metadata")
        await asyncio.sleep(0)
        return *before, acked, acks.unacknowledged()

    assert asyncio.run(run()) == ([], 2, ["e1", "e2"], 0)


def test_a_failed_changelog_write_returns_the_events_to_the_books_and_a_rebalance_drops_them():
    async def run(outcome: str) -> tuple[list[str], int, list[str]]:
        acks, written, acked = _written_and_events()
        if outcome == "rebalanced":
            acks.clear()
            written.set_result("record metadata")
        else:
            written.set_exception(RuntimeError("broker gone"))
        await asyncio.sleep(0)
        return acked, acks.unacknowledged(), [e.name for e in acks.release(b"p")]

    assert asyncio.run(run("failed")) == ([], 2, ["e1", "e2"]), "back in the books, for the next checkpoint"
    assert asyncio.run(run("rebalanced")) == ([], 0, []), "read again by the partition's next owner"
