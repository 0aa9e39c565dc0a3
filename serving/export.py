"""Exporting the trained teacher and the early-exit student as Triton models (``icuwatch export-triton``).

For each trained model (``var/models/<strategy>-<cohort>/``: by default ``attention-<cohort>``, the
teacher, and ``student-<cohort>``) one Triton model is written into a model repository::

    <repository>/<strategy>_<cohort>/config.pbtxt      python backend, dynamic batching, max_batch_size 1024
    <repository>/<strategy>_<cohort>/1/model.pt        TorchScript: the network and its calibration (generated)
    <repository>/<strategy>_<cohort>/1/model.py        serving/templates/fusion_model.py, copied
    <repository>/<strategy>_<cohort>/1/export.json     provenance: source weights' SHA-256, card summary

The default repository is ``var/triton/models`` (``default_repository``), a generated one: the
committed ``serving/models`` (rule scores, what ``icuwatch stack up`` and the tests serve)
never depends on trained weights. Serve both with ``ICUWATCH_TRITON_EXTRA_REPOSITORIES`` (see
``deploy/triton.py``) or on their own (``icuwatch bench models`` starts a server on this one only).

**Interface** (both models): one input per cohort input, named in capitals (PhysioNet: ``VITALS``
FP32 [8, 14], ``LABS`` FP32 [81], ``STATIC`` FP32 [7]; ``CXR`` FP32 [1, 224, 224], ``REPORT`` INT64
[L] on cohorts with images; the live student's ``CXR`` [1, 32, 32] and ``REPORT`` [256] travel as
UINT8, :func:`to_wire`), ``PRESENT`` BOOL [M] and ``STALENESS_H`` FP32 [M] (M modalities, in
the cohort's order), the layouts of ``fusion.cohorts.base.gather``. Outputs ``PROBABILITY`` FP32 [1], the
calibrated probability (``sigmoid(logit / temperature)``, as ``model_store.TrainedModel.probabilities``);
the student also gives ``EXIT`` INT32 [1], the exit that answered the row. The student runs its early
exits inside the batch (``EarlyExitStudent.forward_early_exit``: rows whose calibrated logit is far
enough from the alert threshold's leave at exit 0, only the rows near it run the deeper blocks) with
the per-exit temperatures, the centre (``logit`` of the alert threshold) and the margins it was
distilled with (``export.json`` records them);
a request parameter ``early_exit: false`` runs every row through every block (the full student).

**What is traced, what is scripted.** The networks are traced (``torch.jit.trace``): the teacher
whole, the student as its stem (encoders + projection) and one module per block + exit head. Tracing
records one path through Python control flow, so ``FusionModel.encode`` (which runs an encoder only
on the rows where its modality is present: a data-dependent branch) is swapped, for the trace only,
for a version that runs the encoder on every row and keeps the present rows' outputs
(``torch.where``). In eval mode every encoder is row-independent (batch norm uses its running
statistics), so the answer is the same; an absent modality's input still cannot change a score.
The student's early-exit control (which rows leave, the gathers, the exit index) is data-dependent
and is scripted (``torch.jit.script``) around the traced pieces, so ``model.pt`` is one self-contained
TorchScript module: ``module(batch: Dict[str, Tensor], early_exit: bool) -> (probability [B],
exit [B])``. The export checks the TorchScript against the eager model on synthetic batches of
several sizes and presence patterns and refuses to write a model that disagrees.

**What a production NVIDIA Triton container needs.** The python backend (in every
``nvcr.io/nvidia/tritonserver:<yy.mm>-py3`` image) and ``torch`` in the backend stub's Python
environment (``pip install torch==<the version that exported the model>`` in the image, or a
conda-pack environment named by ``EXECUTION_ENV_PATH`` in config.pbtxt), plus numpy < 2; icuwatch
itself is *not* needed (model.py imports only numpy, torch and the backend utilities). Chosen over
ONNX (onnxruntime or TensorRT backends) because:

* the student's early exit routes rows *inside* a batch (each row stops at its own depth). A static
  ONNX/TensorRT graph runs every row through every block, so the saving is lost; keeping it means
  splitting the student into per-stage ONNX models driven by BLS, i.e. the python backend anyway;
* the networks are small (40k and 114k parameters): per-request and per-operator overhead, not
  arithmetic, bounds latency (``icuwatch bench models``), so a faster kernel library buys little;
* one artefact for both models and for in-process use, checked against the eager model at export.

The teacher alone has no data-dependent control flow and could go to ONNX (``torch.onnx.export`` of
the traced module, dynamic batch axis) for the onnxruntime backend if a container without torch is
wanted. ``model.pt`` is TorchScript, also loadable by Triton's libtorch backend (``backend:
"pytorch"``, the dictionary input), but TorchScript files are tied to the torch that wrote them and
torch 2.13 marks ``torch.jit`` deprecated (``torch.export`` cannot yet express the in-batch early
exit without custom control-flow operators): pin the same torch in the serving image.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
import types
import warnings
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
from torch import nn

from icuwatch.core.live_row import WIRE_UINT8_DIVISORS, to_wire_uint8
from icuwatch.fusion.strategies.student import exit_decided
from icuwatch.serving import TEMPLATES

TEMPLATE = TEMPLATES / "fusion_model.py"
TORCHSCRIPT = "model.pt"
PROVENANCE = "export.json"
log = logging.getLogger(__name__)

VERSION = "1"
"""The first version an export writes; later exports of other weights write the next one."""
MAX_BATCH_SIZE = 1024
PROBABILITY = "PROBABILITY"
EXIT = "EXIT"
EARLY_EXIT_PARAMETER = "early_exit"
WIRE_PARAMETER = "wire_uint8"
"""Config parameter naming the UINT8 inputs and their divisors (``CXR:255,REPORT:1``): the python
backend turns them back into the float inputs the TorchScript was traced on."""
TEACHER = "attention"
STUDENT = "student"
VERIFY_ATOL = 1e-5


def default_repository(settings=None) -> Path:
    """``var/triton/models`` (under the state directory): generated, never the committed repository."""
    from icuwatch.core.settings import get_settings

    return (settings or get_settings()).state_dir / "triton" / "models"


def triton_name(model_name: str) -> str:
    """Triton model name of a model-store name: ``student-physionet`` -> ``student_physionet``."""
    return model_name.replace("-", "_")


# --- inputs ----------------------------------------------------------------------------------------


def batch_keys(spec) -> list[str]:
    """The batch entries a model reads, in the order of the Triton inputs."""
    return [*spec.modalities, "static", "present", "staleness_h"]


def input_name(key: str) -> str:
    return key.upper()


def row_shape(spec, key: str) -> tuple[int, ...]:
    """One row's shape as ``cohort.gather`` gives it (the Triton input dims, batch axis excluded)."""
    if key in ("present", "staleness_h"):
        return (len(spec.modalities),)
    dims = tuple(spec.dims[key])
    return (1, *dims) if key == "cxr" else dims


