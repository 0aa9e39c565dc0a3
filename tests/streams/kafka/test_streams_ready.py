"""``streams/kafka/streams_ready.py``: the streams count as ready only once the current group
generation's recovery has run to its end (Faust's flow control resumed, which empties the streams'
buffers), not when an older generation's recovery clears ``app.rebalancing``."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.tables.recovery import Recovery

from icuwatch.streams.kafka import streams_ready


def recovery_of(app, newer_generation_during: int | None = None):
    async def resume(self, generation_id: int = 0) -> None:
        if newer_generation_during is not None:  # a newer assignment arrived while it ran
            self.app.consumer_generation_id = newer_generation_during

    return streams_ready._recording(resume), SimpleNamespace(app=app)


def test_a_recovery_that_ran_to_its_end_makes_its_generation_ready():
    app = SimpleNamespace(rebalancing=True, consumer_generation_id=3)
    assert not streams_ready.ready(app), "nothing recovered yet"
    resume, recovery = recovery_of(app)
    asyncio.run(resume(recovery, 3))
    app.rebalancing = False  # Faust's on_rebalance_end, at the end of the same recovery
    assert streams_ready.ready(app)
    app.rebalancing = True
    assert not streams_ready.ready(app), "the next revocation"


def test_a_recovery_overtaken_by_a_newer_generation_or_a_stale_one_does_not_count():
    app = SimpleNamespace(rebalancing=False, consumer_generation_id=4)
    resume, recovery = recovery_of(app, newer_generation_during=5)
    asyncio.run(resume(recovery, 4))
    assert not streams_ready.ready(app), "generation 5 was assigned while 4's recovery ran"
    resume, recovery = recovery_of(app)
    asyncio.run(resume(recovery, 4))
    assert not streams_ready.ready(app), "a late end of generation 4 is not generation 5's"
    asyncio.run(resume(recovery, 5))
    assert streams_ready.ready(app)


def test_both_of_fausts_resume_paths_are_wrapped_once():
    streams_ready.install()
    streams_ready.install()
    for name in ("on_recovery_completed", "_resume_streams"):
        method = getattr(Recovery, name)
        assert getattr(method, streams_ready._MARK, False)
        assert not getattr(method.__wrapped__, streams_ready._MARK, False), "wrapped twice"
