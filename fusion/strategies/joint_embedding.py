"""Joint-embedding fusion: X-ray and report tokens from one contrastive (CLIP-style) space.

The image and text towers of :mod:`fusion.joint_space` (trained contrastively on
X-ray/report pairs, then frozen) map a study's image and its report into the same unit-vector
space; one shared projection turns either into a token. So a study whose report is not written yet
still gives a token in the space the report would have, and the two tokens agree when both exist.
The tokens then join the vital-sign, waveform and lab tokens in the masked attention of
:class:`~fusion.strategies.attention.AttentionFusion` (staleness embedded, absent tokens masked).

``prepare(cohort)`` (called by training) loads the joint embedding from ``var/models/joint_embedding``
when one is saved, else trains one on the cohort's TRAIN-split studies that have both an image and
a report, and copies its weights in.
"""

from __future__ import annotations

import torch
from torch import nn

from icuwatch.fusion.strategies.attention import AttentionFusion
from icuwatch.fusion.strategies.base import InputSpec


class _Tower(nn.Module):
    def __init__(self, encode, projection: nn.Linear) -> None:
        super().__init__()
        self.encode = encode
        self.projection = projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.encode(x)
        return self.projection(z)


class JointEmbeddingFusion(AttentionFusion):
    strategy = "joint_embedding"

    def __init__(self, spec: InputSpec) -> None:
        from icuwatch.fusion.joint_space import JointEmbedding

        if "cxr" not in spec.modalities or "report" not in spec.modalities:
            raise ValueError("joint_embedding fusion needs the cxr and report modalities")
        super().__init__(spec)
        self.joint = JointEmbedding(embed_dim=spec.options.get("embed_dim", 64))
        self.joint.requires_grad_(False)
        shared = nn.Linear(self.joint.embed_dim, spec.d_model)
        self.encoders["cxr"] = _Tower(self.joint.encode_image, shared)
        self.encoders["report"] = _Tower(lambda ids: self.joint.encode_text(ids.long()), shared)

    def train(self, mode: bool = True) -> "JointEmbeddingFusion":
        super().train(mode)
        self.joint.eval()  # frozen towers: batch-norm statistics stay those of contrastive training
        return self

    def prepare(self, cohort, progress: bool = True) -> dict:
        """Load or train the contrastive towers (see module docstring); returns their card."""
        import numpy as np

        from icuwatch.fusion import joint_space as je

        directory = je.default_model_dir()
        if (directory / je.CARD_FILE).exists():
            source = je.JointEmbedding.load(directory)
        else:
            train_rows = cohort.rows("train")
            studies = np.unique(cohort.inputs["cxr"][train_rows])
            with_report = np.unique(cohort.inputs["report"][train_rows])
            studies = np.intersect1d(studies[studies >= 0], with_report[with_report >= 0])
            source, _ = je.train_joint(
                cohort.lookups["cxr"][studies],
                cohort.lookups["report"][studies],
                progress=progress,
                data={"cohort": cohort.name, "split": "train", "studies": int(len(studies))},
            )
            source.save(directory)
        if source.embed_dim != self.joint.embed_dim:
            raise ValueError(
                f"saved joint embedding has {source.embed_dim} dimensions, this model {self.joint.embed_dim}"
            )
        self.joint.load_state_dict(source.state_dict())
        self.joint.requires_grad_(False)
        return {
            "dir": str(directory),
            **{k: source.card.get(k) for k in ("data", "heldout_retrieval") if k in source.card},
        }
