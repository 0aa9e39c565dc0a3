"""``evaluate cv``: patient-level stratified folds, nothing chosen on the held-out fold, causal
leader features, and a small end-to-end run through the CLI on real PhysioNet stays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from icuwatch.fusion.baselines import leader_features
from icuwatch.fusion.evaluation import cv
from icuwatch.sources.physionet import LAB_COLUMNS, VITAL_COLUMNS, Stay, default_data_dir, list_stays, read_psv

DATA = default_data_dir()
needs_data = pytest.mark.skipif(
    not DATA.is_dir() or not list_stays(DATA, limit=1), reason=f"PhysioNet 2019 stays not found in {DATA}"
)


def _synthetic_cohort(n_stays: int = 90, seed: int = 0) -> cv.Cohort:
    """Stays of 20-40 hours, one in four septic from a random hour on; feature 0 carries the signal."""
    rng = np.random.default_rng(seed)
    xs, ys, lengths = [], [], []
    for i in range(n_stays):
        n = int(rng.integers(20, 41))
        y = np.zeros(n, dtype=np.int8)
        if i % 4 == 0:
            y[int(rng.integers(8, n - 2)) :] = 1
        x = rng.normal(size=(n, 6)).astype(np.float32)
        x[:, 0] += 1.5 * y + 0.5 * np.arange(n) / n
        xs.append(x)
        ys.append(y)
        lengths.append(n)
    return cv.Cohort([f"p{i:06d}" for i in range(n_stays)], np.concatenate(xs), np.concatenate(ys), np.array(lengths))


# ------------------------------------------------------------------------------------------ folds


def test_folds_are_stratified_deterministic_and_disjoint_sets_of_patients():
    septic = np.zeros(1003, dtype=bool)
    septic[np.random.default_rng(1).choice(1003, size=61, replace=False)] = True
    folds = cv.assign_folds(septic, 5, seed=7)
    np.testing.assert_array_equal(folds, cv.assign_folds(septic, 5, seed=7))
    assert not np.array_equal(folds, cv.assign_folds(septic, 5, seed=8))
    assert set(folds.tolist()) == set(range(5))
    septic_per_fold = np.bincount(folds[septic], minlength=5)
    stays_per_fold = np.bincount(folds, minlength=5)
    assert septic_per_fold.max() - septic_per_fold.min() <= 1
    assert stays_per_fold.max() - stays_per_fold.min() <= 1
    with pytest.raises(ValueError):
        cv.assign_folds(np.array([True, False, False, False]), 2, seed=0)


def test_every_row_of_a_stay_lands_in_its_patients_fold():
    cohort = _synthetic_cohort()
    folds = cv.assign_folds(cohort.septic, 3, seed=0)
    seen = np.zeros(len(cohort.y), dtype=int)
    for k in range(3):
        rows = cohort.rows(np.flatnonzero(folds == k))
        seen[rows] += 1
        stay_of_row = np.repeat(np.arange(len(cohort.lengths)), cohort.lengths)
        assert set(folds[stay_of_row[rows]].tolist()) == {k}
    assert (seen == 1).all()  # disjoint, and every row of the cohort held out exactly once


def test_inner_split_stays_inside_the_training_folds_and_is_stratified():
    cohort = _synthetic_cohort()
    septic = cohort.septic
    folds = cv.assign_folds(septic, 3, seed=0)
    train = np.flatnonzero(folds != 0)
    fit, val = cv.inner_split(train, septic, seed=3)
    assert set(fit) | set(val) == set(train) and not set(fit) & set(val)
    assert septic[val].sum() >= 1 and septic[fit].sum() >= 1
    np.testing.assert_array_equal(val, cv.inner_split(train, septic, seed=3)[1])


# ---------------------------------------------------------------------------- held-out isolation


@pytest.mark.parametrize(
    "model, options",
    [("lightgbm", {}), ("lightgbm", {"tune": True}), ("lightgbm", {"weights": "utility"}), ("gbt", {})],
)
def test_nothing_is_chosen_on_the_held_out_fold(model, options):
    """Poison the held-out fold (features noise, labels flipped): threshold, early stopping, the
    settings picked by --tune and the fitted model are unchanged; only the held-out fold's own
    scores move."""
    cohort = _synthetic_cohort()
    _, fit, _ = cv.model_spec(model)
    folds = cv.assign_folds(cohort.septic, 3, seed=0)
    train, test = np.flatnonzero(folds != 0), np.flatnonzero(folds == 0)
    clean, fitted = cv.run_fold(cohort, fit, train, test, seed=0, options=options)

    poisoned = cv.Cohort(cohort.patient_ids, cohort.x.copy(), cohort.y.copy(), cohort.lengths)
    rows = poisoned.rows(test)
    poisoned.x[rows] = np.random.default_rng(99).normal(scale=5.0, size=(len(rows), poisoned.x.shape[1]))
    poisoned.y[rows] = 1 - poisoned.y[rows]
    dirty, fitted_dirty = cv.run_fold(poisoned, fit, train, test, seed=0, options=options)

    assert dirty.threshold == clean.threshold
    assert dirty.inner_val_utility == clean.inner_val_utility
    assert dirty.info == clean.info  # best iteration and settings (lightgbm), iterations and stays used (gbt)
    if options.get("tune"):
        assert clean.info["tuned_over"] == 4 and "params" in clean.info
    probe = cohort.x[cohort.rows(train)]
    np.testing.assert_array_equal(fitted.predict(probe), fitted_dirty.predict(probe))
    assert not np.array_equal(dirty.test_scores, clean.test_scores)  # the poison did reach the held-out fold
    assert dirty.metrics["utility"] != clean.metrics["utility"]


# ------------------------------------------------------------------------------------ causality


def _random_stay(n: int = 60, seed: int = 0) -> Stay:
    rng = np.random.default_rng(seed)
    cols = tuple(VITAL_COLUMNS) + tuple(LAB_COLUMNS) + ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")
    values = rng.normal(loc=50, scale=30, size=(n, len(cols)))
    sparse = len(VITAL_COLUMNS)
    values[:, :sparse][rng.random((n, sparse)) < 0.3] = np.nan
    values[:, sparse : len(cols) - 5][rng.random((n, len(cols) - 5 - sparse)) < 0.9] = np.nan
    values[:, -5:] = [65, 1, 0, 1, -12.5]
    iculos = np.arange(1, n + 1, dtype=float)[:, None]
    return Stay("p000001", cols + ("ICULOS", "SepsisLabel"), np.hstack([values, iculos, np.zeros((n, 1))]))


@pytest.mark.parametrize("t", [0, 1, 5, 23, 24, 40])
def test_leader_features_at_hour_t_ignore_later_rows(t):
    stay = _random_stay()
    full = leader_features.stay_features(stay)
    assert full.shape == (len(stay.values), leader_features.N_FEATURES)
    truncated = leader_features.stay_features(Stay(stay.patient_id, stay.columns, stay.values[: t + 1]))
    np.testing.assert_array_equal(truncated, full[: t + 1])
    altered = stay.values.copy()
    later = np.random.default_rng(t).normal(loc=200, scale=80, size=altered[t + 1 :].shape)
    altered[t + 1 :] = np.where(np.random.default_rng(t + 1).random(later.shape) < 0.5, np.nan, later)
    changed = leader_features.stay_features(Stay(stay.patient_id, stay.columns, altered))
    np.testing.assert_array_equal(changed[: t + 1], full[: t + 1])


def test_leader_features_on_a_hand_made_stay():
    cols = ("HR", "SBP", "DBP", "BUN", "Creatinine", "ICULOS", "HospAdmTime")
    nan = np.nan
    hr = [nan, 80, 100, nan, 120]
    rows = [[hr[t], 100, 60, 20 if t == 2 else nan, 1.0 if t == 2 else nan, t + 1, -10] for t in range(5)]
    x = leader_features.stay_features(Stay("p000002", cols, np.array(rows, dtype=float)))
    f = {name: x[:, i] for i, name in enumerate(leader_features.FEATURE_NAMES)}
    np.testing.assert_array_equal(f["HR_last"], [nan, 80, 100, 100, 120])
    np.testing.assert_array_equal(f["HR_hours_since"], [leader_features.NEVER, 0, 0, 1, 0])
    np.testing.assert_array_equal(f["HR_count"], [0, 1, 2, 2, 3])
    np.testing.assert_allclose(f["HR_mean6h"], [nan, 80, 90, 90, 100])
    np.testing.assert_allclose(f["HR_slope1h"], [nan, nan, 20, 0, 20])
    np.testing.assert_allclose(f["shock_index"], [nan, 0.8, 1.0, 1.0, 1.2])
    np.testing.assert_allclose(f["bun_creatinine"], [nan, nan, 20, 20, 20])
    np.testing.assert_allclose(f["hospital_hours"], [11, 12, 13, 14, 15])
    np.testing.assert_allclose(f["pulse_pressure"], [40] * 5)


# ----------------------------------------------------------------------------------- end to end


@needs_data
def test_evaluate_cv_through_the_cli_prints_the_json_fields(tmp_path, capsys):
    """60 real stays (15 septic), 3 folds, both models through `icuwatch evaluate cv --json`."""
    from icuwatch.cli.main import main

    data = tmp_path / "stays"
    data.mkdir()
    septic = nonseptic = 0
    for path in list_stays(DATA):
        is_septic = bool(read_psv(path).labels.any())
        if (is_septic and septic < 15) or (not is_septic and nonseptic < 45):
            (data / path.name).symlink_to(path)
            septic += is_septic
            nonseptic += not is_septic
        if septic == 15 and nonseptic == 45:
            break
    out = tmp_path / "report"
    argv = ["evaluate", "cv", "--model", "lightgbm", "--folds", "3", "--data", str(data), "--out", str(out)]
    assert main([*argv, "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["data"]["stays"] == 60 and summary["data"]["septic_stays"] == 15
    assert len(summary["per_fold"]) == 3
    assert sum(f["test_stays"] for f in summary["per_fold"]) == 60
    assert [f["test_septic_stays"] for f in summary["per_fold"]] == [5, 5, 5]
    for metric in cv.METRICS:
        stats = summary["mean"][metric]
        assert set(stats) == {"mean", "sd", "ci95", "min", "max"}
    for f in summary["per_fold"]:
        for key in ("utility", "auroc", "auprc", "ece", "alerts_per_patient_day", "alerted_before_onset", "threshold"):
            assert f[key] is not None and np.isfinite(f[key]), key
        assert "median_lead_time_h" in f and f["fit"]["best_iteration"] >= 1
    assert (out / "report.md").read_text().startswith("# 3-fold cross-validation: lightgbm")
    assert json.loads((out / "summary.json").read_text())["per_fold"] == summary["per_fold"]
    assert (out / "utility_vs_threshold.png").stat().st_size > 1000

    assert main(["evaluate", "cv", "--model", "nope", "--data", str(data), "--out", str(out), "--quiet"]) == 2