def report_is_bag(spec) -> bool:
    """Whether the model reads the report as a float bag of words (the live student,
    ``core.live_row``) rather than token ids."""
    return "report" in (getattr(spec, "options", None) or {}).get("flat_inputs", ())


def wire_divisor(key: str, spec=None) -> int | None:
    """For an input sent to Triton as UINT8 (the live student's thumbnail and report bag,
    ``core.live_row.WIRE_UINT8_DIVISORS``), what divides it back into the model's float input."""
    return WIRE_UINT8_DIVISORS.get(key) if report_is_bag(spec) else None


def to_wire(key: str, x: np.ndarray, spec=None) -> np.ndarray:
    """``x`` (a batch of the model's input ``key``, as ``numpy_dtype`` gives it) as Triton is sent it
    (:func:`triton_dtype`)."""
    if wire_divisor(key, spec) is not None:
        return to_wire_uint8(key, x)
    return np.ascontiguousarray(x, dtype=numpy_dtype(key, spec))


def triton_dtype(key: str, spec=None) -> str:
    """The Triton input's type: what crosses gRPC (:func:`to_wire`), not always what the
    TorchScript computes on (:func:`numpy_dtype`; the python backend converts)."""
    if wire_divisor(key, spec) is not None:
        return "TYPE_UINT8"
    if key == "report" and report_is_bag(spec):
        return "TYPE_FP32"
    return {"present": "TYPE_BOOL", "report": "TYPE_INT64"}.get(key, "TYPE_FP32")


