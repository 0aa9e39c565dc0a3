"""Where the worker writes its counters: a JSON file rewritten every second (processed, offsets
taken, lag), read by the demo, the benchmarks and the drills."""

from __future__ import annotations

from pathlib import Path

from icuwatch.core.settings import Settings


def stats_path(settings: Settings) -> Path:
    """The JSON file the worker rewrites every second (counters, offsets taken, lag)."""
    return settings.run_dir / f"worker-{settings.worker_web_port}.json"
