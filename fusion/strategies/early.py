"""Early fusion: every modality's raw input, flattened and concatenated, into one network.

Images enter as a 14x14 average-pooled thumbnail and reports as a hashed bag of words (64 buckets):
the raw inputs of those modalities are too large for a dense first layer. Absent modalities are
zeros *with* their present flag and staleness beside them, so the network can tell "absent" from
"measured zero".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from icuwatch.fusion.strategies.base import FusionModel, InputSpec

THUMB = 14
BAG = 64


class EarlyFusion(FusionModel):
    strategy = "early"

    def __init__(self, spec: InputSpec) -> None:
        super().__init__(spec)
        width = sum(self._flat_width(m) for m in (*spec.modalities, "static")) + 2 * len(spec.modalities)
        hidden = 4 * spec.d_model
        self.net = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, hidden),
            nn.GELU(),
            nn.Dropout(0.1),
            nn.Linear(hidden, spec.d_model),
            nn.GELU(),
            nn.Linear(spec.d_model, 1),
        )

    def _flat_width(self, modality: str) -> int:
        if modality == "cxr":
            return THUMB * THUMB
        if modality == "report":
            return BAG
        return math.prod(self.spec.dims[modality])

    def _flat(self, batch: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
        x = batch["static"] if modality == "static" else self.gated(batch, modality)
        if modality == "cxr":
            return F.adaptive_avg_pool2d(x, THUMB).flatten(1)
        if modality == "report":
            ids = x.long()
            bag = torch.zeros(ids.shape[0], BAG, device=ids.device)
            bag.scatter_add_(1, ids % BAG, (ids > 0).float())
            return bag / bag.sum(dim=1, keepdim=True).clamp(min=1.0)
        return x.flatten(1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        present = batch["present"].float()
        parts = [self._flat(batch, m) for m in (*self.spec.modalities, "static")]
        parts += [present, torch.log1p(batch["staleness_h"]) * present]
        return self.net(torch.cat(parts, dim=1)).squeeze(-1)
