"""The chaos runs' own stack: ports, settings, the workers of one run, its fresh PostgreSQL database."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field

from icuwatch.benchmarks.fault_proxy import FaultProxy
from icuwatch.core.settings import REPO_ROOT, Settings

CHAOS_ENV = {
    "ICUWATCH_BROKER": "127.0.0.1:27092",
    "ICUWATCH_TRITON_URL": "127.0.0.1:27001",
    "ICUWATCH_TRITON_HTTP_PORT": "27000",
    "ICUWATCH_TRITON_METRICS_PORT": "27002",
    "ICUWATCH_TRITON_RETRY_S": "1.0",
    "ICUWATCH_WORKER_WEB_PORT": "27066",
    "ICUWATCH_APP_ID": "icuwatch-chaos",
}
PROXY_PORT = 27432
BROKER_LISTEN = "127.0.0.1:27093"
"""Where the broker listens when its clients reach it through a proxy on ``ICUWATCH_BROKER``."""
POSTGRES_ADMIN_URL = os.environ.get("ICUWATCH_TEST_POSTGRES_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PREFIX = "chaos-"
BROKER_DOWN_S = 5.0
WORKER_RESTART_S = 3.0
"""A supervisor (Kubernetes, systemd) restarts a killed worker after a short back-off."""


@dataclass
class Config:
    patients: int = 8
    hours: float = 3.0
    """Event time simulated; deteriorating patients' onsets fall 10-60 min in."""
    speed: float = 90.0
    """Simulated seconds per wall second (3 h at 90: two minutes of stream)."""
    fault_at_s: float = 40.0
    """Wall seconds into the stream when the fault starts."""
    fault_s: float = 30.0
    """How long Triton or the database stays away, or the second worker stays out of the group."""
    seed: int = 3
    waveform_payload: int = 2
    """How the simulated monitors send waveform chunks (1: JSON, 2: binary; core/schemas.py)."""
    start_time: float = field(default_factory=lambda: float(int(time.time()) - 6 * 3600))
    """Event time of the first message, the same for every run so that alert ids can match."""


@dataclass
class Run:
    """One pipeline run: its settings, workers, database proxy and a timeline of what happened."""

    name: str
    settings: Settings
    env: dict[str, str]
    proxy: FaultProxy
    broker_proxy: FaultProxy | None = None
    workers: list[subprocess.Popen | None] = field(default_factory=list)
    timeline: list[dict] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def note(self, event: str) -> None:
        self.timeline.append({"t_s": round(time.monotonic() - self.t0, 1), "event": event})

    def worker_settings(self, i: int) -> Settings:
        return self.settings.model_copy(update={"worker_web_port": self.settings.worker_web_port + i})

    def start_worker(self, i: int) -> None:
        from icuwatch.deploy.worker_process import start_worker

        proc = start_worker(self.worker_settings(i), self.settings.log_dir / f"worker-{i}.log", self.env)
        if i < len(self.workers):
            self.workers[i] = proc
        else:
            self.workers.append(proc)
        self.note(f"worker {i} ready")

    def stop_worker(self, i: int, kill: bool = False) -> None:
        from icuwatch.deploy.worker_process import stop_worker

        proc = self.workers[i]
        if proc is None:
            return
        if kill:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.note(f"worker {i} killed (SIGKILL)")
        else:
            stop_worker(proc)
            self.note(f"worker {i} stopped (SIGTERM)")
        self.workers[i] = None


def triton_settings() -> Settings:
    """One tritonserver for every run (its pid file outside the runs' own state directories)."""
    return Settings(
        **{k.removeprefix("ICUWATCH_").lower(): v for k, v in CHAOS_ENV.items()},
        state_dir=REPO_ROOT / "var" / "chaos" / "triton",
    )


def create_database() -> tuple[str, str]:
    """(admin URL of a fresh database, its URL through the proxy)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"icuwatch_chaos_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    direct = make_url(POSTGRES_ADMIN_URL).set(database=name)
    proxied = direct.set(host="127.0.0.1", port=PROXY_PORT)
    return (direct.render_as_string(hide_password=False), proxied.render_as_string(hide_password=False))


def drop_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def read_outcome(url: str) -> dict:
    """Alerts (stored and suppressed ids) and scores of this run, read directly (not via the proxy);
    ``refusals`` describes every refused episode (:func:`refusal`)."""
    from sqlalchemy import select

    from icuwatch.storage import db
    from icuwatch.storage.models import Alert, AlertEvent, Score

    engine = db.make_engine(url)
    with db.session_factory(engine)() as s:
        # Risk alerts: data-liveness alerts depend on wall time (how long a fault silenced a feed),
        # so a run and its fault-free reference need not agree on them.
        risk_alerts = select(Alert).where(Alert.kind != "data_liveness")
        alerts = {a.alert_id: (a.patient_id, a.kind) for a in s.scalars(risk_alerts)}
        scores = {
            (sc.patient_id, round(sc.event_time.timestamp())): (sc.news2, sc.qsofa, sc.source, sc.trigger)
            for sc in s.scalars(select(Score))
        }
        refused = [e.detail or {} for e in s.scalars(select(AlertEvent).where(AlertEvent.action == "suppressed"))]
    engine.dispose()
    refusals = [refusal(d, scores) for d in refused if d.get("suppressed_alert_id")]
    return {
        "alerts": alerts,
        "suppressed": sorted(r["alert_id"] for r in refusals),
        "refusals": refusals,
        "scores": scores,
    }


def refusal(detail: dict, scores: dict) -> dict:
    """A refused ('suppressed') episode: its id, the source of the score that opened it, and the
    source of the score its 'above' run began on (the episode start; None if that score is not
    stored)."""
    from datetime import datetime

    alert_id = detail["suppressed_alert_id"]
    patient_id = alert_id.rsplit(":", 2)[0]
    start = detail.get("episode_start")
    began = scores.get((patient_id, round(datetime.fromisoformat(start).timestamp()))) if start else None
    return {"alert_id": alert_id, "opened_by": detail.get("source"), "run_began_on": began[2] if began else None}


def score_count(url: str) -> int:
    from sqlalchemy import func, select

    from icuwatch.storage import db
    from icuwatch.storage.models import Score

    engine = db.make_engine(url)
    with db.session_factory(engine)() as s:
        n = s.scalar(select(func.count()).select_from(Score)) or 0
    engine.dispose()
    return n
