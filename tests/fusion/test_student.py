"""The distilled early-exit student: the exit rule (distance of the calibrated logit from the alert
threshold), calibration buffers, distillation, choosing the margins on VAL, save/load (old students too)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from fusion_toy import toy_cohort
from sklearn.metrics import roc_auc_score

from icuwatch.fusion import model_store
from icuwatch.fusion.cohorts.base import gather
from icuwatch.fusion.distill import (
    DistillConfig,
    alert_agreement,
    choose_exit_margins,
    distill,
    predict_exit_logits,
    recalibrate_exits,
    simulate_exits,
)
from icuwatch.fusion.strategies import DEFAULTS, build
from icuwatch.fusion.strategies.base import InputSpec, to_tensors
from icuwatch.fusion.strategies.student import EarlyExitStudent, confidence_margins, logit
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


def _distance(z: torch.Tensor, t: float, center: float) -> torch.Tensor:
    """|calibrated logit - centre| in float32, as the rule computes it."""
    return (z / torch.tensor(t, dtype=torch.float32) - torch.tensor(center, dtype=torch.float32)).abs()


@torch.no_grad()
def test_untrained_margins_never_exit_early_and_give_the_full_student(cohort):
    model = _student(cohort)
    batch = _batch(cohort)
    full = model(batch)
    assert model.exit_logits.shape == (128, 3)
    assert torch.equal(model.exit_logits[:, -1], full)
    assert torch.isinf(model.exit_margins).all() and float(model.exit_center) == 0.0
    logits, where = model.forward_early_exit(batch)  # untrained buffers: margins inf
    assert torch.equal(logits, full) and (where == 2).all()
    logits, where = model.forward_early_exit(batch, [math.inf, math.inf])
    assert torch.equal(logits, full) and (where == 2).all()


@torch.no_grad()
def test_zero_margins_answer_everyone_at_the_first_exit(cohort):
    model = _student(cohort)
    batch = _batch(cohort)
    model(batch)
    first = model.exit_logits[:, 0].clone()
    logits, where = model.forward_early_exit(batch, [0.0, 0.0])
    assert (where == 0).all()
    assert torch.equal(logits, first)


@torch.no_grad()
def test_a_row_near_the_alert_threshold_goes_deeper_and_one_far_from_it_leaves(cohort):
    model = _student(cohort)
    model.set_exits(temperatures=[2.0, 1.5, 1.0])
    batch = _batch(cohort)
    model(batch)
    z0 = model.exit_logits[:, 0].clone()
    order = torch.argsort(z0 / 2.0)
    near, far = int(order[64]), int(order[-1])  # the median row, the row with the highest risk
    center = float(z0[near] / 2.0) + 1e-3  # the alert threshold sits right at the median row
    margin = float(_distance(z0[far], 2.0, center)) / 2  # the far row is twice the margin away
    model.set_exits(margins=[margin, math.inf], center=center)
    _, where = model.forward_early_exit(batch)
    assert int(where[near]) == 2, "a row at the alert threshold left early"
    assert int(where[far]) == 0, "a row far from the alert threshold went deeper"
    # the rule exactly: exit 0 where |z0 / T0 - centre| >= margin, else the last exit (exit 1 off)
    assert torch.equal(where == 0, _distance(z0, 2.0, center) >= margin)
    assert set(where.tolist()) == {0, 2}
    # the same rows with the threshold moved far away: everyone is settled at exit 0
    model.set_exits(center=center + 1e3)
    assert (model.forward_early_exit(batch)[1] == 0).all()


@torch.no_grad()
def test_rows_that_leave_never_run_deeper_blocks(cohort):
    model = _student(cohort)
    model.set_exits(temperatures=[2.0, 1.5, 1.0], center=0.2)
    batch = _batch(cohort)
    model(batch)
    z = model.exit_logits.clone()
    m0 = float(_distance(z[:, 0], 2.0, 0.2).median())  # about half the rows leave at exit 0
    m1 = float(_distance(z[:, 1], 1.5, 0.2).median())
    seen = []
    hooks = [
        block.register_forward_hook(lambda mod, inp, out, k=k: seen.append((k, len(inp[0]))))
        for k, block in enumerate(model.blocks)
    ]
    try:
        logits, where = model.forward_early_exit(batch, [m0, m1])
    finally:
        for h in hooks:
            h.remove()
    uncertain0 = int((where >= 1).sum())
    assert 0 < int((where == 1).sum()) and 0 < int((where == 2).sum()) and 0 < uncertain0 < 128
    assert seen == [(0, 128), (1, uncertain0), (2, int((where == 2).sum()))]
    # exit 0 ran on every row, so its decisions are exact; later exits' answers match the full pass
    assert torch.equal(where == 0, _distance(z[:, 0], 2.0, 0.2) >= m0)
    torch.testing.assert_close(logits[where == 0], z[where == 0, 0], rtol=0, atol=0)
    for k in (1, 2):
        torch.testing.assert_close(logits[where == k], z[where == k, k], rtol=1e-5, atol=1e-5)
    assert (_distance(logits[where == 1], 1.5, 0.2) >= m1).all()
    # calibrated(): each row's logit over its own exit's temperature
    torch.testing.assert_close(model.calibrated(logits, where), logits / torch.tensor([2.0, 1.5, 1.0])[where])
    # the numpy simulation (what distillation chooses margins with) answers the same exits
    sim_where, sim_p = simulate_exits(z.numpy(), [2.0, 1.5, 1.0], 0.2, [m0, m1])
    assert np.array_equal(sim_where, where.numpy())
    np.testing.assert_allclose(sim_p, torch.sigmoid(model.calibrated(logits, where)).numpy(), atol=1e-6)


def _rare_positives(n=20000, seed=0):
    """Exit logits of a 2 %-positive problem: the last exit separates well, exit 0 is the last exit
    plus noise (so near the alert threshold exit 0 often decides the other way)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.02).astype(float)
    last = -4.5 + 3.0 * y + rng.normal(scale=1.2, size=n)
    z0 = last + rng.normal(scale=0.6, size=n)
    z = np.stack([z0, last + rng.normal(scale=0.2, size=n), last], axis=1).astype(np.float32)
    return z, y


