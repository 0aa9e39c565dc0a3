"""The checks every fusion strategy passes (one suite, parametrised over the strategies)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fusion_toy import toy_cohort
from sklearn.metrics import roc_auc_score

from icuwatch.fusion import model_store
from icuwatch.fusion.cohorts.base import gather
from icuwatch.fusion.strategies import DEFAULTS, build
from icuwatch.fusion.strategies.base import InputSpec, to_tensors
from icuwatch.fusion.training import TrainConfig, fit_temperature, focal_loss, modality_dropout, predict_logits, train

TABULAR_STRATEGIES = ("early", "late", "stacked", "attention", "student")
ALL_STRATEGIES = (*TABULAR_STRATEGIES, "joint_embedding")
SHAPE_CHECKS = [(s, False) for s in TABULAR_STRATEGIES] + [(s, True) for s in ALL_STRATEGIES]
"""(strategy, with X-ray and report modalities): structural checks run on both kinds of cohort."""


@pytest.fixture(scope="module")
def cohort():
    return toy_cohort(n_groups=80)


@pytest.fixture(scope="module")
def imaging_cohort():
    return toy_cohort(n_groups=12, rows_per_group=4, imaging=True)


@pytest.fixture
def either(request, cohort, imaging_cohort):
    return imaging_cohort if request.param else cohort


def _model(strategy: str, cohort):
    torch.manual_seed(0)
    d = DEFAULTS[strategy]
    spec = InputSpec(
        cohort=cohort.name,
        modalities=cohort.modalities,
        dims=cohort.dims(),
        d_model=d.get("d_model", 32),
        options=d.get("options", {}),
    )
    return build(strategy, spec).eval()


def _batch(cohort, n=32):
    return gather(cohort, np.arange(n))


@pytest.mark.parametrize("strategy,either", SHAPE_CHECKS, indirect=["either"])
def test_one_finite_logit_per_row(strategy, either):
    cohort = either
    out = _model(strategy, cohort)(to_tensors(_batch(cohort)))
    assert out.shape == (32,)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("strategy,either", SHAPE_CHECKS, indirect=["either"])
def test_absent_modality_inputs_cannot_change_the_score(strategy, either):
    cohort = either
    """Masked, never imputed: garbage in an absent modality's input changes nothing."""
    model = _model(strategy, cohort)
    batch = _batch(cohort)
    batch["present"][:, 1] = False
    batch["staleness_h"][:, 1] = 0.0
    before = model(to_tensors(batch))
    batch["labs"] = np.random.default_rng(1).normal(scale=50.0, size=batch["labs"].shape).astype(np.float32)
    after = model(to_tensors(batch))
    torch.testing.assert_close(before, after)
    batch["present"][:, 1] = True  # and the same garbage, present, does change it
    assert not torch.allclose(before, model(to_tensors(batch)))


