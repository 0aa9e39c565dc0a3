"""A score's hand-off times inside the worker (``streams/stage_times.py``): kept in a ring, appended to a
file once a second, read back in order."""

from __future__ import annotations

import numpy as np

from icuwatch.streams import stage_times


def test_rows_are_appended_once_and_read_back_in_order(tmp_path):
    times = stage_times.StageTimes(capacity=8)
    path = tmp_path / "stages.f64"
    for k in range(5):
        times.record(100.0 + k, 100.5 + k, 101.0 + k, 101.1 + k, None if k == 2 else 101.4 + k, 101.5 + k)
    assert times.flush(path) == 5 and times.flush(path) == 0  # nothing twice
    times.record(200.0, None, 201.0, 201.0, 201.3, 201.4)
    assert times.flush(path) == 1
    rows = stage_times.read(path)
    assert rows.shape == (6, len(stage_times.COLUMNS))
    np.testing.assert_array_equal(rows[:, 0], [100.0, 101.0, 102.0, 103.0, 104.0, 200.0])
    assert np.isnan(rows[2, 4]) and np.isnan(rows[5, 1])
    spent = stage_times.durations(rows)
    np.testing.assert_allclose(spent["submitted_to_scored_s"][[0, 1, 3, 4]], 0.3)
    np.testing.assert_allclose(spent["event_to_published_s"][:5], 1.5)
    np.testing.assert_allclose(spent["appended_to_published_s"][:5], 1.0)


def test_a_ring_not_flushed_in_time_keeps_the_newest_rows(tmp_path):
    times = stage_times.StageTimes(capacity=4)
    for k in range(10):
        times.record(float(k), *([float(k)] * 5))
    assert times.flush(tmp_path / "s.f64") == 4
    np.testing.assert_array_equal(stage_times.read(tmp_path / "s.f64")[:, 0], [6.0, 7.0, 8.0, 9.0])
    assert stage_times.read(tmp_path / "none.f64").shape == (0, len(stage_times.COLUMNS))