def test_margins_keep_the_alert_decisions_of_the_full_student_where_confidence_does_not():
    z, y = _rare_positives()
    temps = [1.0, 1.0, 1.0]
    op = float(np.quantile(1 / (1 + np.exp(-z[:, -1])), 0.9))  # alerts on the riskiest 10 % of rows
    center = logit(op)
    p_full = simulate_exits(z, temps, center, [math.inf, math.inf])[1]
    # the old question, max(p, 1 - p) >= 0.95, lets rows at the alert threshold (p ~ op < 0.05) leave
    _, p_conf = simulate_exits(z, temps, 0.0, confidence_margins([0.95, 0.95]))
    assert alert_agreement(p_conf, p_full, op) < 0.995
    # agreement alone (no AUROC limit): the smallest margins that keep 99.5 % of the decisions
    margins = choose_exit_margins(z, temps, center, y, agreement=0.995, tolerance=1.0, grid=50)
    where, p = simulate_exits(z, temps, center, margins)
    assert alert_agreement(p, p_full, op) >= 0.995
    assert (where == 0).mean() > 0.5  # most rows are far from the threshold and leave at once
    # a smaller margin at exit 0 would break the agreement: the search found the edge
    smaller = [margins[0] * 0.9, margins[1]]
    assert alert_agreement(simulate_exits(z, temps, center, smaller)[1], p_full, op) < 0.995
    # the rows that went deeper are the ones near the threshold
    d0 = np.abs(z[:, 0] - np.float32(center))
    assert d0[where > 0].max() < margins[0] <= d0[where == 0].min()
    # with the AUROC limit too: both hold, at margins no smaller
    both = choose_exit_margins(z, temps, center, y, agreement=0.995, tolerance=0.002, grid=50)
    p_both = simulate_exits(z, temps, center, both)[1]
    assert alert_agreement(p_both, p_full, op) >= 0.995
    assert roc_auc_score(y, p_both) >= roc_auc_score(y, p_full) * (1 - 0.002)
    assert both[0] >= margins[0]


