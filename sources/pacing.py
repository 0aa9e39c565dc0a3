"""Sending timed messages to Kafka at a chosen pace (shared by the simulator and the replays).

Items are ``(publish_time, topic, message)`` where ``message`` has ``key()`` and ``to_bytes()``
(every v1 :class:`~icuwatch.core.schemas.Message`, or :class:`RawMessage` for bytes read back from
an archive). ``speed`` is stream seconds per wall second: 1 real time, 60 one minute per second,
0 as fast as possible. The schedule is anchored at ``start_time`` (default: the first item's time);
if the producer falls behind, messages go out as fast as they can until the schedule is met again,
and an item whose time is earlier than one already sent goes out at once.

A message the producer reports undelivered (after its own retries, or all at once when a fatal
error ends an idempotent producer, see :class:`~icuwatch.streams.kafka.producer.ResilientProducer`) is
sent again before the next item, and the ones still failing again after the stream, a few rounds:
at-least-once publishing, whose duplicates the worker recognises by event time.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

MIN_SLEEP_S = 0.002
RESEND_ROUNDS = 5


class DeliveryError(RuntimeError):
    """Some messages were not acknowledged by the broker (after the producer's own retries)."""


@dataclass(frozen=True)
class RawMessage:
    """Bytes already encoded (an archived record): sent as they are."""

    key_bytes: bytes | None
    value: bytes
    partition: int | None = None
    """Send to this partition (None: the producer's partitioner picks it from the key)."""

    def key(self) -> bytes | None:
        return self.key_bytes

    def to_bytes(self) -> bytes:
        return self.value


def send_paced(
    items: Iterable[tuple[float, str, Any]],
    producer: Any,
    speed: float,
    *,
    start_time: float | None = None,
    end_time: float | None = None,
    progress: bool = False,
    unit: str = "stream s",
    counts: Counter | None = None,
    flush: bool = True,
) -> dict[str, int]:
    """``producer.send(topic, key=..., value=...)`` every item, paced by its time.

    ``end_time`` (optional) sizes the progress bar. Returns the number of messages sent per topic
    (``counts`` is updated in place when given); flushes the producer at the end unless told not to.
    """
    if speed < 0:
        raise ValueError("speed must be >= 0")
    counts = Counter() if counts is None else counts
    undelivered: list[tuple[str, Any]] = []
    resent = 0

    def send(topic: str, msg: Any) -> None:
        partition = getattr(msg, "partition", None)
        if partition is None:
            future = producer.send(topic, key=msg.key(), value=msg.to_bytes())
        else:
            future = producer.send(topic, key=msg.key(), value=msg.to_bytes(), partition=partition)
        if hasattr(future, "add_errback"):
            future.add_errback(lambda _exc: undelivered.append((topic, msg)))

    def resend() -> None:
        nonlocal resent
        while undelivered:
            topic, msg = undelivered.pop(0)
            resent += 1
            send(topic, msg)

    wall0 = time.monotonic()
    t0 = start_time
    shown = None
    total = round(end_time - start_time) if (end_time is not None and start_time is not None) else None
    bar = tqdm(total=total, unit=unit, disable=not progress, dynamic_ncols=True)
    try:
        for t, topic, msg in items:
            if t0 is None:
                t0 = t
            if shown is None:
                shown = t0
            if speed > 0:
                delay = wall0 + (t - t0) / speed - time.monotonic()
                if delay > MIN_SLEEP_S:
                    time.sleep(delay)
            resend()
            send(topic, msg)
            counts[topic] += 1
            if progress and t - shown >= 1.0:
                step = round(t - shown)
                bar.update(step)
                shown += step
                bar.set_postfix(msgs=sum(counts.values()), refresh=False)
        if progress and end_time is not None and shown is not None:
            bar.update(max(0, round(end_time - shown)))
    finally:
        bar.close()
    if flush:
        producer.flush()
        for _ in range(RESEND_ROUNDS):
            if not undelivered:
                break
            resend()
            producer.flush()
    if undelivered:
        failed = Counter(topic for topic, _ in undelivered)
        raise DeliveryError(f"{sum(failed.values())} messages not delivered: {dict(failed)}")
    if resent:
        log.warning("%d messages sent again after the producer reported them undelivered", resent)
    return dict(counts)
