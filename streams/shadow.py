"""The live shadow: a second served model (``Settings.shadow_model``) scores every batch the live
model scores, from the same flush (its Triton call runs in a task beside the live one), so both
answer for the same patients at the same event times from the same state.

The shadow never changes what the live path does (``batcher.ScoreBatcher._start_shadow``): the live
scores do not wait for it, one shadow call runs at a time with at most ``SHADOW_QUEUE`` batches
queued (a batch that finds the queue full goes without shadow scores, counted), and a shadow call
that fails is counted and logged once, its batch goes without shadow scores (no rules stand in: a
shadow that cannot be reached has nothing to compare), and Triton is tried again after
``triton_retry_s``. Its scores go to
``icu.shadow-scores``; the shadow agent (``worker.raise_shadow_alerts``) runs them through the same
episode rules as the live alerts at the shadow's thresholds and stores both apart
(``storage/shadow.py``): nothing reaches ``icu.alerts``, the board or FHIR.

A student shadow (a model with an ``export.json``) gets its own rows (``live_row``/``student_row``
by its layout) and no leave-one-out copies (contributions are for nurses); any other served model
reads the feature row, as ``early_warning`` does.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from icuwatch.core.errors import OperatorError
from icuwatch.core.settings import Settings, model_repositories
from icuwatch.streams import alerting, live_row, student_row
from icuwatch.streams.patient_state import PatientState
from icuwatch.streams.scoring import Outputs, StudentScorer, TritonScorer, is_live, served_model_info

log = logging.getLogger(__name__)


class UnknownShadowModel(OperatorError, ValueError):
    """``shadow_model`` names no model in the served repositories."""


def shadow_info(settings: Settings) -> dict | None:
    """``served_model_info`` of the shadow model when it is a student, None when it reads the feature
    row; raises :class:`UnknownShadowModel` when no served repository has it."""
    name = settings.shadow_model
    if not any((repo / name / "config.pbtxt").is_file() for repo in model_repositories(settings)):
        where = ", ".join(str(r) for r in model_repositories(settings))
        raise UnknownShadowModel(f"shadow model {name}: no such model in the served repositories ({where})")
    try:
        return served_model_info(settings.model_copy(update={"scoring_model": name, "scoring_model_dir": None}))
    except FileNotFoundError:
        return None


class ShadowScorer:
    def __init__(self, settings: Settings, info: dict | None) -> None:
        self.settings = settings
        self.info = info
        name = settings.shadow_model
        self.scorer: TritonScorer
        if info is not None:
            student = StudentScorer(settings.model_copy(update={"scoring_model": name}), info)
            student.groups = {}  # no leave-one-out copies: the shadow's contributions are not shown
            self.scorer = student
        else:
            self.scorer = TritonScorer(settings.model_copy(update={"triton_model": name}))
        self.thresholds = alerting.thresholds_from(
            settings, info["thresholds"] if info is not None and settings.alert_thresholds == "model" else None
        )
        self.down_until = 0.0
        self.counts = {"shadow_batches": 0, "shadow_rows": 0, "shadow_errors": 0, "shadow_skipped_rows": 0}

    @property
    def model_name(self) -> str:
        return self.scorer.model_name

    def row(self, state: PatientState, t: float) -> dict | None:
        """The shadow's row of the patient at ``t`` (None: it reads the feature row)."""
        if self.info is None:
            return None
        if is_live(self.info):
            return live_row.row(state, t, self.info["norm"])
        return student_row.cohort_row(state, t, self.info["norm"])

    async def score(self, x: np.ndarray, rows: dict[str, np.ndarray] | None) -> Outputs | None:
        """The shadow's outputs for the batch, or None (Triton failed or is being left alone)."""
        if time.monotonic() < self.down_until:
            self.counts["shadow_skipped_rows"] += len(x)
            return None
        try:
            out = await self.scorer._score_triton(x, rows)
        except Exception as exc:  # the shadow must never hold up or break the live path
            self.counts["shadow_errors"] += 1
            self.counts["shadow_skipped_rows"] += len(x)
            if self.down_until == 0.0:
                log.warning(
                    "shadow model %s unavailable (%s); live scoring goes on", self.model_name, type(exc).__name__
                )
            self.down_until = time.monotonic() + self.settings.triton_retry_s
            await self.scorer._reconnect()
            return None
        if self.down_until:
            log.info("shadow model %s answers again", self.model_name)
        self.down_until = 0.0
        self.counts["shadow_batches"] += 1
        self.counts["shadow_rows"] += len(x)
        return out

    async def close(self) -> None:
        await self.scorer.close()
