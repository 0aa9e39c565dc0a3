"""``icuwatch evaluate ablation``: modalities added one at a time on a simulated cohort, LightGBM per
step and fold, paired changes, rule scores and always-alarm on the same folds; and the ``icu``
population's cohort it runs on by default (charting gaps become measured flags, not values)."""

from __future__ import annotations

import numpy as np
import pytest

from icuwatch.fusion.cohorts import sim
from icuwatch.fusion.cohorts.base import gather
from icuwatch.fusion.evaluation import ablation


@pytest.fixture(scope="module")
def cohort():
    return sim.build(90, 12, seed=4, progress=False, population="icu")


def test_the_icu_cohort_marks_uncharted_hours_as_unmeasured(cohort):
    c = len(sim.VITALS)
    flags = cohort.inputs["vitals"][:, -1, c:]
    assert 0.05 < 1 - flags.mean() < 0.5  # monitor-off hours, temperatures every few hours
    assert not cohort.inputs["vitals"][:, -1, :c][flags == 0].any()  # an unmeasured value is 0, not made up
    temp = sim.VITALS.index("temp")
    assert flags[:, temp].mean() < flags[:, 0].mean() - 0.2
    assert (
        cohort.meta["population"] == "icu"
        and cohort.meta["deteriorating_fraction"] == sim.DETERIORATING_FRACTION["icu"] == 0.10
    )
    assert sim.cache_path(population="icu") != sim.cache_path()


def test_modality_features_are_nan_where_the_modality_is_absent(cohort):
    batch = gather(cohort, np.arange(len(cohort)))
    for modality in ("waveforms", "labs", "cxr", "report"):
        x = ablation.modality_features(cohort, batch, modality)
        absent = ~batch["present"][:, cohort.modality_index(modality)]
        assert absent.any() or modality == "cxr"
        assert np.isnan(x[absent, :-2]).all() and (x[absent, -2] == 0).all()
        assert np.isfinite(x[~absent, -2:]).all()


def test_the_ladder_reports_paired_changes_and_references_on_the_same_folds(cohort):
    summary = ablation.ablate(cohort, folds=3, seed=1, progress=False)
    assert set(summary["targets"]) == {"deterioration", "sepsis"}
    for target in summary["targets"]:
        part = summary[target]
        ladder = part["ladder"]
        assert [s["modalities"] for s in ladder] == [list(m) for m in ablation.LADDER]
        assert [s["features"] for s in ladder] == sorted(s["features"] for s in ladder)
        for before, after in zip(ladder, ladder[1:]):
            diffs = np.subtract(after["auroc"]["per_fold"], before["auroc"]["per_fold"])
            assert after["change"]["auroc"]["mean"] == pytest.approx(np.nanmean(diffs), abs=2e-4)
        for s in ladder:
            assert len(s["auroc"]["per_fold"]) == 3 and 0.0 <= s["auroc"]["mean"] <= 1.0
        assert part["references"]["always-alarm"]["auroc"]["mean"] == 0.5
        assert set(part["references"]) == {"news2", "qsofa", "rules", "always-alarm"}
    assert summary["sepsis"]["positive_rows"] <= summary["deterioration"]["positive_rows"]
    assert "| vitals + waveforms |" in ablation.markdown(summary)
    variant = summary["deterioration"]["variants"][0]
    labs_step = summary["deterioration"]["ladder"][2]
    assert variant["compared_with"] == labs_step["modalities"]
    assert variant["features"] == summary["deterioration"]["ladder"][3]["features"] - 2  # no flag, no age
    assert "X-ray image only" in ablation.markdown(summary)


def test_the_threshold_can_be_to_alarm_on_every_row_when_that_pays_most(cohort):
    """Under the challenge's utility, alarming on everyone can beat any ranking (many positive
    rows): the threshold search must be able to choose it."""
    rows = np.arange(len(cohort))
    y = np.zeros(len(cohort), np.int8)
    y[cohort.hour >= 2] = 1  # everyone "deteriorates" from the second hour: alarming always is best
    p = np.random.default_rng(0).random(len(cohort))  # a useless ranking
    assert ablation._best_threshold(cohort, y, rows, p) == 0.0


def test_the_test_fold_neither_stops_nor_sets_the_threshold(cohort):
    """Poisoning the test fold's features changes its predictions but not the fitted model's threshold."""
    y = ablation.targets(cohort)["deterioration"]
    x = ablation.features(cohort, ("vitals",))
    train, test = ablation._folds(cohort, y, 3, seed=2)[0]
    _, threshold = ablation._fit_predict(x, cohort, y, train, test, seed=5)
    poisoned = x.copy()
    poisoned[test] = np.nan
    _, again = ablation._fit_predict(poisoned, cohort, y, train, test, seed=5)
    assert threshold == again


def test_a_cached_cohort_built_by_another_simulator_is_rebuilt(tmp_path, monkeypatch):
    built, real_build = [], sim.build

    def build(*args, **kwargs):
        built.append(1)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(sim, "build", build)
    first = sim.load_or_build(4, 12, 1, cache_dir=tmp_path, progress=False)
    assert first.meta["simulator_fingerprint"] == sim.simulator_fingerprint()
    sim.load_or_build(4, 12, 1, cache_dir=tmp_path, progress=False)
    assert len(built) == 1  # the cache is read back
    monkeypatch.setattr(sim, "simulator_fingerprint", lambda: "another simulator")
    sim.load_or_build(4, 12, 1, cache_dir=tmp_path, progress=False)
    assert len(built) == 2  # a simulator edit (same version tags) rebuilds
