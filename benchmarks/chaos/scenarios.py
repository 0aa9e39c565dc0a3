"""The faults, each injected into a running pipeline (``Run``) at ``Config.fault_at_s``."""

from __future__ import annotations

import time
from collections.abc import Callable

from icuwatch.benchmarks.chaos.stack import BROKER_DOWN_S, BROKER_LISTEN, WORKER_RESTART_S, Config, Run, triton_settings


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
    """The broker process stops and starts again while producers and workers run. A cluster's broker
    comes back with its topics; the local one keeps them in memory and comes back empty. So that its
    clients meet what they would meet in production, a proxy in front of it turns them away until
    the topics exist again (the records, committed offsets and changelogs are still gone; README)."""
    from icuwatch.benchmarks.fault_proxy import kafka_client_id
    from icuwatch.deploy import broker

    proxy = run.broker_proxy
    assert proxy is not None, "broker-restart runs with the broker behind a proxy (BROKER_PROXIED)"
    proxy.cut()
    broker.stop(run.settings)
    run.note("broker stopped")
    time.sleep(BROKER_DOWN_S)
    broker.start(run.settings, create_topics=False, listen=BROKER_LISTEN)
    proxy.restore(admit=lambda frame: kafka_client_id(frame) == broker.ADMIN_CLIENT_ID)
    broker.create_all_topics(run.settings)
    proxy.open()
    run.note(
        f"broker started again, empty; its topics created before the clients were let back in "
        f"({proxy.turned_away} connections turned away meanwhile)"
    )


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
BROKER_PROXIED = {"broker-restart"}
"""Runs whose clients reach the broker through a proxy (``Run.broker_proxy``)."""
