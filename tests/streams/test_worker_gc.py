"""The worker's collector settings (``streams/worker.py``): survivors frozen out of collection every
``worker_gc_freeze_s``, one full collection every ``worker_gc_full_s``."""

from __future__ import annotations

import gc
import time
import weakref


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_survivors_are_frozen_and_cycles_among_them_collected_at_the_full_collection():
    from icuwatch.streams import worker

    gc.disable()  # no automatic collection between the steps
    try:
        worker._last_full_collection[0] = time.monotonic()
        cycle = Cycle()
        garbage = weakref.ref(cycle)
        worker.freeze_survivors()
        assert gc.get_freeze_count() > 0
        del cycle
        gc.collect()  # what a collection walks: the frozen cycle is not in it
        assert garbage() is not None
        worker._last_full_collection[0] -= worker.settings.worker_gc_full_s
        worker.freeze_survivors()
        assert garbage() is None and gc.get_freeze_count() > 0  # unfrozen, collected, frozen again
    finally:
        gc.unfreeze()
        gc.enable()
