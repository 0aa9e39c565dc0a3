"""A failing batch of scores is tried again, then item by item; only what still fails is given up."""

from __future__ import annotations

import asyncio

from icuwatch.streams.batch_retry import apply_until_done


class Flaky:
    """Fails its first ``failures`` calls; then fails only calls holding one of ``poison``."""

    def __init__(self, failures: int = 0, poison: frozenset[int] = frozenset()) -> None:
        self.failures, self.poison = failures, poison
        self.calls: list[list[int]] = []
        self.done: list[int] = []

    async def __call__(self, items: list[int]) -> None:
        self.calls.append(list(items))
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("database away")
        if self.poison & set(items):
            raise ValueError("refused row")
        self.done += items


def run(items, apply, **kw):
    given_up: list[tuple[int, str]] = []
    waits: list[float] = []

    async def give_up(item, exc):
        given_up.append((item, type(exc).__name__))

    async def sleep(s):
        waits.append(s)

    n = asyncio.run(apply_until_done(items, apply, give_up, sleep=sleep, backoff=(1.0, 2.0, 4.0), **kw))
    return n, given_up, waits


def test_a_batch_that_succeeds_is_applied_once():
    apply = Flaky()
    assert run([1, 2, 3], apply) == (0, [], [])
    assert apply.calls == [[1, 2, 3]]


def test_a_database_that_comes_back_takes_the_whole_batch_after_back_off():
    apply = Flaky(failures=2)
    n, given_up, waits = run([1, 2, 3], apply)
    assert (n, given_up, waits) == (0, [], [1.0, 2.0])
    assert apply.calls == [[1, 2, 3]] * 3 and apply.done == [1, 2, 3]


def test_one_refused_item_is_given_up_alone_and_the_others_are_applied_in_order():
    apply = Flaky(poison=frozenset({2}))
    n, given_up, waits = run([1, 2, 3], apply)
    assert n == 1 and given_up == [(2, "ValueError")]
    assert waits == [1.0, 2.0, 4.0]  # the whole batch was tried len(backoff) + 1 times first
    assert apply.calls[-3:] == [[1], [2], [3]] and apply.done == [1, 3]


def test_items_no_longer_ours_after_a_rebalance_are_left_to_their_new_owner():
    apply = Flaky(failures=1)
    ours = {1, 3}
    n, given_up, _ = run([1, 2, 3], apply, still_ours=lambda item: item in ours)
    assert (n, given_up) == (0, [])
    assert apply.calls == [[1, 2, 3], [1, 3]] and apply.done == [1, 3]


def test_a_database_that_never_comes_back_gives_up_every_item_without_raising():
    apply = Flaky(failures=10**6)
    n, given_up, _ = run([1, 2], apply)
    assert n == 2 and given_up == [(1, "ConnectionError"), (2, "ConnectionError")]


def test_a_dead_letter_that_fails_too_is_retried_and_never_raises():
    apply = Flaky(poison=frozenset({2}))
    tries: list[int] = []

    async def give_up(item, exc):
        tries.append(item)
        raise ConnectionError("broker away")

    async def sleep(s):
        pass

    n = asyncio.run(apply_until_done([1, 2, 3], apply, give_up, sleep=sleep, backoff=(0.0,)))
    assert n == 1 and tries == [2, 2, 2] and apply.done == [1, 3]
