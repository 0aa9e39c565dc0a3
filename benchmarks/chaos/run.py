"""One pipeline run per fault, and the drill over every fault."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections import Counter

from icuwatch.benchmarks.chaos.compare import all_whole, compare, worker_summary
from icuwatch.benchmarks.chaos.scenarios import BROKER_PROXIED, SCENARIOS, WORKERS
from icuwatch.benchmarks.chaos.stack import (
    BROKER_LISTEN,
    CHAOS_ENV,
    PREFIX,
    PROXY_PORT,
    Config,
    Run,
    create_database,
    drop_database,
    read_outcome,
    score_count,
    triton_settings,
)
from icuwatch.benchmarks.chaos.states import checkpointed_states, expected_states, state_differences, vital_rows_missing
from icuwatch.benchmarks.fault_proxy import FaultProxy
from icuwatch.core.settings import REPO_ROOT, Settings
from icuwatch.deploy.processes import split_host_port


def _wait_quiet(run: Run, url: str, quiet_s: float, timeout_s: float) -> bool:
    """Until the workers' counters and the stored scores stop changing for ``quiet_s``."""
    from icuwatch.benchmarks.pipeline import read_stats
    from icuwatch.deploy.worker_process import stats_path

    deadline, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while time.monotonic() < deadline:
        paths = [stats_path(run.worker_settings(i)) for i, w in enumerate(run.workers) if w is not None]
        stats = read_stats(paths)
        now = (stats.get("processed"), stats.get("scores_taken"), stats.get("scores_pending"), score_count(url))
        if now != last:
            last, since = now, time.monotonic()
        elif (
            time.monotonic() - since >= quiet_s
            and stats.get("scores_pending") == 0
            and stats.get("unacknowledged") == 0
            and not stats.get("in_recovery")
        ):
            return True
        time.sleep(1.0)
    return False


def run_once(name: str, cfg: Config, progress: bool) -> dict:
    """The pipeline on the simulated patients of ``cfg``, with fault ``name`` (or "none")."""
    from icuwatch.benchmarks.pipeline import read_stats
    from icuwatch.deploy import broker, triton
    from icuwatch.deploy.worker_process import stats_path
    from icuwatch.sources.simulator import Simulation
    from icuwatch.sources.simulator.producer import publish
    from icuwatch.storage import db
    from icuwatch.streams.kafka.producer import make_producer

    state_dir = REPO_ROOT / "var" / "chaos" / name
    shutil.rmtree(state_dir, ignore_errors=True)
    direct_url, proxied_url = create_database()
    env = {**CHAOS_ENV, "ICUWATCH_STATE_DIR": str(state_dir), "ICUWATCH_DATABASE_URL": proxied_url}
    settings = Settings(**{k.removeprefix("ICUWATCH_").lower(): v for k, v in env.items()})
    proxy = FaultProxy(PROXY_PORT, ("127.0.0.1", 5432)).start()
    run = Run(name, settings, env, proxy)
    say = (lambda m: print(f"chaos {name}: {m}", file=sys.stderr)) if progress else (lambda m: None)
    try:
        db.upgrade(direct_url)
        listen = None
        if name in BROKER_PROXIED:
            listen = BROKER_LISTEN
            run.broker_proxy = FaultProxy(
                split_host_port(settings.broker, 9092)[1], split_host_port(listen, 9092)
            ).start()
        broker.start(settings, listen=listen)
        triton.start(triton_settings(), timeout_s=120)
        for i in range(WORKERS.get(name, 1)):
            run.start_worker(i)
        sim = Simulation(
            n_patients=cfg.patients,
            seed=cfg.seed,
            start_time=cfg.start_time,
            duration_s=cfg.hours * 3600.0,
            patient_prefix=PREFIX,
            waveform_payload=cfg.waveform_payload,
        )
        producer = make_producer(settings)
        produced: dict = {}
        sender = threading.Thread(target=lambda: produced.update(publish(sim, producer, speed=cfg.speed)), daemon=True)
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
        outcome = read_outcome(direct_url)
        states, expected = checkpointed_states(settings), expected_states(sim)
        outcome["states_whole"] = sum(states.get(p) == st for p, st in expected.items())
        outcome["states_total"] = len(expected)
        differing = state_differences(states, expected)
        (state_dir / "states_differing.json").write_text(json.dumps(differing, indent=1))
        outcome["state_fields_differing"] = dict(Counter(f for fields in differing.values() for f in fields))
        outcome["vital_rows_missing"] = vital_rows_missing(states, expected)
        (state_dir / "scores.json").write_text(json.dumps(sorted([*k, *v] for k, v in outcome["scores"].items())))
        logs = "".join(f.read_text(errors="replace") for f in settings.log_dir.glob("worker-*.log"))
        truth = sim.ground_truth()
        outcome.update(
            patient_ids_in_logs=any(t["patient_id"] in logs for t in truth),
            truth=truth,
            produced=sum(produced.values()),
            settled=settled,
            timeline=run.timeline,
            worker=worker_summary(stats),
        )
        return outcome
    finally:
        for i in range(len(run.workers)):
            run.stop_worker(i)
        proxy.stop()
        if run.broker_proxy is not None:
            run.broker_proxy.stop()
        broker.stop(settings)
        drop_database(direct_url)


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
        "config": {
            "patients": cfg.patients,
            "hours": cfg.hours,
            "speed": cfg.speed,
            "fault_at_s": cfg.fault_at_s,
            "fault_s": cfg.fault_s,
            "seed": cfg.seed,
            "database": "PostgreSQL via a fault proxy",
            "broker": "Tansu 0.6, memory storage",
        },
        "reference": {
            "alerts_stored": len(reference["alerts"]),
            "scores": len(reference["scores"]),
            "patient_states_whole": f"{reference['states_whole']}/{reference['states_total']}",
            "deteriorating_alerted": f"{len(ref_alerted & {t['patient_id'] for t in sick})}/{len(sick)}",
            "produced": reference["produced"],
            "settled": reference["settled"],
        },
        "scenarios": results,
        "all_ok": all(
            r["lost"] == 0
            and r["duplicated"] == 0
            and r["settled"]
            and not r["patient_ids_in_logs"]
            and (all_whole(r["patient_states_whole"]) or name == "broker-restart")
            for name, r in results.items()
        ),
        "all_ok_means": "0 lost, 0 duplicated, settled, no patient id in the workers' logs, every "
        "patient's checkpointed state whole "
        "(bar broker-restart: the local broker keeps nothing over a restart)",
        "wall_s": round(time.time() - started, 1),
    }
