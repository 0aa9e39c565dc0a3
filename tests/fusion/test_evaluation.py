"""Evaluation: the challenge utility (hand-worked cases), metrics, plots and the report."""

from __future__ import annotations

import numpy as np
import pytest

from icuwatch.fusion.evaluation.utility import (
    best_predictions,
    cohort_utilities,
    normalized_utility,
    patient_utility,
    row_utilities,
    sepsis_time,
)

# matplotlib 3.9 on a newer pyparsing: deprecation noise from inside matplotlib, not ours.
pytestmark = pytest.mark.filterwarnings(r"ignore:'\w+' (argument is )?deprecated:DeprecationWarning")


def septic(n: int, first_label: int) -> np.ndarray:
    labels = np.zeros(n, dtype=int)
    labels[first_label:] = 1
    return labels


def ones_at(n: int, rows) -> np.ndarray:
    pred = np.zeros(n, dtype=int)
    pred[list(rows)] = 1
    return pred


# ---------------------------------------------------------------- utility, worked by hand
#
# Default parameters: dt_early -12, dt_optimal -6, dt_late 3, max_u_tp 1, min_u_fn -2, u_fp -0.05.
# With d = t - t_sepsis:
#   positive: d < -12 -> -0.05;  -12..-6 -> (d + 12) / 6  (0, 1/6, ..., 1);  -6..3 -> (3 - d) / 9 (1 ... 0)
#   negative: d <= -6 -> 0;       -6..3 -> -2 (d + 6) / 9  (0, -2/9, ..., -2)
#   d > 3: 0.
#
# Reference patient A: 20 rows, first label at row 8 -> t_sepsis = 14, window rows 2..17 (d = -12..3).
#   best     = sum_{d=-12..-6} (d+12)/6 + sum_{d=-5..3} (3-d)/9 = 21/6 + 36/9 = 3.5 + 4 = 7.5
#   inaction = sum_{d=-5..3} -2(d+6)/9 = -(2+4+...+18)/9 = -90/9 = -10

A = septic(20, 8)


def test_t_sepsis_is_first_label_plus_six():
    assert sepsis_time(A) == 14
    assert sepsis_time(np.zeros(5, dtype=int)) is None


def test_reference_patient_best_and_inaction_by_hand():
    assert patient_utility(A, best_predictions(A)) == pytest.approx(7.5)
    assert best_predictions(A).nonzero()[0].tolist() == list(range(2, 18))
    assert patient_utility(A, np.zeros(20, dtype=int)) == pytest.approx(-10.0)


def test_challenge_docstring_example():
    # evaluate_sepsis_score.py's own example: labels [0,0,0,0,1,1], predictions [0,0,1,1,1,1] -> 3.3888...
    # t_sepsis = 10; positives at d = -8, -7, -6, -5: 4/6 + 5/6 + 1 + 8/9 = 3.3888...
    assert patient_utility([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]) == pytest.approx(3.388888888888889)


def test_perfect_predictions_score_one():
    b = septic(30, 20)
    assert normalized_utility(
        [A, b, np.zeros(9, dtype=int)], [best_predictions(A), best_predictions(b), np.zeros(9, dtype=int)]
    ) == pytest.approx(1.0)


def test_no_positive_predictions_score_zero():
    labels = [A, np.zeros(12, dtype=int)]
    assert normalized_utility(labels, [np.zeros(20, dtype=int), np.zeros(12, dtype=int)]) == pytest.approx(0.0)


def test_all_positive_on_non_septic_patient():
    # Every row is a false alarm: 10 x -0.05 = -0.5.
    assert patient_utility(np.zeros(10, dtype=int), np.ones(10, dtype=int)) == pytest.approx(-0.5)
    # Cohort: A predicted perfectly (7.5) + that non-septic patient (-0.5): observed 7.0, best 7.5,
    # inaction -10 -> (7.0 + 10) / (7.5 + 10) = 17 / 17.5.
    score = normalized_utility([A, np.zeros(10, dtype=int)], [best_predictions(A), np.ones(10, dtype=int)])
    assert score == pytest.approx(17.0 / 17.5)


