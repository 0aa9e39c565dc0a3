"""Hand each fetched record to the streams without four asyncio tasks per record.

Faust (faust-streaming 0.15.3, ``Consumer._drain_messages``) delivers every record with
``await self.wait_first(callback(message), self.suspend_flow.wait())``, so that a delivery blocked
on a full stream buffer gives way when a rebalance suspends the flow. mode's ``wait_first`` wraps
both coroutines and the service's ``stopped`` and ``crashed`` events in a task each, waits for the
first and cancels the rest: four tasks, an ``asyncio.wait`` and three cancellations per record.
Profiled with py-spy on ``icuwatch bench pipeline --beds 1000`` that was 12 % of the worker's busy
samples, more than decoding and validating every message (the issue 21 closing note has the profile).

The delivery (Faust's topic conductor: decode the event, ``put_nowait`` it on each stream's queue)
only suspends when a buffer is full or the flow is suspended. Here it is first run one step inline:
finished without suspending, the answer is the one ``wait_first`` gives for it (nothing else could
have won: the flow was active and the consumer neither stopped nor crashed when it started). Only
if it suspends do the rest of it (the same coroutine, resumed where it stopped) and the suspend wait
go to ``wait_first`` as before. Every other caller of ``wait_first`` is untouched.
"""

from __future__ import annotations

import inspect
from collections.abc import Coroutine, Generator
from typing import Any

from faust.transport.consumer import Consumer
from mode.services import WaitResults

_MARK = "_icuwatch_inline_delivery"


class Resumed:
    """The rest of a coroutine that already ran up to its first suspension (``yielded``): awaiting
    this drives it on from there, passing every value, exception and cancellation through."""

    def __init__(self, coro: Coroutine, yielded: Any) -> None:
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        value = self.yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                self.coro.close()
                raise
            except BaseException as exc:  # cancellation included: the coroutine decides
                try:
                    value = self.coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = self.coro.send(sent)
                except StopIteration as done:
                    return done.value


def _is_delivery(consumer: Any, coros: tuple, timeout: Any) -> bool:
    """``_drain_messages``' call, the only one in Faust's consumer with two coroutines and no
    timeout, while the flow is active and the consumer running."""
    return (
        len(coros) == 2
        and timeout is None
        and all(inspect.iscoroutine(c) for c in coros)
        and not consumer.suspend_flow.is_set()
        and not consumer._stopped.is_set()
        and not consumer._crashed.is_set()
    )


def install() -> None:
    original = Consumer.wait_first
    if getattr(original, _MARK, False):
        return
    drain = inspect.getsource(Consumer._drain_messages)
    if "self.wait_first(" not in drain or "self.suspend_flow.wait()" not in drain:
        raise RuntimeError(
            "faust-streaming changed: Consumer._drain_messages no longer delivers through "
            "wait_first(callback(message), self.suspend_flow.wait()); re-check streams/kafka/inline_delivery.py"
        )

    async def wait_first(self, *coros, timeout=None):
        if not _is_delivery(self, coros, timeout):
            return await original(self, *coros, timeout=timeout)
        delivery, suspended = coros
        try:
            yielded = delivery.send(None)
        except StopIteration as done:
            suspended.close()
            return WaitResults([delivery], [done.value], False)
        except BaseException:
            suspended.close()
            raise
        return await original(self, Resumed(delivery, yielded), suspended)

    setattr(wait_first, _MARK, True)
    Consumer.wait_first = wait_first  # type: ignore[method-assign]
