"""``icuwatch bench models`` for the live student: ``student_live`` and its teacher through tritonserver.

The served student (``serving/models/student_live``, committed) distils a cross-fitted LightGBM teacher
(``fusion.teachers.crossfit_lightgbm``) on the live cohort (PhysioNet 2019 stays + simulated
patients, ``fusion.cohorts.live``). This benchmark refits that teacher exactly as ``distill-live``
did (same seed, folds and TRAIN rows: deterministic LightGBM), keeps its boosters, and serves it
next to the student on the student's own inputs (``serving/templates/lightgbm_teacher.py``), plus the
compute-free floor model (``serving/templates/floor_model.py``). On the live cohort's TEST rows it
measures, from what Triton returned:

* quality per source and risk (``fusion.live_student.figures_by_source``): AUROC of the teacher, the
  full student (request parameter ``early_exit: false``) and the early-exit student, normalized
  utility at the card's alert thresholds, alert agreement of early exit with the full student, and
  the exit shares;
* latency through Triton (gRPC, sequential requests, p50/p99 and Triton's own split) at batches of 1,
  64 and 1,000 rows drawn from a shuffled sample of TEST rows (both sources mixed), the floor model
  likewise; and in-process on one thread: the teacher (features + LightGBM) and the student's
  TorchScript, full and early exit;
* the speed-ups the live-path issue sets goals for: full student over teacher, early exit over full.

The JSON keeps ``bench models``' field names (``models.<teacher|student_full|student_early_exit>.
triton_grpc.<batch>.p50_ms``, ``metrics.auroc`` = sepsis on the PhysioNet TEST stays, ``exit_shares``).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from icuwatch.benchmarks.models import (
    BATCH_SIZES,
    REPEATS,
    _inputs,
    _ratios,
    _say,
    _server_split,
    _server_stats,
    _summary,
    _timed,
    floor_model,
    serving,
)

MODEL = "student_live"
TEACHER_MODEL = "student_live_teacher"
FLOOR_MODEL = "student_live_floor"
CHUNK = 1024


def infer(client, model: str, inputs, early_exit: bool) -> tuple[np.ndarray, np.ndarray]:
    """(probability [B, H], exit [B]) of one request of prepared gRPC ``inputs``."""
    import tritonclient.grpc as grpcclient

    from icuwatch.serving.export import EARLY_EXIT_PARAMETER, EXIT, PROBABILITY

    result = client.infer(
        model,
        inputs,
        outputs=[grpcclient.InferRequestedOutput(PROBABILITY), grpcclient.InferRequestedOutput(EXIT)],
        parameters=None if early_exit else {EARLY_EXIT_PARAMETER: False},
    )
    p = result.as_numpy(PROBABILITY)
    return p.reshape(len(p), -1), result.as_numpy(EXIT).reshape(-1)


def teacher_model(repository: Path, spec, boosters: Path, heads: tuple[str, ...], folds: int) -> str:
    """Write the served teacher (``lightgbm_teacher.py``, the boosters, ``teacher.json``) into ``repository``."""
    from icuwatch.serving import TEMPLATES
    from icuwatch.serving.export import VERSION, config_pbtxt

    version = repository / TEACHER_MODEL / VERSION
    version.mkdir(parents=True, exist_ok=True)
    shutil.copy2(TEMPLATES / "lightgbm_teacher.py", version / "model.py")
    names = {risk: [f"{risk}.fold{f}.txt" for f in range(folds)] for risk in heads}
    for files in names.values():
        for name in files:
            shutil.copy2(boosters / name, version / name)
    card = {"heads": list(heads), "modalities": list(spec.modalities), "boosters": names}
    (version / "teacher.json").write_text(json.dumps(card, indent=2))
    text = config_pbtxt(TEACHER_MODEL, spec, True, "cross-fitted LightGBM teacher of student-live")
    (repository / TEACHER_MODEL / "config.pbtxt").write_text(text)
    return TEACHER_MODEL


def run(
    repository: str | Path | None = None,
    latency_rows: int = 20000,
    progress: bool = True,
    cohort=None,
    repeats: dict[int, int] | None = None,
) -> dict:
    """The benchmark; ``cohort`` (default: the cached full live cohort) and ``repeats`` (requests per
    batch size) let a test run it small."""
    import torch

    from icuwatch.fusion import teachers
    from icuwatch.fusion.cohorts import live
    from icuwatch.fusion.cohorts.base import gather
    from icuwatch.fusion.live_student import figures_by_source, labels_of
    from icuwatch.fusion.strategies.base import InputSpec, to_tensors
    from icuwatch.serving import MODEL_REPOSITORY
    from icuwatch.serving.export import PROVENANCE, TORCHSCRIPT, batch_keys, load_torchscript, newest_version_dir

    started = time.time()
    repeats = repeats or REPEATS
    repository = Path(repository) if repository is not None else MODEL_REPOSITORY
    version_dir = newest_version_dir(repository / MODEL)
    if not (version_dir / TORCHSCRIPT).exists():
        raise FileNotFoundError(f"no {MODEL} in {repository}: run `icuwatch distill-live --export-to {repository}`")
    card = json.loads((version_dir / "model_card.json").read_text())
    served = json.loads((version_dir / PROVENANCE).read_text())
    spec = InputSpec.from_json(card["spec"])
    keys = batch_keys(spec)
    heads = tuple(card["heads"])
    thresholds = {risk: float(t) for risk, t in served["thresholds"].items()}
    cfg = card["train_config"]
    if cohort is None:
        _say(progress, "bench models: loading the live cohort")
        cohort = live.load_or_build(progress=progress)
    test = cohort.rows("test")
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(test, min(latency_rows, len(test)), replace=False))

    workdir = Path(tempfile.mkdtemp(prefix="icuwatch-bench-live-"))
    threads_before = torch.get_num_threads()
    try:
        _say(progress, "bench models: fitting the teacher as distill-live did (cross-fitted LightGBM)")
        teacher_logits, teacher_info = teachers.crossfit_lightgbm(
            cohort,
            labels_of(cohort),
            folds=int(cfg["teacher_folds"]),
            seed=int(cfg["seed"]),
            progress=progress,
            fit_rows=cohort.rows("train"),
            save_to=workdir / "boosters",
        )
        extra = workdir / "repository"
        teacher_model(extra, spec, workdir / "boosters", heads, int(cfg["teacher_folds"]))
        floor_model(extra, spec, FLOOR_MODEL)
        torch.set_num_threads(1)
        scripted = load_torchscript(version_dir / TORCHSCRIPT)
        latency_batches = {
            size: [gather(cohort, sample[s : s + size]) for s in rng.integers(0, max(1, len(sample) - size), 8)]
            for size in BATCH_SIZES
        }
        in_process = _in_process(
            scripted,
            latency_batches,
            keys,
            cohort.modalities,
            workdir / "boosters",
            heads,
            int(cfg["teacher_folds"]),
            repeats,
            to_tensors,
        )
        variants = {
            "teacher": (TEACHER_MODEL, True),
            "student_full": (MODEL, False),
            "student_early_exit": (MODEL, True),
        }
        results: dict[str, dict] = {}
        probabilities: dict[str, np.ndarray] = {}
        with serving(repository, [MODEL, TEACHER_MODEL, FLOOR_MODEL], extra_repositories=[extra]) as url:
            import tritonclient.grpc as grpcclient

            client = grpcclient.InferenceServerClient(url)
            for variant, (name, early) in variants.items():
                _say(progress, f"bench models: {variant} through tritonserver ({len(test)} test rows)")
                p = np.empty((len(test), len(heads)), np.float32)
                e = np.empty(len(test), np.int32)
                for s in range(0, len(test), CHUNK):
                    rows = test[s : s + CHUNK]
                    p[s : s + len(rows)], e[s : s + len(rows)] = infer(
                        client, name, _inputs(gather(cohort, rows), keys, spec), early
                    )
                probabilities[variant] = p
                results[variant] = {"triton_model": name, "early_exit": early if variant != "teacher" else None}
                if variant != "teacher":
                    shares = np.bincount(e, minlength=int(spec.options["n_exits"])) / len(e)
                    results[variant]["exit_shares"] = [round(float(x), 4) for x in shares]
                results[variant]["triton_grpc"] = _grpc_latency(
                    client, name, latency_batches, keys, spec, early, repeats
                )
                results[variant]["triton_grpc_shared_memory"] = _shm_latency(
                    client, name, latency_batches, keys, spec, early, repeats, len(heads)
                )
                results[variant]["in_process_1_thread"] = in_process[variant]
            _say(progress, "bench models: the compute-free floor model through tritonserver")
            floor = _grpc_latency(client, FLOOR_MODEL, latency_batches, keys, spec, True, repeats)
            floor_shm = _shm_latency(client, FLOOR_MODEL, latency_batches, keys, spec, True, repeats, len(heads))
            client.close()
    finally:
        torch.set_num_threads(threads_before)
        shutil.rmtree(workdir, ignore_errors=True)

    in_process_teacher = 1.0 / (1.0 + np.exp(-teacher_logits[test].astype(np.float64)))
    known = np.isfinite(in_process_teacher)
    figures = figures_by_source(
        cohort,
        test,
        probabilities["teacher"].astype(np.float64),
        probabilities["student_full"].astype(np.float64),
        probabilities["student_early_exit"].astype(np.float64),
        thresholds,
    )
    for variant in variants:
        pn = figures.get("physionet", {}).get("sepsis", {}).get(variant, {})
        results[variant]["metrics"] = {"auroc": pn.get("auroc"), "utility": pn.get("utility"), "of": "physionet sepsis"}
    results["teacher"]["max_abs_probability_difference_vs_in_process"] = float(
        np.max(np.abs(probabilities["teacher"][known] - in_process_teacher[known]))
    )
    full, early = probabilities["student_full"], probabilities["student_early_exit"]
    decide = np.array([thresholds[h] for h in heads], np.float32)
    return {
        "benchmark": "icuwatch bench models (live student)",
        "data": {
            "cohort": "live",
            "source": cohort.meta.get("source"),
            "split": "test",
            "rows": int(len(test)),
            "stays": int(len(np.unique(cohort.group[test]))),
            "simulated_rows": int(live.source_of(cohort)[test].sum()),
            "latency_rows": int(len(sample)),
            "norm_matches_student": cohort.meta.get("norm") == served.get("norm"),
        },
        "machine": {
            "cpu_cores": len(os.sched_getaffinity(0)),
            "gpu": None,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "server": "tritonserver (nvidia-pytriton wheel), python backend, one CPU instance per model, "
            "torch_threads 1; client tritonclient gRPC on the same machine",
        },
        "teacher": {**teacher_info, "served_as": TEACHER_MODEL},
        "student": {"model": MODEL, "parameters": card["parameters"], "thresholds": thresholds},
        "models": results,
        "quality": figures,
        "early_exit_vs_full_student": {
            "alert_agreement_all_risks": round(float(np.mean(((early >= decide) == (full >= decide)).all(axis=1))), 5),
            "exit_shares": results["student_early_exit"]["exit_shares"],
            "speedup_triton_grpc": _ratios(results, "student_full", "student_early_exit", ("triton_grpc",)),
            "speedup_triton_grpc_shared_memory": _ratios(
                results, "student_full", "student_early_exit", ("triton_grpc_shared_memory",)
            ),
            "speedup_in_process": _ratios(results, "student_full", "student_early_exit", ("in_process_1_thread",)),
        },
        "student_vs_teacher": {
            "speedup_triton_grpc": _ratios(results, "teacher", "student_full", ("triton_grpc",)),
            "speedup_triton_grpc_shared_memory": _ratios(
                results, "teacher", "student_full", ("triton_grpc_shared_memory",)
            ),
            "speedup_in_process": _ratios(results, "teacher", "student_full", ("in_process_1_thread",)),
            "early_exit_speedup_triton_grpc": _ratios(results, "teacher", "student_early_exit", ("triton_grpc",)),
        },
        "fixed_cost": {"floor_model_triton_grpc": floor, "floor_model_triton_grpc_shared_memory": floor_shm},
        "seconds": round(time.time() - started, 1),
    }


def _in_process(
    scripted, batches, keys, modalities, boosters_dir: Path, heads, folds: int, repeats, to_tensors
) -> dict:
    """One thread, no Triton: the teacher (tree features + every booster) and the student's TorchScript."""
    import lightgbm as lgb
    import torch

    from icuwatch.fusion.teachers import tabular_features_of

    boosters = [
        [lgb.Booster(model_file=str(boosters_dir / f"{risk}.fold{f}.txt")) for f in range(folds)] for risk in heads
    ]

    def teacher(b):
        x = tabular_features_of(b, modalities)
        return [sum(m.predict(x, raw_score=True, num_threads=1) for m in fs) for fs in boosters]

    out: dict = {"teacher": {}, "student_full": {}, "student_early_exit": {}}
    for size, bs in batches.items():
        out["teacher"][str(size)] = _summary(_timed(teacher, bs, repeats[size]), size)
        tensors = [to_tensors({k: b[k] for k in keys}) for b in bs]
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            for variant, early in (("student_full", False), ("student_early_exit", True)):
                out[variant][str(size)] = _summary(
                    _timed(lambda t, early=early: scripted(t, early), tensors, repeats[size]), size
                )
    return out