def test_all_positive_on_septic_patient():
    # A, all 20 rows positive: rows 0,1 (d = -14, -13) are early alarms, -0.05 each; rows 2..17 the best
    # window (7.5); rows 18, 19 (d = 4, 5) are after dt_late and count 0. Observed 7.4.
    assert patient_utility(A, np.ones(20, dtype=int)) == pytest.approx(7.4)
    assert normalized_utility([A], [np.ones(20, dtype=int)]) == pytest.approx((7.4 + 10) / 17.5)


def test_septic_stay_shorter_than_t_sepsis_plus_dt_late():
    # 8 rows, first label at row 4 -> t_sepsis = 10, t_sepsis + dt_late = 13 > 7 (last row).
    # Rows 0..7 are d = -10..-3, all inside the window, so best predicts every row:
    #   best     = (2+3+4+5)/6 + 1 + (8+7+6)/9 = 14/6 + 1 + 21/9 = 17/3
    #   inaction = negatives at d = -5, -4, -3: -(2+4+6)/9 = -4/3
    # Predicting positive from row 5 (d = -5..-3): observed = 21/9 = 7/3
    #   normalized = (7/3 + 4/3) / (17/3 + 4/3) = 11/21
    labels = septic(8, 4)
    assert best_predictions(labels).tolist() == [1] * 8
    totals = cohort_utilities([labels], [ones_at(8, range(5, 8))])
    assert totals["best"] == pytest.approx(17 / 3)
    assert totals["inaction"] == pytest.approx(-4 / 3)
    assert totals["observed"] == pytest.approx(7 / 3)
    assert totals["normalized"] == pytest.approx(11 / 21)


def test_predictions_before_dt_early():
    # 24 rows, first label at row 14 -> t_sepsis = 20. Positives at rows 0..7 (d = -20..-13) are all
    # before dt_early: -0.05 each = -0.4, and every later row is a miss (inaction, -10):
    #   observed = -10.4, best 7.5 -> (-10.4 + 10) / 17.5 = -0.4 / 17.5
    labels = septic(24, 14)
    pred = ones_at(24, range(0, 8))
    assert patient_utility(labels, pred) == pytest.approx(-10.4)
    assert normalized_utility([labels], [pred]) == pytest.approx(-0.4 / 17.5)
    # Boundaries: exactly at dt_early (d = -12, row 8) a positive is worth 0, one row earlier -0.05.
    assert patient_utility(labels, ones_at(24, [8])) == pytest.approx(-10.0)
    assert patient_utility(labels, ones_at(24, [7])) == pytest.approx(-10.05)


def test_late_alarm_and_after_dt_late():
    # A, a single positive at t_sepsis (row 14, d = 0): it earns (3-0)/9 = 1/3 instead of the miss
    # -2*6/9 = -4/3, so observed = -10 + 4/3 + 1/3 = -25/3; normalized = (5/3) / 17.5 = 2/21.
    assert normalized_utility([A], [ones_at(20, [14])]) == pytest.approx(2 / 21)
    # Positives only after t_sepsis + dt_late (rows 18, 19) change nothing: 0.
    assert normalized_utility([A], [ones_at(20, [18, 19])]) == pytest.approx(0.0)


def test_row_utilities_match_patient_utility():
    rng = np.random.default_rng(0)
    u_pos, u_neg = row_utilities(A)
    for _ in range(20):
        pred = rng.integers(0, 2, size=20)
        assert patient_utility(A, pred) == pytest.approx(np.where(pred == 1, u_pos, u_neg).sum())


