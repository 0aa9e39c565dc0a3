"""Start ``icuwatch worker`` as a child process and wait until Faust has assigned its partitions
(used by the demo and by the end-to-end tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from icuwatch.core.settings import Settings
from icuwatch.streams.stats import stats_path

__all__ = ["READY", "start_worker", "stop_worker", "stats_path"]

READY = "Worker]: Ready"


def start_worker(
    settings: Settings, log_path: Path, env: dict[str, str] | None = None, timeout_s: float = 60.0
) -> subprocess.Popen:
    """The worker runs on ``settings`` (database, consumer group, web port passed explicitly) plus
    ``env``; its output is appended to ``log_path``. Raises if it exits or is not ready in time."""
    full_env = {
        **os.environ,
        **(env or {}),
        "ICUWATCH_DATABASE_URL": settings.database_url,
        "ICUWATCH_APP_ID": settings.app_id,
        "ICUWATCH_WORKER_WEB_PORT": str(settings.worker_web_port),
    }
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "icuwatch.cli.main", "worker"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
        )
    deadline = time.monotonic() + timeout_s
    while True:
        with open(log_path, "rb") as f:
            f.seek(start)
            if READY.encode() in f.read():
                return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_worker(proc)
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker failed to start (exit {proc.returncode}); log tail:\n{tail}")
        time.sleep(0.2)


def stop_worker(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
