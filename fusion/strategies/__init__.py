"""Fusion strategies behind one interface (``base.FusionModel``), by name.

* ``early`` — raw inputs concatenated into one network;
* ``late`` — per-modality heads combined by learned weights over the present modalities;
* ``stacked`` — per-modality risk models, then a logistic integrator (two-stage late fusion);
* ``attention`` — masked self-attention over staleness-aware modality tokens (the teacher);
* ``joint_embedding`` — CXR and report in one contrastive (CLIP-style) space, fused with the rest;
* ``student`` — a small early-exit MLP distilled from a trained teacher (``icuwatch distill``, not
  ``icuwatch train``: ``STRATEGIES`` lists what ``train`` fits from scratch, ``DISTILLED`` the rest).
"""

from __future__ import annotations

from icuwatch.fusion.strategies.base import FusionModel, InputSpec

STRATEGIES = ("early", "late", "stacked", "attention", "joint_embedding")
DISTILLED = ("student",)
DEFAULTS = {
    "early": {"d_model": 32},
    "late": {"d_model": 32},
    "stacked": {"d_model": 32},
    "attention": {"d_model": 64, "options": {"layers": 2, "heads": 4}},
    "joint_embedding": {"d_model": 32},
    "student": {"d_model": 16, "options": {"n_exits": 3, "width": 32, "hidden": [32, 256, 256], "series": "flat"}},
}


def model_class(strategy: str) -> type[FusionModel]:
    if strategy == "early":
        from icuwatch.fusion.strategies.early import EarlyFusion as cls
    elif strategy == "late":
        from icuwatch.fusion.strategies.late import LateFusion as cls
    elif strategy == "stacked":
        from icuwatch.fusion.strategies.stacked import StackedLateFusion as cls
    elif strategy == "attention":
        from icuwatch.fusion.strategies.attention import AttentionFusion as cls
    elif strategy == "joint_embedding":
        from icuwatch.fusion.strategies.joint_embedding import JointEmbeddingFusion as cls
    elif strategy == "student":
        from icuwatch.fusion.strategies.student import EarlyExitStudent as cls
    else:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES + DISTILLED)}")
    return cls


def build(strategy: str, spec: InputSpec) -> FusionModel:
    return model_class(strategy)(spec)
