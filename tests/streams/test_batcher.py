"""How ``ScoreBatcher.run`` forms batches: the first row waits at most ``batch_wait_s``, rows that
arrive while a batch is being scored make the next one, a full batch goes at once."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from icuwatch.core import features as F
from icuwatch.core import rules, schemas
from icuwatch.streams.batcher import ScoreBatcher

T0 = 1_764_000_000.0
CALL_S = 0.05
"""How long the scorer below takes per call (a Triton round trip)."""


class SlowScorer:
    """Scores with the rules in process after ``CALL_S``; records each call's size and start."""

    model_name = "early_warning"

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []

    async def score(self, batch, rows=None):
        self.calls.append((time.monotonic(), len(batch)))
        await asyncio.sleep(CALL_S)
        return rules.score(batch), "triton"


def submit(batcher: ScoreBatcher, i: int) -> None:
    x = np.full((1, F.N_FEATURES), np.nan, dtype=np.float32)
    batcher.submit(f"p{i}", T0 + i, x, {"vitals": 1.0, "waveforms": None, "labs": None, "cxr": None}, "cadence")


def run_with(batch_max: int, batch_wait_s: float, scenario) -> tuple[SlowScorer, list[tuple[str, float]]]:
    scorer = SlowScorer()
    published: list[tuple[str, float]] = []

    async def publish(score: schemas.Score) -> None:
        published.append((score.patient_id, time.monotonic()))

    async def main() -> None:
        batcher = ScoreBatcher(scorer, publish, batch_max=batch_max, batch_wait_s=batch_wait_s)
        task = asyncio.create_task(batcher.run())
        try:
            await scenario(batcher)
        finally:
            task.cancel()

    asyncio.run(main())
    return scorer, published


def test_a_lone_row_is_scored_after_the_linger_not_a_fixed_tick():
    submitted: dict[str, float] = {}

    async def scenario(batcher):
        await asyncio.sleep(0.3)  # the batcher idles: nothing is scored, no empty call
        submitted["p0"] = time.monotonic()
        submit(batcher, 0)
        await asyncio.sleep(0.2)

    scorer, published = run_with(256, 0.01, scenario)
    assert [n for _, n in scorer.calls] == [1]
    waited = published[0][1] - submitted["p0"]
    assert CALL_S <= waited < CALL_S + 0.05


def test_rows_that_arrive_during_a_call_make_the_next_batch_sent_when_it_returns():
    async def scenario(batcher):
        submit(batcher, 0)
        await asyncio.sleep(0.02)  # the first call (p0) is in flight
        for i in range(1, 6):
            submit(batcher, i)
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)

    scorer, published = run_with(256, 0.01, scenario)
    assert [n for _, n in scorer.calls] == [1, 5]
    (t0, _), (t1, _) = scorer.calls
    assert t1 - t0 < CALL_S + 0.02  # right after the first call, not after another linger or tick
    assert [p for p, _ in published] == [f"p{i}" for i in range(6)]


def test_a_full_batch_goes_without_lingering():
    async def scenario(batcher):
        for i in range(4):
            submit(batcher, i)
        await asyncio.sleep(0.1)

    started = time.monotonic()
    scorer, _ = run_with(4, 5.0, scenario)
    assert [n for _, n in scorer.calls] == [4]
    assert scorer.calls[0][0] - started < 0.05  # not the 5-s linger