def test_utility_rejects_bad_input():
    with pytest.raises(ValueError):
        patient_utility([0, 1], [0])
    with pytest.raises(ValueError):
        patient_utility([0, 1], [0, 2])
    with pytest.raises(ValueError):
        normalized_utility([[0, 1]], [])
    assert np.isnan(normalized_utility([np.zeros(3, dtype=int)], [np.ones(3, dtype=int)]))


# ---------------------------------------------------------------- metrics

from icuwatch.fusion.evaluation import metrics  # noqa: E402


def test_utility_vs_threshold_matches_rethresholded_utility():
    rng = np.random.default_rng(3)
    labels = [
        septic(int(rng.integers(10, 60)), int(rng.integers(0, 40)))
        if i % 3 == 0
        else np.zeros(int(rng.integers(5, 50)), dtype=int)
        for i in range(40)
    ]
    labels = [lab if lab.size else np.zeros(5, dtype=int) for lab in labels]
    probs = [np.clip(0.3 * lab + rng.random(lab.size) * 0.7, 0, 1) for lab in labels]
    thresholds = [0.0, 0.1, 0.35, 0.5, 0.7, 0.95, 1.0]
    fast = metrics.utility_vs_threshold(probs, labels, thresholds)
    for thr, value in zip(thresholds, fast):
        slow = normalized_utility(labels, [(p >= thr).astype(int) for p in probs])
        assert value == pytest.approx(slow, abs=1e-12)
    thr, best = metrics.best_threshold(probs, labels, thresholds)
    assert best == pytest.approx(max(fast)) and thr in thresholds


def test_best_threshold_on_oracle_probabilities():
    # Probability 0.8 exactly in the best window, 0.2 elsewhere: any threshold in (0.2, 0.8] is perfect;
    # the lowest such grid value wins.
    labels = [A, np.zeros(15, dtype=int)]
    probs = [np.where(best_predictions(A) == 1, 0.8, 0.2), np.full(15, 0.2)]
    thr, value = metrics.best_threshold(probs, labels, [0.1, 0.2, 0.3, 0.5, 0.8, 0.9])
    assert (thr, value) == (0.3, pytest.approx(1.0))
    with pytest.raises(ValueError):
        metrics.best_threshold([np.full(4, 0.5)], [np.zeros(4, dtype=int)])


def test_calibration_bins_by_hand():
    # Rows: 0.05 (label 0), 0.05 (1), 0.95 (1), 0.95 (1), 1.0 (0).
    # bin 0: mean 0.05, rate 0.5, weight 2/5 -> 0.45 * 0.4 = 0.18
    # bin 9: mean (0.95 + 0.95 + 1.0) / 3 = 0.9667, rate 2/3, weight 3/5 -> 0.3 * 0.6 = 0.18; ECE 0.36
    ece, bins = metrics.calibration([[0, 1, 1, 1, 0]], [[0.05, 0.05, 0.95, 0.95, 1.0]])
    assert len(bins) == 10 and [b["count"] for b in bins] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 3]
    assert bins[1]["mean_probability"] is None
    assert ece == pytest.approx(0.36)


