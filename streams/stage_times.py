"""Where a score's time goes inside the worker, one row per score (opt-in: ``worker_stage_times``).

``icuwatch bench pipeline`` measures event -> scored from outside: the score's event time against the
time it was stored. This splits it at the worker's own hand-offs, per score:

==============  ==============================================================================
column          wall time (epoch seconds) when ...
==============  ==============================================================================
event_time      the event happened (the score's event time: the message that triggered it)
appended        the broker appended that message (its record timestamp; NaN if it had none)
taken           the worker's ingest agent took the message from its stream
submitted       the patient's row was built and handed to the scoring batcher
scored          the batch's Triton call (or the rules' fallback) returned
published       the score was handed to the producer (``icu.scores``)
==============  ==============================================================================

Rows go to a flat float64 file (``path``), appended once a second by the stats timer, so a bench
reads them after the run (``read``) and keeps the rows it wants (after warm-up). A numpy ring, not
Python objects: a 1,000-bed worker makes tens of scores a second, and its collector pauses are
what is being measured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

COLUMNS: tuple[str, ...] = ("event_time", "appended", "taken", "submitted", "scored", "published")
CAPACITY = 1 << 16


class StageTimes:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self._rows = np.full((capacity, len(COLUMNS)), np.nan)
        self._written = 0
        self._next = 0

    def record(self, *times: float | None) -> None:
        """One score's times, in ``COLUMNS`` order (None: not known)."""
        if self._next - self._written >= len(self._rows):  # not flushed for a whole ring: drop the oldest
            self._written = self._next - len(self._rows) + 1
        self._rows[self._next % len(self._rows)] = [np.nan if t is None else t for t in times]
        self._next += 1

    def flush(self, path: Path) -> int:
        """Append the rows recorded since the last flush to ``path``; how many."""
        n = self._next - self._written
        if n <= 0:
            return 0
        idx = np.arange(self._written, self._next) % len(self._rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as f:
            self._rows[idx].astype("<f8").tofile(f)
        self._written = self._next
        return n


def path_for(run_dir: Path, worker_port: int) -> Path:
    return run_dir / f"worker-{worker_port}-stages.f64"


def read(path: Path) -> np.ndarray:
    """[n, len(COLUMNS)] rows written by ``StageTimes.flush`` (empty if none)."""
    if not path.exists():
        return np.empty((0, len(COLUMNS)))
    return np.fromfile(path, dtype="<f8").reshape(-1, len(COLUMNS))


def durations(rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per stage, its seconds per score: event -> appended -> taken -> submitted -> scored -> published;
    and appended -> published, what the worker's side owns (its consumer's lag included)."""
    c = {name: rows[:, i] for i, name in enumerate(COLUMNS)}
    return {
        "event_to_appended_s": c["appended"] - c["event_time"],
        "appended_to_taken_s": c["taken"] - c["appended"],
        "taken_to_submitted_s": c["submitted"] - c["taken"],
        "submitted_to_scored_s": c["scored"] - c["submitted"],
        "scored_to_published_s": c["published"] - c["scored"],
        "appended_to_published_s": c["published"] - c["appended"],
        "event_to_published_s": c["published"] - c["event_time"],
    }
