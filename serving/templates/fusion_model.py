"""Triton python-backend model: an icuwatch fusion model exported as TorchScript.

``icuwatch export-triton`` (``serving/export.py``) copies this file to
``<repository>/<model>/1/model.py`` next to ``1/model.pt``; the inputs and outputs are whatever the
generated ``config.pbtxt`` lists. ``model.pt`` is one TorchScript module,
``module(batch: Dict[str, Tensor], early_exit: bool) -> (probability [B], exit [B])``, whose batch
keys are the input names in lower case (``VITALS`` -> ``vitals``, ``PRESENT`` -> ``present``,
``STALENESS_H`` -> ``staleness_h``). The teacher answers exit 0 for every row; the student runs its
early exits inside the batch, or every block when a request carries the parameter
``early_exit: false``.

Requests that Triton's dynamic batcher hands over together are concatenated (per ``early_exit``
value) and run as one batch, then split back. ``torch_threads`` (config parameter, default 1) sets
torch's intra-op threads of this model instance's process.

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

EARLY_EXIT = "early_exit"


def _flag(value, default=True):
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off")
    return default if value is None else bool(value)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        torch.set_num_threads(max(1, int(params.get("torch_threads") or 1)))
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        with warnings.catch_warnings():  # torch.jit's deprecation notice, once per load
            warnings.simplefilter("ignore", DeprecationWarning)
            self.module = torch.jit.load(path, map_location="cpu").eval()
        self.inputs = [(i["name"], i["name"].lower(), tuple(int(d) for d in i["dims"])) for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.name = config["name"]

    def _read(self, request):
        """(batch dict of numpy arrays, early_exit) of one request; raises ValueError on bad inputs."""
        batch, rows = {}, None
        for name, key, dims in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"{self.name}: input {name} missing")
            x = tensor.as_numpy()
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
            batch = {
                key: torch.from_numpy(np.ascontiguousarray(np.concatenate([b[key] for _, b in members])))
                for _, key, _ in self.inputs
            }
            try:
                with torch.inference_mode():
                    probability, exit_index = self.module(batch, early)
            except Exception as exc:  # noqa: BLE001 - one bad batch must not take the model down
                for i, _ in members:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"{self.name}: {type(exc).__name__}: {exc}")
                    )
                continue
            values = {
                "PROBABILITY": probability.numpy().astype(np.float32).reshape(-1, 1),
                "EXIT": exit_index.numpy().astype(np.int32).reshape(-1, 1),
            }
            start = 0
            for (i, _), n in zip(members, sizes):
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(name, np.ascontiguousarray(values[name][start : start + n]))
                        for name in self.outputs
                    ]
                )
                start += n
        return responses