def numpy_dtype(key: str, spec=None) -> np.dtype:
    if key == "report" and report_is_bag(spec):
        return np.dtype(np.float32)
    return {"present": np.dtype(bool), "report": np.dtype(np.int64)}.get(key, np.dtype(np.float32))


def n_heads(spec) -> int:
    """Risks a model answers: 1, or the live student's 2 (``PROBABILITY`` [B, n_heads])."""
    return int((getattr(spec, "options", None) or {}).get("n_heads", 1))


def example_batch(spec, n: int, seed: int = 0, present_share: float = 0.75) -> dict[str, torch.Tensor]:
    """Synthetic inputs of the model's shapes (for tracing and checking): each modality present with
    probability ``present_share`` (at least one per row), absent ones zero, as in a cohort."""
    rng = np.random.default_rng(seed)
    m = len(spec.modalities)
    present = rng.random((n, m)) < present_share
    present[~present.any(axis=1), rng.integers(0, m)] = True
    batch: dict[str, np.ndarray] = {}
    for j, key in enumerate(spec.modalities):
        shape = (n, *row_shape(spec, key))
        if key == "report" and report_is_bag(spec):
            x = (rng.random(shape) < 0.05).astype(np.float32)
        elif key == "report":
            from icuwatch.encoders.tokenizer import VOCAB_SIZE

            x = rng.integers(0, VOCAB_SIZE, size=shape)
        elif key == "cxr":
            x = rng.random(shape)
        else:
            x = rng.normal(size=shape)
        keep = present[:, j].reshape(-1, *([1] * (len(shape) - 1)))
        batch[key] = (x * keep).astype(numpy_dtype(key, spec))
    batch["static"] = rng.normal(size=(n, *row_shape(spec, "static"))).astype(np.float32)
    batch["present"] = present
    batch["staleness_h"] = np.where(present, rng.exponential(5.0, size=(n, m)), 0.0).astype(np.float32)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}


# --- traceable networks ----------------------------------------------------------------------------


def _encode_every_row(
    self, encoder: nn.Module, batch: Dict[str, torch.Tensor], modality: str, extra: torch.Tensor | None = None
) -> torch.Tensor:
    """``FusionModel.encode`` without the data-dependent branch: the encoder on every row, the
    outputs of rows without the modality replaced by zeros (the same answer in eval mode)."""
    keep = batch["present"][:, self.spec.modalities.index(modality)]
    y = encoder(batch[modality]) if extra is None else encoder(batch[modality], extra)
    return torch.where(keep.reshape([-1] + [1] * (y.dim() - 1)), y, torch.zeros_like(y))


