"""Encoder for fixed-length vectors: labs (value, measured flag, time since measured per analyte)
and the always-present static context (age, sex, time since admission)."""

from __future__ import annotations

import torch
from torch import nn


class TabularEncoder(nn.Module):
    def __init__(self, in_features: int, out_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 2 * out_dim
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
