"""Gathers the patients due for scoring and scores them in one Triton call per batch."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from icuwatch.core import features, rules, schemas
from icuwatch.streams.scoring import Outputs, TritonScorer
from icuwatch.streams.shadow import ShadowScorer
from icuwatch.streams.stage_times import StageTimes

log = logging.getLogger(__name__)

SHADOW_QUEUE = 4
"""Shadow batches that may wait while the shadow scores one (more go without shadow scores)."""
RETRY_S = 0.2
"""Pause before a batch whose scoring or publishing raised is tried again."""
GIVE_UP_AFTER = 5
"""Failures alone after which a row is given up, if other rows were scored meanwhile."""


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
    shadow_row: dict | None = None
    """The shadow model's row when it is a student (``streams/shadow.py``)."""
    scorer: TritonScorer | None = None
    """The live scorer this row was built for (the batcher's at submission: the live model can
    change between submission and scoring, ``icuwatch models promote --shadow``)."""
    shadow: ShadowScorer | None = None
    """The shadow its ``shadow_row`` was built for, likewise."""
    timing: tuple[float | None, float, float] | None = None
    """(broker append, taken by the worker, submitted here) wall times for ``StageTimes``; None: not kept."""


class ScoreBatcher:
    def __init__(
        self,
        scorer: TritonScorer,
        publish: Callable[[schemas.Score], Awaitable[None]],
        batch_max: int,
        batch_wait_s: float,
        shadow: ShadowScorer | None = None,
        publish_shadow: Callable[[schemas.Score], Awaitable[None]] | None = None,
        stage_times: StageTimes | None = None,
    ) -> None:
        self.scorer = scorer
        self.stage_times = stage_times
        """Where each score's time went (``streams/stage_times.py``); None: not kept."""
        self.publish = publish
        self.shadow = shadow
        """Scores every batch beside ``scorer``; its scores go to ``publish_shadow``."""
        self.publish_shadow = publish_shadow
        self._shadow_queue: asyncio.Queue | None = None
        self._shadow_task: asyncio.Task | None = None
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.pending: list[Due] = []
        self._wake = asyncio.Event()
        """Set by every submit: a batch is to be made."""
        self._full = asyncio.Event()
        """Set once ``batch_max`` rows wait: no reason to linger."""
        self.scored_batches = 0
        self.given_up = 0
        """Rows given up (:meth:`_gives_up`)."""
        self._failures: dict[int, tuple[int, int]] = {}
        """Per row waiting to be retried (by ``id``; dropped once it scores or is given up): its
        failures alone that came after another row scored, and ``scored_batches`` at its last one."""

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
        shadow_row: dict | None = None,
        taken: tuple[float | None, float] | None = None,
    ) -> None:
        """``taken``: (broker append, taken by the worker) wall times of the message that triggered the
        score, kept with the score's own stages when ``stage_times`` is on."""
        timing = None if taken is None or self.stage_times is None else (*taken, time.time())
        self.pending.append(
            Due(
                patient_id,
                t,
                features,
                staleness,
                trigger,
                revision,
                cohort,
                published,
                shadow_row,
                self.scorer,
                self.shadow,
                timing,
            )  # fmt: skip
        )
        self._wake.set()
        if len(self.pending) >= self.batch_max:
            self._full.set()

    async def run(self) -> None:
        """Batches form on their own: the first row waits at most ``batch_wait_s`` for others (from
        that row on, not a fixed tick: an idle worker does not wake), and the rows submitted while a
        batch is being scored make the next one, sent as soon as that call returns. While fewer
        than ``batch_max`` rows wait, a row waits for the call in flight, if any, then its own."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.pending:
                continue
            if len(self.pending) < self.batch_max and self.batch_wait_s > 0:
                self._full.clear()
                try:
                    await asyncio.wait_for(self._full.wait(), timeout=self.batch_wait_s)
                except asyncio.TimeoutError:
                    pass
            while self.pending:
                batch, self.pending = self.pending[: self.batch_max], self.pending[self.batch_max :]
                try:
                    await self.flush(batch)
                    self._scored(batch)
                except Exception:
                    log.exception("scoring a batch of %d failed; retrying its rows alone", len(batch))
                    failed = await self._each_alone(batch) if len(batch) > 1 else batch
                    kept = [due for due in failed if not self._gives_up(due)]
                    if kept:
                        self.pending[:0] = kept
                        await asyncio.sleep(RETRY_S)

    async def _each_alone(self, batch: list[Due]) -> list[Due]:
        """Score each row of a failed batch alone; the rows that fail again."""
        failed = []
        for due in batch:
            try:
                await self.flush([due])
                self._scored([due])
            except Exception:
                failed.append(due)
        return failed

    def _scored(self, batch: list[Due]) -> None:
        self.scored_batches += 1
        for due in batch:
            self._failures.pop(id(due), None)

    def _gives_up(self, due: Due) -> bool:
        """Whether a row that failed alone is given up: once ``GIVE_UP_AFTER`` of its failures each
        came after another row was scored (since its previous failure). Then the failure is the
        row's own (no single message may stop scoring: the rows behind it wait for its retries), not
        an outage of the scorer or the broker, which fails every row and during which every row
        waits (its failures do not count). A given-up row is counted, logged without patient data,
        and reported published, so its patient's messages are acknowledged once checkpointed: the
        data is kept, that one score is not."""
        first = id(due) not in self._failures
        failures, scored_then = self._failures.get(id(due), (0, self.scored_batches))
        if first or self.scored_batches > scored_then:
            failures += 1
        if failures < GIVE_UP_AFTER:
            self._failures[id(due)] = (failures, self.scored_batches)
            return False
        self._failures.pop(id(due), None)
        self.given_up += 1
        log.error("a score failed alone %d times while other rows were scored: given up", failures)
        _report_published(due)
        return True

    async def flush(self, batch: list[Due]) -> None:
        """Score and publish ``batch``, then call each due's ``published``. Dues submitted before
        the live model changed are scored by the model their rows were built for."""
        self._start_shadow(batch)
        groups: dict[int, tuple[TritonScorer, list[Due]]] = {}
        for due in batch:
            scorer = due.scorer or self.scorer
            groups.setdefault(id(scorer), (scorer, []))[1].append(due)
        for scorer, dues in groups.values():
            await self._score_and_publish(scorer, dues)
        for due in batch:  # after the whole batch: a failing callback must not make it publish again
            _report_published(due)

    async def _score_and_publish(self, scorer: TritonScorer, batch: list[Due]) -> None:
        x = np.concatenate([d.features for d in batch], axis=0)
        out, source = await scorer.score(x, _stacked([d.cohort for d in batch]))
        model = scorer.model_name if source == "triton" else rules.MODEL_NAME
        version = out.get("model_version") if source == "triton" else None
        c = out.get("contributions")
        explained = features.contributions_as_dicts(c) if c is not None else [None] * len(batch)
        now = time.time()
        for i, due in enumerate(batch):
            await self.publish(_score(due, out, i, model, version, source, now, explained[i]))
            if due.timing is not None and self.stage_times is not None and due.trigger != "revision":
                self.stage_times.record(due.event_time, *due.timing, now, time.time())

    def _start_shadow(self, batch: list[Due]) -> None:
        """Queue ``batch`` for the shadow, scored in a task of its own beside the live call (the
        same patients, times and rows) but never in its way: the live scores do not wait for it,
        and anything the shadow raises stays in its task. One shadow call at a time, at most
        ``SHADOW_QUEUE`` batches waiting; a batch that finds the queue full goes without shadow
        scores (counted), so a slow shadow cannot pile up. Its scores are published when it
        answers, so a worker killed before that loses them (the report pairs only the scores both
        models have)."""
        if self.shadow is None or self.publish_shadow is None:
            return
        # rows built for an earlier shadow are left out (a due not stamped by submit counts as current)
        batch = [d for d in batch if d.shadow is None or d.shadow is self.shadow]
        if not batch:
            return
        if self._shadow_queue is None:
            self._shadow_queue = asyncio.Queue(maxsize=SHADOW_QUEUE)
            self._shadow_task = asyncio.create_task(self._shadow_worker(self._shadow_queue), name="shadow-scoring")
        x = np.concatenate([d.features for d in batch], axis=0)
        try:
            self._shadow_queue.put_nowait((self.shadow, batch, x))
        except asyncio.QueueFull:
            self.shadow.counts["shadow_skipped_rows"] += len(batch)

    async def _shadow_worker(self, queue: asyncio.Queue) -> None:
        while True:
            shadow, batch, x = await queue.get()
            try:
                await self._shadow_batch(shadow, batch, x)
            finally:
                queue.task_done()

    async def shadow_done(self) -> None:
        """Wait until the queued shadow batches are scored (tests; a clean stop)."""
        if self._shadow_queue is not None:
            await self._shadow_queue.join()

    async def _shadow_batch(self, shadow: ShadowScorer, batch: list[Due], x: np.ndarray) -> None:
        assert self.publish_shadow is not None
        try:
            out = await shadow.score(x, _stacked([d.shadow_row for d in batch]))
            if out is None:
                return
            now = time.time()
            for i, due in enumerate(batch):
                await self.publish_shadow(
                    _score(due, out, i, shadow.model_name, out.get("model_version"), "triton", now, None)
                )
        except Exception as exc:  # the shadow never breaks scoring
            shadow.counts["shadow_errors"] += 1
            log.warning("shadow batch of %d not scored: %s", len(batch), type(exc).__name__)


def _report_published(due: Due) -> None:
    """Call ``due.published``; a callback that raises is logged, never passed on."""
    if due.published is not None:
        try:
            due.published()
        except Exception:
            log.exception("after-publish callback failed")


def _stacked(rows: list[dict | None]) -> dict[str, np.ndarray] | None:
    """The batch of a student's rows (None when the model reads the feature row)."""
    given = [r for r in rows if r is not None]
    if not given:
        return None
    from icuwatch.streams.student_row import stack_rows

    if len(given) != len(rows):  # the worker gives every score a row or none (one model)
        raise ValueError("a scoring batch mixes rows with and without a student row")
    return stack_rows(given)


def _score(
    due: Due, out: Outputs, i: int, model: str, version: str | None, source: str, now: float, contributions: Any
) -> schemas.Score:
    """Row ``i`` of a scored batch as the score of ``due``."""
    return schemas.Score(
        patient_id=due.patient_id,
        event_time=due.event_time,
        model=model,
        model_version=version,
        source=source,  # type: ignore[arg-type]
        deterioration_risk=float(out["deterioration_risk"][i]),
        sepsis_risk=float(out["sepsis_risk"][i]),
        news2=int(out["news2"][i]),
        qsofa=int(out["qsofa"][i]),
        staleness_s=due.staleness,
        scored_at=now,
        trigger=due.trigger,
        revision=due.revision,
        contributions=contributions,
    )
