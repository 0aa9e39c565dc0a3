"""Where a worker's memory goes: ``tracemalloc`` snapshots grouped by source line (opt-in through
``ICUWATCH_WORKER_MEMORY_PROFILE_S``). A soak whose RSS keeps rising shows here whether the growth
is patient state filling its windows (bounded) or something that grows with every message (a leak).
The standard library's tracer is used rather than a heap profiler package: one frame per allocation
is enough to name the line, and it needs nothing installed."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

from icuwatch.core.settings import REPO_ROOT, Settings

TOP = 25


def path(settings: Settings) -> Path:
    """Where the worker on ``settings`` writes its snapshots (next to its stats file)."""
    return settings.run_dir / f"memory-{settings.worker_web_port}.json"


def start() -> None:
    if not tracemalloc.is_tracing():
        tracemalloc.start(1)


class MemoryProfile:
    """Snapshots every call to :meth:`write`; the first one is the baseline the growth is measured from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.first: tracemalloc.Snapshot | None = None
        self.previous: tracemalloc.Snapshot | None = None
        self.history: list[dict] = []

    def write(self, extra: dict | None = None) -> None:
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        self.first = self.first or snapshot
        previous, self.previous = self.previous or snapshot, snapshot
        traced, peak = tracemalloc.get_traced_memory()
        self.history.append(
            {
                "at": time.time(),
                "traced_mb": round(traced / 2**20, 2),
                "peak_mb": round(peak / 2**20, 2),
                **(extra or {}),
                "top_lines": [_line(s.traceback, s.size, s.count) for s in snapshot.statistics("lineno")[:TOP]],
                "grown_since_first": _grown(snapshot, self.first),
                "grown_since_previous": _grown(snapshot, previous),
            }
        )
        tmp = self.path.with_suffix(".tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(self.history))
        tmp.replace(self.path)


def _grown(snapshot: tracemalloc.Snapshot, before: tracemalloc.Snapshot) -> list[dict]:
    return [
        _line(d.traceback, d.size_diff, d.count_diff)
        for d in snapshot.compare_to(before, "lineno")[:TOP]
        if d.size_diff > 0
    ]


def _line(traceback: tracemalloc.Traceback, size: int, count: int) -> dict:
    frame = traceback[0]
    return {"where": f"{_short(frame.filename)}:{frame.lineno}", "kib": round(size / 1024, 1), "blocks": count}


def _short(filename: str) -> str:
    for prefix in ("site-packages/", "/lib/python"):
        if prefix in filename:
            return filename.split(prefix, 1)[1]
    return filename.removeprefix(f"{REPO_ROOT}/")
