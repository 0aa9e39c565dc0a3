"""Triton python-backend model, version 2: icuwatch's rule scores over a batch of feature rows,
plus per-modality contributions.

Outputs as version 1 (DETERIORATION_RISK, SEPSIS_RISK, NEWS2, QSOFA, unchanged) and
``CONTRIBUTIONS`` FP32 [batch, 2, 4]: leave-one-modality-out deltas, layout in
:data:`icuwatch.core.features.CONTRIBUTIONS_SHAPE` (risk deterioration/sepsis × modality
vitals/waveforms/labs/cxr). The worker's in-process fallback calls the same
:func:`icuwatch.core.rules.score_explained`, so both paths give the same numbers.

The package ``icuwatch`` must be importable by the backend stub. Locally the stack passes the
virtualenv's site-packages in ``ICUWATCH_SITE_PACKAGES``; it goes first on ``sys.path`` (the stub's
interpreter may have its own numpy 2, with which outputs come back empty) and ``site.addsitedir``
runs the editable-install hook. In the production image (deploy/production/triton.Dockerfile) only
icuwatch.core is copied in, on PYTHONPATH.
"""

import os
import site
import sys

if os.environ.get("ICUWATCH_SITE_PACKAGES"):
    sys.path.insert(0, os.environ["ICUWATCH_SITE_PACKAGES"])
    site.addsitedir(os.environ["ICUWATCH_SITE_PACKAGES"])

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from icuwatch.core import features, rules  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        self.n_features = features.N_FEATURES

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "FEATURES").as_numpy()
            if x.ndim != 2 or x.shape[1] != self.n_features:
                err = pb_utils.TritonError(f"FEATURES must be [batch, {self.n_features}]")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=err))
                continue
            out = rules.score_explained(x)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("DETERIORATION_RISK", out["deterioration_risk"].reshape(-1, 1)),
                        pb_utils.Tensor("SEPSIS_RISK", out["sepsis_risk"].reshape(-1, 1)),
                        pb_utils.Tensor("NEWS2", out["news2"].astype(np.int32).reshape(-1, 1)),
                        pb_utils.Tensor("QSOFA", out["qsofa"].astype(np.int32).reshape(-1, 1)),
                        pb_utils.Tensor(
                            features.CONTRIBUTIONS_OUTPUT, np.ascontiguousarray(out["contributions"], dtype=np.float32)
                        ),
                    ]
                )
            )
        return responses
