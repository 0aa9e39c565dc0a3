"""The feature vector every scorer (rules in-process, models in Triton) receives.

One row per patient and scoring time, ``float32``, NaN where a value is missing. Staleness columns
are seconds since the modality's last message (NaN: never seen). Changing this layout is a model
interface change: bump ``FEATURE_VERSION`` and the Triton model version together.
"""

from __future__ import annotations

import numpy as np

FEATURE_VERSION = 1

FEATURE_NAMES: tuple[str, ...] = (
    "hr",
    "spo2",
    "rr",
    "sbp",
    "map",
    "temp",
    "o2_supplement",
    "altered_mentation",
    "lactate",
    "wbc",
    "creatinine",
    "platelets",
    "bilirubin",
    "ecg_hr",
    "ppg_pr",
    "stale_vitals_s",
    "stale_labs_s",
    "stale_waveforms_s",
    "stale_cxr_s",
)
INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}
N_FEATURES = len(FEATURE_NAMES)


def empty(n: int = 1) -> np.ndarray:
    return np.full((n, N_FEATURES), np.nan, dtype=np.float32)


def column(x: np.ndarray, name: str) -> np.ndarray:
    return x[:, INDEX[name]]
