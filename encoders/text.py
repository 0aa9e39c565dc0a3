"""Report encoder: hashed token ids (``encoders.tokenizer``) -> a fixed-size vector.

A bag of n-grams: an embedding table over the hashed unigrams and bigrams, a mean over the
non-padding tokens, then a small MLP. Bigrams ("left_lower", "no_acute") carry the word order a
radiology report needs (laterality, negation) without a sequence model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from icuwatch.encoders.tokenizer import VOCAB_SIZE


class ReportEncoder(nn.Module):
    """int [B, L] token ids (0 = padding) -> float32 [B, out_dim]. Defaults: about 152k parameters.

    An all-padding row (no report) encodes from a zero mean, i.e. a constant vector.
    """

    def __init__(self, vocab_size: int = VOCAB_SIZE, embed_dim: int = 32, out_dim: int = 128, hidden: int = 128):
        super().__init__()
        self.out_dim = out_dim
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        nn.init.normal_(self.embed.weight, std=0.3)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        self.mlp = nn.Sequential(
            nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        mask = (ids > 0).unsqueeze(-1).float()
        summed = (self.embed(ids) * mask).sum(dim=1)
        pooled = summed / mask.sum(dim=1).clamp(min=1.0)
        return self.mlp(pooled)


def to_tensor(tokens: np.ndarray) -> torch.Tensor:
    """int32 [B, L] token ids -> int64 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(tokens), dtype=np.int64))
