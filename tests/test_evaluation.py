"""Evaluation: the challenge utility (hand-worked cases), metrics, plots and the report."""

from __future__ import annotations

import numpy as np
import pytest

from icuwatch.fusion.evaluation.utility import (
    best_predictions,
    cohort_utilities,
    normalized_utility,
    patient_utility,
    row_utilities,
    sepsis_time,
)


def septic(n: int, first_label: int) -> np.ndarray:
    labels = np.zeros(n, dtype=int)
    labels[first_label:] = 1
    return labels


def ones_at(n: int, rows) -> np.ndarray:
    pred = np.zeros(n, dtype=int)
    pred[list(rows)] = 1
    return pred


# ---------------------------------------------------------------- utility, worked by hand
#
# Default parameters: dt_early -12, dt_optimal -6, dt_late 3, max_u_tp 1, min_u_fn -2, u_fp -0.05.
# With d = t - t_sepsis:
#   positive: d < -12 -> -0.05;  -12..-6 -> (d + 12) / 6  (0, 1/6, ..., 1);  -6..3 -> (3 - d) / 9 (1 ... 0)
#   negative: d <= -6 -> 0;       -6..3 -> -2 (d + 6) / 9  (0, -2/9, ..., -2)
#   d > 3: 0.
#
# Reference patient A: 20 rows, first label at row 8 -> t_sepsis = 14, window rows 2..17 (d = -12..3).
#   best     = sum_{d=-12..-6} (d+12)/6 + sum_{d=-5..3} (3-d)/9 = 21/6 + 36/9 = 3.5 + 4 = 7.5
#   inaction = sum_{d=-5..3} -2(d+6)/9 = -(2+4+...+18)/9 = -90/9 = -10

A = septic(20, 8)


def test_t_sepsis_is_first_label_plus_six():
    assert sepsis_time(A) == 14
    assert sepsis_time(np.zeros(5, dtype=int)) is None


def test_reference_patient_best_and_inaction_by_hand():
    assert patient_utility(A, best_predictions(A)) == pytest.approx(7.5)
    assert best_predictions(A).nonzero()[0].tolist() == list(range(2, 18))
    assert patient_utility(A, np.zeros(20, dtype=int)) == pytest.approx(-10.0)


def test_challenge_docstring_example():
    # evaluate_sepsis_score.py's own example: labels [0,0,0,0,1,1], predictions [0,0,1,1,1,1] -> 3.3888...
    # t_sepsis = 10; positives at d = -8, -7, -6, -5: 4/6 + 5/6 + 1 + 8/9 = 3.3888...
    assert patient_utility([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]) == pytest.approx(3.388888888888889)


def test_perfect_predictions_score_one():
    b = septic(30, 20)
    assert normalized_utility([A, b, np.zeros(9, dtype=int)],
                              [best_predictions(A), best_predictions(b), np.zeros(9, dtype=int)]) == pytest.approx(1.0)


def test_no_positive_predictions_score_zero():
    labels = [A, np.zeros(12, dtype=int)]
    assert normalized_utility(labels, [np.zeros(20, dtype=int), np.zeros(12, dtype=int)]) == pytest.approx(0.0)


def test_all_positive_on_non_septic_patient():
    # Every row is a false alarm: 10 x -0.05 = -0.5.
    assert patient_utility(np.zeros(10, dtype=int), np.ones(10, dtype=int)) == pytest.approx(-0.5)
    # Cohort: A predicted perfectly (7.5) + that non-septic patient (-0.5): observed 7.0, best 7.5,
    # inaction -10 -> (7.0 + 10) / (7.5 + 10) = 17 / 17.5.
    score = normalized_utility([A, np.zeros(10, dtype=int)], [best_predictions(A), np.ones(10, dtype=int)])
    assert score == pytest.approx(17.0 / 17.5)


