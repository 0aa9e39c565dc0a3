"""Triton python-backend model: the live student's teacher (cross-fitted LightGBM), for ``icuwatch bench models``.

The teacher the live student distils (``fusion.teachers.crossfit_lightgbm``) answers a VAL or TEST
row with the mean logit of its per-fold boosters. This model serves exactly that, on the student's
own inputs, so the two can be timed and compared through the same tritonserver: ``1/teacher.json``
names the risks (in ``PROBABILITY``'s column order), the modalities and the booster files
(``1/<risk>.fold<f>.txt``, LightGBM's text format); ``execute`` builds the tree features with
``fusion.teachers.tabular_features_of`` (the function the teacher trained on), sums each risk's fold
boosters' raw scores, and answers the sigmoid of their mean (``EXIT`` 0).

Unlike ``fusion_model.py`` this imports icuwatch (and lightgbm): it is a benchmark's model, run by a
local tritonserver whose ``ICUWATCH_SITE_PACKAGES`` is the project's virtualenv, never deployed.
"""

import json
import os
import site
import sys

if os.environ.get("ICUWATCH_SITE_PACKAGES"):
    sys.path.insert(0, os.environ["ICUWATCH_SITE_PACKAGES"])
    site.addsitedir(os.environ["ICUWATCH_SITE_PACKAGES"])

import lightgbm as lgb  # noqa: E402
import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from icuwatch.core.live_row import from_wire, wire_divisors  # noqa: E402
from icuwatch.fusion.teachers import tabular_features_of  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "teacher.json")) as f:
            card = json.load(f)
        self.modalities = tuple(card["modalities"])
        self.boosters = [
            [lgb.Booster(model_file=os.path.join(version_dir, name)) for name in card["boosters"][risk]]
            for risk in card["heads"]
        ]
        self.inputs = [(i["name"], i["name"].lower()) for i in config["input"]]
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.wire = wire_divisors(params.get("wire_uint8", ""))
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            batch = {key: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name, key in self.inputs}
            for name, key in self.inputs:
                if name in self.wire:  # UINT8 on the wire (serving/export.py to_wire)
                    batch[key] = from_wire(batch[key], self.wire[name])
            x = tabular_features_of(batch, self.modalities)
            logits = np.stack(
                [sum(b.predict(x, raw_score=True) for b in folds) / len(folds) for folds in self.boosters], axis=1
            )
            values = {
                "PROBABILITY": (1.0 / (1.0 + np.exp(-logits))).astype(np.float32),
                "EXIT": np.zeros((len(x), 1), np.int32),
            }
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, values[n]) for n in self.outputs])
            )
        return responses
