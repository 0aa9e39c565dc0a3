"""The PhysioNet/CinC 2019 challenge's normalized utility score, written from its published definition.

Reyna et al., "Early Prediction of Sepsis From Clinical Data: The PhysioNet/Computing in Cardiology
Challenge 2019", Crit Care Med 2020, and the challenge's ``evaluate_sepsis_score.py``.

Per patient, ``t`` is the row index (0, 1, ... one row per hour). For a septic patient
``t_sepsis = (index of the first SepsisLabel == 1 row) + 6``: the labels were shifted 6 hours early,
so the clinical onset is 6 rows after the first positive label. With ``d = t - t_sepsis``:

* positive prediction (septic patient):
  ``d < -12``: ``u_fp`` (-0.05, an early alarm is a false alarm);
  ``-12 <= d <= -6``: rises linearly 0 -> ``max_u_tp`` (1), floored at ``u_fp``;
  ``-6 < d <= 3``: falls linearly 1 -> 0;
* negative prediction (septic patient): 0 up to ``d = -6``, then falls linearly to ``min_u_fn`` (-2)
  at ``d = 3``;
* ``d > 3``: 0 whatever is predicted (the rows after ``t_sepsis + dt_late`` do not count);
* non-septic patient: ``u_fp`` for every positive prediction, ``u_tn`` (0) for every negative one.

A cohort's normalized utility is ``(observed - inaction) / (best - inaction)`` with the sums over all
patients of: the observed predictions, no positive predictions at all ("inaction"), and the best
predictions (positive exactly in rows ``t_sepsis + dt_early .. t_sepsis + dt_late``, clipped to the
stay). Perfect predictions score 1, predicting nothing scores 0.

The per-row utilities of a positive and of a negative prediction depend on the labels only
(``row_utilities``), so re-thresholding probabilities is a vector sum (see ``metrics.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DT_EARLY = -12
DT_OPTIMAL = -6
DT_LATE = 3
MAX_U_TP = 1.0
MIN_U_FN = -2.0
U_FP = -0.05
U_TN = 0.0


@dataclass(frozen=True)
class UtilityParams:
    dt_early: float = DT_EARLY
    dt_optimal: float = DT_OPTIMAL
    dt_late: float = DT_LATE
    max_u_tp: float = MAX_U_TP
    min_u_fn: float = MIN_U_FN
    u_fp: float = U_FP
    u_tn: float = U_TN

    def __post_init__(self):
        if not self.dt_early < self.dt_optimal < self.dt_late:
            raise ValueError("need dt_early < dt_optimal < dt_late")


DEFAULT = UtilityParams()


def _binary(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be 0 or 1")
    return arr.astype(bool)


def sepsis_time(labels) -> int | None:
    """``t_sepsis`` (row index of the first positive label + 6), or None for a non-septic patient."""
    labels = _binary(labels, "labels")
    if not labels.any():
        return None
    return int(np.argmax(labels)) - int(DEFAULT.dt_optimal)


def row_utilities(labels, params: UtilityParams = DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """Per row of one patient: (utility of predicting 1, utility of predicting 0)."""
    labels = _binary(labels, "labels")
    n = labels.size
    if not labels.any():
        return np.full(n, params.u_fp, dtype=float), np.full(n, params.u_tn, dtype=float)
    p = params
    t_sepsis = int(np.argmax(labels)) - p.dt_optimal
    d = np.arange(n, dtype=float) - t_sepsis
    rising = p.max_u_tp * (d - p.dt_early) / (p.dt_optimal - p.dt_early)  # 0 at dt_early, max at dt_optimal
    falling = p.max_u_tp * (p.dt_late - d) / (p.dt_late - p.dt_optimal)  # max at dt_optimal, 0 at dt_late
    missed = p.min_u_fn * (d - p.dt_optimal) / (p.dt_late - p.dt_optimal)  # 0 at dt_optimal, min at dt_late
    u_pos = np.where(d <= p.dt_optimal, np.maximum(rising, p.u_fp), falling)
    u_neg = np.where(d <= p.dt_optimal, 0.0, missed)
    late = d > p.dt_late
    u_pos[late] = 0.0
    u_neg[late] = 0.0
    return u_pos, u_neg


def best_predictions(labels, params: UtilityParams = DEFAULT) -> np.ndarray:
    """1 exactly in rows ``t_sepsis + dt_early .. t_sepsis + dt_late`` (clipped to the stay), else 0."""
    labels = _binary(labels, "labels")
    best = np.zeros(labels.size, dtype=int)
    if labels.any():
        t_sepsis = int(np.argmax(labels)) - params.dt_optimal
        lo = max(0, int(np.ceil(t_sepsis + params.dt_early)))
        hi = min(labels.size, int(np.floor(t_sepsis + params.dt_late)) + 1)
        best[lo:hi] = 1
    return best


def patient_utility(labels, predictions, params: UtilityParams = DEFAULT) -> float:
    """Unnormalized utility of one patient's binary predictions (one per row)."""
    labels = _binary(labels, "labels")
    predictions = _binary(predictions, "predictions")
    if labels.size != predictions.size:
        raise ValueError(f"{predictions.size} predictions for {labels.size} labels")
    u_pos, u_neg = row_utilities(labels, params)
    return float(np.where(predictions, u_pos, u_neg).sum())


def cohort_utilities(
    labels_list: Sequence, predictions_list: Sequence, params: UtilityParams = DEFAULT
) -> dict[str, float]:
    """Summed ``observed``, ``best`` and ``inaction`` utilities and the ``normalized`` score."""
    if len(labels_list) != len(predictions_list):
        raise ValueError(f"{len(predictions_list)} prediction series for {len(labels_list)} patients")
    observed = best = inaction = 0.0
    for labels, predictions in zip(labels_list, predictions_list):
        labels = _binary(labels, "labels")
        observed += patient_utility(labels, predictions, params)
        best += patient_utility(labels, best_predictions(labels, params), params)
        inaction += patient_utility(labels, np.zeros(labels.size, dtype=int), params)
    return {"observed": observed, "best": best, "inaction": inaction, "normalized": normalize(observed, best, inaction)}


def normalize(observed: float, best: float, inaction: float) -> float:
    """``(observed - inaction) / (best - inaction)``; NaN when undefined (no septic patient: best == inaction)."""
    if np.isclose(best, inaction):
        return float("nan")
    return float((observed - inaction) / (best - inaction))


def normalized_utility(labels_list: Sequence, predictions_list: Sequence, params: UtilityParams = DEFAULT) -> float:
    """The challenge score of a cohort: one label series and one binary prediction series per patient.

    NaN when the cohort has no septic patient (the score's denominator is then 0).
    """
    return cohort_utilities(labels_list, predictions_list, params)["normalized"]
