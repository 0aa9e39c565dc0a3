"""``bench pipeline --profile DIR``: py-spy samples the first worker while the beds publish, and the
samples are split into the parts of a message's cost (decode, state update, Faust's per-record
machinery, aiokafka, checkpoints and acknowledgements, changelog writes, the database thread...).

py-spy (``pip install py-spy``; the ``profile`` extra) reads the worker's stacks from outside, so the
worker runs unmodified. A sample is "busy" unless its innermost frame is a thread waiting (the event
loop's ``select``, an idle executor thread). A sample's part is the first rule below that matches
any frame of its stack, so a database call made from the alert agent counts as the database's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

IDLE_FRAMES = ("EpollSelector.select", "_worker (concurrent/futures/thread.py:81)", "Condition.wait")
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("database thread (SQLAlchemy, SQLite/PostgreSQL)", ("StorageSink._run",)),
    ("alert agent (scores -> alerts)", ("raise_alerts (",)),
    ("changelog writes (Faust tables)", ("faust/tables/",)),
    (
        "checkpoints, acknowledgements, commits",
        ("checkpoint (", "streams/kafka/acks.py", "commit_floor.py", "Consumer.ack", "Consumer.commit", "_commit_tps"),
    ),
    ("decode and validation (pydantic v1, msgspec v2)", ("decode (core/schemas.py", "_decode_waveform_v2")),
    ("waveform features at scoring (QRS and pulse detection)", ("refresh_waveform_features (",)),
    ("state update (vitals, labs, waveform buffers)", ("apply_message (", "next_step (")),
    (
        "scoring (rows, batcher, Triton client)",
        ("streams/batcher.py", "streams/scoring.py", "streams/live_row.py", "streams/student_row.py"),
    ),
    ("timers (stats, liveness)", ("write_stats (", "check_liveness (", "checkpoint_idle_patients (")),
    ("ingest agent, rest", ("ingest (streams/worker.py",)),
    ("Faust per-record machinery (fetch loop, conductor, events, stream iteration)", ("faust/",)),
    ("aiokafka (fetch, unpack records, produce)", ("aiokafka/",)),
]
OTHER = "event loop and other"


def start(pid: int, seconds: float, raw_path: Path, rate_hz: int = 50) -> subprocess.Popen | None:
    """Start py-spy on ``pid`` for ``seconds``; None (and a message) when py-spy is not installed."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        print("bench pipeline: --profile needs py-spy (pip install py-spy)", flush=True)
        return None
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", str(rate_hz), "-f", "raw", "-o", str(raw_path)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def part_of(stack: str) -> str | None:
    """The part a sample belongs to (None: an idle thread)."""
    frames = stack.split(";")
    if frames[-1].startswith(IDLE_FRAMES):
        return None
    for part, markers in PARTS:
        if any(m in stack for m in markers):
            return part
    return OTHER


def breakdown(raw_path: Path, cpu_us_per_message: float | None = None) -> dict:
    """Per part: share of the busy samples and, given the worker's CPU per message, its µs."""
    counts: Counter = Counter()
    idle = 0
    for line in raw_path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        part = part_of(stack)
        if part is None:
            idle += int(n)
        else:
            counts[part] += int(n)
    busy = sum(counts.values())
    parts = {
        part: {
            "share": round(n / busy, 4),
            **({"us_per_message": round(n / busy * cpu_us_per_message, 1)} if cpu_us_per_message else {}),
        }
        for part, n in counts.most_common()
    }
    return {"samples_busy": busy, "samples_idle": idle, "raw": str(raw_path), "parts": parts}
