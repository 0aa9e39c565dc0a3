"""``evaluate cv --model early|late|stacked|attention``: the fusion strategies trained per fold on the
PhysioNet fusion cohort, with nothing of the held-out fold reaching the fit (real PhysioNet stays)."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from icuwatch.fusion.cohorts import physionet
from icuwatch.fusion.cohorts.base import SPLIT_CODES, Cohort
from icuwatch.fusion.evaluation import cv
from icuwatch.fusion.evaluation.cohort_rows import CohortRows, fold_cohort
from icuwatch.fusion.evaluation.cv_fusion import fit_fusion
from icuwatch.sources.physionet import default_data_dir, list_stays

DATA = default_data_dir()
needs_data = pytest.mark.skipif(
    not DATA.is_dir() or not list_stays(DATA, limit=1), reason=f"PhysioNet 2019 stays not found in {DATA}"
)


@pytest.fixture(scope="module")
def rows() -> CohortRows:
    return CohortRows(physionet.build(limit=160, progress=False))


def _cv_cohort(rows: CohortRows) -> cv.Cohort:
    """``cv``'s view of the fusion cohort: per stay, its row numbers as the one feature."""
    fusion = rows.cohort
    ids = list(rows.rows_of)
    x = np.concatenate([np.arange(s, s + n, dtype=np.float64) for s, n in rows.rows_of.values()])[:, None]
    lengths = np.array([n for _, n in rows.rows_of.values()])
    return cv.Cohort(ids, x, fusion.y[x[:, 0].astype(np.int64)], lengths)


@needs_data
def test_a_fold_cohort_holds_the_fit_and_inner_validation_rows_only(rows):
    fusion = rows.cohort
    fit, val = np.arange(0, 500), np.arange(800, 1000)
    fold, used = fold_cohort(fusion, fit, val)
    np.testing.assert_array_equal(used, np.r_[fit, val])
    assert len(fold) == 700
    assert (fold.split[:500] == SPLIT_CODES["train"]).all() and (fold.split[500:] == SPLIT_CODES["val"]).all()
    np.testing.assert_array_equal(fold.y, fusion.y[np.r_[fit, val]])


@needs_data
def test_the_held_out_fold_cannot_reach_a_fusion_fit(rows):
    """Flip every label of the held-out stays and scramble their inputs: the fitted model answers the
    same on the training rows; only the held-out fold's scores and utility move."""
    cohort = _cv_cohort(rows)
    folds = cv.assign_folds(cohort.septic, 3, seed=0)
    train, test = np.flatnonzero(folds != 0), np.flatnonzero(folds == 0)
    fit = partial(fit_fusion, "late", rows)
    options = {"epochs": 2}
    clean, fitted = cv.run_fold(cohort, fit, train, test, seed=0, options=options)
    assert clean.info["strategy"] == "late" and clean.info["epochs"] == 2
    assert clean.info["rows"]["train"] + clean.info["rows"]["val"] == len(cohort.rows(train))
    assert np.isfinite(clean.test_scores).all() and ((clean.test_scores >= 0) & (clean.test_scores <= 1)).all()
    # the robustness check on the held-out fold: same model, a nominal 30 % of modalities dropped per stay
    assert 0.0 <= clean.metrics["auroc_missing_30"] <= 1.0
    assert clean.metrics["auroc_loss_missing_30"] == clean.metrics["auroc"] - clean.metrics["auroc_missing_30"]
    assert 0.0 < clean.metrics["dropped_modality_share_30"] <= 0.3  # a stay keeps one of its two

    fusion = rows.cohort
    held = cohort.x[cohort.rows(test), 0].astype(np.int64)
    saved = {"y": fusion.y[held].copy(), "vitals": fusion.inputs["vitals"][held].copy()}
    try:
        fusion.y[held] = 1 - fusion.y[held]
        fusion.inputs["vitals"][held] = np.random.default_rng(9).normal(scale=3.0, size=saved["vitals"].shape)
        poisoned = cv.Cohort(cohort.patient_ids, cohort.x, fusion.y[cohort.x[:, 0].astype(np.int64)], cohort.lengths)
        dirty, fitted_dirty = cv.run_fold(poisoned, fit, train, test, seed=0, options=options)
    finally:
        fusion.y[held] = saved["y"]
        fusion.inputs["vitals"][held] = saved["vitals"]

    assert dirty.threshold == clean.threshold
    untimed = lambda info: {k: v for k, v in info.items() if k != "fit_s"}  # noqa: E731
    assert untimed(dirty.info) == untimed(clean.info)  # best epoch, temperature, inner-validation AUROC
    probe = cohort.x[cohort.rows(train)]
    np.testing.assert_allclose(fitted.predict(probe), fitted_dirty.predict(probe), rtol=0, atol=1e-6)
    assert not np.allclose(dirty.test_scores, clean.test_scores)


def test_every_fusion_strategy_of_the_physionet_cohort_is_a_cv_model():
    from icuwatch.fusion.evaluation.cv_fusion import STRATEGIES
    from icuwatch.fusion.strategies import STRATEGIES as ALL

    assert set(STRATEGIES) == set(cv.FUSION_STRATEGIES) <= set(cv.MODELS)
    assert set(ALL) - set(STRATEGIES) == {"joint_embedding"}  # X-ray and report only: no PhysioNet cohort


def _mixed_cohort() -> Cohort:
    """Three "PhysioNet" stays (groups 0-2, 4/3/5 rows) then two simulated patients (3/2 rows)."""
    group = np.repeat(np.arange(5, dtype=np.int32), [4, 3, 5, 3, 2])
    n = len(group)
    return Cohort(
        name="mixed",
        modalities=("vitals",),
        inputs={"static": np.arange(n, dtype=np.float32)[:, None]},
        present=np.ones((n, 1), bool),
        staleness_h=np.zeros((n, 1), np.float32),
        y=np.zeros(n, np.int8),
        group=group,
        hour=np.zeros(n, np.float32),
        split=np.array([SPLIT_CODES["test"]] * 12 + [SPLIT_CODES["train"]] * 3 + [SPLIT_CODES["test"]] * 2, np.uint8),
        group_ids=["p000001", "p000002", "p000003", "sim-1", "sim-2"],
    )


def test_cohort_rows_number_the_stays_only_and_a_fold_keeps_the_simulated_rows_it_is_given():
    mixed = _mixed_cohort()
    rows = CohortRows(mixed, n_groups=3)
    assert rows.rows_of == {"p000001": (0, 4), "p000002": (4, 3), "p000003": (7, 5)}
    fit, val = np.arange(7, 12), np.arange(0, 4)  # stay 3 fits, stay 1 validates, stay 2 is held out
    keep = np.flatnonzero(mixed.group >= 3)[mixed.split[mixed.group >= 3] != SPLIT_CODES["test"]]
    fold, used = fold_cohort(mixed, fit, val, keep=keep)
    np.testing.assert_array_equal(used, np.r_[0:4, 7:12, 12:15])
    np.testing.assert_array_equal(fold.inputs["static"][:, 0], used)  # rows in cohort order, held-out stay gone
    assert list(fold.split) == [SPLIT_CODES["val"]] * 4 + [SPLIT_CODES["train"]] * 5 + [SPLIT_CODES["train"]] * 3