def test_alert_stats_by_hand():
    # P1 septic, 20 rows, first label row 8 -> t_sepsis 14; alerts rows 10-11 and 13 (2 episodes):
    #   detected, before onset, in window, lead 14 - 10 = 4 h.
    # P2 septic, 20 rows, first label row 8 -> t_sepsis 14; alert only at row 17 (= t_sepsis + 3):
    #   detected, not before onset, lead -3 h.
    # P3 septic, 20 rows; alert only at row 18 (after t_sepsis + 3): not detected.
    # P4 non-septic, 24 rows, never alerted. P5 non-septic, 24 rows, alerts rows 0-2 and 5 (2 episodes).
    labels = [septic(20, 8), septic(20, 8), septic(20, 8), np.zeros(24, dtype=int), np.zeros(24, dtype=int)]
    preds = [
        ones_at(20, [10, 11, 13]),
        ones_at(20, [17]),
        ones_at(20, [18]),
        np.zeros(24, dtype=int),
        ones_at(24, [0, 1, 2, 5]),
    ]
    s = metrics.patient_alert_stats(labels, preds)
    assert s["patients"] == 5 and s["septic_patients"] == 3
    assert s["sensitivity"] == pytest.approx(2 / 3)
    assert s["alerted_before_onset"] == pytest.approx(1 / 3)
    assert s["alerted_in_window"] == pytest.approx(2 / 3)
    assert s["median_lead_time_h"] == pytest.approx(0.5)  # median of 4 and -3
    assert s["specificity"] == pytest.approx(0.5)
    # episodes 2 + 1 + 1 + 0 + 2 = 6 over 108 rows = 4.5 patient-days; non-septic: 2 over 48 rows = 2 days.
    assert s["alerts_per_patient_day"] == pytest.approx(6 / 4.5)
    assert s["alerts_per_patient_day_nonseptic"] == pytest.approx(1.0)
    assert metrics.alert_episodes([1, 1, 0, 1, 0, 0, 1]) == 3


def test_auroc_auprc():
    labels = [[0, 0, 1, 1], [0, 1]]
    probs = [[0.1, 0.4, 0.35, 0.8], [0.2, 0.9]]
    # Positives 0.35, 0.8, 0.9; negatives 0.1, 0.4, 0.2: 8 of 9 pairs ordered -> 8/9.
    assert metrics.auroc(labels, probs) == pytest.approx(8 / 9)
    assert 0.0 < metrics.auprc(labels, probs) <= 1.0
    assert np.isnan(metrics.auroc([[0, 0]], [[0.1, 0.2]]))


# ---------------------------------------------------------------- folders, report, CLI

import json  # noqa: E402
from pathlib import Path  # noqa: E402

from icuwatch.fusion.evaluation.prediction_dirs import evaluate_dirs  # noqa: E402
from icuwatch.fusion.evaluation.report import EvaluationError  # noqa: E402


def write_stay(folder: Path, pid: str, labels, hr=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels, dtype=int)
    hr = np.full(labels.size, np.nan) if hr is None else hr
    rows = ["HR|ICULOS|SepsisLabel"] + [
        f"{'NaN' if np.isnan(h) else h}|{i + 1}|{y}" for i, (h, y) in enumerate(zip(hr, labels))
    ]
    (folder / f"{pid}.psv").write_text("\n".join(rows) + "\n")


def write_predictions(folder: Path, pid: str, probs, threshold: float = 0.5) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    probs = np.asarray(probs, dtype=float)
    rows = ["PredictedProbability|PredictedLabel"] + [f"{p:.6f}|{int(p >= threshold)}" for p in probs]
    (folder / f"{pid}.psv").write_text("\n".join(rows) + "\n")


@pytest.fixture()
def tiny(tmp_path):
    """Labels: 2 septic + 2 non-septic stays. Model 'oracle' = the best window; 'silent' never alerts."""
    labels = {
        "p000001": septic(20, 8),
        "p000002": septic(8, 4),
        "p000003": np.zeros(30, dtype=int),
        "p000004": np.zeros(12, dtype=int),
    }
    for pid, lab in labels.items():
        write_stay(tmp_path / "labels", pid, lab)
        write_predictions(tmp_path / "oracle", pid, np.where(best_predictions(lab) == 1, 0.9, 0.1))
        write_predictions(tmp_path / "silent", pid, np.full(lab.size, 0.2))
    return tmp_path, labels


