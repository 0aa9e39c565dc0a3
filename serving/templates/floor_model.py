"""Triton python-backend model that computes nothing: the fixed cost of a request (``icuwatch bench models``).

Same inputs and outputs as an exported fusion model (the benchmark writes its ``config.pbtxt``
with ``serving.export.config_pbtxt``); ``execute`` reads only the batch size of the first input
(``as_numpy``: a view of the request's shared memory, no copy) and answers ``PROBABILITY`` 0 (and
``EXIT`` 0). The time a client waits for it at a batch size is what gRPC, Triton's core and the
python backend's process boundary cost before any model runs: the floor under the served teacher
and student. Needs numpy only.
"""

import json
import os
import site
import sys

if os.environ.get("ICUWATCH_SITE_PACKAGES"):
    sys.path.insert(0, os.environ["ICUWATCH_SITE_PACKAGES"])
    site.addsitedir(os.environ["ICUWATCH_SITE_PACKAGES"])

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.first = config["input"][0]["name"]
        self.outputs = [
            (o["name"], tuple(int(d) for d in o["dims"]), np.int32 if o["data_type"] == "TYPE_INT32" else np.float32)
            for o in config["output"]
        ]

    def execute(self, requests):
        responses = []
        for request in requests:
            n = len(pb_utils.get_input_tensor_by_name(request, self.first).as_numpy())
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(name, np.zeros((n, *dims), dtype=dtype)) for name, dims, dtype in self.outputs
                    ]
                )
            )
        return responses
