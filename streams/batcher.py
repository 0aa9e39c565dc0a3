"""Gathers the patients due for scoring and scores them in one Triton call per batch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from icuwatch.core import features, rules, schemas
from icuwatch.streams.scoring import TritonScorer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Due:
    patient_id: str
    event_time: float
    features: np.ndarray
    staleness: dict[str, float | None]
    trigger: str
    revision: int = 0
    cohort: dict | None = None
    """The PhysioNet-cohort row (``streams.student_row.cohort_row``) when a student scores."""
    published: Callable[[], None] | None = None
    """Called once the score is handed to the producer (the worker then acknowledges its events)."""


class ScoreBatcher:
    def __init__(
        self,
        scorer: TritonScorer,
        publish: Callable[[schemas.Score], Awaitable[None]],
        batch_max: int,
        batch_wait_s: float,
    ) -> None:
        self.scorer = scorer
        self.publish = publish
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.pending: list[Due] = []
        self._wake = asyncio.Event()

    def submit(
        self,
        patient_id: str,
        t: float,
        features: np.ndarray,
        staleness: dict[str, float | None],
        trigger: str,
        revision: int = 0,
        cohort: dict | None = None,
        published: Callable[[], None] | None = None,
    ) -> None:
        self.pending.append(Due(patient_id, t, features, staleness, trigger, revision, cohort, published))
        if len(self.pending) >= self.batch_max:
            self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.batch_wait_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            while self.pending:
                batch, self.pending = self.pending[: self.batch_max], self.pending[self.batch_max :]
                try:
                    await self.flush(batch)
                except Exception:
                    log.exception("scoring a batch of %d failed; retrying it", len(batch))
                    self.pending[:0] = batch
                    await asyncio.sleep(self.batch_wait_s)

    async def flush(self, batch: list[Due]) -> None:
        x = np.concatenate([d.features for d in batch], axis=0)
        rows = None
        cohorts = [d.cohort for d in batch if d.cohort is not None]
        if cohorts:
            from icuwatch.streams.student_row import stack_rows

            if len(cohorts) != len(batch):  # the worker gives every score a row or none (one model)
                raise ValueError("a scoring batch mixes rows with and without a student row")
            rows = stack_rows(cohorts)
        out, source = await self.scorer.score(x, rows)
        model = self.scorer.model_name if source == "triton" else rules.MODEL_NAME
        version = out.get("model_version") if source == "triton" else None
        c = out.get("contributions")
        explained = features.contributions_as_dicts(c) if c is not None else [None] * len(batch)
        now = time.time()
        for i, due in enumerate(batch):
            await self.publish(
                schemas.Score(
                    patient_id=due.patient_id,
                    event_time=due.event_time,
                    model=model,
                    model_version=version,
                    source=source,
                    deterioration_risk=float(out["deterioration_risk"][i]),
                    sepsis_risk=float(out["sepsis_risk"][i]),
                    news2=int(out["news2"][i]),
                    qsofa=int(out["qsofa"][i]),
                    staleness_s=due.staleness,
                    scored_at=now,
                    trigger=due.trigger,
                    revision=due.revision,
                    contributions=explained[i],
                )
            )
        for due in batch:  # after the whole batch: a failing callback must not make it publish again
            if due.published is not None:
                try:
                    due.published()
                except Exception:
                    log.exception("after-publish callback failed")
