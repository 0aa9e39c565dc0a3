"""``evaluate cv --model early|late|stacked|attention``: the fusion strategies trained per fold on the
PhysioNet fusion cohort, with nothing of the held-out fold reaching the fit (real PhysioNet stays)."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from icuwatch.fusion.cohorts import physionet
from icuwatch.fusion.cohorts.base import SPLIT_CODES
from icuwatch.fusion.evaluation import cv
from icuwatch.fusion.evaluation.cohort_rows import CohortRows, fold_cohort
from icuwatch.fusion.evaluation.cv_fusion import fit_fusion
from icuwatch.sources.physionet import default_data_dir, list_stays

DATA = default_data_dir()
pytestmark = pytest.mark.skipif(
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


def test_a_fold_cohort_holds_the_fit_and_inner_validation_rows_only(rows):
    fusion = rows.cohort
    fit, val = np.arange(0, 500), np.arange(800, 1000)
    fold, used = fold_cohort(fusion, fit, val)
    np.testing.assert_array_equal(used, np.r_[fit, val])
    assert len(fold) == 700
    assert (fold.split[:500] == SPLIT_CODES["train"]).all() and (fold.split[500:] == SPLIT_CODES["val"]).all()
    np.testing.assert_array_equal(fold.y, fusion.y[np.r_[fit, val]])


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
    assert np.isfinite(clean.test_scores).all() and ((clean.test_scores > 0) & (clean.test_scores < 1)).all()
    # the robustness check on the held-out fold: same model, 30 % of modalities dropped per stay
    assert 0.0 <= clean.metrics["auroc_missing_30"] <= 1.0
    assert clean.metrics["auroc_loss_missing_30"] == pytest.approx(
        clean.metrics["auroc"] - clean.metrics["auroc_missing_30"]
    )

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
