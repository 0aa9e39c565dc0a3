"""Rule scores: NEWS2 (Royal College of Physicians, 2017, SpO2 scale 1) and qSOFA (Sepsis-3).

They run beside every model as baselines and are the fallback when Triton is unreachable; the
first Triton model serves exactly this code, so both paths give the same numbers. Vectorised over
a batch of feature rows (see :mod:`icuwatch.core.features`); a missing value scores 0, as a
chart with no observation would.
"""

from __future__ import annotations

import numpy as np

from icuwatch.core import features
from icuwatch.core.features import column

MODEL_NAME = "rules_v1"


def _bands(x: np.ndarray, edges: list[float], points: list[int], right: bool) -> np.ndarray:
    """Points for the band that ``x`` falls in; NaN scores 0."""
    idx = np.digitize(np.nan_to_num(x, nan=np.inf if right else -np.inf), edges, right=right)
    out = np.asarray(points, dtype=np.int32)[idx]
    return np.where(np.isnan(x), 0, out)


def news2(x: np.ndarray) -> np.ndarray:
    """NEWS2 aggregate score, 0–20, per row of the feature matrix ``x``."""
    rr, spo2 = column(x, "rr"), column(x, "spo2")
    sbp, hr, temp = column(x, "sbp"), column(x, "hr"), column(x, "temp")
    o2, mentation = column(x, "o2_supplement"), column(x, "altered_mentation")
    score = (
        _bands(rr, [8, 11, 20, 24], [3, 1, 0, 2, 3], right=True)
        + _bands(spo2, [91, 93, 95], [3, 2, 1, 0], right=True)
        + _bands(sbp, [90, 100, 110, 219], [3, 2, 1, 0, 3], right=True)
        + _bands(hr, [40, 50, 90, 110, 130], [3, 1, 0, 1, 2, 3], right=True)
        + _bands(temp, [35.0, 36.0, 38.0, 39.0], [3, 1, 0, 1, 2], right=True)
        + np.where(np.nan_to_num(o2) > 0.5, 2, 0)
        + np.where(np.nan_to_num(mentation) > 0.5, 3, 0)
    )
    return score.astype(np.int32)


def qsofa(x: np.ndarray) -> np.ndarray:
    """qSOFA, 0–3: respiratory rate >= 22, systolic BP <= 100, altered mentation."""
    rr, sbp, mentation = column(x, "rr"), column(x, "sbp"), column(x, "altered_mentation")
    with np.errstate(invalid="ignore"):
        return ((rr >= 22).astype(np.int32) + (sbp <= 100) + (mentation > 0.5)).astype(np.int32)


def infection_signs(x: np.ndarray) -> np.ndarray:
    """Count of lactate >= 2 mmol/L and (WBC > 12 or < 4 ×10^9/L, or temperature > 38 or < 36 °C)."""
    lactate, wbc, temp = column(x, "lactate"), column(x, "wbc"), column(x, "temp")
    with np.errstate(invalid="ignore"):
        inflamed = (wbc > 12) | (wbc < 4) | (temp > 38) | (temp < 36)
        return ((lactate >= 2).astype(np.int32) + inflamed).astype(np.int32)


def _logistic(z: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def deterioration_risk(news: np.ndarray) -> np.ndarray:
    """Monotone map of NEWS2 to (0, 1), centred so that 0.5 falls between 6 and 7: NEWS2 >= 7 is
    the RCP's 'high clinical risk' trigger. Not a calibrated probability."""
    return _logistic(1.35 * (news.astype(np.float32) - 6.5))


def sepsis_risk(q: np.ndarray, infection: np.ndarray) -> np.ndarray:
    """Crosses 0.5 at qSOFA + infection signs >= 3 (e.g. qSOFA 2 with a raised lactate)."""
    return _logistic(1.5 * ((q + infection).astype(np.float32) - 2.5))


def score(x: np.ndarray) -> dict[str, np.ndarray]:
    """All rule outputs for a batch: news2, qsofa, deterioration_risk, sepsis_risk."""
    x = np.asarray(x, dtype=np.float32)
    n, q = news2(x), qsofa(x)
    return {
        "news2": n,
        "qsofa": q,
        "deterioration_risk": deterioration_risk(n),
        "sepsis_risk": sepsis_risk(q, infection_signs(x)),
    }


_RISK_KEYS = {"deterioration": "deterioration_risk", "sepsis": "sepsis_risk"}


def contributions(x: np.ndarray) -> dict[str, np.ndarray]:
    """Leave-one-modality-out deltas: for each modality (``features.MODALITIES``), each risk with
    all features minus that risk with the modality's columns (``features.MODALITY_FEATURES``)
    blanked to NaN. Returns ``{modality: float32 [batch, 2]}``, the columns in
    ``features.CONTRIBUTION_RISKS`` order (deterioration, sepsis); positive: the modality's data
    raised the risk. A modality without data, or with no column the rules read (waveforms, cxr),
    gets 0. One vectorised pass over the batch and its four blanked copies.
    """
    x = np.asarray(x, dtype=np.float32)
    n, m = x.shape[0], len(features.MODALITIES)
    stacked = np.repeat(x[None, :, :], m + 1, axis=0)  # [1 + modalities, batch, features]
    for j, modality in enumerate(features.MODALITIES, start=1):
        cols = [features.INDEX[name] for name in features.MODALITY_FEATURES[modality]]
        stacked[j][:, cols] = np.nan
    out = score(stacked.reshape((m + 1) * n, -1))
    risks = np.stack([out[_RISK_KEYS[r]] for r in features.CONTRIBUTION_RISKS], axis=-1)  # [(1+m)*n, 2]
    risks = risks.reshape(m + 1, n, len(features.CONTRIBUTION_RISKS))
    delta = (risks[0][None] - risks[1:]).astype(np.float32)  # [m, batch, 2]
    return {modality: delta[j] for j, modality in enumerate(features.MODALITIES)}


def contribution_array(x: np.ndarray) -> np.ndarray:
    """:func:`contributions` in the served layout ``features.CONTRIBUTIONS_SHAPE``: float32
    ``[batch, risk, modality]`` (Triton output ``CONTRIBUTIONS``)."""
    c = contributions(x)
    return np.stack([c[m] for m in features.MODALITIES], axis=-1).astype(np.float32)


def score_explained(x: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`score` plus ``contributions`` (:func:`contribution_array`): what the Triton model
    serves and the in-process fallback computes, so both paths give the same numbers."""
    out = score(x)
    out["contributions"] = contribution_array(x)
    return out
