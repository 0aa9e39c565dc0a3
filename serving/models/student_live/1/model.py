"""Triton python-backend model: an icuwatch fusion model exported as TorchScript.

``icuwatch export-triton`` (``serving/export.py``) copies this file to
``<repository>/<model>/1/model.py`` next to ``1/model.pt``; the inputs and outputs are whatever the
generated ``config.pbtxt`` lists. ``model.pt`` is one TorchScript module,
``module(batch: Dict[str, Tensor], early_exit: bool) -> (probability [B] or [B, risks], exit [B])``, whose batch
keys are the input names in lower case (``VITALS`` -> ``vitals``, ``PRESENT`` -> ``present``,
``STALENESS_H`` -> ``staleness_h``). The teacher answers exit 0 for every row; the student runs its
early exits inside the batch, or every block when a request carries the parameter
``early_exit: false``.

Requests that Triton's dynamic batcher hands over together are concatenated (per ``early_exit``
value) and run as one batch, then split back. A request that runs alone (the usual case for large
batches) is not copied at all: its inputs are read as views of the backend's shared memory
(``as_numpy``), handed to torch without a copy (``torch.from_numpy``), run in one TorchScript call
(early-exit control included), and the outputs go back through DLPack
(``pb_utils.Tensor.from_dlpack``), one copy into the response. The module runs without
TorchScript's profiling optimisations (``torch.jit.optimized_execution(False)``): on these small
networks, and with the row counts an early exit leaves changing from call to call, the optimised
graphs measured 1.4-2.4x slower than the plain interpreter (full student, 1,000 rows, one thread).
``torch_threads`` (config parameter, default 1) sets torch's intra-op threads of this model
instance's process.

Memory: with glibc's defaults every buffer above its mmap threshold (the 1 MB activations of a
1,000-row batch) is a fresh ``mmap`` and freed memory is trimmed back to the system, so each
request page-faults its working set in again; measured in this stub that doubled the full
student's compute (2.2 vs 1.2 ms at 1,000 rows). ``initialize`` sets glibc's mmap and trim
thresholds (``mallopt``; config parameter ``malloc_keep_mb``, default 64, 0 leaves glibc alone) so
buffers come from the heap and up to that much freed memory is kept for the next request. Other
C libraries: nothing is changed.

Needs numpy (< 2) and torch only; not icuwatch. Locally ``deploy/triton.py`` passes the virtualenv's
site-packages in ``ICUWATCH_SITE_PACKAGES``; it goes first on ``sys.path`` (the stub's interpreter
may have its own numpy 2, with which outputs come back empty). In a production image torch is
pip-installed into the backend's Python and this just works.
"""

import json
import os
import site
import sys
import warnings

if os.environ.get("ICUWATCH_SITE_PACKAGES"):
    sys.path.insert(0, os.environ["ICUWATCH_SITE_PACKAGES"])
    site.addsitedir(os.environ["ICUWATCH_SITE_PACKAGES"])

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from torch.utils.dlpack import to_dlpack  # noqa: E402

EARLY_EXIT = "early_exit"


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper limit on 64-bit


def keep_freed_memory(keep_mb):
    """glibc only: allocations up to 32 MB from the heap, and up to ``keep_mb`` MB of freed memory kept
    (not returned to the system). True when set."""
    if keep_mb <= 0:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, min(int(keep_mb) << 20, MMAP_THRESHOLD_MAX))
        return bool(mmap_ok and libc.mallopt(M_TRIM_THRESHOLD, int(keep_mb) << 20))
    except (OSError, AttributeError):
        return False