def _traceable(model: nn.Module) -> nn.Module:
    """A frozen eval-mode copy whose ``encode`` is :func:`_encode_every_row`."""
    model = copy.deepcopy(model).eval()
    model.encode = types.MethodType(_encode_every_row, model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _Logit(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch)


class _Stem(nn.Module):
    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.student.features(batch)


class _Stage(nn.Module):
    """One residual block and its exit head: h -> (h', logit [B] or [B, n_heads])."""

    def __init__(self, block: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.head = head

    def forward(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.block(h)
        return h, self.head(h).squeeze(-1)


def _trace(module: nn.Module, example) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices; the result is checked below
        return torch.jit.trace(module.eval(), (example,), strict=False, check_trace=False)


def _script(module: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(module.eval())


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """An exported ``model.pt`` (eval mode), without torch.jit's deprecation notice."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


# --- served modules (scripted) ---------------------------------------------------------------------


class ServedTeacher(nn.Module):
    """(calibrated probability [B], exit [B] = 0): ``sigmoid(net(batch) / temperature)``."""

    def __init__(self, net: nn.Module, temperature: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))

    def forward(self, batch: Dict[str, torch.Tensor], early_exit: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        z = self.net(batch)
        return torch.sigmoid(z / self.temperature), torch.zeros(z.shape, dtype=torch.long)


class ServedStudent(nn.Module):
    """``EarlyExitStudent.forward_early_exit`` followed by ``calibrated``, scriptable: (calibrated
    probability [B] (one risk) or [B, n_heads], exit index [B]). Rows whose calibrated logit at early
    exit k is at least ``margins[k]`` from ``center`` (the alert threshold's logit;
    ``student.exit_decided``) for every risk leave there; the others go on through the next block.
    ``early_exit=False``: every row to the last exit."""

    def __init__(
        self,
        stem: nn.Module,
        stages: list[nn.Module],
        center: torch.Tensor,
        margins: torch.Tensor,
        temperatures: torch.Tensor,
    ) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.n_exits = len(stages)
        self.n_heads = 1 if center.dim() == 0 else int(center.numel())
        heads = [self.n_heads] if self.n_heads > 1 else []
        self.register_buffer("center", center.detach().clone().float().reshape(heads))
        self.register_buffer(
            "margins",
            torch.cat(
                [
                    margins.detach().clone().float().reshape([-1] + heads),
                    torch.full([1] + heads, math.inf),
                ]
            ),
        )
        self.register_buffer("temperatures", temperatures.detach().clone().float())

    def forward(self, batch: Dict[str, torch.Tensor], early_exit: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.stem(batch)
        n = h.size(0)
        last = self.n_exits - 1
        logits = torch.zeros([n] if self.n_heads == 1 else [n, self.n_heads], dtype=h.dtype)
        exit_index = torch.full([n], last, dtype=torch.long)
        rows = torch.arange(n)
        k = 0
        for stage in self.stages:
            if h.size(0) > 0:
                h, z = stage(h)
                if k == last:
                    logits[rows] = z
                elif early_exit and not bool(torch.isinf(self.margins[k]).any()):
                    stop = exit_decided(z, self.temperatures[k], self.center, self.margins[k])
                    if stop.dim() > 1:  # several risks: every one's decision settled
                        stop = stop.all(dim=1)
                    leave = stop.nonzero().squeeze(1)
                    if leave.size(0) > 0:
                        done = rows[leave]
                        logits[done] = z[leave]
                        exit_index[done] = k
                        stay = (~stop).nonzero().squeeze(1)
                        h = h[stay]
                        rows = rows[stay]
            k += 1
        return torch.sigmoid(logits / self.temperatures[exit_index]), exit_index


def serving_module(
    model: nn.Module, temperature: float | None = None, example: dict | None = None
) -> torch.jit.ScriptModule:
    """The TorchScript module Triton serves for ``model`` (a trained ``FusionModel``; the student gets
    its early exits). ``temperature``: the teacher's (model card); the student's are its buffers."""
    from icuwatch.fusion.strategies.student import EarlyExitStudent

    example = example if example is not None else example_batch(model.spec, 64, seed=1)
    if isinstance(model, EarlyExitStudent):
        student = _traceable(model)
        stem_model = copy.copy(student)  # the stem needs no blocks: keep them out of its weights
        stem_model._modules = {k: v for k, v in student._modules.items() if k not in ("blocks", "exits")}
        stem = _trace(_Stem(stem_model), example)
        with torch.no_grad():
            h = student.features(example)
        stages = []
        for block, head in zip(student.blocks, student.exits):
            stages.append(_trace(_Stage(block, head), h))
            with torch.no_grad():
                h = block(h)
        served = ServedStudent(stem, stages, student.exit_center, student.exit_margins, student.exit_temperatures)
    else:
        if temperature is None:
            raise ValueError("the teacher's temperature (model card) is needed")
        served = ServedTeacher(_trace(_Logit(_traceable(model)), example), temperature)
    return _script(served)


@torch.no_grad()
def reference(
    model: nn.Module, batch: dict[str, torch.Tensor], temperature: float | None = None, early_exit: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """What the eager model answers: (calibrated probability [B] float64, exit [B])."""
    from icuwatch.fusion.strategies.student import EarlyExitStudent

    model.eval()
    if isinstance(model, EarlyExitStudent):
        if early_exit:
            logits, where = model.forward_early_exit(batch)
        else:
            logits = model(batch)
            if model.n_heads > 1:
                logits = model.head_logits
            where = torch.full(logits.shape[:1], model.n_exits - 1, dtype=torch.long)
        return torch.sigmoid(model.calibrated(logits, where)).double().numpy(), where.numpy()
    z = model(batch).double().numpy()
    return 1.0 / (1.0 + np.exp(-z / float(temperature))), np.zeros(len(z), dtype=np.int64)


@torch.no_grad()
def verify(served, model: nn.Module, temperature: float | None = None, sizes=(1, 3, 257), seeds=(11, 12)) -> dict:
    """The TorchScript module against the eager model on synthetic batches (several sizes, presence
    patterns, early exit on and off): largest probability difference, and exits equal. Raises if not."""
    worst, exits_equal = 0.0, True
    for n in sizes:
        for seed in seeds:
            for share in (0.5, 1.0):
                batch = example_batch(model.spec, n, seed=seed * 1000 + n, present_share=share)
                for early in (True, False):
                    p_ref, e_ref = reference(model, batch, temperature, early)
                    with torch.no_grad():
                        p, e = served(batch, early)
                    worst = max(worst, float(np.max(np.abs(p.double().numpy() - p_ref))))
                    exits_equal &= bool(np.array_equal(e.numpy(), e_ref))
    if worst > VERIFY_ATOL or not exits_equal:
        raise RuntimeError(
            f"TorchScript export disagrees with the eager model: max |dp| {worst:.2e}, exits equal: {exits_equal}"
        )
    return {"max_abs_probability_difference": worst, "exits_equal": exits_equal}


# --- repository ------------------------------------------------------------------------------------


def config_pbtxt(
    name: str, spec, student: bool, source: str, threads: int = 1, queue_delay_us: int = 0, instances: int = 1
) -> str:
    def dims(shape):
        return ", ".join(str(d) for d in shape)

    inputs = ",\n".join(
        f'  {{ name: "{input_name(k)}", data_type: {triton_dtype(k, spec)}, dims: [ {dims(row_shape(spec, k))} ] }}'
        for k in batch_keys(spec)
    )
    outputs = [f'  {{ name: "{PROBABILITY}", data_type: TYPE_FP32, dims: [ {n_heads(spec)} ] }}']
    if student:
        outputs.append(f'  {{ name: "{EXIT}", data_type: TYPE_INT32, dims: [ 1 ] }}')
    what = (
        "early-exit student: PROBABILITY = calibrated probability of the exit that answered, EXIT = that exit "
        "(0 = first); request parameter early_exit=false runs every block"
        if student
        else "teacher: PROBABILITY = calibrated probability"
    )
    outputs_text = ",\n".join(outputs)
    wire = ",".join(f"{input_name(k)}:{wire_divisor(k, spec)}" for k in batch_keys(spec) if wire_divisor(k, spec))
    wire_text = f'parameters: {{ key: "{WIRE_PARAMETER}", value: {{ string_value: "{wire}" }} }}\n' if wire else ""
    return f"""# Generated by `icuwatch export-triton` (serving/export.py) from {source}; do not edit.
# {what}.
# Inputs: the cohort's inputs (fusion.cohorts.base.gather layouts), PRESENT and STALENESS_H per modality
# ({", ".join(spec.modalities)}). 1/model.pt is TorchScript, 1/model.py the python-backend wrapper.
name: "{name}"
backend: "python"
max_batch_size: {MAX_BATCH_SIZE}
input [
{inputs}
]
output [
{outputs_text}
]
dynamic_batching {{
  max_queue_delay_microseconds: {int(queue_delay_us)}
}}
instance_group [ {{ count: {int(instances)}, kind: KIND_CPU }} ]
version_policy: {{ latest: {{ num_versions: 1 }} }}
parameters: {{ key: "torch_threads", value: {{ string_value: "{int(threads)}" }} }}
parameters: {{ key: "malloc_keep_mb", value: {{ string_value: "64" }} }}
parameters: {{ key: "icuwatch_model", value: {{ string_value: "{source}" }} }}
{wire_text}"""


def versions(model_dir: Path) -> list[int]:
    """The numbered version directories of a Triton model, oldest first."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def newest_version_dir(model_dir: Path) -> Path:
    """The highest version directory (what ``latest: 1`` serves); ``<model_dir>/1`` when none exists."""
    held = versions(model_dir)
    return model_dir / (str(held[-1]) if held else VERSION)


def _provenance(version_dir: Path) -> dict:
    try:
        return json.loads((version_dir / PROVENANCE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _version_to_write(model_dir: Path, source_sha256: str | None, interface: dict) -> tuple[Path, list[Path]]:
    """(the version directory an export writes, the older ones it must remove).

    The same weights exported again replace their own version; other weights get the next number, so
    the version before stays for ``icuwatch models rollback``. All versions share one
    ``config.pbtxt``, and a worker builds every version's rows with the normalisation it read at
    start: an older version whose inputs or normalisation (``interface``) differ from the new
    export's cannot serve beside it and is removed."""
    held = versions(model_dir)
    if not held:
        return model_dir / VERSION, []
    newest = model_dir / str(held[-1])
    same = source_sha256 is not None and _provenance(newest).get("source_sha256") == source_sha256
    target = newest if same else model_dir / str(held[-1] + 1)
    stale = [
        model_dir / str(v)
        for v in held
        if model_dir / str(v) != target and {k: _provenance(model_dir / str(v)).get(k) for k in interface} != interface
    ]
    return target, stale


def source_digest(directory: Path) -> str:
    """SHA-256 of a trained model's weights and card, and of the model.py template."""
    from icuwatch.fusion import model_store

    h = hashlib.sha256()
    for path in (directory / model_store.WEIGHTS, directory / model_store.CARD, TEMPLATE, Path(__file__)):
        h.update(path.read_bytes())
    return h.hexdigest()


def export_model(
    trained, repository: str | Path, source_dir: Path | None = None, threads: int = 1, queue_delay_us: int = 0
) -> dict:
    """Write ``trained`` (a ``model_store.TrainedModel``) as a Triton model into ``repository``."""
    from icuwatch.fusion.strategies.student import EarlyExitStudent

    model = trained.model.eval()
    student = isinstance(model, EarlyExitStudent)
    temperature = None if student else trained.temperature
    served = serving_module(model, temperature)
    check = verify(served, model, temperature)
    source = trained.card["model"]
    name = triton_name(source)
    directory = Path(repository) / name
    source_sha256 = source_digest(source_dir) if source_dir is not None else None
    interface = {
        "inputs": {input_name(k): list(row_shape(model.spec, k)) for k in batch_keys(model.spec)},
        "input_dtypes": {
            input_name(k): triton_dtype(k, model.spec).removeprefix("TYPE_") for k in batch_keys(model.spec)
        },
        "outputs": [PROBABILITY, EXIT] if student else [PROBABILITY],
    }
    if student:  # the worker builds rows with the normalisation it read: a rollback must share it
        interface["norm"] = trained.card.get("data", {}).get("meta", {}).get("norm")
    version, stale = _version_to_write(directory, source_sha256, interface)
    for old in stale:
        log.warning("removing %s: its inputs differ from the new export's, and the versions share one config", old)
        shutil.rmtree(old)
    if version.exists():
        shutil.rmtree(version)
    version.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(served, str(version / TORCHSCRIPT))
    shutil.copy2(TEMPLATE, version / "model.py")
    (directory / "config.pbtxt").write_text(config_pbtxt(name, model.spec, student, source, threads, queue_delay_us))
    info = {
        "triton_model": name,
        "source": source,
        "strategy": trained.card["strategy"],
        "version": int(version.name),
        "source_sha256": source_sha256,
        "parameters": model.n_parameters(),
        **interface,
        "threshold": trained.card.get("threshold"),
        "torch": torch.__version__,
        "check": check,
    }
    if student:
        info["heads"] = trained.card.get("heads", ["sepsis"])
        info["thresholds"] = trained.card.get("thresholds", {"sepsis": trained.card.get("threshold")})
        info["exit_temperatures"] = model.exit_temperatures.tolist()
        info["exit_center"] = model.exit_center.tolist()
        info["exit_margins"] = _finite_or_none(model.exit_margins.tolist())
    else:
        info["temperature"] = temperature
    (version / PROVENANCE).write_text(json.dumps(info, indent=2) + "\n")
    return {**info, "dir": str(directory)}


def _finite_or_none(values):
    """Nested lists of floats with infinities as None (JSON has no infinity)."""
    if isinstance(values, list):
        return [_finite_or_none(v) for v in values]
    return None if math.isinf(values) else values


def trained_dirs(cohort: str, teacher: str = TEACHER) -> dict[str, Path]:
    """``{"teacher": var/models/<teacher>-<cohort>, "student": var/models/student-<cohort>}``."""
    from icuwatch.fusion import model_store

    return {
        "teacher": model_store.model_dir(f"{teacher}-{cohort}"),
        "student": model_store.model_dir(f"{STUDENT}-{cohort}"),
    }


def is_current(repository: str | Path, source_dir: Path) -> bool:
    """Whether ``repository`` holds an export of ``source_dir``'s weights made by this exporter."""
    from icuwatch.fusion import model_store

    card = json.loads((source_dir / model_store.CARD).read_text())
    newest = newest_version_dir(Path(repository) / triton_name(card["model"]))
    return _provenance(newest).get("source_sha256") == source_digest(source_dir)


def export(
    cohort: str = "physionet",
    repository: str | Path | None = None,
    teacher: str = TEACHER,
    threads: int = 1,
    queue_delay_us: int = 0,
    only_if_stale: bool = False,
) -> dict:
    """Export the trained teacher and student of ``cohort`` into ``repository`` (default
    :func:`default_repository`). ``only_if_stale``: skip models whose export is current."""
    from icuwatch.fusion import model_store

    repository = Path(repository) if repository is not None else default_repository()
    repository.mkdir(parents=True, exist_ok=True)
    out = {"repository": str(repository), "models": {}}
    for role, directory in trained_dirs(cohort, teacher).items():
        if not (directory / model_store.CARD).exists():
            how = (
                f"icuwatch train --strategy {teacher} --cohort {cohort}"
                if role == "teacher"
                else f"icuwatch distill --cohort {cohort}"
            )
            raise FileNotFoundError(f"no trained {role} in {directory}; run `{how}` first")
        if only_if_stale and is_current(repository, directory):
            card = json.loads((directory / model_store.CARD).read_text())
            info = _provenance(newest_version_dir(repository / triton_name(card["model"])))
            out["models"][role] = {**info, "dir": str(repository / info["triton_model"]), "exported": False}
            continue
        trained = model_store.load(directory)
        out["models"][role] = {
            **export_model(trained, repository, directory, threads, queue_delay_us),
            "exported": True,
        }
    return out
