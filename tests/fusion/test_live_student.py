"""The live cohort (PhysioNet stays + simulated patients in one layout), the two-risk early-exit
student distilled from a cross-fitted teacher, and its Triton export."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from icuwatch.core import live_row
from icuwatch.fusion import teachers
from icuwatch.fusion.cohorts import live, physionet, sim
from icuwatch.fusion.cohorts.base import gather
from icuwatch.fusion.live_student import (
    SPEC,
    LiveDistillConfig,
    distill_live,
    exit_logits,
    held_out_report,
    labels_of,
    simulate_exits_multi,
)
from icuwatch.fusion.strategies import build
from icuwatch.fusion.strategies.base import to_tensors
from icuwatch.fusion.training import TrainConfig, model_spec
from icuwatch.serving import MODEL_REPOSITORY
from icuwatch.serving.export import example_batch, serving_module, verify
from icuwatch.sources.physionet import default_data_dir

needs_data = pytest.mark.skipif(not default_data_dir().is_dir(), reason="no PhysioNet stays")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """CPU-heavy: one thread."""


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    pn = physionet.load_or_build(cache_dir=cache, limit=120, progress=False)
    sm = sim.build(n_patients=40, hours=12, seed=3, progress=False)
    return pn, sm, live.build(pn, sm)


@needs_data
def test_live_cohort_puts_both_sources_in_one_layout(cohorts):
    pn, sm, c = cohorts
    c.validate()
    assert c.modalities == live_row.MODALITIES
    assert c.dims() == {
        "vitals": (8, 14),
        "waveforms": (4,),
        "labs": (81,),
        "cxr": (32, 32),
        "report": (256,),
        "static": (7,),
    }
    is_sim = live.source_of(c)
    assert is_sim.sum() == len(sm) and (~is_sim).sum() == len(pn)
    # PhysioNet stays: no waveform, X-ray or report; deterioration unknown; sepsis label as given
    assert not c.present[~is_sim][:, [1, 3, 4]].any()
    assert np.isnan(c.targets["deterioration"][~is_sim]).all()
    assert np.array_equal(c.y[~is_sim], pn.y)
    # simulated patients: sepsis only for septic ones, deterioration for every deteriorating one
    conditions = np.array([p["condition"] for p in sm.meta["patients"]])[sm.group]
    assert not c.y[is_sim][conditions != "sepsis"].any()
    assert np.array_equal(c.targets["deterioration"][is_sim], sm.y.astype(np.float32))
    # vitals re-expressed in PhysioNet's normalisation: the same raw values
    v_live, v_sim = c.inputs["vitals"][is_sim], sm.inputs["vitals"]
    measured = v_sim[:, :, 7:] > 0
    raw = lambda z, stats: z * np.array(stats["std"]) + np.array(stats["mean"])  # noqa: E731
    got, want = raw(v_live[:, :, :7], c.meta["norm"]["vitals"]), raw(v_sim[:, :, :7], sm.meta["norm"]["vitals"])
    assert np.allclose(got[measured], want[measured], atol=1e-3)
    assert np.array_equal(v_live[:, :, 7:], v_sim[:, :, 7:])
    # a shared lab keeps its raw value; PaO2 (not a PhysioNet column) is gone
    j, a = live.PN_LABS.index("lactate"), sm.meta["lab_channels"].index("lactate")
    ever = sm.inputs["labs"][:, 3 * a + 1] > 0
    lab_raw = (
        c.inputs["labs"][is_sim][ever, 3 * j] * c.meta["norm"]["labs"]["std"][j] + c.meta["norm"]["labs"]["mean"][j]
    )
    sim_raw = sm.inputs["labs"][ever, 3 * a] * sm.meta["norm"]["labs"]["std"][a] + sm.meta["norm"]["labs"]["mean"][a]
    assert ever.any() and np.allclose(lab_raw, sim_raw, atol=1e-3)
    # the newest ECG heart rate: the same bpm, z-scored with the layout's fixed normalisation
    w_sim, w_live = sm.inputs["waveforms"][:, -1, :], c.inputs["waveforms"][is_sim]
    heard = w_sim[:, len(sm.meta["waveform_channels"])] > 0
    sim_bpm = w_sim[heard, 0] * sm.meta["norm"]["waveforms"]["std"][0] + sm.meta["norm"]["waveforms"]["mean"][0]
    live_bpm = w_live[heard, 0] * live_row.WAVEFORM_NORM["std"][0] + live_row.WAVEFORM_NORM["mean"][0]
    assert heard.any() and np.allclose(live_bpm, sim_bpm, atol=1e-2)
    assert c.meta["norm"]["waveforms"] == live_row.WAVEFORM_NORM
    # the thumbnail of the shown study
    rows = np.flatnonzero(c.inputs["cxr"] >= 0)
    assert len(rows) and np.array_equal(
        c.lookups["cxr"][c.inputs["cxr"][rows[0]]],
        live_row.thumbnail(sm.lookups["cxr"][sm.inputs["cxr"][rows[0] - len(pn)]]),
    )


def _student(c, seed=0):
    torch.manual_seed(seed)
    return build("student", model_spec("student", c, TrainConfig(), SPEC)).eval()


@needs_data
def test_two_risk_student_masks_absent_modalities_and_exits_as_simulated(cohorts):
    _, _, c = cohorts
    student = _student(c)
    idx = np.arange(0, len(c), 7)
    batch = to_tensors(gather(c, idx))
    with torch.no_grad():
        student(batch)
        assert student.head_logits.shape == (len(idx), 2) and student.exit_logits.shape == (len(idx), 3, 2)
        noisy = {k: v.clone() for k, v in batch.items()}
        for j, m in enumerate(c.modalities):
            absent = ~batch["present"][:, j]
            noisy[m][absent] = torch.randn_like(noisy[m][absent].float()).to(noisy[m].dtype)
    with torch.no_grad():
        a = student(batch).clone()
        b = student(noisy)
    assert torch.allclose(a, b), "an absent modality's input moved the score"

    z = exit_logits(student, c, idx)
    temps = np.full((3, 2), 1.5)
    center = np.median(z[:, 0] / 1.5, axis=0)  # untrained logits: put the alert threshold in the middle
    margins = np.stack([np.quantile(np.abs(z[:, k] / 1.5 - center), 0.3, axis=0) for k in range(2)])
    student.set_exits(temperatures=temps, margins=margins, center=center)
    where, p = simulate_exits_multi(z, temps, center, margins)
    with torch.no_grad():
        logits, exit_index = student.forward_early_exit(batch)
        p_model = torch.sigmoid(student.calibrated(logits, exit_index)).double().numpy()
    assert np.array_equal(exit_index.numpy(), where) and len(set(where)) > 1
    assert np.allclose(p_model, p, atol=1e-6)


def test_two_risk_student_exports_to_torchscript_that_matches_it():
    from icuwatch.fusion.strategies.base import InputSpec

    spec = InputSpec(
        cohort="live",
        modalities=live_row.MODALITIES,
        dims={"vitals": (8, 14), "waveforms": (4,), "labs": (81,), "cxr": (32, 32), "report": (256,), "static": (7,)},
        series_kind="tcn",
        d_model=SPEC["d_model"],
        options=SPEC["options"],
    )
    torch.manual_seed(1)
    student = build("student", spec).eval()
    student.set_exits(temperatures=np.full((3, 2), 1.2), margins=[[0.5, 0.5], [0.2, 0.3]], center=[-3.0, -2.0])
    served = serving_module(student)
    check = verify(served, student)
    assert check["exits_equal"] and check["max_abs_probability_difference"] <= 1e-5
    p, exits = served(example_batch(spec, 9, seed=4), True)
    assert p.shape == (9, 2) and exits.shape == (9,)


def test_ensemble_averages_the_teachers_that_answer():
    a = np.array([[1.0, np.nan], [2.0, 4.0]], np.float32)
    b = np.array([[3.0, np.nan], [np.nan, 0.0]], np.float32)
    out = teachers.ensemble([a, b])
    assert out[0, 0] == 2.0 and math.isnan(out[0, 1]) and out[1].tolist() == [2.0, 2.0]


def test_first_answer_takes_the_first_teacher_that_answers():
    a = np.array([[1.0, np.nan], [np.nan, np.nan]], np.float32)
    b = np.array([[3.0, 5.0], [np.nan, 0.0]], np.float32)
    out = teachers.first_answer([a, b])
    assert out[0].tolist() == [1.0, 5.0] and math.isnan(out[1, 0]) and out[1, 1] == 0.0


@needs_data
def test_leaders_teacher_reads_each_real_stays_history_and_answers_sepsis_there_only(cohorts):
    """The privileged teacher: the leaders' features of a PhysioNet row are its stay's features at
    that hour (the row order of the live cohort), simulated rows have none, and only sepsis on real
    stays gets an answer; cross-fitted like the live-row teacher (held-out labels cannot reach it)."""
    from icuwatch.fusion.baselines import leader_features
    from icuwatch.fusion.cohorts.physionet import read_stay

    pn, _, c = cohorts
    x = teachers.leader_features(c, progress=False)
    real = ~live.source_of(c)
    assert np.isnan(x[~real]).all() and np.isfinite(x[real]).any(axis=1).all()
    g = 7
    rows = np.flatnonzero(c.group == g)
    want = leader_features.stay_features(read_stay(default_data_dir() / f"{c.group_ids[g]}.psv"))
    assert np.array_equal(x[rows], want, equal_nan=True)

    labels = labels_of(c)
    logits, info = teachers.crossfit_leaders(c, labels, folds=2, progress=False, fit_rows=c.rows("train"))
    assert np.isfinite(logits[real, 0]).all() and np.isnan(logits[~real]).all() and np.isnan(logits[:, 1]).all()
    assert info["feature_version"] == leader_features.FEATURE_VERSION
    flipped = dict(labels, sepsis=np.where(c.split != 0, 1.0 - labels["sepsis"], labels["sepsis"]))
    same, _ = teachers.crossfit_leaders(c, flipped, folds=2, progress=False, fit_rows=c.rows("train"))
    assert np.array_equal(logits, same, equal_nan=True)


@needs_data
def test_distill_live_end_to_end_on_a_small_cohort(cohorts):
    _, _, c = cohorts
    folds = teachers.stay_folds(c, 2, seed=0)
    for g in np.unique(c.group)[:50]:
        assert len(set(folds[c.group == g])) == 1  # a stay is in one fold: cross-fitting by stay
    # only TRAIN rows train trees: VAL/TEST labels cannot reach the teacher (flipping them changes nothing)
    flipped = labels_of(c)
    held = c.split != 0
    flipped["sepsis"] = np.where(held, 1.0 - flipped["sepsis"], flipped["sepsis"])
    logits, info = teachers.crossfit_lightgbm(c, labels_of(c), folds=2, progress=False, fit_rows=c.rows("train"))
    same, _ = teachers.crossfit_lightgbm(c, flipped, folds=2, progress=False, fit_rows=c.rows("train"))
    assert np.array_equal(logits[:, 0], same[:, 0]) and held.any()
    assert np.isfinite(logits[:, 0]).all()
    assert np.isnan(logits[~live.source_of(c), 1]).all() and np.isfinite(logits[live.source_of(c), 1]).all()
    cfg = LiveDistillConfig(epochs=1, rows_per_epoch=3000, batch_size=128, max_val_rows=5000, exit_grid=10)
    student, card = distill_live(c, logits, info, cfg, progress=False)
    assert card["heads"] == ["sepsis", "deterioration"]
    assert set(card["thresholds"]) == {"sepsis", "deterioration"}
    assert 0 < card["thresholds"]["sepsis"] < 1 and 0 < card["thresholds"]["deterioration"] < 1
    assert student.exit_temperatures.shape == (3, 2) and student.exit_center.shape == (2,)
    report = held_out_report(student, c, logits, card)
    assert set(report) >= {"rows", "exit_shares", "physionet", "sim"}
    assert abs(sum(report["exit_shares"]) - 1.0) < 1e-3
    assert "deterioration" in report["sim"] and "deterioration" not in report["physionet"]


def test_the_live_layout_keeps_the_served_student_versions_normalisation():
    """Every served ``student_live`` version was trained with the layout's fixed waveform normalisation
    and PhysioNet's: a new export of the live student keeps them (``serving.export`` removes a version
    whose normalisation differs), so ``icuwatch models rollback`` has a version to go back to."""
    served = sorted(p for p in (MODEL_REPOSITORY / "student_live").iterdir() if p.name.isdigit())
    assert served
    for version in served:
        norm = json.loads((version / "export.json").read_text())["norm"]
        assert norm["waveforms"] == live_row.WAVEFORM_NORM, version.name


@needs_data
def test_an_exported_versions_test_figures_are_its_cards(cohorts, tmp_path):
    """``icuwatch models test-figures``: the exported TorchScript on the cohort's TEST rows gives the
    figures the card's held-out report computed in process; a version exported with another
    normalisation is refused rather than scored on rows it cannot read."""
    from icuwatch.core.errors import OperatorError
    from icuwatch.fusion import model_store
    from icuwatch.serving.export import export_model
    from icuwatch.serving.version_figures import version_figures

    _, _, c = cohorts
    logits, info = teachers.crossfit_lightgbm(c, labels_of(c), folds=2, progress=False, fit_rows=c.rows("train"))
    cfg = LiveDistillConfig(epochs=1, rows_per_epoch=3000, batch_size=128, max_val_rows=5000, exit_grid=10)
    student, card = distill_live(c, logits, info, cfg, progress=False)
    report = held_out_report(student, c, logits, card)
    directory = model_store.save(student, card, tmp_path / "models" / card["model"])
    exported = export_model(model_store.load(directory), tmp_path / "repo", directory)

    figures = version_figures(tmp_path / "repo" / exported["triton_model"], c)
    got = figures["versions"][1]
    assert figures["rows"] == report["rows"] and got["exit_shares"] == pytest.approx(report["exit_shares"], abs=1e-3)
    for source in ("physionet", "sim"):
        assert set(got[source]) == set(report[source])
        for risk, entry in got[source].items():
            for kind in ("student_full", "student_early_exit"):
                want = report[source][risk][kind]
                assert entry[kind]["auroc"] == pytest.approx(want["auroc"], abs=2e-3), (source, risk, kind)
                assert entry[kind]["utility"] == pytest.approx(want["utility"], abs=2e-3), (source, risk, kind)

    provenance = tmp_path / "repo" / exported["triton_model"] / "1" / "export.json"
    changed = json.loads(provenance.read_text())
    changed["norm"]["waveforms"]["mean"] = [80.0, 80.0]
    provenance.write_text(json.dumps(changed))
    with pytest.raises(OperatorError, match="another input normalisation"):
        version_figures(tmp_path / "repo" / exported["triton_model"], c)
    with pytest.raises(OperatorError, match="no version 7"):
        version_figures(tmp_path / "repo" / exported["triton_model"], c, [7])