def _flag(value, default=True):
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return default if value is None else bool(value)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(max(1, int(params.get("torch_threads") or 1)))
        keep_freed_memory(int(params.get("malloc_keep_mb") or 64))
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        with warnings.catch_warnings():  # torch.jit's deprecation notice, once per load
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.load(path, map_location="cpu").eval()
        self.inputs = [(i["name"], i["name"].lower(), tuple(int(d) for d in i["dims"])) for i in config["input"]]
        self.wire = wire_divisors(params.get("wire_uint8", ""))
        self.outputs = [o["name"] for o in config["output"]]
        self.name = config["name"]

    def _read(self, request):
        """(batch dict of numpy arrays, early_exit) of one request; raises ValueError on bad inputs."""
        tensors = {t.name(): t for t in request.inputs()}
        batch, rows = {}, None
        for name, key, dims in self.inputs:
            tensor = tensors.get(name)
            if tensor is None:
                raise ValueError(f"{self.name}: input {name} missing")
            x = tensor.as_numpy()  # a view of the request's shared memory
            if tuple(x.shape[1:]) != dims or (rows is not None and len(x) != rows):
                raise ValueError(
                    f"{self.name}: {name} must be [batch, {', '.join(map(str, dims))}], got {list(x.shape)}"
                )
            rows = len(x)
            batch[key] = x
        try:
            params = json.loads(request.parameters() or "{}")
        except (AttributeError, ValueError):
            params = {}
        return batch, _flag(params.get(EARLY_EXIT), True)

    def _outputs(self, probability, exit_index, start, n):
        values = {"PROBABILITY": probability, "EXIT": exit_index}
        return [
            pb_utils.Tensor.from_dlpack(name, to_dlpack(values[name][start : start + n].reshape(n, -1)))
            for name in self.outputs
        ]

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for i, request in enumerate(requests):
            try:
                batch, early = self._read(request)
            except ValueError as exc:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
                continue
            groups.setdefault(early, []).append((i, batch))
        for early, members in groups.items():
            sizes = [len(next(iter(b.values()))) for _, b in members]
            if len(members) == 1:  # no copy: the shared-memory views themselves
                batch = {key: _tensor(members[0][1][key]) for _, key, _ in self.inputs}
            else:
                batch = {
                    key: torch.from_numpy(np.concatenate([b[key] for _, b in members])) for _, key, _ in self.inputs
                }
            for name, key, _ in self.inputs:
                if name in self.wire:
                    batch[key] = from_wire(batch[key], self.wire[name])
            try:
                with torch.inference_mode(), torch.jit.optimized_execution(False):
                    probability, exit_index = self.module(batch, early)
                probability = probability.to(torch.float32).contiguous()
                exit_index = exit_index.to(torch.int32).contiguous()
            except Exception as exc:  # noqa: BLE001 - one bad batch must not take the model down
                for i, _ in members:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"{self.name}: {type(exc).__name__}: {exc}")
                    )
                continue
            start = 0
            for (i, _), n in zip(members, sizes):
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=self._outputs(probability, exit_index, start, n)
                )
                start += n
        return responses


def wire_divisors(text):
    """``{"CXR": 255, "REPORT": 1}`` from the config's ``wire_uint8`` parameter (``CXR:255,REPORT:1``)."""
    return {name: int(d) for name, _, d in (part.partition(":") for part in text.split(",") if part)}


def from_wire(x, divisor):
    """A UINT8 input as the float32 the TorchScript was traced on: ``x / divisor`` computed in float64
    and rounded once, as the row builders compute it (``core.live_row.from_wire_uint8``). Where a
    float32 division gives the same float32 for all 256 byte values (255 does), it is used: one pass
    instead of three (1.4 vs 0.4 ms for a 1,000-row X-ray input, one thread)."""
    if divisor == 1:
        return x.to(torch.float32)
    if _float32_division_exact(divisor):
        return x.to(torch.float32).div_(float(divisor))
    return x.to(torch.float64).div_(divisor).to(torch.float32)


_EXACT = {}


def _float32_division_exact(divisor):
    if divisor not in _EXACT:
        every = torch.arange(256, dtype=torch.uint8)
        _EXACT[divisor] = torch.equal(
            every.to(torch.float32).div_(float(divisor)), every.to(torch.float64).div_(divisor).to(torch.float32)
        )
    return _EXACT[divisor]


def _tensor(x):
    """A torch tensor on ``x``'s memory (no copy; a read-only view is only ever read here)."""
    if not x.flags.writeable:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch: "the given NumPy array is not writable"
            return torch.from_numpy(x)
    return torch.from_numpy(x)
