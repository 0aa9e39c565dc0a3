"""The distilled early-exit student: early exit, calibration buffers, distillation, save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fusion_toy import toy_cohort
from sklearn.metrics import roc_auc_score

from icuwatch.fusion import model_store
from icuwatch.fusion.cohorts.base import gather
from icuwatch.fusion.distill import DistillConfig, choose_exit_thresholds, distill, simulate_exits
from icuwatch.fusion.strategies import DEFAULTS, build
from icuwatch.fusion.strategies.base import InputSpec, to_tensors
from icuwatch.fusion.strategies.student import EarlyExitStudent
from icuwatch.fusion.training import TrainConfig, predict_logits, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort():
    return toy_cohort(n_groups=80)


def _student(cohort) -> EarlyExitStudent:
    torch.manual_seed(0)
    d = DEFAULTS["student"]
    spec = InputSpec(
        cohort=cohort.name, modalities=cohort.modalities, dims=cohort.dims(), d_model=d["d_model"], options=d["options"]
    )
    return build("student", spec).eval()


def _batch(cohort, n=128):
    return to_tensors(gather(cohort, np.arange(n)))


def _conf(z: torch.Tensor, t: float) -> torch.Tensor:
    return torch.sigmoid(z.abs() / t)


@torch.no_grad()
def test_never_confident_is_the_full_student(cohort):
    model = _student(cohort)
    batch = _batch(cohort)
    full = model(batch)
    assert model.exit_logits.shape == (128, 3)
    assert torch.equal(model.exit_logits[:, -1], full)
    logits, where = model.forward_early_exit(batch, [1.0, 1.0])
    assert torch.equal(logits, full)
    assert (where == 2).all()
    logits, where = model.forward_early_exit(batch)  # untrained buffers: thresholds 1.0
    assert torch.equal(logits, full) and (where == 2).all()


@torch.no_grad()
def test_always_confident_answers_everyone_at_the_first_exit(cohort):
    model = _student(cohort)
    batch = _batch(cohort)
    model(batch)
    first = model.exit_logits[:, 0].clone()
    logits, where = model.forward_early_exit(batch, [0.5, 0.5])
    assert (where == 0).all()
    assert torch.equal(logits, first)


@torch.no_grad()
def test_rows_that_leave_never_run_deeper_blocks(cohort):
    model = _student(cohort)
    model.set_exits(temperatures=[2.0, 1.5, 1.0])
    batch = _batch(cohort)
    model(batch)
    z = model.exit_logits.clone()
    thr0 = float(_conf(z[:, 0], 2.0).median())  # about half the rows leave at exit 0
    thr1 = float(_conf(z[:, 1], 1.5).median())
    seen = []
    hooks = [
        block.register_forward_hook(lambda mod, inp, out, k=k: seen.append((k, len(inp[0]))))
        for k, block in enumerate(model.blocks)
    ]
    try:
        logits, where = model.forward_early_exit(batch, [thr0, thr1])
    finally:
        for h in hooks:
            h.remove()
    uncertain0 = int((where >= 1).sum())
    assert 0 < int((where == 1).sum()) and 0 < int((where == 2).sum()) and 0 < uncertain0 < 128
    assert seen == [(0, 128), (1, uncertain0), (2, int((where == 2).sum()))]
    # exit 0 ran on every row, so its decisions are exact; later exits' answers match the full pass
    assert torch.equal(where == 0, _conf(z[:, 0], 2.0) >= thr0)
    torch.testing.assert_close(logits[where == 0], z[where == 0, 0], rtol=0, atol=0)
    for k in (1, 2):
        torch.testing.assert_close(logits[where == k], z[where == k, k], rtol=1e-5, atol=1e-5)
    assert (_conf(logits[where == 1], 1.5) >= thr1).all()
    # calibrated(): each row's logit over its own exit's temperature
    torch.testing.assert_close(model.calibrated(logits, where), logits / torch.tensor([2.0, 1.5, 1.0])[where])


def test_exit_threshold_search_lets_confident_rows_leave_within_the_tolerance():
    rng = np.random.default_rng(0)
    n = 4000
    y = (rng.random(n) < 0.3).astype(float)
    last = 2.0 * (2 * y - 1) + rng.normal(scale=2.0, size=n)
    sure = rng.random(n) < 0.5  # exit 0 knows half the rows as well as the last exit, the rest not at all
    z0 = np.where(sure, last, rng.normal(scale=0.1, size=n))
    z = np.stack([z0, last, last], axis=1).astype(np.float32)
    temps = [1.0, 1.0, 1.0]
    thresholds = choose_exit_thresholds(z, temps, y, tolerance=0.002, grid=100)
    assert len(thresholds) == 2 and all(0.5 <= t <= 1.0 for t in thresholds)
    where, p = simulate_exits(z, temps, thresholds)
    full = roc_auc_score(y, z[:, -1])
    assert roc_auc_score(y, p) >= full * (1 - 0.002)
    assert (where == 0).mean() > 0.2  # the confident half of exit 0 is used
    assert thresholds[0] < 1.0
    # everyone leaving at exit 0 would break the tolerance: the search had something to decide
    everyone = simulate_exits(z, temps, [0.5, 1.0])[1]
    assert roc_auc_score(y, everyone) < full * (1 - 0.002)


@pytest.fixture(scope="module")
def distilled(cohort, tmp_path_factory):
    teacher, teacher_card = train(
        "attention",
        cohort,
        TrainConfig(epochs=2, rows_per_epoch=4000, batch_size=64, threads=1, modality_dropout=0.3),
        progress=False,
    )
    teacher_dir = model_store.save(teacher, teacher_card, tmp_path_factory.mktemp("models") / teacher_card["model"])
    cfg = DistillConfig(
        epochs=5, rows_per_epoch=4000, batch_size=64, threads=1, modality_dropout=0.3, temperature=2.0, alpha=0.6
    )
    student, card = distill(teacher_dir, cohort, cfg, progress=False)
    return student, card


def test_distilled_student_scores_and_has_a_card(distilled, cohort):
    student, card = distilled
    test = cohort.rows("test")
    assert roc_auc_score(cohort.y[test], predict_logits(student, cohort, test)) > 0.7
    with torch.no_grad():
        logits, where = student.forward_early_exit(to_tensors(gather(cohort, test)))
    assert roc_auc_score(cohort.y[test], student.calibrated(logits, where).numpy()) > 0.7
    assert card["model"] == "student-toy" and card["strategy"] == "student"
    assert card["teacher"]["model"] == "attention-toy" and card["teacher"]["parameters"] > card["parameters"]
    assert card["distillation"]["temperature"] == 2.0 and card["distillation"]["alpha"] == 0.6
    assert [h["epoch"] for h in card["history"]] == [1, 2, 3, 4, 5]
    assert len(card["history"][0]["val_auroc_exits"]) == 3
    assert len(card["exit_thresholds"]) == 2 and all(0.5 <= t <= 1.0 for t in card["exit_thresholds"])
    assert len(card["exit_shares"]) == 3 and math.isclose(sum(card["exit_shares"]), 1.0, abs_tol=1e-3)
    assert len(card["exit_temperatures"]) == 3 and all(t > 0 for t in card["exit_temperatures"])
    assert card["temperature"] == card["exit_temperatures"][-1] and 0 < card["threshold"] < 1
    assert card["val"]["early_exit_auroc"] >= card["val"]["auroc_exits"][-1] * (1 - 0.002) - 1e-4
    # the buffers are what the card says
    np.testing.assert_allclose(student.exit_temperatures.numpy(), card["exit_temperatures"], rtol=1e-6)
    np.testing.assert_allclose(student.exit_thresholds.numpy(), card["exit_thresholds"], rtol=1e-6)


def test_save_load_keeps_exit_calibration_and_early_exit_outputs(distilled, cohort, tmp_path):
    student, card = distilled
    loaded = model_store.load(model_store.save(student, card, tmp_path / card["model"]))
    assert isinstance(loaded.model, EarlyExitStudent)
    torch.testing.assert_close(loaded.model.exit_temperatures, student.exit_temperatures, rtol=0, atol=0)
    torch.testing.assert_close(loaded.model.exit_thresholds, student.exit_thresholds, rtol=0, atol=0)
    assert loaded.temperature == card["temperature"] and loaded.threshold == card["threshold"]
    batch = to_tensors(gather(cohort, cohort.rows("test")))
    with torch.no_grad():
        student(batch)
        mid = [float(_conf(student.exit_logits[:, k], float(student.exit_temperatures[k])).median()) for k in range(2)]
        for thresholds in (None, mid):  # the saved thresholds, and ones where every exit answers some rows
            before = student.forward_early_exit(batch, thresholds)
            after = loaded.model.forward_early_exit(batch, thresholds)
            assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
        assert set(after[1].tolist()) == {0, 1, 2}


def test_distill_refuses_a_teacher_built_for_other_inputs(cohort):
    other = toy_cohort(n_groups=6, rows_per_group=4, imaging=True)
    spec = InputSpec(
        cohort=other.name, modalities=other.modalities, dims=other.dims(), d_model=8, options={"layers": 1, "heads": 2}
    )
    with pytest.raises(ValueError, match="other inputs"):
        distill(build("attention", spec), cohort, DistillConfig(epochs=1, threads=1), progress=False)
