"""``icuwatch bench pipeline``: the simulator at N beds, in real time, through broker -> worker ->
Triton -> database, on a stack of its own (ports 29092 / 28000-28002, SQLite in ``var/bench``).

Consumer lag is measured against the offsets the broker acknowledged to this bench's producer, not
against the broker's reported end offsets, which this Tansu returns stale (shared/DESIGN.md): per
partition, lag = acknowledged end - (last offset the worker's ingest agent took + 1), and the lag in
seconds is how long ago the oldest record not yet taken was sent. The messages are generated before
the clock starts, for a simulation that starts when publishing does and is paced at speed 1, so
event times are wall-clock times and ``stored_at - event_time`` of an alert is the time from the
bedside event to the stored alert.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from icuwatch.benchmarks import worker_profile
from icuwatch.core.settings import REPO_ROOT, Settings
from icuwatch.streams.patient_state import WINDOW_MINUTES

BENCH_ENV = {
    "ICUWATCH_BROKER": "127.0.0.1:29092",
    "ICUWATCH_TRITON_URL": "127.0.0.1:28001",
    "ICUWATCH_TRITON_HTTP_PORT": "28000",
    "ICUWATCH_TRITON_METRICS_PORT": "28002",
    "ICUWATCH_WORKER_WEB_PORT": "26066",
    "ICUWATCH_APP_ID": "icuwatch-bench",
    "ICUWATCH_WORKER_STAGE_TIMES": "1",
}
PREFIX = "bench"
ONSET_WINDOW_S = (-4 * 3600.0, 3600.0)
"""Deteriorating patients' onsets: up to 4 h before the bench starts (admitted already getting worse,
at every stage of a 2-6 h ramp) so that alerts come within minutes, as on a real ward at any moment."""


def bench_settings(state_dir: Path, database_url: str | None, scoring_model: str) -> tuple[Settings, dict]:
    env = {
        **BENCH_ENV,
        "ICUWATCH_STATE_DIR": str(state_dir),
        "ICUWATCH_DATABASE_URL": database_url or f"sqlite:///{state_dir / 'bench.db'}",
    }
    if scoring_model:
        env["ICUWATCH_SCORING_MODEL"] = scoring_model
        env["ICUWATCH_SCORING_MODEL_DIR"] = str(REPO_ROOT / "var" / "models" / scoring_model.replace("_", "-"))
        env["ICUWATCH_TRITON_EXTRA_REPOSITORIES"] = str(REPO_ROOT / "var" / "triton" / "models")
    fields = {k.removeprefix("ICUWATCH_").lower(): v for k, v in env.items()}
    return Settings(**fields), env


@dataclass
class Acks:
    """What the broker acknowledged to the producer: per (topic, partition) the first offset and the
    send time of every offset after it (the producer keeps per-partition order)."""

    base: dict[tuple[str, int], int] = field(default_factory=dict)
    sent_at: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    failed: Counter = field(default_factory=Counter)

    def acked(self, topic: str, partition: int, offset: int, t_send: float) -> None:
        tp = (topic, partition)
        times = self.sent_at.setdefault(tp, [])
        base = self.base.setdefault(tp, offset)
        if offset - base == len(times):
            times.append(t_send)
        else:  # a retry reordered acks: keep the list indexed by offset
            times.extend([t_send] * (offset - base + 1 - len(times)))

    def end(self, tp: tuple[str, int]) -> int:
        return self.base[tp] + len(self.sent_at[tp])

    def total(self, topic: str) -> int:
        return sum(len(v) for (t, _), v in self.sent_at.items() if t == topic)


class AckingProducer:
    """``send`` as the paced publisher expects, recording each acknowledgement in ``acks``."""

    def __init__(self, producer, acks: Acks, clock: dict) -> None:
        self.producer, self.acks, self.clock = producer, acks, clock

    def send(self, topic: str, key: bytes | None, value: bytes):
        t_send = time.time()
        late = t_send - self.clock["t"]
        if late > self.clock["worst"]:
            self.clock["worst"] = late
        future = self.producer.send(topic, key=key, value=value)
        future.add_callback(lambda md: self.acks.acked(md.topic, md.partition, md.offset, t_send))
        future.add_errback(lambda _exc: self.acks.failed.update([topic]))
        return future

    def flush(self) -> None:
        self.producer.flush()


def lag_now(acks: Acks, done: dict[str, dict[str, int]], now: float) -> tuple[int, float]:
    """(records acknowledged but not yet taken by the worker, seconds since the oldest was sent)."""
    records, oldest = 0, now
    for tp, times in list(acks.sent_at.items()):
        end = acks.base[tp] + len(times)
        taken = done.get(tp[0], {}).get(str(tp[1]))
        next_offset = acks.base[tp] if taken is None else int(taken) + 1
        if next_offset < end:
            records += end - next_offset
            oldest = min(oldest, times[max(0, next_offset - acks.base[tp])])
    return records, now - oldest


class Sampler(threading.Thread):
    """Once a second: the worker's stats, the lag against the acknowledged ends, the worker's RSS."""

    def __init__(self, stats_paths: list[Path], acks: Acks, worker_pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.stats_paths, self.acks, self.worker_pids = stats_paths, acks, worker_pids
        self.samples: list[dict] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            stats = read_stats(self.stats_paths)
            if not stats:
                continue
            records, seconds = lag_now(self.acks, stats.get("done_offsets", {}), stats["at"])
            self.samples.append(
                {
                    "at": stats["at"],
                    "processed": stats.get("processed", 0) + stats.get("deadlettered", 0),
                    "lag_records": records,
                    "lag_s": seconds,
                    "rss_mb": sum(rss_mb(pid) or 0.0 for pid in self.worker_pids) or None,
                    "gc_pause_total_s": stats.get("gc_pause_total_s"),
                }
            )


def read_stats(paths: list[Path]) -> dict:
    """The workers' stats files merged: counters summed, offsets taken per partition united (each
    partition belongs to one worker at a time), ``at`` the oldest snapshot. Empty until all wrote."""
    merged: dict = {}
    for path in paths:
        try:
            stats = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        for key, value in stats.items():
            if key == "at":
                merged["at"] = min(value, merged.get("at", value))
            elif key in ("processed_by_topic", "scorer"):
                for k, v in value.items():
                    merged.setdefault(key, {})[k] = merged.get(key, {}).get(k, 0) + v
            elif key.startswith("gc_pause_max_s"):
                merged[key] = max(value, merged.get(key, 0.0))
            elif key == "done_offsets":
                for topic, parts in value.items():
                    merged.setdefault(key, {}).setdefault(topic, {}).update(parts)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                merged[key] = merged.get(key, 0) + value
    return merged


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except FileNotFoundError:
        return None
    return None


GENERATE_US_PER_MESSAGE = 120.0
"""A generous bound on the simulator's cost per message here (measured ~50 us): the run's event
times start this long per message after now, and publishing waits for them."""


def pregenerate(sim, progress: bool) -> list:
    """Every message of the run encoded up front, so that the paced publisher only sends bytes (the
    simulator generating live took 0.7 of this machine's 2 cores at 1,000 beds)."""
    from tqdm import tqdm

    from icuwatch.sources.pacing import RawMessage

    return [
        (t, topic, RawMessage(msg.key(), msg.to_bytes()))
        for t, topic, msg in tqdm(sim.timed_messages(), disable=not progress, unit=" msgs", mininterval=2.0)
    ]


def cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    a = np.asarray(values)
    return {
        "n": len(values),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "max": round(float(a.max()), 3),
    }


def _stored(settings: Settings) -> tuple[list[tuple[float, float]], list[dict]]:
    """(event time, scored at) of every stored score and every stored alert of this run."""
    from sqlalchemy import select

    from icuwatch.storage import db
    from icuwatch.storage.models import Alert, Score

    engine = db.make_engine(settings.database_url)
    with db.session_factory(engine)() as session:
        stored_scores = session.execute(select(Score).where(Score.patient_id.startswith(PREFIX))).scalars().all()
        scores = [(s.event_time.timestamp(), s.scored_at.timestamp()) for s in stored_scores]
        scored_at = {(s.patient_id, s.event_time.timestamp()): s.scored_at.timestamp() for s in stored_scores}
        alerts = [
            {
                "alert_id": a.alert_id,
                "patient_id": a.patient_id,
                "kind": a.kind,
                "event_time": a.event_time.timestamp(),
                "stored_at": a.stored_at.timestamp(),
                "scored_at": scored_at.get((a.patient_id, a.event_time.timestamp())),
            }
            for a in session.execute(
                select(Alert).where(Alert.patient_id.startswith(PREFIX), Alert.kind != "data_liveness")
            ).scalars()
        ]
    engine.dispose()
    return scores, alerts


def _published_alerts(settings: Settings, quiet_s: float = 3.0) -> list[str]:
    """Alert ids on ``icu.alerts`` (read until nothing new for ``quiet_s``: the end offsets lie)."""
    from kafka import KafkaConsumer

    from icuwatch.core import topics

    consumer = KafkaConsumer(
        topics.ALERTS,
        bootstrap_servers=settings.broker,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=int(quiet_s * 1000),
    )
    ids = [json.loads(m.value)["alert_id"] for m in consumer]
    consumer.close()
    return ids


def worker_settings(settings: Settings, i: int) -> Settings:
    return settings.model_copy(update={"worker_web_port": settings.worker_web_port + i})


def stats_paths(settings: Settings, workers: int) -> list[Path]:
    from icuwatch.deploy.worker_process import stats_path

    return [stats_path(worker_settings(settings, i)) for i in range(workers)]


def wait_drained(settings: Settings, acks: Acks, timeout_s: float, workers: int = 1) -> dict:
    deadline = time.monotonic() + timeout_s
    paths = stats_paths(settings, workers)
    while time.monotonic() < deadline:
        stats = read_stats(paths)
        records, _ = lag_now(acks, stats.get("done_offsets", {}), time.time())
        settled = (
            stats.get("scores_taken", -1) >= stats.get("scores_published", 0) and stats.get("scores_pending", 1) == 0
        )
        if stats and records == 0 and settled:
            time.sleep(2.0)
            return read_stats(paths)
        time.sleep(0.5)
    return read_stats(paths)


def run(
    beds: int,
    minutes: float,
    scoring_model: str = "",
    database_url: str | None = None,
    seed: int = 7,
    chunk_s: int = 1,
    workers: int = 1,
    progress: bool = True,
    speed: float = 1.0,
    waveform_payload: int = 2,
    aligned_monitors: bool = False,
    producer_linger_ms: int = 50,
    profile_dir: Path | None = None,
) -> dict:
    """``minutes`` of wall time; ``speed`` > 1 runs event time that much faster (``beds / speed`` beds
    then offer the messages/s of ``beds`` at speed 1, and their windows fill ``speed`` times sooner:
    a soak that reaches full per-patient state within the run). Event-to-score and event-to-alert
    latencies are only reported at speed 1."""
    from icuwatch.deploy import broker, processes, triton
    from icuwatch.deploy.worker_process import start_worker, stop_worker
    from icuwatch.sources.pacing import send_paced
    from icuwatch.sources.simulator import Simulation
    from icuwatch.storage import db
    from icuwatch.streams.kafka.producer import make_producer

    state_dir = REPO_ROOT / "var" / "bench" / "pipeline"
    settings, env = bench_settings(state_dir, database_url, scoring_model)
    host, port = processes.split_host_port(settings.broker, 9092)
    if processes.port_open(host, port):
        raise SystemExit(f"bench pipeline: {host}:{port} is in use (another bench running?)")
    shutil.rmtree(state_dir, ignore_errors=True)
    say = (lambda m: print(f"bench pipeline: {m}", file=sys.stderr)) if progress else (lambda m: None)
    say(f"starting a broker, tritonserver and the database in {state_dir} ...")
    broker.start(settings)
    procs = []
    try:
        models = [settings.triton_model] + ([settings.scoring_model] if settings.scoring_model else [])
        triton.start(settings, ready_models=models, timeout_s=180)
        db.upgrade(settings.database_url)
        for i in range(workers):
            ws = worker_settings(settings, i)
            procs.append(start_worker(ws, settings.log_dir / f"worker-{i}.log", env))
        acks, clock = Acks(), {"t": 0.0, "worst": 0.0}
        producer = AckingProducer(make_producer(settings, linger_ms=producer_linger_ms), acks, clock)
        sampler = Sampler(stats_paths(settings, workers), acks, [p.pid for p in procs])
        sampler.start()
        duration = minutes * 60.0
        expected = beds * duration * speed * (1.0 + 3.0 / chunk_s)
        start = time.time() + 10.0 + expected * GENERATE_US_PER_MESSAGE * 1e-6
        sim = Simulation(
            n_patients=beds,
            seed=seed,
            start_time=start,
            duration_s=duration * speed,
            onset_window_s=ONSET_WINDOW_S,
            patient_prefix=PREFIX,
            waveform_chunk_s=chunk_s,
            waveform_payload=waveform_payload,
            monitor_phases=not aligned_monitors,
        )

        say(f"generating {minutes:g} min of {beds} beds before the clock starts ...")
        items = pregenerate(sim, progress)
        if time.time() > sim.start_time:
            raise RuntimeError("generating the messages took longer than GENERATE_US_PER_MESSAGE allows")
        time.sleep(sim.start_time - time.time())

        def timed():
            for t, topic, msg in items:
                clock["t"] = t
                yield t, topic, msg

        say(f"{beds} beds for {minutes:g} min at {speed:g}x ...")
        spy = worker_profile.start(procs[0].pid, duration, profile_dir / "worker-0.raw") if profile_dir else None
        wall0, cpu0 = time.time(), time.process_time()
        workers_cpu0 = sum(cpu_s(p.pid) or 0.0 for p in procs)
        broker_cpu0 = cpu_s(processes.running_pid(settings, broker.NAME)) or 0.0
        triton_cpu0 = cpu_s(processes.running_pid(settings, triton.NAME)) or 0.0
        send_paced(
            timed(),
            producer,
            speed=speed,
            start_time=sim.start_time,
            end_time=sim.end_time,
            progress=progress,
            unit="s",
        )
        wall_publish = time.time() - wall0
        if spy is not None:
            spy.wait(timeout=60)
        cpu = {
            "simulator_and_producer": round(time.process_time() - cpu0, 1),
            "workers": round(sum(cpu_s(p.pid) or 0.0 for p in procs) - workers_cpu0, 1),
            "broker": round((cpu_s(processes.running_pid(settings, broker.NAME)) or 0.0) - broker_cpu0, 1),
            "tritonserver": round((cpu_s(processes.running_pid(settings, triton.NAME)) or 0.0) - triton_cpu0, 1),
            "wall_s": round(wall_publish, 1),
            "cores": os.cpu_count(),
        }
        say("published; waiting for the worker to drain ...")
        stats = wait_drained(settings, acks, timeout_s=max(120.0, minutes * 60.0), workers=workers)
        sampler.stop.set()
        sampler.join()
        producer.producer.close()
        scores, alerts = _stored(settings)
        published_alerts = _published_alerts(settings)
    finally:
        for proc in procs:
            stop_worker(proc)
        triton.stop(settings)
        broker.stop(settings)
    out = summarise(
        beds,
        minutes,
        sim,
        acks,
        clock,
        stats,
        sampler.samples,
        scores,
        alerts,
        published_alerts,
        wall_publish,
        settings,
        scoring_model,
        workers,
        cpu,
        speed,
    )
    out["producer_linger_ms"] = producer_linger_ms
    if spy is not None and (profile_dir / "worker-0.raw").exists():
        cpu_us = cpu["workers"] / (out["messages"]["taken_by_worker"] or 1) * 1e6
        out["worker_profile"] = worker_profile.breakdown(profile_dir / "worker-0.raw", cpu_us)
    profiles = memory_profiles(settings, workers, sim.start_time)
    if profiles:
        out["worker_memory_profile"] = profiles
    return out


def memory_profiles(settings: Settings, workers: int, t0: float, top: int = 12) -> list[dict]:
    """Each worker's tracemalloc snapshots (``ICUWATCH_WORKER_MEMORY_PROFILE_S``): totals over time
    and the lines that grew most by the last one."""
    from icuwatch.streams import memory_profile

    out = []
    for i in range(workers):
        path = memory_profile.path(worker_settings(settings, i))
        if not path.exists():
            continue
        history = json.loads(path.read_text())
        out.append(
            {
                "worker": i,
                "snapshots": [
                    {k: v for k, v in h.items() if not isinstance(v, list)}
                    | {"t_s": round(h["at"] - t0, 1), "grown_most": h["grown_since_previous"][:5]}
                    for h in history
                ],
                "grown_most_by_last_snapshot": history[-1]["grown_since_first"][:top],
                "largest_at_last_snapshot": history[-1]["top_lines"][:top],
            }
        )
    return out


def summarise(
    beds,
    minutes,
    sim,
    acks: Acks,
    clock,
    stats,
    samples,
    scores,
    alerts,
    published_alerts,
    wall_publish,
    settings,
    scoring_model,
    workers,
    cpu,
    speed: float = 1.0,
) -> dict:
    from icuwatch.core import topics

    produced = {t: acks.total(t) for t in topics.INPUTS}
    taken = stats.get("processed_by_topic", {})
    wall_end = sim.start_time + minutes * 60.0
    steady = [s for s in samples if sim.start_time <= s["at"] <= wall_end]
    latency = percentiles if speed == 1.0 else (lambda values: None)
    windows_full = sim.start_time + (WINDOW_MINUTES * 60.0 + 60.0) / speed
    """From here on every bed's per-minute vital-sign window (its largest state) is full: RSS that
    still grows is not the state filling (None when the run is shorter)."""
    warm_from = sim.start_time + min(60.0, 0.2 * minutes * 60.0)
    """Samples, scores and alerts after the first minute (at most a fifth of the run), when every
    bed's first score and first minute of waveform windows have gone through."""
    warm_alerts = [a for a in alerts if a["event_time"] >= warm_from]
    stage_rows = read_worker_stages(settings, workers) if speed == 1.0 else None
    warm = [s for s in steady if s["at"] >= warm_from]
    rate = None
    if len(warm) >= 2:
        rate = (warm[-1]["processed"] - warm[0]["processed"]) / (warm[-1]["at"] - warm[0]["at"])
    rss = [s["rss_mb"] for s in steady if s["rss_mb"] is not None]
    alert_ids = {a["alert_id"] for a in alerts}
    truth = {t["patient_id"]: t for t in sim.ground_truth()}
    sick = {p for p, t in truth.items() if t["onset_time"] is not None}
    alerted = {a["patient_id"] for a in alerts}
    return {
        "bench": "pipeline",
        "data": "simulated patients (icuwatch simulator), not real data",
        "beds": beds,
        "minutes": minutes,
        "speed": speed,
        "workers": workers,
        "waveform_chunk_s": sim.waveform_chunk_s,
        "waveform_payload": sim.waveform_payload,
        "monitor_clocks": (
            "each bed at its own phase in the second" if sim.monitor_phases else "every bed at the same phase"
        ),
        "scoring_model": settings.scoring_model or settings.triton_model,
        "machine": _machine(),
        "messages": {
            "produced_acked": sum(produced.values()),
            "by_topic": produced,
            "producer_failed": sum(acks.failed.values()),
            "taken_by_worker": sum(taken.values()) + 0,
            "deadlettered": stats.get("deadlettered", 0),
            "lost": sum(max(0, produced[t] - taken.get(t, 0)) for t in produced) + sum(acks.failed.values()),
            "per_s_offered": round(sum(produced.values()) / (minutes * 60.0), 1),
            "per_s_sustained_by_worker": None if rate is None else round(rate, 1),
            "publish_wall_s": round(wall_publish, 1),
            "producer_worst_late_s": round(clock["worst"], 3),
        },
        "consumer_lag": {
            "how": "acknowledged producer offsets minus the worker's last taken offset per partition "
            "(not the broker's end offsets, which this Tansu reports stale)",
            "records": percentiles([s["lag_records"] for s in steady]),
            "seconds": percentiles([s["lag_s"] for s in steady]),
            "seconds_after_warmup": percentiles([s["lag_s"] for s in warm]),
        },
        "scores": {
            "published": stats.get("scores_published", 0),
            "stored_by_alert_agent": stats.get("scores_taken", 0),
            "lost": max(0, stats.get("scores_published", 0) - stats.get("scores_taken", 0)),
            "rows_in_db": len(scores),
            "scorer": stats.get("scorer", {}),
            "event_to_scored_s": latency([b - a for a, b in scores]),
            "event_to_scored_s_after_warmup": latency([b - a for a, b in scores if a >= warm_from]),
            "worker_stages": worker_stages(stage_rows, -np.inf) if stage_rows is not None else None,
            "worker_stages_after_warmup": worker_stages(stage_rows, warm_from) if stage_rows is not None else None,
        },
        "alerts": {
            "stored": len(alerts),
            "raised_by_worker": stats.get("alerts_raised", 0),
            "published_to_topic": len(published_alerts),
            "lost": len(set(published_alerts) - alert_ids) + max(0, stats.get("alerts_raised", 0) - len(alerts)),
            "duplicated": len(published_alerts) - len(set(published_alerts)) - stats.get("alerts_republished", 0),
            "event_to_stored_s": latency([a["stored_at"] - a["event_time"] for a in alerts]),
            "event_to_stored_s_after_warmup": latency([a["stored_at"] - a["event_time"] for a in warm_alerts]),
            "stages_after_warmup": {
                "how": "alerts whose score is stored (same patient and event time): event -> scored (the "
                "worker's scored_at) and scored -> stored (the alert agent)",
                "event_to_scored_s": latency(
                    [a["scored_at"] - a["event_time"] for a in warm_alerts if a["scored_at"] is not None]
                ),
                "scored_to_stored_s": latency(
                    [a["stored_at"] - a["scored_at"] for a in warm_alerts if a["scored_at"] is not None]
                ),
            },
            "patients_alerted": {
                "deteriorating": len(alerted & sick),
                "of_deteriorating": len(sick),
                "stable": len(alerted - sick),
                "of_stable": len(truth) - len(sick),
            },
        },
        "cpu_s_while_publishing": cpu,
        "worker_gc": {
            "how": "CPU time of the collecting thread (time.thread_time), summed over workers; max: the longest",
            "collections": stats.get("gc_collections"),
            "full_collections": stats.get("gc_full_collections"),
            "pause_total_s": stats.get("gc_pause_total_s"),
            "pause_max_s": stats.get("gc_pause_max_s"),
            "pause_max_s_by_generation": {str(g): stats.get(f"gc_pause_max_s_gen{g}") for g in range(3)},
        },
        "worker_rss_mb_all_workers": {
            "first": rss[0] if rss else None,
            "last": rss[-1] if rss else None,
            "max": max(rss) if rss else None,
            "growth_mb_per_min_after_warmup": rss_growth_per_min(warm),
            "growth_mb_per_min_second_half": rss_growth_per_min(
                [s for s in steady if s["at"] >= (sim.start_time + wall_end) / 2]
            ),
            "windows_full_after_s": round(windows_full - sim.start_time, 1),
            "growth_mb_per_min_windows_full": rss_growth_per_min([s for s in steady if s["at"] >= windows_full]),
        },
        "timeline": {
            "t_s": [round(x["at"] - sim.start_time, 1) for x in samples],  # < 0: generating
            "lag_s": [round(x["lag_s"], 2) for x in samples],
            "lag_records": [x["lag_records"] for x in samples],
            "taken": [x["processed"] for x in samples],
            "rss_mb": [None if x["rss_mb"] is None else round(x["rss_mb"], 1) for x in samples],
            "gc_pause_total_s": [x.get("gc_pause_total_s") for x in samples],  # cumulative, all workers
        },
    }


def read_worker_stages(settings: Settings, workers: int) -> np.ndarray:
    """Every worker's score rows (``streams/stage_times.py``; revisions are not recorded: their event
    time is old by design)."""
    from icuwatch.streams import stage_times

    paths = [
        stage_times.path_for(settings.run_dir, worker_settings(settings, i).worker_web_port) for i in range(workers)
    ]
    return np.concatenate([stage_times.read(p) for p in paths])


def worker_stages(rows: np.ndarray, warm_from: float) -> dict:
    """Each score's time inside the workers, by hand-off, for scores whose event time is ``warm_from``
    or later."""
    from icuwatch.streams import stage_times

    kept = rows[rows[:, 0] >= warm_from]
    out: dict = {
        "how": "per score, wall times at the worker's hand-offs: the event, the broker's append of the message "
        "that triggered the score, the ingest agent taking it, the row handed to the batcher, Triton's answer, "
        "the score handed to the producer"
    }
    for name, seconds in stage_times.durations(kept).items():
        out[name] = percentiles([float(x) for x in seconds[np.isfinite(seconds)]])
    return out


def rss_growth_per_min(samples: list[dict]) -> float | None:
    """Least-squares slope of the workers' RSS over the samples, MB per minute: "memory flat" is a
    slope near 0 once the beds' windows are full (a leak grows with every message)."""
    import numpy as np

    points = [(x["at"], x["rss_mb"]) for x in samples if x["rss_mb"] is not None]
    if len(points) < 10:
        return None
    t, mb = np.array(points).T
    return round(float(np.polyfit(t / 60.0, mb, 1)[0]), 2)


def _machine() -> dict:
    import platform

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "gpu": False}
