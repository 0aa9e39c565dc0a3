"""The worker's side of the drift guards: counts, per unit and event-time hour, of what it scores
and what arrives, flushed to the database (``drift_counts``) for the drift report
(``storage/drift_report.py``).

* each score's feature row into the fixed bins of ``core/drift.py`` (values, missing, modality
  presence): counted at submit time, so the shadow and the live model see the same inputs;
* every accepted message by topic (how many arrive per patient-hour: a feed that stops), and the
  distinct patients per hour (the exposure the rates are per).

A patient's unit is its ADT state's. What arrives before the worker has read the patient's
admission (topics are consumed independently: a replay at full speed, a catch-up after an outage)
is held per patient and hour and counted under the unit once a message arrives with it known; held
for ``UNPLACED_HOLD_S`` of wall time without one, it counts under ``unknown`` (never dropped).

Each worker writes its own cumulative counts per bucket under its writer id (multiple workers hold
different patients; the report adds them). A bucket is kept in memory until no count has reached
it for ``EVICT_IDLE_S`` of wall time (partitions are consumed independently, so event time alone
cannot say a bucket is done); one counted again after that starts afresh under a new writer suffix
(``<writer>#2``), so its rows add to the first ones instead of replacing them. Counts are
not exact under redelivery (a worker killed after counting and before its checkpoint counts the
redelivered events again): good enough for histograms, and said here.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict

import numpy as np

from icuwatch.core import drift

BUCKET_S = 3600.0
EVICT_IDLE_S = 3600.0
UNPLACED_HOLD_S = 600.0
UNKNOWN_UNIT = "unknown"

Key = tuple[float, str]
"""(event-time hour start, unit)."""


_ONE = np.ones(1, dtype=np.int64)


def _hour(t: float) -> float:
    return math.floor(t / BUCKET_S) * BUCKET_S


def _add(columns: dict[str, np.ndarray], column: str, counts: list[int] | np.ndarray) -> None:
    held = columns.get(column)
    columns[column] = np.asarray(counts, dtype=np.int64) + (held if held is not None else 0)


class DriftCounts:
    def __init__(self, writer: str) -> None:
        self.writer = writer
        self.columns: dict[Key, dict[str, np.ndarray]] = defaultdict(dict)
        self.patients: dict[Key, set[str]] = defaultdict(set)
        self.dirty: set[Key] = set()
        self.touched: dict[Key, float] = {}
        """Wall (monotonic) time each bucket was last counted into."""
        self.evicted: Counter[Key] = Counter()
        """How many times each bucket was dropped: the suffix of its writer id when counted again."""
        self.unplaced: dict[str, dict[float, dict[str, np.ndarray]]] = defaultdict(dict)
        """Per patient whose unit is not known yet: hour -> column -> counts."""
        self.unplaced_since: dict[str, float] = {}
        """Wall (monotonic) time each of those patients was first held."""

    def _key(self, unit: str | None, t: float) -> Key:
        key = (_hour(t), unit or UNKNOWN_UNIT)
        self.dirty.add(key)
        self.touched[key] = time.monotonic()
        return key

    def _writer(self, key: Key) -> str:
        n = self.evicted.get(key, 0)
        return self.writer if n == 0 else f"{self.writer}#{n + 1}"

    def _held(self, patient_id: str, t: float) -> dict[str, np.ndarray]:
        """The columns held for a patient whose unit is not known yet, at the hour of ``t``."""
        self.unplaced_since.setdefault(patient_id, time.monotonic())
        return self.unplaced[patient_id].setdefault(_hour(t), {})

    def _place(self, patient_id: str, unit: str | None) -> None:
        """The patient's held counts into ``unit``'s buckets (``None``: ``unknown``)."""
        for hour, columns in self.unplaced.pop(patient_id, {}).items():
            key = self._key(unit, hour)
            for column, counts in columns.items():
                _add(self.columns[key], column, counts)
            self.patients[key].add(patient_id)
        self.unplaced_since.pop(patient_id, None)

    def scored(self, unit: str | None, t: float, x: np.ndarray, patient_id: str | None = None) -> None:
        """One score's feature row (``[1, features]``) at event time ``t``."""
        if unit is None and patient_id is not None:
            columns = self._held(patient_id, t)
        else:
            columns = self.columns[self._key(unit, t)]
        for column, counts in drift.row_counts(x).items():
            _add(columns, column, counts)

    def arrived(self, unit: str | None, patient_id: str, t: float, topic: str) -> None:
        """One accepted message of ``topic`` about the patient, event time ``t``."""
        if unit is None:
            _add(self._held(patient_id, t), f"arrivals:{topic}", _ONE)
            return
        if patient_id in self.unplaced:
            self._place(patient_id, unit)
        key = self._key(unit, t)
        column = f"arrivals:{topic}"
        held = self.columns[key].get(column)
        if held is None:
            self.columns[key][column] = np.ones(1, dtype=np.int64)
        else:
            held[0] += 1
        self.patients[key].add(patient_id)

    def take(self, now: float | None = None) -> list[dict]:
        """The buckets changed since the last call, as rows (cumulative counts of this writer), with
        patients held longer than ``UNPLACED_HOLD_S`` counted under ``unknown`` first; then drops the
        buckets nothing was counted into for ``EVICT_IDLE_S`` (``now``: monotonic time)."""
        now = time.monotonic() if now is None else now
        for patient_id in [p for p, since in self.unplaced_since.items() if now - since > UNPLACED_HOLD_S]:
            self._place(patient_id, None)
        rows = []
        for key in sorted(self.dirty):
            hour, unit = key
            columns = dict(self.columns[key])
            columns["patients"] = np.array([len(self.patients[key])], dtype=np.int64)
            rows += [
                {"bucket_start": hour, "unit": unit, "column": c, "writer": self._writer(key), "counts": v.tolist()}
                for c, v in columns.items()
            ]
        self.dirty.clear()
        for key in [k for k, t in self.touched.items() if now - t > EVICT_IDLE_S]:
            self.columns.pop(key, None)
            self.patients.pop(key, None)
            del self.touched[key]
            self.evicted[key] += 1
        return rows

    def retry(self, rows: list[dict]) -> None:
        """Rows ``take`` gave that could not be written: their buckets are written at the next flush."""
        self.dirty.update(k for k in {(r["bucket_start"], r["unit"]) for r in rows} if k in self.columns)
