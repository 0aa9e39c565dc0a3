"""The soak's leak hunt: growth is attributed to the source line that allocated it."""

from __future__ import annotations

import json
import tracemalloc

from icuwatch.streams.memory_profile import MemoryProfile, start


def test_growth_is_named_by_the_allocating_line(tmp_path):
    was_tracing = tracemalloc.is_tracing()
    start()
    try:
        profile = MemoryProfile(tmp_path / "memory.json")
        profile.write({"processed": 0})
        held = [bytes(1024) + bytes([i % 256]) for i in range(4000)]  # ~4 MiB from this line
        profile.write({"processed": len(held)})
    finally:
        if not was_tracing:
            tracemalloc.stop()
    history = json.loads((tmp_path / "memory.json").read_text())
    assert [h["processed"] for h in history] == [0, 4000]
    grown = history[1]["grown_since_first"]
    top = grown[0]
    assert top["where"].endswith("test_memory_profile.py:17"), grown[:3]
    assert top["kib"] > 3900 and top["blocks"] >= 4000
    assert history[0]["grown_since_first"] == [] and history[1]["grown_since_previous"][0] == top
