"""``icuwatch bench models``: the teacher and the early-exit student served by the real tritonserver.

Exports the trained models if their export is missing or stale (``serving.export``), starts
its own ``tritonserver`` on free ports serving only that repository (state and log in a temporary
directory; the stack's own server, if any, is left alone), and on the cohort's TEST rows measures,
from what Triton returned:

* quality on *all* test rows: AUROC, AUPRC, normalized utility (PhysioNet 2019, at the model card's
  alert threshold), ECE, for the teacher, the full student (request parameter ``early_exit: false``)
  and the early-exit student; the share of rows each exit answered; the largest difference from
  the same model run in-process (eager PyTorch);
* latency through Triton (``tritonclient`` gRPC, one request at a time, p50/p99 over many requests)
  for batches of 1, 64 and 1,000 rows drawn from the first ``latency_rows`` test rows, patients
  per second (rows / mean request time); batch-1 requests with many in flight (what the dynamic
  batcher makes of them, and the mean batch it formed);
* the same timings in-process on one torch thread, eager and the exported TorchScript module, as
  a reference for what Triton adds;
* early exit against the full student (both as Triton returned them): the share of rows whose alert
  decision (probability >= the student card's threshold) is the same, the AUROC and utility change,
  and the speed-ups (full student over teacher, early exit over full student) per batch size,
  through Triton and in-process;
* the fixed cost of a request: a python-backend model with the student's inputs and outputs that
  computes nothing (``serving/templates/floor_model.py``), timed like the others, and for every
  model Triton's own per-request split (queue, input, execute, output) against what the client
  waited, so what gRPC, Triton and the python backend cost is measured rather than guessed.

Prints one JSON object; the server is stopped at the end.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

BATCH_SIZES = (1, 64, 1000)
REPEATS = {1: 400, 64: 200, 1000: 40}
CHUNK = 1024
CONCURRENT_REQUESTS = 2000
IN_FLIGHT = 32


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextmanager
def serving(repository: Path, models: list[str], timeout_s: float = 180.0, extra_repositories=()):
    """A tritonserver on free ports serving ``repository`` (and ``extra_repositories``) only; yields
    its gRPC url."""
    from icuwatch.core.settings import get_settings
    from icuwatch.deploy import triton

    with tempfile.TemporaryDirectory(prefix="icuwatch-bench-") as state:
        grpc_port, http_port, metrics_port = _free_ports(3)
        settings = get_settings().model_copy(
            update={
                "state_dir": Path(state),
                "triton_url": f"127.0.0.1:{grpc_port}",
                "triton_http_port": http_port,
                "triton_metrics_port": metrics_port,
                "triton_extra_repositories": "",
                "triton_model_repository": None,
            }
        )
        try:
            triton.start(
                settings,
                model_repository=repository,
                extra_repositories=extra_repositories,
                ready_models=models,
                timeout_s=timeout_s,
            )
            yield settings.triton_url
        finally:
            triton.stop(settings)


def _inputs(batch: dict[str, np.ndarray], keys: list[str], spec=None):
    """gRPC inputs of ``batch``; ``spec`` where a model's input dtypes depend on it (a report as a bag)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    from icuwatch.serving.export import input_name, to_wire

    out = []
    for key in keys:
        x = to_wire(key, batch[key], spec)
        inp = grpcclient.InferInput(input_name(key), list(x.shape), np_to_triton_dtype(x.dtype))
        inp.set_data_from_numpy(x)
        out.append(inp)
    return out


def _slice(batch: dict[str, np.ndarray], s: int, e: int) -> dict[str, np.ndarray]:
    return {k: v[s:e] for k, v in batch.items()}


def infer(
    client, model: str, batch: dict[str, np.ndarray], keys: list[str], early_exit: bool = True, student: bool = False
):
    """(probability [B], exit [B] or None) of one request."""
    import tritonclient.grpc as grpcclient

    from icuwatch.serving.export import EARLY_EXIT_PARAMETER, EXIT, PROBABILITY

    outputs = [grpcclient.InferRequestedOutput(PROBABILITY)] + (
        [grpcclient.InferRequestedOutput(EXIT)] if student else []
    )
    result = client.infer(
        model, _inputs(batch, keys), outputs=outputs, parameters=None if early_exit else {EARLY_EXIT_PARAMETER: False}
    )
    p = result.as_numpy(PROBABILITY).reshape(-1)
    return p, (result.as_numpy(EXIT).reshape(-1) if student else None)


