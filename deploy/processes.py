"""Start, find and stop the local stack's background processes (pid file + log per service)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from icuwatch.core.settings import Settings


def pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def log_file(settings: Settings, name: str) -> Path:
    return settings.log_dir / f"{name}.log"


def running_pid(settings: Settings, name: str) -> int | None:
    path = pid_file(settings, name)
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return pid


def spawn(settings: Settings, name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start ``argv`` detached from this process group, logging to ``var/logs/<name>.log``."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_file(settings, name), "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    pid_file(settings, name).write_text(str(proc.pid))
    return proc.pid


def stop(settings: Settings, name: str, timeout_s: float = 15.0) -> bool:
    """SIGTERM the service and wait for it to exit (SIGKILL after ``timeout_s``)."""
    pid = running_pid(settings, name)
    if pid is None:
        pid_file(settings, name).unlink(missing_ok=True)
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while _alive(pid):
            time.sleep(0.05)
    pid_file(settings, name).unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout_s: float, name: str, settings: Settings) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if running_pid(settings, name) is None:
            break
        time.sleep(0.1)
    tail = log_file(settings, name).read_text(errors="replace")[-2000:]
    stop(settings, name)
    raise RuntimeError(f"{name} did not listen on {host}:{port}; log tail:\n{tail}")


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    first = address.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    host, _, port = first.rpartition(":")
    return (host or first, int(port)) if port.isdigit() else (first, default_port)