def test_all_positive_on_septic_patient():
    # A, all 20 rows positive: rows 0,1 (d = -14, -13) are early alarms, -0.05 each; rows 2..17 the best
    # window (7.5); rows 18, 19 (d = 4, 5) are after dt_late and count 0. Observed 7.4.
    assert patient_utility(A, np.ones(20, dtype=int)) == pytest.approx(7.4)
    assert normalized_utility([A], [np.ones(20, dtype=int)]) == pytest.approx((7.4 + 10) / 17.5)


def test_septic_stay_shorter_than_t_sepsis_plus_dt_late():
    # 8 rows, first label at row 4 -> t_sepsis = 10, t_sepsis + dt_late = 13 > 7 (last row).
    # Rows 0..7 are d = -10..-3, all inside the window, so best predicts every row:
    #   best     = (2+3+4+5)/6 + 1 + (8+7+6)/9 = 14/6 + 1 + 21/9 = 17/3
    #   inaction = negatives at d = -5, -4, -3: -(2+4+6)/9 = -4/3
    # Predicting positive from row 5 (d = -5..-3): observed = 21/9 = 7/3
    #   normalized = (7/3 + 4/3) / (17/3 + 4/3) = 11/21
    labels = septic(8, 4)
    assert best_predictions(labels).tolist() == [1] * 8
    totals = cohort_utilities([labels], [ones_at(8, range(5, 8))])
    assert totals["best"] == pytest.approx(17 / 3)
    assert totals["inaction"] == pytest.approx(-4 / 3)
    assert totals["observed"] == pytest.approx(7 / 3)
    assert totals["normalized"] == pytest.approx(11 / 21)


def test_predictions_before_dt_early():
    # 24 rows, first label at row 14 -> t_sepsis = 20. Positives at rows 0..7 (d = -20..-13) are all
    # before dt_early: -0.05 each = -0.4, and every later row is a miss (inaction, -10):
    #   observed = -10.4, best 7.5 -> (-10.4 + 10) / 17.5 = -0.4 / 17.5
    labels = septic(24, 14)
    pred = ones_at(24, range(0, 8))
    assert patient_utility(labels, pred) == pytest.approx(-10.4)
    assert normalized_utility([labels], [pred]) == pytest.approx(-0.4 / 17.5)
    # Boundaries: exactly at dt_early (d = -12, row 8) a positive is worth 0, one row earlier -0.05.
    assert patient_utility(labels, ones_at(24, [8])) == pytest.approx(-10.0)
    assert patient_utility(labels, ones_at(24, [7])) == pytest.approx(-10.05)


def test_late_alarm_and_after_dt_late():
    # A, a single positive at t_sepsis (row 14, d = 0): it earns (3-0)/9 = 1/3 instead of the miss
    # -2*6/9 = -4/3, so observed = -10 + 4/3 + 1/3 = -25/3; normalized = (5/3) / 17.5 = 2/21.
    assert normalized_utility([A], [ones_at(20, [14])]) == pytest.approx(2 / 21)
    # Positives only after t_sepsis + dt_late (rows 18, 19) change nothing: 0.
    assert normalized_utility([A], [ones_at(20, [18, 19])]) == pytest.approx(0.0)


def test_row_utilities_match_patient_utility():
    rng = np.random.default_rng(0)
    u_pos, u_neg = row_utilities(A)
    for _ in range(20):
        pred = rng.integers(0, 2, size=20)
        assert patient_utility(A, pred) == pytest.approx(np.where(pred == 1, u_pos, u_neg).sum())


def test_utility_rejects_bad_input():
    with pytest.raises(ValueError):
        patient_utility([0, 1], [0])
    with pytest.raises(ValueError):
        patient_utility([0, 1], [0, 2])
    with pytest.raises(ValueError):
        normalized_utility([[0, 1]], [])
    assert np.isnan(normalized_utility([np.zeros(3, dtype=int)], [np.ones(3, dtype=int)]))
