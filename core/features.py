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


MODALITIES: tuple[str, ...] = ("vitals", "waveforms", "labs", "cxr")
"""The patient's data modalities (``streams.patient_state`` uses the same tuple)."""

MODALITY_FEATURES: dict[str, tuple[str, ...]] = {
    "vitals": ("hr", "spo2", "rr", "sbp", "map", "temp", "o2_supplement", "altered_mentation"),
    "waveforms": ("ecg_hr", "ppg_pr"),
    "labs": ("lactate", "wbc", "creatinine", "platelets", "bilirubin"),
    "cxr": (),
}
"""The value columns of each modality: what leave-one-modality-out blanks (set to NaN). The
staleness columns are left as they are. No column comes from the chest X-ray yet, so a model over
this row gets nothing from it (its contribution is 0)."""

CONTRIBUTION_RISKS: tuple[str, ...] = ("deterioration", "sepsis")
"""The risks a score explains, in the order of the contributions' axis 1 (the alert kinds)."""

CONTRIBUTIONS_OUTPUT = "CONTRIBUTIONS"
CONTRIBUTIONS_SHAPE = (len(CONTRIBUTION_RISKS), len(MODALITIES))
"""Per-modality contributions, the one layout every scorer uses: a ``float32`` array
``[batch, 2, 4]`` (Triton output ``CONTRIBUTIONS``, dims ``[2, 4]``) where ``[i, r, m]`` is the
contribution of modality ``MODALITIES[m]`` to risk ``CONTRIBUTION_RISKS[r]`` of row ``i``. For the
rule model it is the leave-one-modality-out delta: the risk with every feature minus the risk with
that modality's columns (``MODALITY_FEATURES``) blanked; positive means the modality's data raised
the risk. A learned model may put attention weights there instead. On the wire and in the database
it becomes ``{risk: {modality: float}}`` (:func:`contributions_as_dicts`)."""


def contributions_as_dicts(c: np.ndarray, decimals: int = 6) -> list[dict[str, dict[str, float]] | None]:
    """A ``[batch, 2, 4]`` contributions array as one ``{risk: {modality: value}}`` per row.

    A row with a value that is not finite or outside [-1, 1] (no risk difference or attention
    weight can be) gives None: a score goes out without an explanation rather than not at all."""
    c = np.asarray(c, dtype=np.float64)
    if c.ndim != 3 or c.shape[1:] != CONTRIBUTIONS_SHAPE:
        raise ValueError(
            f"contributions must be [batch, {CONTRIBUTIONS_SHAPE[0]}, {CONTRIBUTIONS_SHAPE[1]}], got {list(c.shape)}"
        )
    with np.errstate(invalid="ignore"):
        ok = (np.isfinite(c) & (np.abs(c) <= 1.0)).all(axis=(1, 2))
    c = np.round(np.nan_to_num(c), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return [
        {risk: {m: float(row[r, j]) for j, m in enumerate(MODALITIES)} for r, risk in enumerate(CONTRIBUTION_RISKS)}
        if good
        else None
        for row, good in zip(c, ok)
    ]


def empty(n: int = 1) -> np.ndarray:
    return np.full((n, N_FEATURES), np.nan, dtype=np.float32)


def column(x: np.ndarray, name: str) -> np.ndarray:
    return x[:, INDEX[name]]
