"""The fusion comparison's missingness draw and metrics, and fusion models in psv-predict."""

from __future__ import annotations

import numpy as np
import pytest

from icuwatch.fusion.evaluation.fusion_compare import keep_mask, row_metrics
from icuwatch.sources.physionet import default_data_dir, read_psv

DATA = default_data_dir()
needs_data = pytest.mark.skipif(not DATA.exists(), reason="PhysioNet 2019 data not present")


@pytest.mark.parametrize("rate", [0.3, 0.5])
def test_keep_mask_drops_about_rate_and_never_everything(rate):
    keep = keep_mask(20000, 4, rate, seed=0)
    assert keep.any(axis=1).all()
    dropped = 1 - keep.mean()
    assert rate * 0.85 < dropped <= rate + 0.01
    np.testing.assert_array_equal(keep, keep_mask(20000, 4, rate, seed=0))
    assert not np.array_equal(keep, keep_mask(20000, 4, rate, seed=1))


def test_keep_mask_keeps_a_modality_the_stay_has():
    available = np.zeros((5000, 3), dtype=bool)
    available[:, 1] = True  # every stay has only the second modality
    keep = keep_mask(5000, 3, 0.5, available=available)
    assert keep[:, 1].all()


def test_keep_mask_with_nothing_missing_keeps_all():
    assert keep_mask(100, 2, 0.0).all()


def test_row_metrics_perfect_and_useless_scores():
    y = [np.array([0, 0, 0, 1, 1]), np.zeros(6, dtype=int)]
    perfect = row_metrics(y, [a.astype(float) for a in y], threshold=0.5)
    assert perfect["auroc"] == 1.0 and perfect["auprc"] == pytest.approx(1.0)
    never = row_metrics(y, [np.zeros(5), np.zeros(6)], threshold=0.5)
    assert never["utility"] == pytest.approx(0.0)  # normalized utility of never alarming
    assert never["sensitivity"] == 0.0


@needs_data
def test_psv_predict_scores_a_stay_like_the_cohort_rows(tmp_path):
    """psv-predict --model attention reads a raw .psv stay and gives the same probabilities as the
    cohort rows the model was evaluated on."""
    from icuwatch.fusion import model_store
    from icuwatch.fusion.cohorts import physionet
    from icuwatch.fusion.psv_predict import FusionStayPredictor, predict_dir
    from icuwatch.fusion.training import TrainConfig, predict_logits, train

    cohort = physionet.build(limit=150, progress=False)
    model, card = train(
        "attention", cohort, TrainConfig(epochs=1, rows_per_epoch=1024, batch_size=128, threads=1), progress=False
    )
    directory = model_store.save(model, card, tmp_path / "attention-physionet")
    predictor = FusionStayPredictor(directory)
    g = int(cohort.group[cohort.rows("test")][0])
    rows = np.flatnonzero(cohort.group == g)
    stay = read_psv(DATA / f"{cohort.group_ids[g]}.psv")
    expected = predictor.trained.probabilities(predict_logits(model, cohort, rows))
    np.testing.assert_allclose(predictor.predict_stay(stay), expected, rtol=1e-4, atol=1e-6)

    stay_dir = tmp_path / "in"
    stay_dir.mkdir()
    (stay_dir / f"{stay.patient_id}.psv").symlink_to(DATA / f"{stay.patient_id}.psv")
    assert predict_dir(stay_dir, tmp_path / "out", model="attention", model_dir=directory, progress=False) == 1
    lines = (tmp_path / "out" / f"{stay.patient_id}.psv").read_text().splitlines()
    assert lines[0] == "PredictedProbability|PredictedLabel" and len(lines) == len(stay.values) + 1
