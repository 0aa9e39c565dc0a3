"""The nurses' board and API (``icuwatch serve``) as a background service of the local stack."""

from __future__ import annotations

import sys
import time
import urllib.request

from icuwatch.core.settings import Settings
from icuwatch.deploy import processes

NAME = "api"


def url(settings: Settings) -> str:
    return f"http://{settings.api_host}:{settings.api_port}"


def start(settings: Settings) -> None:
    if processes.running_pid(settings, NAME) and processes.port_open(settings.api_host, settings.api_port):
        return
    if processes.port_open(settings.api_host, settings.api_port):
        raise RuntimeError(f"{settings.api_host}:{settings.api_port} is taken by a process this stack did not start")
    argv = [
        sys.executable,
        "-m",
        "icuwatch.cli.main",
        "serve",
        "--host",
        settings.api_host,
        "--port",
        str(settings.api_port),
        "--log-level",
        "warning",
    ]
    processes.spawn(
        settings,
        NAME,
        argv,
        env={"ICUWATCH_DATABASE_URL": settings.database_url, "ICUWATCH_STATE_DIR": str(settings.state_dir)},
    )
    processes.wait_for_port(settings.api_host, settings.api_port, 60.0, NAME, settings)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url(settings)}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the API did not become healthy; see {processes.log_file(settings, NAME)}")


def stop(settings: Settings) -> bool:
    return processes.stop(settings, NAME)


def status(settings: Settings) -> dict:
    return {
        "pid": processes.running_pid(settings, NAME),
        "url": url(settings),
        "listening": processes.port_open(settings.api_host, settings.api_port),
    }
