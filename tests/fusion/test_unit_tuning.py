"""A unit's own threshold from its recorded scores and outcomes (``fusion/unit_thresholds.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from icuwatch.core.errors import OperatorError
from icuwatch.fusion import unit_thresholds as tuning
from icuwatch.streams import alerting

T0 = 1_765_000_000.0
BASE = alerting.Thresholds(0.9, 0.54, confirm=2, clear=3, refractory_s=1800, realert_after_resolve_s=1800)


def ward(n_sick: int = 4, n_stable: int = 16, hours: int = 24, seed: int = 0):
    """Every 5 min a risk: stable patients around 0.1, sick ones rising to ~0.5 from their onset."""
    rng = np.random.default_rng(seed)
    scores, outcomes = {}, {}
    for i in range(n_sick + n_stable):
        pid = f"p{i}"
        onset = T0 + 3600 * (6 + 2 * i) if i < n_sick else None
        rows = []
        for k in range(hours * 12):
            t = T0 + 300 * k
            risk = 0.1 + rng.normal(0, 0.03)
            if onset is not None and t > onset - 3600:
                risk += min(0.4, (t - onset + 3600) / 36000)
            rows.append((t, float(np.clip(risk, 0, 1)), float(np.clip(risk, 0, 1)), "student_live"))
        scores[pid] = rows
        outcomes[pid] = {"onset_time": onset, "condition": "sepsis" if i % 2 == 0 and onset else "haemorrhage"}
    return scores, outcomes


def test_the_threshold_catches_the_most_deteriorations_within_the_alert_budget():
    scores, outcomes = ward()
    result = tuning.tune(scores, outcomes, "deterioration", BASE, max_per_day=0.5)
    assert result["model_threshold"]["caught"] == 0  # 0.9 is never reached here
    assert result["chosen"]["caught"] == 4 and result["chosen"]["sensitivity"] == 1.0
    assert result["chosen"]["episodes_per_patient_day"] <= 0.5
    assert 0.15 < result["chosen"]["threshold"] < 0.5


def test_sepsis_positives_are_the_septic_patients_only():
    scores, outcomes = ward()
    result = tuning.tune(scores, outcomes, "sepsis", BASE, max_per_day=0.5)
    assert result["positives"] == 2


def test_no_positive_or_no_threshold_within_budget_is_one_clear_error():
    scores, outcomes = ward(n_sick=0)
    with pytest.raises(OperatorError, match="no patient .* positive for deterioration"):
        tuning.tune(scores, outcomes, "deterioration", BASE, max_per_day=0.5)
    scores, outcomes = ward()
    with pytest.raises(OperatorError, match="no threshold catches any of the 4 positives"):
        tuning.tune(scores, outcomes, "deterioration", BASE, max_per_day=0.0)


def test_for_unit_replaces_on_and_keeps_the_off_ratio():
    base = {"deterioration": BASE, "sepsis": BASE}
    got = alerting.for_unit(base, {("MICU", "sepsis"): 0.3}, "MICU")
    assert got["sepsis"].on == 0.3 and got["sepsis"].off == pytest.approx(0.18) and got["deterioration"] is BASE
    assert alerting.for_unit(base, {("MICU", "sepsis"): 0.3}, "SICU") == base
    assert alerting.for_unit(base, {}, "MICU") is base
