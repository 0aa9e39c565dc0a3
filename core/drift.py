"""Input drift, the shared arithmetic: fixed histogram bins per feature-row column and the
population stability index (PSI) between two histograms.

The worker counts each score's feature row into these bins per unit and event-time hour
(``streams/drift.py``); the drift report (``storage/drift_report.py``) adds the hours of a
reference window and of the current one and compares them. Fixed, physiological bins (not
quantiles of a reference) so that any two windows, units or workers can be added and compared;
values outside a range fall into its end bins (a lab reported ×88 lands in the top one); a missing
value has its own slot, so a feed that stops shows as a change in the missing share, not in PSI.
"""

from __future__ import annotations

import numpy as np

from icuwatch.core import features

BIN_EDGES: dict[str, np.ndarray] = {
    "hr": np.linspace(0, 250, 26),
    "spo2": np.linspace(50, 100, 21),
    "rr": np.linspace(0, 60, 21),
    "sbp": np.linspace(40, 240, 21),
    "map": np.linspace(20, 180, 21),
    "temp": np.linspace(32, 42, 21),
    "o2_supplement": np.array([0.0, 0.5, 1.0]),
    "altered_mentation": np.array([0.0, 0.5, 1.0]),
    "lactate": np.linspace(0, 20, 21),
    "wbc": np.linspace(0, 50, 21),
    "creatinine": np.linspace(0, 15, 21),
    "platelets": np.linspace(0, 1000, 21),
    "bilirubin": np.linspace(0, 30, 21),
    "ecg_hr": np.linspace(0, 250, 26),
    "ppg_pr": np.linspace(0, 250, 26),
}
"""Per value column of the feature row (``core.features``): bin edges; the staleness columns are
counted as modality presence instead (:data:`PRESENT_WITHIN_S`)."""
DRIFT_FEATURES: tuple[str, ...] = tuple(BIN_EDGES)

PRESENT_WITHIN_S: dict[str, float] = {"vitals": 600.0, "waveforms": 600.0, "labs": 86400.0, "cxr": 3 * 86400.0}
"""A modality counts as present at a score when its last message is at most this old (seconds):
vitals and waveforms stream, labs come daily, X-rays every few days."""

PSI_FLAG = 0.25
"""PSI at or above this is flagged (the usual reading: < 0.1 stable, 0.1-0.25 moderate, >= 0.25 major)."""
MISSING_SHARE_FLAG = 0.2
"""A change of the missing (or absent-modality) share by at least this much is flagged."""
MIN_COUNT = 30
"""Fewer values than this in either window: no flag (too few to tell)."""


def bin_counts(name: str, values: np.ndarray) -> list[int]:
    """Counts of ``values`` in the bins of column ``name``, the missing (NaN) count last."""
    values = np.asarray(values, dtype=np.float64)
    edges = BIN_EDGES[name]
    finite = values[np.isfinite(values)]
    which = np.clip(np.searchsorted(edges, finite, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(which, minlength=len(edges) - 1)
    return [int(c) for c in counts] + [int(len(values) - len(finite))]


def row_counts(x: np.ndarray) -> dict[str, list[int]]:
    """Per drift column, :func:`bin_counts` of the rows of a feature matrix; per modality (key
    ``present:<modality>``), [absent, present] from its staleness column."""
    out = {name: bin_counts(name, x[:, features.INDEX[name]]) for name in DRIFT_FEATURES}
    for modality, limit in PRESENT_WITHIN_S.items():
        stale = x[:, features.INDEX[f"stale_{modality}_s"]].astype(np.float64)
        present = int(np.sum(np.isfinite(stale) & (stale <= limit)))
        out[f"present:{modality}"] = [len(x) - present, present]
    return out


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index of two histograms (counts over the same bins), each smoothed by
    half a count per bin so an empty bin does not make it infinite."""
    ref = np.asarray(reference, dtype=np.float64) + 0.5
    cur = np.asarray(current, dtype=np.float64) + 0.5
    p, q = ref / ref.sum(), cur / cur.sum()
    return float(np.sum((q - p) * np.log(q / p)))