def _shm_latency(client, name: str, batches: dict, keys, spec, early: bool, repeats, heads: int) -> dict:
    """As :func:`_grpc_latency` with the tensors in system shared memory (``tritonclient.utils.
    shared_memory``; client and server on one host): the client writes each request's inputs into a
    registered region and reads the outputs from it, so no tensor crosses gRPC. Timed: the wire
    conversion, the copy into the region, the request and reading the outputs back. Raises if the
    answers differ from gRPC's."""
    import tritonclient.utils.shared_memory as shm

    from icuwatch.serving.export import to_wire

    out = {}
    for size, bs in batches.items():
        rows = max(len(b[keys[0]]) for b in bs)
        in_bytes = max(sum(to_wire(k, b[k], spec).nbytes for k in keys) for b in bs)
        region = f"icuwatch-bench-{os.getpid()}-{name}-{size}"
        handle = shm.create_shared_memory_region(region, "/" + region, in_bytes + rows * 4 * (heads + 1))
        client.register_system_shared_memory(region, "/" + region, in_bytes + rows * 4 * (heads + 1))
        try:
            request = functools.partial(_shm_infer, client, name, keys, spec, early, heads, (region, handle, in_bytes))
            _timed(request, bs, 0)
            before = _server_stats(client, name)
            times = _timed(request, bs, repeats[size], warmup=0)
            after = _server_stats(client, name)
            out[str(size)] = {**_summary(times, size), "server": _server_split(before, after, times)}
            if not np.array_equal(request(bs[0])[0], infer(client, name, _inputs(bs[0], keys, spec), early)[0]):
                raise RuntimeError(f"{name}: shared-memory answers differ from gRPC's at batch {size}")
        finally:
            client.unregister_system_shared_memory(region)
            shm.destroy_shared_memory_region(handle)
    return out


