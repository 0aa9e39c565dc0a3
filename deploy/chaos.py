"""``icuwatch chaos``: faults injected into a running pipeline; the alerts stored are compared with a
fault-free run of the same simulated patients and with the simulator's ground truth.

Every run has a stack of its own (Tansu on 27092, tritonserver on 27000-27002, workers' web ports
27066+, a fresh PostgreSQL database reached through a :class:`FaultProxy` on 27432), the same
seeded patients at the same event times, so a fault-free pipeline raises the same alert ids (the
id is patient, kind and episode start) and any difference is the fault's doing:

* lost: an alert (patient and kind) of the fault-free run missing from the faulted one;
* duplicated: more distinct alert ids for a patient and kind than the fault-free run has (stored
  or refused as "suppressed" because one was open: both mean a redelivered stream re-raised an
  episode under another id).

Scores are compared too: a score time of the fault-free run missing after the fault, or one whose
vital-sign scores (NEWS2, qSOFA) differ, means the patient's window did not come back whole.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from icuwatch.deploy.fault_proxy import FaultProxy
from icuwatch.settings import REPO_ROOT, Settings

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
    start_time: float = field(default_factory=lambda: float(int(time.time()) - 6 * 3600))
    """Event time of the first message, the same for every run so that alert ids can match."""


@dataclass
class Run:
    """One pipeline run: its settings, workers, database proxy and a timeline of what happened."""

    name: str
    settings: Settings
    env: dict[str, str]
    proxy: FaultProxy
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


def worker_sigkill(run: Run, cfg: Config) -> None:
    run.stop_worker(0, kill=True)
    time.sleep(WORKER_RESTART_S)
    run.start_worker(0)


def rebalance(run: Run, cfg: Config) -> None:
    run.stop_worker(1)
    time.sleep(cfg.fault_s)
    run.start_worker(1)


def triton_stop(run: Run, cfg: Config) -> None:
    from icuwatch.deploy import triton

    triton.stop(triton_settings())
    run.note("tritonserver stopped")
    time.sleep(cfg.fault_s)
    triton.start(triton_settings(), timeout_s=120)
    run.note("tritonserver ready again")


def database_stop(run: Run, cfg: Config) -> None:
    run.proxy.cut()
    run.note("database unreachable (connections cut, new ones refused)")
    time.sleep(cfg.fault_s)
    run.proxy.restore()
    run.note("database reachable again")


def broker_restart(run: Run, cfg: Config) -> None:
    from icuwatch.deploy import broker

    broker.stop(run.settings)
    run.note("broker stopped")
    time.sleep(BROKER_DOWN_S)
    broker.start(run.settings)
    run.note("broker started again (memory storage: empty)")


def control(run: Run, cfg: Config) -> None:
    """No fault: a second fault-free run, the noise floor of the comparison (score times shift a
    little between any two runs, since the topics are consumed at slightly different paces)."""
    run.note("no fault (control)")


SCENARIOS: dict[str, Callable[[Run, Config], None]] = {
    "control": control,
    "worker-sigkill": worker_sigkill,
    "rebalance": rebalance,
    "triton-stop": triton_stop,
    "database-stop": database_stop,
    "broker-restart": broker_restart,
}
WORKERS = {"rebalance": 2}


def triton_settings() -> Settings:
    """One tritonserver for every run (its pid file outside the runs' own state directories)."""
    return Settings(**{k.removeprefix("ICUWATCH_").lower(): v for k, v in CHAOS_ENV.items()},
                    state_dir=REPO_ROOT / "var" / "chaos" / "triton")


def _create_database() -> tuple[str, str]:
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


def _drop_database(url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def _read_outcome(url: str) -> dict:
    """Alerts (stored and suppressed ids) and scores of this run, read directly (not via the proxy)."""
    from sqlalchemy import select

    from icuwatch.storage import db
    from icuwatch.storage.models import Alert, AlertEvent, Score

    engine = db.make_engine(url)
    with db.session_factory(engine)() as s:
        alerts = {a.alert_id: (a.patient_id, a.kind) for a in s.scalars(select(Alert))}
        suppressed = {(e.detail or {}).get("suppressed_alert_id") for e in
                      s.scalars(select(AlertEvent).where(AlertEvent.action == "suppressed"))}
        scores = {(sc.patient_id, round(sc.event_time.timestamp())): (sc.news2, sc.qsofa, sc.source, sc.trigger)
                  for sc in s.scalars(select(Score))}
    engine.dispose()
    return {"alerts": alerts, "suppressed": sorted(i for i in suppressed if i), "scores": scores}


STATE_FIELDS = ("vitals", "window", "hourly", "labs", "cxr", "recent_vitals_t")
"""The parts of a patient's state that every message changes and that do not depend on the order
the topics were read in: after all messages, a pipeline that lost none holds exactly these."""


def expected_states(sim) -> dict[str, dict]:
    """Every simulated message (bar waveform chunks, which live outside the table) folded once into
    each patient's state, as JSON would carry it."""
    from icuwatch.streams import patient_state, schemas

    states: dict[str, dict] = {}
    for _, _, msg in sim.timed_messages():
        if not isinstance(msg, schemas.Waveform):
            patient_state.apply(states.setdefault(msg.patient_id, patient_state.new_state()), msg)
    return json.loads(json.dumps({p: {f: st[f] for f in STATE_FIELDS} for p, st in states.items()}))


def state_differences(states: dict[str, dict], expected: dict[str, dict]) -> dict[str, dict]:
    """Per patient whose checkpoint is not whole: each differing field, checkpointed vs expected."""
    out: dict[str, dict] = {}
    for p, want in expected.items():
        got = states.get(p)
        if got is None:
            out[p] = {"missing": True}
            continue
        diff = {f: {"checkpointed": got.get(f), "expected": want[f]} for f in STATE_FIELDS if got.get(f) != want[f]}
        if diff:
            out[p] = diff
    return out


def checkpointed_states(settings: Settings) -> dict[str, dict]:
    """The newest checkpoint of every patient, read from the ``patient_state`` changelog."""
    from kafka import KafkaConsumer

    from icuwatch.streams import topics

    consumer = KafkaConsumer(topics.changelogs(settings.app_id)[0], bootstrap_servers=settings.broker,
                             auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=3000)
    latest = {m.key.decode(): m.value for m in consumer if m.key is not None and m.value is not None}
    consumer.close()
    return {p: {f: json.loads(v).get(f) for f in STATE_FIELDS} for p, v in latest.items()}


def _score_count(url: str) -> int:
    from sqlalchemy import func, select

    from icuwatch.storage import db
    from icuwatch.storage.models import Score

    engine = db.make_engine(url)
    with db.session_factory(engine)() as s:
        n = s.scalar(select(func.count()).select_from(Score)) or 0
    engine.dispose()
    return n


def _wait_quiet(run: Run, url: str, quiet_s: float, timeout_s: float) -> bool:
    """Until the workers' counters and the stored scores stop changing for ``quiet_s``."""
    from icuwatch.deploy.bench_pipeline import read_stats
    from icuwatch.deploy.worker_process import stats_path

    deadline, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while time.monotonic() < deadline:
        paths = [stats_path(run.worker_settings(i)) for i, w in enumerate(run.workers) if w is not None]
        stats = read_stats(paths)
        now = (stats.get("processed"), stats.get("scores_taken"), stats.get("scores_pending"), _score_count(url))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s and stats.get("scores_pending") == 0 \
                and stats.get("unacknowledged") == 0:
            return True
        time.sleep(1.0)
    return False


def run_once(name: str, cfg: Config, progress: bool) -> dict:
    """The pipeline on the simulated patients of ``cfg``, with fault ``name`` (or "none")."""
    from icuwatch.deploy import broker, triton
    from icuwatch.deploy.bench_pipeline import read_stats
    from icuwatch.deploy.worker_process import stats_path
    from icuwatch.storage import db
    from icuwatch.streams.producer import make_producer
    from icuwatch.streams.simulator import Simulation
    from icuwatch.streams.simulator.producer import publish

    state_dir = REPO_ROOT / "var" / "chaos" / name
    shutil.rmtree(state_dir, ignore_errors=True)
    direct_url, proxied_url = _create_database()
    env = {**CHAOS_ENV, "ICUWATCH_STATE_DIR": str(state_dir), "ICUWATCH_DATABASE_URL": proxied_url}
    settings = Settings(**{k.removeprefix("ICUWATCH_").lower(): v for k, v in env.items()})
    proxy = FaultProxy(PROXY_PORT, ("127.0.0.1", 5432)).start()
    run = Run(name, settings, env, proxy)
    say = (lambda m: print(f"chaos {name}: {m}", file=sys.stderr)) if progress else (lambda m: None)
    try:
        db.upgrade(direct_url)
        broker.start(settings)
        triton.start(triton_settings(), timeout_s=120)
        for i in range(WORKERS.get(name, 1)):
            run.start_worker(i)
        sim = Simulation(n_patients=cfg.patients, seed=cfg.seed, start_time=cfg.start_time,
                         duration_s=cfg.hours * 3600.0, patient_prefix=PREFIX)
        producer = make_producer(settings)
        produced: dict = {}
        sender = threading.Thread(target=lambda: produced.update(publish(sim, producer, speed=cfg.speed)),
                                  daemon=True)
        run.note("stream started")
        say(f"{cfg.patients} patients, {cfg.hours:g} h at {cfg.speed:g}x ...")
        sender.start()
        if name != "none":
            time.sleep(max(0.0, cfg.fault_at_s - (time.monotonic() - run.t0)))
            say("injecting the fault ...")
            SCENARIOS[name](run, cfg)
        sender.join()
        producer.close()
        run.note(f"stream ended ({sum(produced.values())} messages acknowledged by the broker)")
        say("stream ended; waiting for the pipeline to settle ...")
        settled = _wait_quiet(run, direct_url, quiet_s=8.0, timeout_s=300.0)
        run.note("settled" if settled else "did not settle within 300 s")
        stats = read_stats([stats_path(run.worker_settings(i)) for i, w in enumerate(run.workers) if w])
        outcome = _read_outcome(direct_url)
        states, expected = checkpointed_states(settings), expected_states(sim)
        outcome["states_whole"] = sum(states.get(p) == st for p, st in expected.items())
        outcome["states_total"] = len(expected)
        differing = state_differences(states, expected)
        (state_dir / "states_differing.json").write_text(json.dumps(differing, indent=1))
        outcome["state_fields_differing"] = dict(Counter(f for fields in differing.values() for f in fields))
        (state_dir / "scores.json").write_text(json.dumps(sorted([*k, *v] for k, v in outcome["scores"].items())))
        logs = "".join(f.read_text(errors="replace") for f in settings.log_dir.glob("worker-*.log"))
        truth = sim.ground_truth()
        outcome.update(patient_ids_in_logs=any(t["patient_id"] in logs for t in truth), truth=truth, produced=sum(produced.values()), settled=settled,
                       timeline=run.timeline, worker=_worker_summary(stats))
        return outcome
    finally:
        for i in range(len(run.workers)):
            run.stop_worker(i)
        proxy.stop()
        broker.stop(settings)
        _drop_database(direct_url)


def _worker_summary(stats: dict) -> dict:
    keys = ("processed", "duplicates", "deadlettered", "scores_published", "scores_taken", "alerts_raised",
            "alerts_republished", "alerts_suppressed", "checkpoints", "unacknowledged")
    return {k: stats.get(k) for k in keys} | {"scorer": stats.get("scorer")}


def compare(run: dict, reference: dict) -> dict:
    """Lost and duplicated alerts (see the module docstring), scores lost or changed, ground truth."""
    def by_pair(outcome: dict) -> dict[tuple[str, str], set[str]]:
        pairs: dict[tuple[str, str], set[str]] = defaultdict(set)
        for alert_id, pair in outcome["alerts"].items():
            pairs[pair].add(alert_id)
        for alert_id in outcome["suppressed"]:
            patient, kind, _ = alert_id.rsplit(":", 2)
            pairs[(patient, kind)].add(alert_id)
        return pairs

    ref, got = by_pair(reference), by_pair(run)
    lost = sorted(f"{p}:{k}" for (p, k) in ref if not got.get((p, k)))
    duplicated = sum(max(0, len(ids) - len(ref.get(pair, ()))) for pair, ids in got.items())
    ref_scores, scores = reference["scores"], run["scores"]
    missing = [k for k in ref_scores if k not in scores]
    differing = [k for k in ref_scores if k in scores and scores[k][:2] != ref_scores[k][:2]]
    sick = {t["patient_id"] for t in run["truth"] if t.get("onset_time") is not None}
    alerted = {p for p, _ in run["alerts"].values()}
    sources = defaultdict(int)
    for _, _, source, _ in scores.values():
        sources[source] += 1
    return {
        "lost": len(lost),
        "duplicated": duplicated,
        "lost_alerts": lost,
        "alerts_stored": len(run["alerts"]),
        "patient_states_whole": f"{run['states_whole']}/{run['states_total']}",
        "state_fields_differing": run["state_fields_differing"],
        "alert_ids_equal_reference": set(run["alerts"]) == set(reference["alerts"]),
        "deteriorating_alerted": f"{len(alerted & sick)}/{len(sick)}",
        "stable_alerted": len(alerted - sick),
        "scores": {"stored": len(scores), "reference": len(ref_scores), "missing": len(missing),
                   "vital_scores_differing": len(differing), "by_source": dict(sources)},
        "produced": run["produced"],
        "settled": run["settled"],
        "patient_ids_in_logs": run["patient_ids_in_logs"],
        "worker": run["worker"],
        "timeline": run["timeline"],
    }


def _all_whole(fraction: str) -> bool:
    whole, total = fraction.split("/")
    return whole == total


def run_chaos(scenarios: list[str], cfg: Config, progress: bool = True) -> dict:
    from icuwatch.deploy import processes, triton

    host, port = processes.split_host_port(CHAOS_ENV["ICUWATCH_BROKER"], 9092)
    if processes.port_open(host, port):
        raise SystemExit(f"chaos: {host}:{port} is in use (another chaos run?)")
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"chaos: unknown scenario(s) {unknown}; choose from {sorted(SCENARIOS)}")
    started = time.time()
    try:
        reference = run_once("none", cfg, progress)
        results = {name: compare(run_once(name, cfg, progress), reference) for name in scenarios}
    finally:
        triton.stop(triton_settings())
    sick = [t for t in reference["truth"] if t.get("onset_time") is not None]
    ref_alerted = {p for p, _ in reference["alerts"].values()}
    return {
        "data": "simulated patients (icuwatch simulator), not real data",
        "config": {"patients": cfg.patients, "hours": cfg.hours, "speed": cfg.speed, "fault_at_s": cfg.fault_at_s,
                   "fault_s": cfg.fault_s, "seed": cfg.seed, "database": "PostgreSQL via a fault proxy",
                   "broker": "Tansu 0.6, memory storage"},
        "reference": {"alerts_stored": len(reference["alerts"]), "scores": len(reference["scores"]),
                      "patient_states_whole": f"{reference['states_whole']}/{reference['states_total']}",
                      "deteriorating_alerted": f"{len(ref_alerted & {t['patient_id'] for t in sick})}/{len(sick)}",
                      "produced": reference["produced"], "settled": reference["settled"]},
        "scenarios": results,
        "all_ok": all(r["lost"] == 0 and r["duplicated"] == 0 and r["settled"] and not r["patient_ids_in_logs"]
                      and (_all_whole(r["patient_states_whole"]) or name == "broker-restart")
                      for name, r in results.items()),
        "all_ok_means": "0 lost, 0 duplicated, settled, no patient id in the workers' logs, every "
                        "patient's checkpointed state whole "
                        "(bar broker-restart: the local broker keeps nothing over a restart)",
        "wall_s": round(time.time() - started, 1),
    }
