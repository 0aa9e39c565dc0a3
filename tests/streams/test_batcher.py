"""How ``ScoreBatcher.run`` forms batches: the first row lingers ``batch_wait_s`` (counted from that
row, not a fixed tick), rows that arrive while a batch is being scored make the next one, a full
batch goes at once, a failed batch is tried again row by row, and a row that keeps failing while
others score is given up. The scorer's call is held open by the test
(an event), so the batches do not depend on how fast this machine is."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import pytest

from icuwatch.core import features as F
from icuwatch.core import rules, schemas
from icuwatch.streams import batcher as batcher_module
from icuwatch.streams.batcher import ScoreBatcher

T0 = 1_764_000_000.0


class GatedScorer:
    """Scores with the rules in process once ``gate`` is open; records each call's size and start."""

    model_name = "early_warning"

    def __init__(self, fail_first: bool = False) -> None:
        self.calls: list[tuple[float, int]] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_first = fail_first

    async def score(self, batch, rows=None):
        self.calls.append((time.monotonic(), len(batch)))
        self.started.set()
        await self.gate.wait()
        if self.fail_first:
            self.fail_first = False
            raise ConnectionError("scorer down once")
        return rules.score(batch), "triton"


def submit(batcher: ScoreBatcher, i: int) -> None:
    x = np.full((1, F.N_FEATURES), np.nan, dtype=np.float32)
    batcher.submit(f"p{i}", T0 + i, x, {"vitals": 1.0, "waveforms": None, "labs": None, "cxr": None}, "cadence")


async def until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def run_with(scorer: GatedScorer, batch_max: int, batch_wait_s: float, scenario) -> list[str]:
    """Run ``scenario(batcher, published)`` beside ``batcher.run()``; the patient ids published."""
    published: list[str] = []

    async def publish(score: schemas.Score) -> None:
        published.append(score.patient_id)

    async def main() -> None:
        batcher = ScoreBatcher(scorer, publish, batch_max=batch_max, batch_wait_s=batch_wait_s)
        task = asyncio.create_task(batcher.run())
        try:
            await scenario(batcher, published)
        finally:
            task.cancel()

    asyncio.run(main())
    return published


def test_the_linger_counts_from_the_first_row_not_a_tick():
    """Two rows 0.1 s apart after the batcher idled 0.4 s go in one batch with a 0.5-s linger (a
    0.5-s tick, as the loop before had, would have split them at 0.5 s)."""
    scorer = GatedScorer()
    first: dict[str, float] = {}

    async def scenario(batcher, published):
        await asyncio.sleep(0.4)
        first["at"] = time.monotonic()
        submit(batcher, 0)
        await asyncio.sleep(0.1)
        submit(batcher, 1)
        await until(lambda: len(published) == 2)

    published = run_with(scorer, 256, 0.5, scenario)
    assert [n for _, n in scorer.calls] == [2]
    assert 0.5 <= scorer.calls[0][0] - first["at"] < 2.0
    assert published == ["p0", "p1"]


def test_rows_that_arrive_during_a_call_make_the_next_batch_sent_when_it_returns():
    scorer = GatedScorer()

    async def scenario(batcher, published):
        scorer.gate.clear()
        submit(batcher, 0)
        await asyncio.wait_for(scorer.started.wait(), 5.0)  # p0's call is in flight, held open
        for i in range(1, 6):
            submit(batcher, i)
        opened = time.monotonic()
        scorer.gate.set()
        await until(lambda: len(published) == 6)
        assert scorer.calls[1][0] - opened < 0.25  # right away, not after another 0.5-s linger

    published = run_with(scorer, 256, 0.5, scenario)
    assert [n for _, n in scorer.calls] == [1, 5]
    assert published == [f"p{i}" for i in range(6)]


def test_a_full_batch_goes_without_lingering():
    scorer = GatedScorer()
    began: dict[str, float] = {}

    async def scenario(batcher, published):
        began["at"] = time.monotonic()
        for i in range(4):
            submit(batcher, i)
        await until(lambda: len(published) == 4)

    run_with(scorer, 4, 5.0, scenario)
    assert [n for _, n in scorer.calls] == [4]
    assert scorer.calls[0][0] - began["at"] < 1.0  # not the 5-s linger


