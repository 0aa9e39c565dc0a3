"""``evaluate cv --model teacher_live``: the live student's teacher cross-validated on the live cohort,
with nothing of the held-out fold reaching its trees (small live cohort of real PhysioNet stays and
simulated patients)."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from icuwatch.fusion.cohorts import live, physionet, sim
from icuwatch.fusion.evaluation import cv
from icuwatch.fusion.evaluation.cohort_rows import CohortRows
from icuwatch.fusion.evaluation.cv_student import fit_live_teacher
from icuwatch.sources.physionet import default_data_dir

pytestmark = pytest.mark.skipif(not default_data_dir().is_dir(), reason="no PhysioNet stays")


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> CohortRows:
    pn = physionet.load_or_build(cache_dir=tmp_path_factory.mktemp("cache"), limit=150, progress=False)
    cohort = live.build(pn, sim.build(n_patients=40, hours=12, seed=3, progress=False))
    return CohortRows(cohort, n_groups=int(cohort.meta["first_sim_group"]))


def test_the_held_out_fold_cannot_reach_the_live_teacher(rows):
    fused = rows.cohort
    x = np.concatenate([np.arange(s, s + n, dtype=np.float64) for s, n in rows.rows_of.values()])[:, None]
    lengths = np.array([n for _, n in rows.rows_of.values()])
    cohort = cv.Cohort(list(rows.rows_of), x, fused.y[x[:, 0].astype(np.int64)], lengths)
    folds = cv.assign_folds(cohort.septic, 3, seed=0)
    train, test = np.flatnonzero(folds != 0), np.flatnonzero(folds == 0)
    fit = partial(fit_live_teacher, rows)
    clean, fitted = cv.run_fold(cohort, fit, train, test, seed=0)
    assert clean.info["teacher"]["sepsis"]["fit_rows"] > 0 and len(clean.info["teacher"]["sepsis"]["rounds"]) == 3

    held = x[cohort.rows(test), 0].astype(np.int64)
    saved = {"y": fused.y[held].copy(), "vitals": fused.inputs["vitals"][held].copy()}
    try:
        fused.y[held] = 1 - fused.y[held]
        fused.inputs["vitals"][held] = np.random.default_rng(9).normal(scale=3.0, size=saved["vitals"].shape)
        poisoned = cv.Cohort(cohort.patient_ids, x, fused.y[x[:, 0].astype(np.int64)], lengths)
        dirty, fitted_dirty = cv.run_fold(poisoned, fit, train, test, seed=0)
    finally:
        fused.y[held] = saved["y"]
        fused.inputs["vitals"][held] = saved["vitals"]

    untimed = lambda info: {**info, "teacher": {k: v for k, v in info["teacher"].items() if k != "fit_s"}}  # noqa: E731
    assert dirty.threshold == clean.threshold and untimed(dirty.info) == untimed(clean.info)
    probe = x[cohort.rows(train)]
    np.testing.assert_array_equal(fitted.predict(probe), fitted_dirty.predict(probe))
    assert not np.allclose(dirty.test_scores, clean.test_scores)