def score_all(
    client,
    model: str,
    batch: dict[str, np.ndarray],
    keys: list[str],
    early_exit: bool = True,
    student: bool = False,
    chunk: int = CHUNK,
) -> tuple[np.ndarray, np.ndarray | None]:
    n = len(batch["present"])
    p = np.empty(n, dtype=np.float32)
    e = np.empty(n, dtype=np.int32) if student else None
    for s in range(0, n, chunk):
        ps, es = infer(client, model, _slice(batch, s, s + chunk), keys, early_exit, student)
        p[s : s + len(ps)] = ps
        if student:
            e[s : s + len(es)] = es
    return p, e


def _summary(times_s: list[float], rows: int) -> dict:
    t = np.asarray(times_s) * 1e3
    return {
        "p50_ms": round(float(np.percentile(t, 50)), 3),
        "p99_ms": round(float(np.percentile(t, 99)), 3),
        "patients_per_s": round(rows / (float(np.mean(t)) / 1e3), 1),
        "requests": len(t),
    }


def _timed(run, batches: list[dict], repeats: int, warmup: int = 5) -> list[float]:
    for i in range(warmup):
        run(batches[i % len(batches)])
    out = []
    for i in range(repeats):
        b = batches[i % len(batches)]
        t = time.perf_counter()
        run(b)
        out.append(time.perf_counter() - t)
    return out


def _latency_batches(batch: dict[str, np.ndarray], size: int, limit: int, seed: int) -> list[dict]:
    """A few batches of ``size`` consecutive rows from the first ``limit`` rows."""
    rng = np.random.default_rng(seed)
    n = min(limit, len(batch["present"]))
    starts = rng.integers(0, max(1, n - size), size=8)
    return [_slice(batch, int(s), int(s) + size) for s in starts]


def concurrent_throughput(
    url: str,
    model: str,
    batch: dict[str, np.ndarray],
    keys: list[str],
    student: bool,
    requests: int = CONCURRENT_REQUESTS,
    in_flight: int = IN_FLIGHT,
) -> dict:
    """Batch-1 requests, ``in_flight`` at a time (async gRPC): rows/s and the batches Triton formed."""
    import tritonclient.grpc as grpcclient

    from icuwatch.serving.export import EXIT, PROBABILITY

    client = grpcclient.InferenceServerClient(url)
    outputs = [grpcclient.InferRequestedOutput(PROBABILITY)] + (
        [grpcclient.InferRequestedOutput(EXIT)] if student else []
    )
    rows = [_inputs(_slice(batch, i, i + 1), keys) for i in range(min(256, len(batch["present"])))]
    before = _stats(client, model)
    slots = threading.Semaphore(in_flight)
    done = threading.Event()
    errors: list = []
    left = [requests]
    lock = threading.Lock()

    def callback(result, error):
        if error is not None:
            errors.append(error)
        slots.release()
        with lock:
            left[0] -= 1
            if left[0] == 0:
                done.set()

    t = time.perf_counter()
    for i in range(requests):
        slots.acquire()
        client.async_infer(model, rows[i % len(rows)], callback, outputs=outputs)
    done.wait(timeout=300)
    elapsed = time.perf_counter() - t
    after = _stats(client, model)
    client.close()
    if errors:
        raise RuntimeError(f"{model}: {len(errors)} failed requests, first: {errors[0]}")
    executions = after["executions"] - before["executions"]
    return {
        "requests": requests,
        "in_flight": in_flight,
        "patients_per_s": round(requests / elapsed, 1),
        "mean_batch_formed": round((after["inferences"] - before["inferences"]) / max(1, executions), 2),
    }