def test_evaluate_tiny_dirs(tiny):
    root, _ = tiny
    summary = evaluate_dirs(
        {"oracle": root / "oracle", "silent": root / "silent"}, root / "labels", root / "out", progress=False
    )
    oracle, silent = summary["models"]["oracle"], summary["models"]["silent"]
    assert oracle["utility"] == pytest.approx(1.0) and silent["utility"] == pytest.approx(0.0)
    assert oracle["sensitivity"] == 1.0 and oracle["specificity"] == 1.0 and silent["sensitivity"] == 0.0
    assert oracle["implied_threshold"] == pytest.approx(0.9)
    # Oracle lead times: p000001 first alert row 2, t_sepsis 14 -> 12 h; p000002 row 0, t_sepsis 10 -> 10 h.
    assert oracle["median_lead_time_h"] == pytest.approx(11.0)
    assert silent["auroc"] is None or 0 <= silent["auroc"] <= 1  # constant scores: AUROC 0.5
    assert summary["patients"] == 4 and summary["septic_patients"] == 2 and not summary["real_physionet2019"]
    report = (root / "out" / "report.md").read_text()
    assert "NOT PhysioNet 2019 data" in report and "| oracle |" in report and "| silent |" in report
    for rel in summary["figures"].values():
        assert (root / "out" / rel).stat().st_size > 1000
    assert set(summary["figures"]) == {"roc", "pr", "reliability", "utility_threshold", "timelines"}
    assert json.loads((root / "out" / "summary.json").read_text())["models"]["oracle"]["utility"] == pytest.approx(1)


def test_missing_patient_and_row_mismatch_are_errors(tiny):
    root, labels = tiny
    (root / "silent" / "p000003.psv").unlink()
    with pytest.raises(EvaluationError, match="p000003"):
        evaluate_dirs({"silent": root / "silent"}, root / "labels", root / "out", progress=False)
    write_predictions(root / "oracle", "p000004", np.zeros(11))  # a malformed file: that stay left out, reported
    summary = evaluate_dirs({"oracle": root / "oracle"}, root / "labels", root / "out", progress=False)
    assert summary["patients"] == 3 and summary["failed"] == 1 and "11 prediction rows" in summary["failed_files"][0]
    (root / "bad").mkdir()
    for pid, lab in labels.items():
        (root / "bad" / f"{pid}.psv").write_text("Prob|Label\n" + "0.1|0\n" * lab.size)
    with pytest.raises(EvaluationError, match="PredictedProbability"):
        evaluate_dirs({"bad": root / "bad"}, root / "labels", root / "out", progress=False)


