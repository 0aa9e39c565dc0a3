"""Publishing a simulation to Kafka at a chosen pace, and writing its ground truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from icuwatch.sources.pacing import send_paced

from .simulation import Simulation


def publish(sim: Simulation, producer: Any, speed: float, progress: bool = False) -> dict[str, int]:
    """Send every message of ``sim`` with ``producer.send(topic, key=..., value=...)``.

    Pacing follows publish time (event time; result/arrival time for labs and X-rays): ``speed``
    simulated seconds per wall second, 0 for as fast as possible. If generation or the broker falls
    behind, messages go out as fast as they can until the schedule is met again. Returns the
    number of messages sent per topic; flushes the producer at the end. (The pacing itself is
    :func:`icuwatch.sources.pacing.send_paced`, shared with the replays.)
    """
    return send_paced(
        sim.timed_messages(),
        producer,
        speed,
        start_time=sim.start_time,
        end_time=sim.end_time,
        progress=progress,
        unit="sim s",
    )


def write_ground_truth(sim: Simulation, path: str | Path) -> Path:
    """Write ``sim.ground_truth()`` (a JSON list, one object per patient) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sim.ground_truth(), indent=2) + "\n")
    return path
