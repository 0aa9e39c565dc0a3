"""Which consumed messages may be acknowledged (and so committed): at-least-once with durable effects.

The worker folds each input message into a patient's live state in memory and writes that state to
the ``patient_state`` table (its changelog) only now and then (``patient_state.checkpoint_due``). A
message is acknowledged only once a checkpoint covers it, and never while a score of its patient
waits in the batcher: Faust commits an offset only when every earlier one of the partition is
acknowledged, and flushes its producer (the changelog, ``icu.scores``) before it commits. A worker
killed at any moment therefore restarts from a checkpoint and re-reads every message after it;
re-read messages the checkpoint already holds are duplicates and change nothing.

Waveform chunks are held back a little longer: their samples live in the worker's memory, not in
the checkpoint, so the chunks of the last ``hold_s`` seconds stay unacknowledged and a restarted
worker re-reads them into a whole window.

Pure bookkeeping: the worker passes in whatever it wants acknowledged (Faust events) and calls
``ack`` on what comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class _Patient:
    events: list[tuple[Any, float | None]] = field(default_factory=list)
    """(event, end time of its waveform chunk or None), in arrival order."""
    newest_waveform_t: float | None = None
    last_added: float = 0.0
    in_flight: int = 0
    """Scores of this patient submitted and not yet published."""


class PendingAcks:
    def __init__(self, hold_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.hold_s = hold_s
        self.clock = clock
        self.patients: dict[bytes, _Patient] = {}
        self.generation = 0
        """Bumped by :meth:`clear`: a score submitted before a rebalance reports to the old books."""
        self.awaiting_write = 0
        """Events released by a checkpoint whose changelog write is not delivered yet."""

    def add(self, key: bytes, event: Any, waveform_end_t: float | None = None) -> None:
        p = self.patients.setdefault(key, _Patient())
        p.events.append((event, waveform_end_t))
        p.last_added = self.clock()
        if waveform_end_t is not None:
            p.newest_waveform_t = max(p.newest_waveform_t or waveform_end_t, waveform_end_t)

    def score_submitted(self, key: bytes) -> None:
        self.patients.setdefault(key, _Patient()).in_flight += 1

    def score_published(self, key: bytes, generation: int | None = None) -> None:
        if generation is not None and generation != self.generation:
            return
        p = self.patients.get(key)
        if p is not None and p.in_flight > 0:
            p.in_flight -= 1

    def can_checkpoint(self, key: bytes) -> bool:
        """A checkpoint written while a score waits would record it as scored: after a crash the
        restarted worker would never score that time again."""
        p = self.patients.get(key)
        return p is None or p.in_flight == 0

    def release(self, key: bytes, everything: bool = False) -> list[Any]:
        """Events covered by a checkpoint just written: all of them except (unless ``everything``)
        waveform chunks ending within ``hold_s`` of the patient's newest chunk."""
        p = self.patients.get(key)
        if p is None:
            return []
        if everything or p.newest_waveform_t is None:
            out, p.events = [e for e, _ in p.events], []
            return out
        keep_after = p.newest_waveform_t - self.hold_s
        released = [e for e, end_t in p.events if end_t is None or end_t <= keep_after]
        p.events = [(e, end_t) for e, end_t in p.events if end_t is not None and end_t > keep_after]
        return released

    def ack_once_written(self, key: bytes, events: list[Any], written: asyncio.Future) -> None:
        """Acknowledge ``events`` (released by a checkpoint of ``key``) once ``written``, the
        checkpoint's changelog write, is delivered. Never after a rebalance (whoever owns them now
        reads them again); when the write failed they go back to the patient's books, to be
        acknowledged by the next checkpoint that is delivered."""
        if not events:
            return
        generation = self.generation
        self.awaiting_write += len(events)

        def ack(future: asyncio.Future) -> None:
            self.awaiting_write -= len(events)
            if generation != self.generation:
                return
            if future.cancelled() or future.exception() is not None:
                log.warning("a checkpoint was not delivered to the changelog: its messages wait for the next one")
                held = self.patients.setdefault(key, _Patient())
                held.events[:0] = [(event, None) for event in events]
                return
            for event in events:
                event.ack()

        written.add_done_callback(ack)

    def idle(self, after_s: float) -> list[bytes]:
        """Patients with unacknowledged events and nothing new for ``after_s`` wall seconds (a monitor
        that stopped sending must not hold its partition's commits back for ever)."""
        cutoff = self.clock() - after_s
        return [k for k, p in self.patients.items() if p.events and p.last_added <= cutoff]

    def unacknowledged(self) -> int:
        return sum(len(p.events) for p in self.patients.values()) + self.awaiting_write

    def clear(self) -> None:
        """Partitions were revoked: the events are re-read by whoever owns them next."""
        self.patients.clear()
        self.generation += 1
