import json

import numpy as np
import pytest

from icuwatch.fusion.shadow import alert_hours, compare, onset_hour, write_report
from icuwatch.sources import physionet

DATA = physionet.default_data_dir()


def test_alert_hours_are_run_starts():
    assert alert_hours(np.array([0, 1, 1, 0, 1, 0, 0, 1])) == [1, 4, 7]
    assert alert_hours(np.zeros(5)) == []


def test_onset_is_six_hours_after_the_first_label():
    assert onset_hour(np.array([0, 0, 1, 1])) == 8
    assert onset_hour(np.zeros(4)) is None


@pytest.mark.skipif(not DATA.exists(), reason=f"PhysioNet data not at {DATA}")
def test_shadow_report_lists_every_difference(tmp_path):
    summary = compare(DATA, "news2", "qsofa", patients=40, progress=False)
    assert summary["patients"] == 40
    assert summary["model_a"]["name"] == "news2" and summary["model_b"]["name"] == "qsofa"
    assert summary["differences"], "news2 and qsofa alert differently on 40 real stays"
    for row in summary["differences"]:
        assert row["alert_hours_a"] != row["alert_hours_b"]
        assert set(row["only_a"]) == set(row["alert_hours_a"]) - set(row["alert_hours_b"])
    same = compare(DATA, "rules", "rules", patients=10, progress=False)
    assert same["patients_differing"] == 0
    report = write_report(summary, tmp_path)
    assert report.read_text().startswith("# Shadow comparison")
    assert json.loads((tmp_path / "shadow.json").read_text())["patients"] == 40
