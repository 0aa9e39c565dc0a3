"""The faults, each injected into a running pipeline (``Run``) at ``Config.fault_at_s``."""

from __future__ import annotations

import time
from collections.abc import Callable

from icuwatch.deploy.chaos.stack import BROKER_DOWN_S, WORKER_RESTART_S, Config, Run, triton_settings


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
    """The broker process restarts; nothing re-runs topic creation (a cluster keeps its topics).
    The local one comes back empty and creates topics as the clients use them, with as many
    partitions as ``broker start`` would (checked). (With ``broker start`` re-creating them while the
    clients reconnected, Tansu twice held partitions it counted but would not serve or extend.)"""
    from icuwatch.deploy import broker

    if run.settings.partitions != broker.AUTO_CREATE_PARTITIONS:
        raise SystemExit(f"broker-restart needs {broker.AUTO_CREATE_PARTITIONS} partitions (the local broker's "
                         f"auto-created topics), not {run.settings.partitions}")
    broker.stop(run.settings)
    run.note("broker stopped")
    time.sleep(BROKER_DOWN_S)
    broker.start(run.settings, create_topics=False)
    run.note("broker process started again (memory storage: empty; topics created by the clients' first use)")


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