def test_a_batch_that_fails_is_tried_again_row_by_row(caplog):
    scorer = GatedScorer(fail_first=True)

    async def scenario(batcher, published):
        submit(batcher, 0)
        submit(batcher, 1)
        await until(lambda: len(published) == 2)

    with caplog.at_level(logging.ERROR, logger="icuwatch.streams.batcher"):
        published = run_with(scorer, 256, 0.01, scenario)
    assert [n for _, n in scorer.calls] == [2, 1, 1]
    assert published == ["p0", "p1"]
    assert [r.getMessage() for r in caplog.records] == ["scoring a batch of 2 failed; retrying its rows alone"]


POISON = 999.0


class PoisonScorer(GatedScorer):
    """Raises for any batch holding a row whose first feature is ``POISON``; for every call while
    ``down`` is set (an outage)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def score(self, batch, rows=None):
        self.calls.append((time.monotonic(), len(batch)))
        if self.down or (batch[:, 0] == POISON).any():
            raise ValueError("cannot score this")
        return rules.score(batch), "triton"


def submit_row(batcher: ScoreBatcher, name: str, t: float, value: float, published: list[str]) -> None:
    x = np.full((1, F.N_FEATURES), np.nan, dtype=np.float32)
    x[0, 0] = value
    staleness = {"vitals": 1.0, "waveforms": None, "labs": None, "cxr": None}
    batcher.submit(name, t, x, staleness, "cadence", published=lambda: published.append(name))


def test_a_row_that_fails_alone_while_others_score_is_given_up_and_reported_published(monkeypatch):
    monkeypatch.setattr(batcher_module, "RETRY_S", 0.01)
    scorer, acknowledged, held = PoisonScorer(), [], {}

    async def scenario(batcher, published):
        held["batcher"] = batcher
        submit_row(batcher, "poison", T0, POISON, acknowledged)
        for i in range(batcher_module.GIVE_UP_AFTER + 2):
            submit_row(batcher, f"p{i}", T0 + i, 80.0, acknowledged)
            await asyncio.sleep(0.03)
        await until(lambda: "poison" in acknowledged)

    published = run_with(scorer, 256, 0.0, scenario)
    assert "poison" not in published, "given up, not scored"
    assert published == [f"p{i}" for i in range(batcher_module.GIVE_UP_AFTER + 2)], "the others all scored, in order"
    assert held["batcher"].given_up == 1
    assert sorted(acknowledged) == sorted([*published, "poison"]), "its patient's messages may be acknowledged"


def test_an_outage_that_fails_every_row_gives_up_none(monkeypatch):
    monkeypatch.setattr(batcher_module, "RETRY_S", 0.01)
    scorer, acknowledged, held = PoisonScorer(), [], {}
    scorer.down = True

    async def scenario(batcher, published):
        held["batcher"] = batcher
        for i in range(3):
            submit_row(batcher, f"p{i}", T0 + i, 80.0, acknowledged)
        await until(lambda: len(scorer.calls) > 3 * 4 * batcher_module.GIVE_UP_AFTER)
        scorer.down = False
        await until(lambda: len(published) == 3)

    published = run_with(scorer, 256, 0.0, scenario)
    assert published == ["p0", "p1", "p2"] and held["batcher"].given_up == 0
    assert held["batcher"]._failures == {}, "a row that scored leaves no count behind for a later row to inherit"


@pytest.mark.parametrize("batch_wait_s", [0.0, 0.01])
def test_no_row_is_left_behind(batch_wait_s):
    """Rows submitted in every phase of the loop (idle, lingering, in a call) are all scored once."""
    scorer = GatedScorer()

    async def scenario(batcher, published):
        for i in range(50):
            submit(batcher, i)
            if i % 7 == 0:
                await asyncio.sleep(0.003)
        await until(lambda: len(published) == 50)

    published = run_with(scorer, 8, batch_wait_s, scenario)
    assert sorted(published, key=lambda p: int(p[1:])) == [f"p{i}" for i in range(50)]
    assert all(n <= 8 for _, n in scorer.calls)
