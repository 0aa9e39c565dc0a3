"""The realism report's two-sample test (``icuwatch simulate --realism-report``): it separates what is
different, not what is the same, and the fitted ``icu`` population is harder to tell from real stays."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from icuwatch.fusion.evaluation import realism
from icuwatch.sources.physionet import default_data_dir

pytestmark = pytest.mark.skipif(not default_data_dir().is_dir(), reason="no PhysioNet stays")


@pytest.fixture(scope="module")
def real():
    return realism.physionet_charts(default_data_dir(), 300, 12, seed=1, progress=False)


def _auroc(a: realism.Charts, b: realism.Charts, test: str = "vitals") -> float:
    xa, names, ka = realism.design(a, test)
    xb, _, kb = realism.design(b, test)
    y = np.concatenate([np.ones(len(xa)), np.zeros(len(xb))])
    groups = np.concatenate([a.patient[ka], b.patient[kb] + 100_000])
    return realism.two_sample(np.concatenate([xa, xb]), y, groups, names, folds=3)["auroc"]


def _half(c: realism.Charts, odd: bool) -> realism.Charts:
    keep = (c.patient % 2 == 1) == odd
    return realism.Charts(c.columns, c.values[keep], c.hour[keep], c.patient[keep])


def test_real_stays_cannot_be_told_from_real_stays(real):
    assert _auroc(_half(real, True), _half(real, False)) < 0.6


def test_the_stylised_simulator_gives_itself_away_and_the_icu_population_much_less(real):
    stylised = _auroc(realism.simulated_charts(40, 12, seed=2, progress=False), real)
    icu = _auroc(realism.simulated_charts(40, 12, seed=2, progress=False, population="icu"), real)
    assert stylised > 0.9
    assert icu < stylised - 0.15


def test_charts_are_one_reading_per_hour_from_hour_two_and_labs_at_collection(real):
    sim = realism.simulated_charts(5, 12, seed=2, progress=False)
    assert len(sim.values) == 5 * 12 and set(sim.hour) == set(range(1, 13))
    hr = sim.column("HR")
    assert np.all(hr == np.round(hr))  # a charted monitor reading, not an hour's mean
    lactate = sim.column("Lactate")
    assert 0 < np.isfinite(lactate).sum() < len(lactate)
    x, names, keep = realism.design(sim, "all")
    assert names[-1] == "ICULOS" and x[:, -1].min() == realism.FIRST_HOUR
    assert real.hour.max() <= 12


def test_cli_writes_the_report_and_its_plot(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "icuwatch.cli",
            "simulate",
            "--realism-report",
            "--patients",
            "20",
            "--hours",
            "12",
            "--real-stays",
            "150",
            "--out-dir",
            str(tmp_path),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["goal"]["auroc_at_most"] == 0.70 and set(report["tests"]) == {"vitals", "all"}
    assert "population 'icu'" in report["data"]["simulated"]  # the report's default population
    assert "VAL and TEST" in report["data"]["real"]
    assert (tmp_path / "realism-vitals.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "realism.json").read_text())["tests"] == report["tests"]
    assert {"HR", "Glucose"} <= set(report["columns"])


def test_cli_says_in_one_line_when_the_data_is_missing(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "icuwatch.cli", "simulate", "--realism-report", "--data-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "is not a folder" in out.stderr.strip().splitlines()[-1]