def _stats(client, model: str) -> dict:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return {"inferences": int(stats.get("inference_count", 0)), "executions": int(stats.get("execution_count", 0))}


SERVER_PARTS = ("queue", "compute_input", "compute_infer", "compute_output")


def _server_stats(client, model: str) -> dict:
    """Triton's cumulative counters of ``model``: successful requests, their total time and its parts (ns)."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]["inference_stats"]
    return {
        "count": int(stats.get("success", {}).get("count", 0)),
        "ns": int(stats.get("success", {}).get("ns", 0)),
        **{part: int(stats.get(part, {}).get("ns", 0)) for part in SERVER_PARTS},
    }


def _server_split(before: dict, after: dict, client_times_s: list[float]) -> dict:
    """Per request (ms): Triton's time (queue, input, execute, output), and what the client waited on
    top of it (gRPC both ways, the client's serialization)."""
    n = max(1, after["count"] - before["count"])
    out = {"server_ms": round((after["ns"] - before["ns"]) / n / 1e6, 3)}
    for part in SERVER_PARTS:
        out[f"{part}_ms"] = round((after[part] - before[part]) / n / 1e6, 3)
    out["client_minus_server_ms"] = round(float(np.mean(client_times_s)) * 1e3 - out["server_ms"], 3)
    return out


def floor_model(repository: Path, spec, name: str) -> str:
    """Write the compute-free python-backend model (``floor_model.py``) with ``spec``'s inputs and the
    student's outputs into ``repository``; returns its name."""
    from icuwatch.serving import TEMPLATES
    from icuwatch.serving.export import VERSION, config_pbtxt

    directory = repository / name
    (directory / VERSION).mkdir(parents=True, exist_ok=True)
    shutil.copy2(TEMPLATES / "floor_model.py", directory / VERSION / "model.py")
    (directory / "config.pbtxt").write_text(config_pbtxt(name, spec, True, "floor: no compute"))
    return name


def _ratios(results: dict, num: str, den: str, path: tuple[str, ...]) -> dict:
    """p50 of ``num`` over p50 of ``den`` per batch size, at ``results[variant][path...]``."""
    out = {}
    for size in BATCH_SIZES:
        a, b = results[num], results[den]
        for key in path:
            a, b = a[key], b[key]
        out[str(size)] = round(a[str(size)]["p50_ms"] / b[str(size)]["p50_ms"], 2)
    return out


def _metrics(cohort, test: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    from icuwatch.fusion.evaluation.fusion_compare import row_metrics
    from icuwatch.fusion.training import per_group

    groups = cohort.group[test]
    m = row_metrics(per_group(cohort.y[test], groups), per_group(p.astype(np.float64), groups), threshold)
    return {
        k: (round(float(m[k]), 4) if m[k] is not None else None)
        for k in ("auroc", "auprc", "utility", "ece", "alerts_per_patient_day", "threshold")
    }


def _grpc_latency(client, name: str, batch: dict, keys: list[str], early: bool, student: bool, latency_rows: int):
    """Sequential requests per batch size: the client's p50/p99 and Triton's own split of the time."""
    latency = {}
    for size in BATCH_SIZES:
        batches = _latency_batches(batch, size, latency_rows, seed=size)

        def request(b):
            return infer(client, name, b, keys, early, student)

        _timed(request, batches, 0)  # warm-up only
        before = _server_stats(client, name)
        times = _timed(request, batches, REPEATS[size], warmup=0)
        after = _server_stats(client, name)
        latency[str(size)] = {**_summary(times, size), "server": _server_split(before, after, times)}
    return latency


def _change(results: dict, metric: str) -> float | None:
    a = results["student_early_exit"]["metrics"].get(metric)
    b = results["student_full"]["metrics"].get(metric)
    return None if a is None or b is None else round(a - b, 4)


def run(
    cohort_name: str = "physionet",
    repository: str | Path | None = None,
    latency_rows: int = 20000,
    teacher: str = "attention",
    progress: bool = True,
) -> dict:
    import torch
    import tritonclient.grpc as grpcclient

    from icuwatch.fusion import cohorts, model_store
    from icuwatch.fusion.cohorts.base import gather
    from icuwatch.fusion.strategies.base import to_tensors
    from icuwatch.serving import export as triton_export

    started = time.time()
    repository = Path(repository) if repository is not None else triton_export.default_repository()
    exported = triton_export.export(cohort_name, repository, teacher=teacher, only_if_stale=True)
    dirs = triton_export.trained_dirs(cohort_name, teacher)
    trained = {role: model_store.load(d) for role, d in dirs.items()}
    names = {role: exported["models"][role]["triton_model"] for role in dirs}
    student_model = trained["student"].model
    keys = triton_export.batch_keys(student_model.spec)
    _say(progress, f"bench models: loading the {cohort_name} cohort")
    cohort = cohorts.load(cohort_name, progress=progress)
    test = cohort.rows("test")
    batch = {k: np.ascontiguousarray(v) for k, v in gather(cohort, test).items() if k in keys}

    variants = {  # name: (role, triton model, early_exit, student)
        "teacher": ("teacher", names["teacher"], True, False),
        "student_full": ("student", names["student"], False, True),
        "student_early_exit": ("student", names["student"], True, True),
    }
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    results: dict[str, dict] = {}
    try:
        # in-process reference (eager, 1 thread): all test rows, and timings
        scripted = {
            role: triton_export.load_torchscript(
                triton_export.newest_version_dir(repository / names[role]) / triton_export.TORCHSCRIPT
            )
            for role in dirs
        }
        for variant, (role, name, early, student) in variants.items():
            tr = trained[role]
            temperature = None if student else tr.temperature
            _say(progress, f"bench models: {variant} in-process")
            ref = np.concatenate(
                [
                    triton_export.reference(tr.model, to_tensors(_slice(batch, s, s + 2048)), temperature, early)[0]
                    for s in range(0, len(test), 2048)
                ]
            )
            timings = {"eager": {}, "torchscript": {}}
            for size in BATCH_SIZES:
                tensors = [to_tensors(b) for b in _latency_batches(batch, size, latency_rows, seed=size)]
                with torch.inference_mode():
                    timings["eager"][str(size)] = _summary(
                        _timed(
                            lambda b: triton_export.reference(tr.model, b, temperature, early), tensors, REPEATS[size]
                        ),
                        size,
                    )
                    with torch.jit.optimized_execution(False):  # as model.py runs it in Triton
                        timings["torchscript"][str(size)] = _summary(
                            _timed(lambda b: scripted[role](b, early), tensors, REPEATS[size]), size
                        )
            results[variant] = {
                "triton_model": name,
                "early_exit": early if student else None,
                "parameters": tr.model.n_parameters(),
                "in_process_1_thread": timings,
                "_reference": ref,
                "_threshold": float(tr.threshold),
            }

        floor_dir = Path(tempfile.mkdtemp(prefix="icuwatch-bench-floor-"))
        floor = floor_model(floor_dir, student_model.spec, f"{names['student']}_floor")
        served: dict[str, np.ndarray] = {}
        try:
            with serving(repository, sorted({*names.values(), floor}), extra_repositories=[floor_dir]) as url:
                client = grpcclient.InferenceServerClient(url)
                for variant, (_role, name, early, student) in variants.items():
                    _say(progress, f"bench models: {variant} through tritonserver ({len(test)} test rows)")
                    p, e = score_all(client, name, batch, keys, early, student)
                    served[variant] = p
                    r = results[variant]
                    r["metrics"] = _metrics(cohort, test, p, r.pop("_threshold"))
                    r["max_abs_probability_difference_vs_in_process"] = float(np.max(np.abs(p - r.pop("_reference"))))
                    if student:
                        shares = np.bincount(e, minlength=student_model.n_exits) / len(e)
                        r["exit_shares"] = [round(float(s), 4) for s in shares]
                    r["triton_grpc"] = _grpc_latency(client, name, batch, keys, early, student, latency_rows)
                    if early or not student:
                        r["triton_grpc_concurrent_batch1"] = concurrent_throughput(
                            url, name, _slice(batch, 0, latency_rows), keys, student
                        )
                _say(progress, "bench models: the compute-free floor model through tritonserver")
                floor_latency = _grpc_latency(client, floor, batch, keys, True, True, latency_rows)
                client.close()
        finally:
            shutil.rmtree(floor_dir, ignore_errors=True)
        client_side = {}
        for size in BATCH_SIZES:  # building the gRPC inputs (copies into protobuf) alone, in this process
            batches = _latency_batches(batch, size, latency_rows, seed=size)
            client_side[str(size)] = _summary(_timed(lambda b: _inputs(b, keys), batches, REPEATS[size]), size)
    finally:
        torch.set_num_threads(threads_before)

    threshold = float(trained["student"].threshold)
    early_vs_full = {
        "threshold": threshold,
        "alert_agreement": round(
            float(np.mean((served["student_early_exit"] >= threshold) == (served["student_full"] >= threshold))), 5
        ),
        "auroc_change": _change(results, "auroc"),
        "utility_change": _change(results, "utility"),
        "exit_shares": results["student_early_exit"]["exit_shares"],
        "speedup_triton_grpc": _ratios(results, "student_full", "student_early_exit", ("triton_grpc",)),
        "speedup_in_process_torchscript": _ratios(
            results, "student_full", "student_early_exit", ("in_process_1_thread", "torchscript")
        ),
    }
    student_vs_teacher = {
        "auroc_change_relative": round(
            results["student_full"]["metrics"]["auroc"] / results["teacher"]["metrics"]["auroc"] - 1.0, 4
        ),
        "speedup_triton_grpc": _ratios(results, "teacher", "student_full", ("triton_grpc",)),
        "speedup_in_process_torchscript": _ratios(
            results, "teacher", "student_full", ("in_process_1_thread", "torchscript")
        ),
        "early_exit_speedup_triton_grpc": _ratios(results, "teacher", "student_early_exit", ("triton_grpc",)),
    }
    fixed_cost = {
        "floor_model_triton_grpc": floor_latency,
        "client_inputs_in_process": client_side,
        "note": "floor_model: the student's inputs and outputs through gRPC, Triton and the python backend, "
        "no computation (serving/templates/floor_model.py); client_inputs_in_process: building the gRPC "
        "inputs alone; triton_grpc.<batch>.server (every model): Triton's per-request time and its parts, "
        "and what the client waited beyond it",
    }

    results["student_early_exit"]["parameters_run_to_exit"] = student_model.parameters_to_exit()
    return {
        "benchmark": "icuwatch bench models",
        "data": {
            "cohort": cohort_name,
            "source": cohort.meta.get("source", cohort_name),
            "split": "test",
            "patients": int(len(np.unique(cohort.group[test]))),
            "rows": int(len(test)),
            "positive_rows": int(cohort.y[test].sum()),
            "quality_rows": int(len(test)),
            "latency_rows": int(min(latency_rows, len(test))),
        },
        "machine": {
            "cpu_cores": len(os.sched_getaffinity(0)),
            "gpu": None,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": 1,
            "server": "tritonserver 2.51 (nvidia-pytriton 0.7.0 wheel), python backend, one CPU instance "
            "per model, torch_threads 1; client tritonclient gRPC on the same machine",
        },
        "repository": str(repository),
        "exported": {
            role: {"triton_model": m["triton_model"], "exported_now": m["exported"], "check": m.get("check")}
            for role, m in exported["models"].items()
        },
        "models": results,
        "early_exit_vs_full_student": early_vs_full,
        "student_vs_teacher": student_vs_teacher,
        "fixed_cost": fixed_cost,
        "notes": "metrics: all test rows, scored by tritonserver; utility at the model card's alert threshold (VAL); "
        "triton_grpc: sequential requests, p50/p99 per request, patients_per_s = rows / mean request time; "
        "in_process_1_thread: the same batches, eager PyTorch and the exported TorchScript (run as model.py "
        "runs it: without TorchScript's profiling optimiser), no Triton",
        "seconds": round(time.time() - started, 1),
    }


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)