def test_cli_json_and_compare(tiny, capsys):
    from icuwatch.cli.main import main

    root, _ = tiny
    rc = main(
        [
            "evaluate",
            str(root / "silent"),
            str(root / "labels"),
            "--out",
            str(root / "cli"),
            "--compare",
            f"oracle={root / 'oracle'}",
            "--json",
            "--quiet",
            "--no-figures",
            "--baselines",
            "none",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    summary = json.loads(out[0])
    assert list(summary["models"]) == ["silent", "oracle"] and summary["main_model"] == "silent"
    assert (root / "cli" / "report.md").exists()
    assert main(["evaluate", str(root / "nowhere"), str(root / "labels"), "--out", str(root / "x"), "--quiet"]) == 2


def _real_stays(n: int):
    from icuwatch.sources.physionet import default_data_dir, list_stays

    data = default_data_dir()
    if not data.is_dir():
        pytest.skip(f"no PhysioNet 2019 data at {data}")
    paths = list_stays(data)
    septic_paths = [p for p in paths[:600] if p.read_text().rstrip().endswith("|1")]  # last label 1: septic
    chosen = sorted(set(septic_paths[:8]) | set(paths[: n - min(8, len(septic_paths))]))
    return data, chosen


def test_report_on_real_stays(tmp_path):
    from icuwatch.sources.physionet import read_psv

    data, paths = _real_stays(30)
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    for path in paths:
        (labels_dir / path.name).symlink_to(path)
    # A folder of links to ~30 real stays (8 septic): its path is not under physionet2019, so the
    # report's data note says so; test_data_note_for_the_real_folder checks the real folder's note.
    n_septic = 0
    for path in paths:
        stay = read_psv(path)
        lab = stay.labels
        n_septic += bool(lab.any())
        hr = stay.column("HR")
        # A causal rule: the last observed heart rate (carried forward), 60 -> 0, 140 -> 1.
        last = np.copy(hr)
        for i in range(1, last.size):
            if np.isnan(last[i]):
                last[i] = last[i - 1]
        write_predictions(tmp_path / "hr", path.stem, np.clip((np.nan_to_num(last, nan=60.0) - 60) / 80, 0, 1))
        write_predictions(tmp_path / "oracle", path.stem, np.where(best_predictions(lab) == 1, 0.9, 0.1))
    assert n_septic >= 3
    summary = evaluate_dirs(
        {"hr": tmp_path / "hr", "oracle": tmp_path / "oracle"}, labels_dir, tmp_path / "out", progress=False
    )
    hr, oracle = summary["models"]["hr"], summary["models"]["oracle"]
    assert oracle["utility"] == pytest.approx(1.0) and oracle["sensitivity"] == 1.0
    assert summary["patients"] == len(paths) and summary["septic_patients"] == n_septic
    assert 0 <= hr["auroc"] <= 1 and 0 <= hr["auprc"] <= 1 and 0 <= hr["ece"] <= 1
    assert -10 < hr["utility"] <= 1 and hr["utility"] <= hr["utility_at_best_threshold_in_sample"] + 1e-9
    assert 0 <= hr["sensitivity"] <= 1 and hr["alerted_before_onset"] <= hr["sensitivity"] + 1e-9
    assert sum(b["count"] for b in hr["calibration_bins"]) == summary["rows"] == hr["rows"]
    for rel in summary["figures"].values():
        assert (tmp_path / "out" / rel).stat().st_size > 1000
    assert "| hr |" in (tmp_path / "out" / "report.md").read_text()


def test_data_note_for_the_real_folder(tmp_path):
    from icuwatch.fusion.evaluation.report import data_provenance
    from icuwatch.sources.physionet import default_data_dir

    data = default_data_dir()
    if not data.is_dir():
        pytest.skip(f"no PhysioNet 2019 data at {data}")
    assert data_provenance(data, 5)["real_physionet2019"] is True
    assert "real PhysioNet/CinC 2019" in data_provenance(data, 5)["data_note"]
    assert data_provenance(tmp_path, 5)["real_physionet2019"] is False


def test_baselines_are_generated_and_compared(tiny, monkeypatch):
    # A stand-in for icuwatch.fusion.psv_predict (tested on its own): constant 0.3 for every row.
    import sys
    import types

    root, _ = tiny
    calls = []

    def predict_dir(input_dir, output_dir, model="rules", **kwargs):
        calls.append((Path(input_dir), model))
        stays = sorted(Path(input_dir).glob("p*.psv"))
        for path in stays:
            n = len(path.read_text().strip().splitlines()) - 1
            write_predictions(Path(output_dir), path.stem, np.full(n, 0.3))
        return len(stays)

    fake = types.ModuleType("icuwatch.fusion.psv_predict")
    fake.predict_dir = predict_dir
    monkeypatch.setitem(sys.modules, "icuwatch.fusion.psv_predict", fake)
    summary = evaluate_dirs(
        {"oracle": root / "oracle"},
        root / "labels",
        root / "out",
        limit=3,
        baselines=["news2", "qsofa"],
        progress=False,
        figures=False,
    )
    assert list(summary["models"]) == ["oracle", "news2", "qsofa"] and summary["patients"] == 3
    assert [m for _, m in calls] == ["news2", "qsofa"]
    # --limit: only the 3 selected stays are predicted, through a folder of links.
    assert len(list(calls[0][0].glob("p*.psv"))) == 3
    assert summary["models"]["news2"]["pred_dir"] == str(root / "out" / "baselines" / "news2")
    assert summary["models"]["news2"]["utility"] == pytest.approx(0.0)
    assert "the first 3 by name" in summary["data_note"]
