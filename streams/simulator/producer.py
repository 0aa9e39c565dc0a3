"""Publishing a simulation to Kafka at a chosen pace, and writing its ground truth."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .simulation import Simulation

_MIN_SLEEP_S = 0.002


def publish(sim: Simulation, producer: Any, speed: float, progress: bool = False) -> dict[str, int]:
    """Send every message of ``sim`` with ``producer.send(topic, key=..., value=...)``.

    Pacing follows publish time (event time; result/arrival time for labs and X-rays): ``speed``
    simulated seconds per wall second, 0 for as fast as possible. If generation or the broker falls
    behind, messages go out as fast as they can until the schedule is met again. Returns the
    number of messages sent per topic; flushes the producer at the end.
    """
    if speed < 0:
        raise ValueError("speed must be >= 0")
    counts: Counter[str] = Counter()
    wall0 = time.monotonic()
    shown = sim.start_time
    bar = tqdm(total=round(sim.duration_s), unit="sim s", disable=not progress, dynamic_ncols=True)
    try:
        for t, topic, msg in sim.timed_messages():
            if speed > 0:
                delay = wall0 + (t - sim.start_time) / speed - time.monotonic()
                if delay > _MIN_SLEEP_S:
                    time.sleep(delay)
            producer.send(topic, key=msg.key(), value=msg.to_bytes())
            counts[topic] += 1
            if progress and t - shown >= 1.0:
                bar.update(round(t - shown))
                shown += round(t - shown)
                bar.set_postfix(msgs=sum(counts.values()), refresh=False)
        if progress:
            bar.update(max(0, round(sim.end_time - shown)))
    finally:
        bar.close()
    producer.flush()
    return dict(counts)


def write_ground_truth(sim: Simulation, path: str | Path) -> Path:
    """Write ``sim.ground_truth()`` (a JSON list, one object per patient) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sim.ground_truth(), indent=2) + "\n")
    return path