def test_the_disagreement_budget_goes_where_it_saves_most_compute():
    z, y = _rare_positives(seed=1)
    temps, center = [1.0, 1.0, 1.0], -2.5
    greedy = choose_exit_margins(z, temps, center, y, agreement=0.995, grid=20)
    costs = [1.0, 5.0, 9.0]
    split = choose_exit_margins(z, temps, center, y, agreement=0.995, grid=20, costs=costs, budget_splits=6)
    p_full = simulate_exits(z, temps, center, [math.inf, math.inf])[1]
    op = 1 / (1 + math.exp(-center))
    for margins in (greedy, split):
        assert alert_agreement(simulate_exits(z, temps, center, margins)[1], p_full, op) >= 0.995

    def cost(margins):
        return float(np.mean(np.asarray(costs)[simulate_exits(z, temps, center, margins)[0]]))

    assert cost(split) <= cost(greedy) + 1e-9


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
    assert "exit_thresholds" not in card
    assert len(card["exit_margins"]) == 2 and all(m is None or m >= 0 for m in card["exit_margins"])
    assert card["exit_center"] == pytest.approx(logit(card["threshold"]))
    assert len(card["exit_shares"]) == 3 and math.isclose(sum(card["exit_shares"]), 1.0, abs_tol=1e-3)
    assert len(card["exit_temperatures"]) == 3 and all(t > 0 for t in card["exit_temperatures"])
    assert card["temperature"] == card["exit_temperatures"][-1] and 0 < card["threshold"] < 1
    assert card["val"]["early_exit_auroc"] >= card["val"]["auroc_exits"][-1] * (1 - 0.002) - 1e-4
    assert card["val"]["early_exit_alert_agreement"] >= 0.995
    # the buffers are what the card says
    np.testing.assert_allclose(student.exit_temperatures.numpy(), card["exit_temperatures"], rtol=1e-6)
    margins = [math.inf if m is None else m for m in card["exit_margins"]]
    np.testing.assert_allclose(student.exit_margins.numpy(), margins, rtol=1e-6)
    assert float(student.exit_center) == pytest.approx(card["exit_center"], rel=1e-6)


@torch.no_grad()
def test_distilled_early_exit_keeps_the_full_students_alerts_on_val(distilled, cohort):
    """Through the model itself (not the simulation the margins were chosen with): on the VAL rows
    the early-exit alert decisions equal the full student's on >= 99.5 % of rows."""
    student, card = distilled
    val = cohort.rows("val")
    batch = to_tensors(gather(cohort, val))
    logits, where = student.forward_early_exit(batch)
    p_early = torch.sigmoid(student.calibrated(logits, where)).numpy()
    p_full = torch.sigmoid(student(batch) / student.exit_temperatures[-1]).numpy()
    assert alert_agreement(p_early, p_full, card["threshold"]) >= 0.995
    assert len(val) == card["data"]["val_rows"]
    np.testing.assert_allclose(np.bincount(where.numpy(), minlength=3) / len(val), card["exit_shares"], atol=0.01)


def test_save_load_keeps_the_exit_rule_and_early_exit_outputs(distilled, cohort, tmp_path):
    student, card = distilled
    loaded = model_store.load(model_store.save(student, card, tmp_path / card["model"]))
    assert isinstance(loaded.model, EarlyExitStudent)
    torch.testing.assert_close(loaded.model.exit_temperatures, student.exit_temperatures, rtol=0, atol=0)
    torch.testing.assert_close(loaded.model.exit_margins, student.exit_margins, rtol=0, atol=0)
    torch.testing.assert_close(loaded.model.exit_center, student.exit_center, rtol=0, atol=0)
    assert loaded.temperature == card["temperature"] and loaded.threshold == card["threshold"]
    batch = to_tensors(gather(cohort, cohort.rows("test")))
    with torch.no_grad():
        student(batch)
        center = float(student.exit_center)
        mid = [
            float(_distance(student.exit_logits[:, k], float(student.exit_temperatures[k]), center).median())
            for k in range(2)
        ]
        for margins in (None, mid):  # the saved margins, and ones where every exit answers some rows
            before = student.forward_early_exit(batch, margins)
            after = loaded.model.forward_early_exit(batch, margins)
            assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
        assert set(after[1].tolist()) == {0, 1, 2}


def _between_rows(values: torch.Tensor, q: float) -> float:
    """A threshold at about quantile ``q`` of ``values`` halfway between two neighbouring rows (no row
    sits on it, where float rounding could put it on either side of either rule)."""
    v = torch.unique(values.double())
    i = min(max(int(q * len(v)), 0), len(v) - 2)
    return float((v[i] + v[i + 1]) / 2)


