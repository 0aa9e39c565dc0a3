"""Late fusion with learned weights: one head per modality, combined by a softmax over the present ones.

Each head sees its own modality (plus the always-present static context) and gives a logit; the
fused logit is their weighted sum, the weights a softmax of learned per-modality scores restricted
to the modalities present in the row, so an absent head has weight 0 and the others renormalise.
Training adds each head's own loss on the rows where its modality is present (``aux_logits``).
"""

from __future__ import annotations

import torch
from torch import nn

from icuwatch import encoders
from icuwatch.fusion.strategies.base import FusionModel, InputSpec, masked_softmax


class ModalityHead(nn.Module):
    """Encoder of one modality + the static context -> one logit."""

    def __init__(self, spec: InputSpec, modality: str) -> None:
        super().__init__()
        d = spec.d_model
        self.encoder = encoders.build(modality, spec.dims[modality], d, spec.series_kind)
        self.static = nn.Linear(spec.dims["static"][-1], d)
        self.out = nn.Sequential(nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 1))

    def forward(self, x: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
        return self.out(self.encoder(x) + self.static(static)).squeeze(-1)


class PerModalityHeads(FusionModel):
    """One ``ModalityHead`` per modality; the base of both late-fusion strategies."""

    def __init__(self, spec: InputSpec) -> None:
        super().__init__(spec)
        self.heads = nn.ModuleDict({m: ModalityHead(spec, m) for m in spec.modalities})

    def head_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, M] per-modality logits, 0 where the modality is absent (its head never runs there)."""
        return torch.stack([self.encode(self.heads[m], batch, m, batch["static"]) for m in self.spec.modalities], dim=1)


class LateFusion(PerModalityHeads):
    strategy = "late"

    def __init__(self, spec: InputSpec) -> None:
        super().__init__(spec)
        self.weight_scores = nn.Parameter(torch.zeros(len(spec.modalities)))

    def weights(self, present: torch.Tensor) -> torch.Tensor:
        return masked_softmax(self.weight_scores.expand(present.shape[0], -1), present)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.head_logits(batch)
        self.aux_logits = logits
        return (self.weights(batch["present"]) * logits).sum(dim=1)
