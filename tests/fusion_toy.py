"""A tiny synthetic cohort for the fusion strategies' shared checks (no data files, seconds to train).

The label depends on the vitals (first channel of the newest step) and the labs (first value), so a
model that reads both beats one that reads either, and every modality's flags/staleness vary.
"""

from __future__ import annotations

import numpy as np

from icuwatch.encoders.tokenizer import MAX_TOKENS, encode
from icuwatch.fusion.cohorts.base import IMAGE_SIZE, Cohort


def toy_cohort(n_groups: int = 60, rows_per_group: int = 10, seed: int = 0, imaging: bool = False) -> Cohort:
    rng = np.random.default_rng(seed)
    n = n_groups * rows_per_group
    modalities = ("vitals", "labs") + (("cxr", "report") if imaging else ())
    m = len(modalities)
    vitals = rng.normal(size=(n, 8, 14)).astype(np.float32)
    vitals[:, :, 7:] = 1.0
    labs = np.zeros((n, 9), dtype=np.float32)
    labs[:, 0::3] = rng.normal(size=(n, 3))
    labs[:, 1::3] = 1.0
    present = rng.random((n, m)) > 0.2
    present[~present.any(axis=1), 0] = True
    score = vitals[:, -1, 0] * present[:, 0] + 1.5 * labs[:, 0] * present[:, 1]
    inputs = {"vitals": vitals, "labs": labs, "static": rng.normal(size=(n, 3)).astype(np.float32)}
    lookups = {}
    if imaging:
        sick = rng.random(8) > 0.5
        images = np.zeros((8, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        images[sick, 60:160, 40:180] = 200
        lookups["cxr"] = images
        lookups["report"] = encode(["bilateral opacities" if s else "lungs clear" for s in sick], MAX_TOKENS)
        study = rng.integers(0, 8, size=n)
        inputs["cxr"] = np.where(present[:, 2], study, -1).astype(np.int32)
        inputs["report"] = np.where(present[:, 3], study, -1).astype(np.int32)
        score = score + 2.0 * (sick[study] - 0.5) * (present[:, 2] | present[:, 3])
    inputs["vitals"] *= present[:, 0, None, None]
    inputs["labs"] *= present[:, 1, None]
    y = (score + rng.normal(scale=0.3, size=n) > 0.8).astype(np.int8)
    group = np.repeat(np.arange(n_groups), rows_per_group).astype(np.int32)
    split = np.repeat(rng.choice([0, 0, 0, 1, 2], size=n_groups), rows_per_group).astype(np.uint8)
    split[:rows_per_group] = 1
    split[rows_per_group : 2 * rows_per_group] = 2
    staleness = np.where(present, rng.exponential(5.0, size=(n, m)), 0.0).astype(np.float32)
    cohort = Cohort(
        name="toy",
        modalities=modalities,
        inputs=inputs,
        present=present,
        staleness_h=staleness,
        y=y,
        group=group,
        hour=np.tile(np.arange(1, rows_per_group + 1), n_groups).astype(np.float32),
        split=split,
        group_ids=[f"g{i}" for i in range(n_groups)],
        lookups=lookups,
        meta={"source": "synthetic toy cohort for tests"},
    )
    cohort.validate()
    return cohort
