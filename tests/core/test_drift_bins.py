"""``core/drift.py``: the fixed bins and PSI the drift guards share."""

from __future__ import annotations

import numpy as np
import pytest

from icuwatch.core import drift
from icuwatch.core import features as F


def test_values_outside_a_range_fall_into_its_end_bins_and_missing_is_counted_last():
    counts = drift.bin_counts("creatinine", np.array([0.3, 0.6, 88.4, -3.0, np.nan]))
    assert len(counts) == len(drift.BIN_EDGES["creatinine"])  # bins + the missing slot
    assert counts[0] == 3 and counts[-2] == 1 and counts[-1] == 1  # 0.3, 0.6, -3 | 88.4 | NaN


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    a = drift.bin_counts("spo2", rng.normal(96, 2, 2000))[:-1]
    b = drift.bin_counts("spo2", rng.normal(96, 2, 2000))[:-1]
    shifted = drift.bin_counts("spo2", rng.normal(90, 2, 2000))[:-1]
    assert drift.psi(a, b) < 0.02
    assert drift.psi(a, shifted) > drift.PSI_FLAG
    assert drift.psi([0] * 5, [0] * 5) == pytest.approx(0.0)  # smoothed: empty histograms are not infinite


def test_row_counts_covers_every_value_column_and_modality_presence():
    x = F.empty(3)
    x[:, F.INDEX["hr"]] = [80, 90, 200]
    x[:, F.INDEX["stale_vitals_s"]] = [5, 30, 4000]  # the last one: vitals absent (> 600 s)
    x[:, F.INDEX["stale_cxr_s"]] = [3600, np.nan, 10 * 86400]
    counts = drift.row_counts(x)
    assert set(drift.DRIFT_FEATURES) <= set(counts)
    assert sum(counts["hr"][:-1]) == 3 and counts["spo2"][-1] == 3
    assert counts["present:vitals"] == [1, 2] and counts["present:cxr"] == [2, 1]
