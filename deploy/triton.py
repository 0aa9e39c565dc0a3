"""The local inference server: the real ``tritonserver`` (2.51) shipped in nvidia-pytriton's wheel,
serving ``serving/models`` through its python backend, bound to 127.0.0.1.

The repository is ``settings.triton_model_repository`` when set, else ``MODEL_REPOSITORY``;
``settings.triton_extra_repositories`` (or ``start(..., extra_repositories=...)``) adds more, e.g. the
fusion models ``icuwatch export-triton`` writes to ``var/triton/models``. Unset, nothing changes.

Explicit model control (``--model-control-mode=explicit --load-model=*``): every model of the
repositories loads at start, as before, and ``icuwatch models promote|rollback``
(``deploy/triton_models.py``) switches a model's served version on the running server through the
load API; ``start`` serves each pinned version again after a restart.

Two fixes from shared/DESIGN.md: the backend directory must hold a *symlink* to the python-3.11
stub (it finds its bundled libraries relative to its real path), and ``LD_LIBRARY_PATH`` must start
with this interpreter's LIBDIR, else the stub links the system libpython and models fail.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import time
from collections.abc import Sequence
from pathlib import Path

from icuwatch.core.settings import Settings
from icuwatch.deploy import processes, triton_models
from icuwatch.serving import MODEL_REPOSITORY

NAME = "triton"


def _pytriton_server_dir() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver"


def backend_directory(settings: Settings) -> Path:
    """Assemble ``var/triton/backends/python`` the way tritonserver expects it."""
    src = _pytriton_server_dir()
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    target = settings.state_dir / "triton" / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(src / "backends" / "python" / name, target / name)
    stub = target / "triton_python_backend_stub"
    stub.unlink(missing_ok=True)
    stub.symlink_to(src / "python_backend_stubs" / py / "triton_python_backend_stub")
    return target.parent


def repositories(
    settings: Settings, model_repository: Path | None = None, extra_repositories: Sequence[str | Path] = ()
) -> list[Path]:
    """The model repositories to serve: the main one (argument, setting, else ``MODEL_REPOSITORY``),
    then the extra ones of the setting and the argument (duplicates dropped)."""
    main = Path(model_repository or settings.triton_model_repository or MODEL_REPOSITORY)
    extra = [p for p in settings.triton_extra_repositories.split(os.pathsep) if p.strip()] + list(extra_repositories)
    out: list[Path] = []
    for path in [main, *map(Path, extra)]:
        path = path.resolve()
        if path not in out:
            out.append(path)
    return out


def start(
    settings: Settings,
    model_repository: Path | None = None,
    extra_repositories: Sequence[str | Path] = (),
    ready_models: Sequence[str] | None = None,
    timeout_s: float = 90.0,
) -> None:
    """Start tritonserver (unless this stack's is already up) and wait until ``ready_models``
    (default: ``settings.triton_model``) are ready."""
    host, grpc_port = processes.split_host_port(settings.triton_url, 8001)
    if processes.running_pid(settings, NAME) and processes.port_open(host, grpc_port):
        return
    if processes.port_open(host, grpc_port):
        raise RuntimeError(f"{host}:{grpc_port} is taken by a process this stack did not start")
    server = _pytriton_server_dir() / "bin" / "tritonserver"
    repos = repositories(settings, model_repository, extra_repositories)
    argv = [
        str(server),
        *(f"--model-repository={repo}" for repo in repos),
        "--model-control-mode=explicit",
        "--load-model=*",
        f"--backend-directory={backend_directory(settings)}",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        f"--http-address={host}",
        f"--http-port={settings.triton_http_port}",
        "--allow-metrics=true",
        f"--metrics-address={host}",
        f"--metrics-port={settings.triton_metrics_port}",
        "--log-verbose=0",
    ]
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env = {
        "LD_LIBRARY_PATH": os.pathsep.join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p),
        "ICUWATCH_SITE_PACKAGES": sysconfig.get_paths()["purelib"],
    }
    processes.spawn(settings, NAME, argv, env)
    triton_models.record_repositories(settings, repos)
    processes.wait_for_port(host, grpc_port, 60.0, NAME, settings)
    wait_ready(settings, timeout_s=timeout_s, models=ready_models)
    for line in triton_models.reapply_pins(settings):
        print(f"tritonserver: {line}", file=sys.stderr)


def wait_ready(settings: Settings, timeout_s: float, models: Sequence[str] | None = None) -> None:
    import tritonclient.grpc as grpcclient

    models = list(models) if models is not None else [settings.triton_model]
    client = grpcclient.InferenceServerClient(settings.triton_url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.is_server_ready() and all(client.is_model_ready(m) for m in models):
                return
        except Exception:
            pass
        if processes.running_pid(settings, NAME) is None:
            break
        time.sleep(0.25)
    tail = processes.log_file(settings, NAME).read_text(errors="replace")[-3000:]
    raise RuntimeError(f"tritonserver not ready with model(s) {', '.join(models)}; log tail:\n{tail}")


def stop(settings: Settings) -> bool:
    return processes.stop(settings, NAME)


def status(settings: Settings) -> dict:
    host, grpc_port = processes.split_host_port(settings.triton_url, 8001)
    ready = False
    if processes.port_open(host, grpc_port):
        try:
            import tritonclient.grpc as grpcclient

            ready = grpcclient.InferenceServerClient(settings.triton_url).is_model_ready(settings.triton_model)
        except Exception:
            ready = False
    return {"pid": processes.running_pid(settings, NAME), "address": f"{host}:{grpc_port}", "model_ready": ready}
