"""``streams/drift.py``: the worker's drift counts per unit and event-time hour."""

from __future__ import annotations

import numpy as np

from icuwatch.core import drift
from icuwatch.core import features as F
from icuwatch.streams.drift import BUCKET_S, EVICT_IDLE_S, UNPLACED_HOLD_S, DriftCounts

T = 1_765_000_800.0  # 20 min into an hour
HOUR = T - T % BUCKET_S


def row(hr: float) -> np.ndarray:
    x = F.empty(1)
    x[0, F.INDEX["hr"]] = hr
    x[0, F.INDEX["stale_vitals_s"]] = 1.0
    return x


def by_column(rows):
    return {(r["bucket_start"], r["unit"], r["column"]): r["counts"] for r in rows}


def test_counts_are_per_unit_and_hour_and_cumulative_across_flushes():
    counts = DriftCounts("w1")
    counts.scored("MICU", T, row(80))
    counts.arrived("MICU", "p1", T, "icu.vitals")
    counts.arrived("MICU", "p1", T + 1, "icu.vitals")
    first = by_column(counts.take())
    assert first[(HOUR, "MICU", "arrivals:icu.vitals")] == [2]
    assert first[(HOUR, "MICU", "patients")] == [1]
    assert sum(first[(HOUR, "MICU", "hr")]) == 1 and first[(HOUR, "MICU", "present:vitals")] == [0, 1]
    assert all(r["writer"] == "w1" for r in counts.take()) and counts.take() == []  # nothing new
    counts.scored("MICU", T + 60, row(82))
    second = by_column(counts.take())
    assert sum(second[(HOUR, "MICU", "hr")]) == 2  # cumulative: the row replaces the first flush's
    assert second[(HOUR, "MICU", "arrivals:icu.vitals")] == [2]
    assert len(second[(HOUR, "MICU", "hr")]) == len(drift.BIN_EDGES["hr"])


def test_an_idle_bucket_is_dropped_after_its_flush_and_counted_again_under_a_new_writer():
    import time

    counts = DriftCounts("w1")
    counts.arrived("MICU", "p1", T, "icu.vitals")
    counts.arrived("MICU", "p1", T + 5 * BUCKET_S, "icu.vitals")  # another partition raced ahead: kept
    assert {r["bucket_start"] for r in counts.take()} == {HOUR, HOUR + 5 * BUCKET_S}
    assert (HOUR, "MICU") in counts.columns
    rows = counts.take(now=time.monotonic() + EVICT_IDLE_S + 1)  # an hour with nothing new: dropped
    assert rows == [] and counts.columns == {}
    counts.arrived("MICU", "p2", T, "icu.vitals")  # a late message of that hour
    late = counts.take()
    assert by_column(late)[(HOUR, "MICU", "arrivals:icu.vitals")] == [1]
    assert {r["writer"] for r in late} == {"w1#2"}  # adds to the first rows in the database


def test_rows_that_could_not_be_written_are_written_at_the_next_flush():
    counts = DriftCounts("w1")
    counts.arrived("MICU", "p1", T, "icu.vitals")
    rows = counts.take()
    assert counts.take() == []
    counts.retry(rows)  # the database refused the flush
    assert by_column(counts.take()) == by_column(rows)


def test_what_arrives_before_the_admission_counts_under_the_unit_once_it_is_known():
    counts = DriftCounts("w1")
    counts.arrived(None, "p1", T, "icu.vitals")  # the ADT topic not read yet
    counts.scored(None, T, row(80), "p1")
    counts.arrived(None, "p1", T + BUCKET_S, "icu.cxr")
    assert counts.take() == []  # held, not under "unknown"
    counts.arrived("MICU", "p1", T + BUCKET_S + 5, "icu.adt")
    placed = by_column(counts.take())
    assert placed[(HOUR, "MICU", "arrivals:icu.vitals")] == [1] and sum(placed[(HOUR, "MICU", "hr")]) == 1
    assert placed[(HOUR + BUCKET_S, "MICU", "arrivals:icu.cxr")] == [1]
    assert placed[(HOUR + BUCKET_S, "MICU", "arrivals:icu.adt")] == [1]
    assert placed[(HOUR, "MICU", "patients")] == [1] and placed[(HOUR + BUCKET_S, "MICU", "patients")] == [1]
    assert not any(unit == "unknown" for _, unit, _ in placed)


def test_a_patient_whose_unit_never_comes_counts_under_unknown_after_the_hold():
    import time

    counts = DriftCounts("w1")
    counts.arrived(None, "p2", T, "icu.labs")
    assert counts.take(now=time.monotonic()) == []
    late = by_column(counts.take(now=time.monotonic() + UNPLACED_HOLD_S + 1))
    assert late[(HOUR, "unknown", "arrivals:icu.labs")] == [1] and late[(HOUR, "unknown", "patients")] == [1]
    assert counts.unplaced == {} and counts.unplaced_since == {}
