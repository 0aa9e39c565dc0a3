"""``streams/kafka/inline_delivery.py``: Faust's consumer delivers a record without tasks when the
delivery does not suspend, and exactly as before (the suspend wait can still win) when it does.
Runs Faust's own ``Consumer.wait_first`` (mode's) on a bare object with real asyncio events."""

from __future__ import annotations

import asyncio
import functools
import inspect
from types import SimpleNamespace

import pytest
from faust.transport.consumer import Consumer
from mode.services import Service

from icuwatch.streams.kafka import inline_delivery

inline_delivery.install()


def run_async(test):
    """Run an ``async def`` test on a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


def consumer() -> SimpleNamespace:
    c = SimpleNamespace(
        suspend_flow=asyncio.Event(),
        _stopped=asyncio.Event(),
        _crashed=asyncio.Event(),
        loop=asyncio.get_running_loop(),
    )
    return c


def wait_first(c, *coros, timeout=None):
    return Consumer.wait_first(c, *coros, timeout=timeout)


def test_install_is_idempotent():
    patched = Consumer.wait_first
    inline_delivery.install()
    assert Consumer.wait_first is patched and Consumer.wait_first is not Service.wait_first


@run_async
async def test_faust_alone_leaves_three_tasks_per_record():
    """What the patch removes (mode's own ``wait_first``, which Faust's consumer inherits)."""
    c = consumer()

    async def deliver():
        return "put"

    tasks_before = len(asyncio.all_tasks())
    suspended = c.suspend_flow.wait()
    result = await Service.wait_first(c, deliver(), suspended)  # type: ignore[arg-type]
    assert result.results == ["put"]
    assert len(asyncio.all_tasks()) - tasks_before == 3  # suspend wait, stopped, crashed: being cancelled


@run_async
async def test_a_delivery_that_does_not_suspend_runs_inline_without_tasks():
    c = consumer()
    delivered = []

    async def deliver(record):
        delivered.append(record)
        return "put"

    tasks_before = len(asyncio.all_tasks())
    suspended = c.suspend_flow.wait()
    result = await wait_first(c, deliver("r1"), suspended)
    assert delivered == ["r1"]
    assert result.results == ["put"] and not result.stopped
    assert inspect.getcoroutinestate(suspended) == inspect.CORO_CLOSED  # never left un-awaited
    assert len(asyncio.all_tasks()) == tasks_before


@run_async
async def test_a_delivery_that_suspends_is_resumed_where_it_stopped():
    c = consumer()
    room = asyncio.get_running_loop().create_future()
    steps = []

    async def deliver():
        steps.append("decoded")
        await room  # a full stream buffer
        steps.append("put")
        return "done"

    asyncio.get_running_loop().call_later(0.05, room.set_result, None)
    result = await wait_first(c, deliver(), c.suspend_flow.wait())
    assert steps == ["decoded", "put"]  # decoded once, not run again from the start
    assert result.results == ["done"]


@run_async
async def test_a_suspended_flow_still_wins_over_a_blocked_delivery():
    """A rebalance stops the flow while the delivery waits for buffer room: as in Faust alone,
    ``wait_first`` returns and the delivery is cancelled, not left blocking the fetcher."""
    c = consumer()
    finished = []

    async def deliver():
        try:
            await asyncio.get_running_loop().create_future()  # never gets room
        finally:
            finished.append("cancelled")

    asyncio.get_running_loop().call_later(0.05, c.suspend_flow.set)
    result = await asyncio.wait_for(wait_first(c, deliver(), c.suspend_flow.wait()), 2.0)
    assert result.results == [True]  # the suspend wait won
    await asyncio.sleep(0)
    assert finished == ["cancelled"]


@run_async
async def test_an_error_in_the_delivery_propagates():
    c = consumer()

    async def deliver():
        raise ValueError("bad record")

    suspended = c.suspend_flow.wait()
    with pytest.raises(ValueError, match="bad record"):
        await wait_first(c, deliver(), suspended)
    assert inspect.getcoroutinestate(suspended) == inspect.CORO_CLOSED


@run_async
async def test_other_waits_and_a_suspended_flow_take_faust_s_own_path():
    c = consumer()
    c.suspend_flow.set()
    ran = []

    async def deliver():
        ran.append(1)

    # flow suspended before the call: both are scheduled as tasks, as in Faust alone
    result = await wait_first(c, deliver(), c.suspend_flow.wait())
    assert not result.stopped and True in result.results
    # a single coroutine (Service.wait): not a delivery
    c2 = consumer()
    ready = asyncio.Event()
    ready.set()
    assert (await wait_first(c2, ready.wait())).results == [True]


def test_faust_still_delivers_through_wait_first():
    """The patch only pays while Faust's fetch loop delivers this way (install checks it too)."""
    source = inspect.getsource(Consumer._drain_messages)
    assert "self.wait_first(" in source and "callback(message), self.suspend_flow.wait()" in source