def _shm_infer(client, name: str, keys, spec, early: bool, heads: int, shared, batch) -> tuple[np.ndarray, np.ndarray]:
    """One request through the shared-memory region ``shared`` = (name, handle, input bytes): inputs
    from its start, the outputs after them."""
    import tritonclient.grpc as grpcclient
    import tritonclient.utils.shared_memory as shm
    from tritonclient.utils import np_to_triton_dtype

    from icuwatch.serving.export import EARLY_EXIT_PARAMETER, EXIT, PROBABILITY, input_name, to_wire

    region, handle, in_bytes = shared
    wire = [to_wire(k, batch[k], spec) for k in keys]
    shm.set_shared_memory_region(handle, wire)
    inputs, offset = [], 0
    for k, x in zip(keys, wire):
        inp = grpcclient.InferInput(input_name(k), list(x.shape), np_to_triton_dtype(x.dtype))
        inp.set_shared_memory(region, x.nbytes, offset)
        inputs.append(inp)
        offset += x.nbytes
    n = len(wire[0])
    outputs = [grpcclient.InferRequestedOutput(PROBABILITY), grpcclient.InferRequestedOutput(EXIT)]
    outputs[0].set_shared_memory(region, n * 4 * heads, in_bytes)
    outputs[1].set_shared_memory(region, n * 4, in_bytes + n * 4 * heads)
    client.infer(name, inputs, outputs=outputs, parameters=None if early else {EARLY_EXIT_PARAMETER: False})
    p = shm.get_contents_as_numpy(handle, np.float32, [n, heads], offset=in_bytes)
    return p, shm.get_contents_as_numpy(handle, np.int32, [n], offset=in_bytes + n * 4 * heads)


def _grpc_latency(client, name: str, batches: dict, keys, spec, early: bool, repeats) -> dict:
    """Sequential requests per batch size, building the gRPC inputs included (as the worker does)."""
    out = {}
    for size, bs in batches.items():

        def request(b):
            return infer(client, name, _inputs(b, keys, spec), early)

        _timed(request, bs, 0)
        before = _server_stats(client, name)
        times = _timed(request, bs, repeats[size], warmup=0)
        after = _server_stats(client, name)
        out[str(size)] = {**_summary(times, size), "server": _server_split(before, after, times)}
    return out