@pytest.mark.parametrize("strategy,either", SHAPE_CHECKS, indirect=["either"])
def test_a_row_scores_the_same_alone_or_in_a_batch(strategy, either):
    cohort = either
    model = _model(strategy, cohort)
    batch = to_tensors(_batch(cohort, 16))
    together = model(batch)
    alone = torch.cat([model({k: v[i : i + 1] for k, v in batch.items()}) for i in range(16)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy,either", SHAPE_CHECKS, indirect=["either"])
def test_contributions_per_modality(strategy, either):
    cohort = either
    model = _model(strategy, cohort)
    batch = _batch(cohort)
    batch["present"][:5, 0] = False
    c = model.contributions(to_tensors(batch))
    assert c.shape == (32, len(cohort.modalities))
    assert torch.isfinite(c).all()
    assert (c[:5, 0] == 0).all()


@pytest.mark.parametrize("strategy", TABULAR_STRATEGIES)
def test_trains_calibrates_and_round_trips(strategy, cohort, tmp_path):
    cfg = TrainConfig(epochs=4, rows_per_epoch=4000, batch_size=64, threads=1, modality_dropout=0.3)
    model, card = train(strategy, cohort, cfg, progress=False)
    test = cohort.rows("test")
    logits = predict_logits(model, cohort, test)
    assert roc_auc_score(cohort.y[test], logits) > 0.7
    assert card["temperature"] > 0 and 0 < card["threshold"] < 1
    assert card["parameters"] == model.n_parameters()
    assert [h["epoch"] for h in card["history"]] == [1, 2, 3, 4]
    loaded = model_store.load(model_store.save(model, card, tmp_path / card["model"]))
    np.testing.assert_allclose(predict_logits(loaded.model, cohort, test), logits, rtol=1e-5, atol=1e-5)
    assert loaded.threshold == card["threshold"]


def test_attention_tokens_carry_staleness(cohort):
    model = _model("attention", cohort)
    batch = _batch(cohort)
    fresh = model(to_tensors(batch))
    batch["staleness_h"] = np.where(batch["present"], 72.0, 0.0).astype(np.float32)
    assert not torch.allclose(fresh, model(to_tensors(batch)))


def test_attention_contributions_are_weights_over_present_modalities(cohort):
    model = _model("attention", cohort)
    batch = _batch(cohort)
    c = model.contributions(to_tensors(batch)).numpy()
    np.testing.assert_allclose(c.sum(axis=1), 1.0, rtol=1e-5)
    assert (c[~batch["present"]] == 0).all()


def test_modality_dropout_keeps_one_of_the_rows_own_modalities():
    rng = np.random.default_rng(0)
    present = rng.random((2000, 4)) > 0.3
    stale = np.where(present, 5.0, 0.0).astype(np.float32)
    kept, kept_stale = modality_dropout(present, stale, 0.5, rng)
    assert not (kept & ~present).any()
    assert (kept.any(axis=1) == present.any(axis=1)).all()
    assert 0.3 < 1 - kept.sum() / present.sum() < 0.5  # close to p, less because one always stays
    assert (kept_stale[~kept] == 0).all()


def test_focal_loss_down_weights_easy_rows():
    y = torch.tensor([1.0, 0.0])
    easy, hard = torch.tensor([4.0, -4.0]), torch.tensor([0.5, -0.5])
    assert focal_loss(easy, y, 2.0, 0.5) < 0.01 * focal_loss(hard, y, 2.0, 0.5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(hard, y)
    torch.testing.assert_close(focal_loss(hard, y, 0.0, 0.5), 0.5 * bce)


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(scale=2.0, size=20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-true_logits))).astype(float)
    assert fit_temperature(true_logits * 3.0, y) == pytest.approx(3.0, rel=0.1)


def test_absent_image_and_report_cannot_change_the_score(imaging_cohort):
    for strategy in ALL_STRATEGIES:
        model = _model(strategy, imaging_cohort)
        batch = _batch(imaging_cohort, 16)
        batch["present"][:, 2:] = False
        batch["staleness_h"][:, 2:] = 0.0
        before = model(to_tensors(batch))
        batch["cxr"] = np.random.default_rng(2).random(batch["cxr"].shape).astype(np.float32)
        batch["report"] = np.random.default_rng(3).integers(1, 4000, batch["report"].shape).astype(np.int32)
        torch.testing.assert_close(before, model(to_tensors(batch)), msg=strategy)


def test_joint_embedding_fusion_trains_on_its_contrastive_towers(imaging_cohort, tmp_path, monkeypatch):
    """prepare() trains the CLIP towers on the TRAIN studies when none are saved; fusion training
    leaves them frozen."""
    from icuwatch.fusion import joint_space as je

    monkeypatch.setattr(je, "default_model_dir", lambda: tmp_path / "joint")
    cfg = TrainConfig(epochs=1, rows_per_epoch=48, batch_size=16, threads=1)
    model, card = train("joint_embedding", imaging_cohort, cfg, progress=False)
    assert (tmp_path / "joint" / je.CARD_FILE).exists()
    saved = je.JointEmbedding.load(tmp_path / "joint")
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(model.joint.state_dict()[name], tensor, msg=name)
    assert card["prepared"]["dir"] == str(tmp_path / "joint")
    train_rows = imaging_cohort.rows("train")
    cxr, report = imaging_cohort.inputs["cxr"][train_rows], imaging_cohort.inputs["report"][train_rows]
    expected = np.intersect1d(cxr[cxr >= 0], report[report >= 0])
    assert saved.card["data"]["studies"] == len(expected)


@pytest.mark.parametrize("strategy", ALL_STRATEGIES)
def test_absent_rows_do_not_move_present_rows_in_training_mode(strategy, imaging_cohort):
    """In training, absent rows must not reach batch-norm or any other batch-level statistic: present
    rows score the same beside rows without an X-ray as they do alone (dropout off to compare)."""
    model = _model(strategy, imaging_cohort).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        elif isinstance(m, torch.nn.MultiheadAttention):
            m.dropout = 0.0
    batch = _batch(imaging_cohort, 16)
    batch["present"][:] = True
    batch["cxr"][batch["cxr"].sum(axis=(1, 2, 3)) == 0] = 0.5
    batch["present"][4:, 2] = False
    alone = model(to_tensors({k: v[:4] for k, v in batch.items()}))
    beside_absent = model(to_tensors(batch))[:4]
    torch.testing.assert_close(alone, beside_absent, msg=strategy)