def _old_format_student(student, card, directory, thresholds):
    """``student`` saved as a student was before the exit centre and margins: confidence thresholds
    ``exit_thresholds`` in the state dict and the card."""
    state = {k: v for k, v in student.state_dict().items() if k not in ("exit_center", "exit_margins")}
    state["exit_thresholds"] = torch.tensor(thresholds, dtype=torch.float32)
    old_card = {k: v for k, v in card.items() if k not in ("exit_center", "exit_margins")}
    old_card["exit_thresholds"] = thresholds
    directory.mkdir(parents=True)
    torch.save(state, directory / model_store.WEIGHTS)
    (directory / model_store.CARD).write_text(json.dumps(old_card))
    return directory


@torch.no_grad()
def test_a_student_saved_with_the_old_confidence_thresholds_loads_and_answers_as_before(distilled, cohort, tmp_path):
    student, card = distilled
    batch = to_tensors(gather(cohort, cohort.rows("test")))
    student(batch)
    temps = student.exit_temperatures
    conf = [torch.sigmoid(student.exit_logits[:, k].abs() / temps[k]) for k in range(2)]
    thresholds = [_between_rows(conf[0], 0.5), _between_rows(conf[1], 0.3)]
    loaded = model_store.load(_old_format_student(student, card, tmp_path / "old", thresholds))
    assert float(loaded.model.exit_center) == 0.0
    np.testing.assert_allclose(loaded.model.exit_margins.numpy(), confidence_margins(thresholds), rtol=1e-6)
    logits, where = loaded.model.forward_early_exit(batch)
    # the old rule, by hand: the first early exit where max(p, 1 - p) >= threshold, else the last
    expected = torch.full_like(where, 2)
    for k in (1, 0):
        expected[conf[k] >= thresholds[k]] = k
    assert torch.equal(where, expected) and set(where.tolist()) == {0, 1, 2}
    torch.testing.assert_close(logits, student.exit_logits[torch.arange(len(where)), where], rtol=1e-5, atol=1e-5)
    # untrained-style old thresholds (1.0: never) load as infinite margins
    never = model_store.load(_old_format_student(student, card, tmp_path / "never", [1.0, 1.0]))
    assert torch.isinf(never.model.exit_margins).all()


def test_exits_only_recalibration_moves_an_old_student_to_the_alert_rule(distilled, cohort, tmp_path):
    student, card = distilled
    batch_rows = cohort.rows("val")
    old = model_store.load(_old_format_student(student, card, tmp_path / "old", [0.5, 0.5]))  # all leave at 0
    recalibrated, new_card = recalibrate_exits(old, cohort)
    assert "exit_thresholds" not in new_card and new_card["exit_center"] == pytest.approx(logit(card["threshold"]))
    assert new_card["val"]["early_exit_alert_agreement"] >= 0.995
    # the same VAL rows as at distillation, so the same rule as distill chose
    np.testing.assert_allclose(recalibrated.exit_margins.numpy(), student.exit_margins.numpy(), rtol=1e-6)
    z = predict_exit_logits(recalibrated, cohort, batch_rows)
    temps = recalibrated.exit_temperatures.tolist()
    _, p = simulate_exits(z, temps, new_card["exit_center"], recalibrated.exit_margins.tolist())
    p_full = simulate_exits(z, temps, 0.0, [math.inf, math.inf])[1]
    assert alert_agreement(p, p_full, card["threshold"]) >= 0.995
    # the saved card loads with the new fields
    reloaded = model_store.load(model_store.save(recalibrated, new_card, tmp_path / "new"))
    torch.testing.assert_close(reloaded.model.exit_margins, recalibrated.exit_margins, rtol=0, atol=0)


def test_distill_refuses_a_teacher_built_for_other_inputs(cohort):
    other = toy_cohort(n_groups=6, rows_per_group=4, imaging=True)
    spec = InputSpec(
        cohort=other.name, modalities=other.modalities, dims=other.dims(), d_model=8, options={"layers": 1, "heads": 2}
    )
    with pytest.raises(ValueError, match="other inputs"):
        distill(build("attention", spec), cohort, DistillConfig(epochs=1, threads=1), progress=False)
