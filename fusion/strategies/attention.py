"""Attention fusion (the teacher): masked self-attention over modality tokens.

Each present modality becomes one token: its encoder's output + a learned type embedding + an
embedding of its staleness (a 3-day-old X-ray is not a 1-hour-old one). A context token built
from the static inputs (age, sex, time since admission) leads the sequence and is never masked;
absent modalities are removed from attention with a key padding mask, never imputed. The risk is
read from the context token after ``layers`` pre-norm transformer blocks, and the context token's
attention over the modality tokens in the last block is the score's explanation.
"""

from __future__ import annotations

import torch
from torch import nn

from icuwatch import encoders
from icuwatch.fusion.strategies.base import FusionModel, InputSpec, StalenessEmbedding


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d, d))

    def forward(self, h: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.norm1(h)
        a, weights = self.attn(q, q, q, key_padding_mask=pad, need_weights=True, average_attn_weights=True)
        h = h + a
        return h + self.ff(self.norm2(h)), weights


class AttentionFusion(FusionModel):
    strategy = "attention"

    def __init__(self, spec: InputSpec) -> None:
        super().__init__(spec)
        d = spec.d_model
        self.encoders = nn.ModuleDict(
            {m: encoders.build(m, spec.dims[m], d, spec.series_kind) for m in spec.modalities}
        )
        self.context = encoders.build("static", spec.dims["static"], d)
        self.type_embedding = nn.Parameter(torch.randn(len(spec.modalities) + 1, d) * 0.02)
        self.staleness = StalenessEmbedding(d)
        self.blocks = nn.ModuleList(
            Block(d, spec.options.get("heads", 4)) for _ in range(spec.options.get("layers", 2))
        )
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1))

    def tokens(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, 1 + M, d] tokens, [B, 1 + M] padding mask: True = ignore)."""
        present = batch["present"]
        stale = self.staleness(batch["staleness_h"])
        mods = [self.encode(self.encoders[m], batch, m) for m in self.spec.modalities]
        h = torch.stack([self.context(batch["static"]), *mods], dim=1) + self.type_embedding
        h = h + torch.cat([torch.zeros_like(stale[:, :1]), stale], dim=1)
        keep = torch.cat([torch.ones_like(present[:, :1]), present], dim=1)
        return h * keep.unsqueeze(-1), ~keep

    def run(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h, pad = self.tokens(batch)
        weights = None
        for block in self.blocks:
            h, weights = block(h, pad)
        return self.head(h[:, 0]).squeeze(-1), weights

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.run(batch)[0]

    @torch.no_grad()
    def contributions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, M] the context token's last-block attention on each modality, renormalised over the
        present ones (0 for absent modalities; rows sum to 1)."""
        _, weights = self.run(batch)
        w = weights[:, 0, 1:] * batch["present"]
        return w / w.sum(dim=1, keepdim=True).clamp(min=1e-9)
