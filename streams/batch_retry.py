"""A batch of scores that fails to store and alert is tried again, then one score at a time.

Faust's ``take_events`` acknowledges a batch's events once the agent's body returns *or raises*
(as it does a single event), so an exception there would drop up to ``alert_batch_max`` scores from
alerting for good. Instead the agent body (``worker.until_taken``) never raises. A database that is
*away* is already waited for inside ``StorageSink`` (it retries connection errors until it comes
back), so what reaches here is a row the database refuses or a bug: the whole batch is tried once
more after a short wait (``BACKOFF_S``), then each score alone, and only a score that still fails
goes to the dead-letter topic with its reason, where nothing accepted is lost; the other patients'
scores are held back for well under a second, not behind it.

``apply`` must be safe to run again after a failure part-way: the worker steps copies of the
episode states and writes them back only on success, remembers the episodes a failed attempt
already closed, and every write it makes is idempotent (scores and alerts are stored by their keys;
an alert stored before the failure is published again, as after a restart)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

BACKOFF_S: tuple[float, ...] = (0.2,)
"""Waits between whole-batch attempts: one more try (a race with another writer, say), then score
by score; longer outages are ``StorageSink``'s to wait out."""
GIVE_UP_TRIES = 3


async def apply_until_done(
    items: Sequence[T],
    apply: Callable[[list[T]], Awaitable[None]],
    give_up: Callable[[T, BaseException], Awaitable[None]],
    *,
    still_ours: Callable[[T], bool] = lambda _item: True,
    backoff: Sequence[float] = BACKOFF_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """``apply(items)`` until it succeeds, waiting ``backoff`` between tries; then each item alone,
    ``give_up(item, error)`` for one that still fails. Before each retry the items are filtered by
    ``still_ours`` (a rebalance may have given their partition to another worker, which reads them
    again). Returns how many items were given up."""
    pending = list(items)
    for attempt, wait_s in enumerate((*backoff, None)):
        if not pending:
            return 0
        try:
            await apply(pending)
            return 0
        except Exception as exc:  # the batch is kept: tried again, never dropped
            log.warning("a batch of %d scores failed (%s), attempt %d", len(pending), type(exc).__name__, attempt + 1)
        if wait_s is None:
            break
        await sleep(wait_s)
        pending = [item for item in pending if still_ours(item)]
    given_up = 0
    for item in pending:
        if not still_ours(item):
            continue
        try:
            await apply([item])
        except Exception as exc:
            given_up += 1
            await _give_up(item, exc, give_up, sleep)
    return given_up


async def _give_up(item: T, exc: BaseException, give_up: Callable[[T, BaseException], Awaitable[None]], sleep) -> None:
    """``give_up`` (the dead-letter topic), tried ``GIVE_UP_TRIES`` times: when even that fails the
    item is logged as lost rather than let the exception reach Faust, which would acknowledge the
    rest of the batch untaken."""
    for attempt in range(GIVE_UP_TRIES):
        try:
            await give_up(item, exc)
            return
        except Exception as failed:
            log.error("giving up a score failed (%s), attempt %d", type(failed).__name__, attempt + 1)
            await sleep(0.5 * (attempt + 1))
    log.error("a score was neither taken nor dead-lettered (%s): lost", type(exc).__name__)
