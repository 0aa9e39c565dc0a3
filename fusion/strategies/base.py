"""One interface for every fusion strategy.

A model takes a batch (``fusion.cohorts.base.gather`` as tensors: one entry per input, plus
``present`` [B, M] and ``staleness_h`` [B, M]) and returns one logit per row. Missing modalities are
never imputed: every strategy gates each modality's input by its ``present`` flag, so what an
absent modality's input holds cannot change the output (the shared checks in
``tests/fusion/test_fusion_strategies.py`` verify it for every strategy).

``contributions`` explains a score per modality: by default leave-one-modality-out deltas (the
probability with all present modalities minus the probability with that one masked); attention
models override it with their attention weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class InputSpec:
    """What a model is built for: the cohort's modalities and per-input row shapes."""

    cohort: str
    modalities: tuple[str, ...]
    dims: dict[str, tuple[int, ...]]
    series_kind: str = "tcn"
    d_model: int = 32
    options: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        d["dims"] = {k: list(v) for k, v in self.dims.items()}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "InputSpec":
        return cls(
            cohort=d["cohort"],
            modalities=tuple(d["modalities"]),
            dims={k: tuple(v) for k, v in d["dims"].items()},
            series_kind=d["series_kind"],
            d_model=d.get("d_model", 32),
            options=d.get("options", {}),
        )


class FusionModel(nn.Module):
    strategy: ClassVar[str]

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def gated(self, batch: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
        """The modality's input with absent rows zeroed (whatever they held)."""
        x = batch[modality]
        keep = batch["present"][:, self.spec.modalities.index(modality)]
        return x * keep.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)

    def encode(
        self, encoder: nn.Module, batch: dict[str, torch.Tensor], modality: str, extra: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``encoder`` run on the rows where ``modality`` is present only; zeros elsewhere. Absent rows
        never reach the encoder, so they cannot move batch-norm statistics in training either.
        ``extra``: a second per-row input the encoder takes (static context)."""
        keep = batch["present"][:, self.spec.modalities.index(modality)]
        x = batch[modality]
        if bool(keep.all()):
            return encoder(x) if extra is None else encoder(x, extra)
        out_rows = keep.nonzero(as_tuple=True)[0]
        if len(out_rows) == 0:
            probe = encoder(x[:1]) if extra is None else encoder(x[:1], extra[:1])
            return torch.zeros((len(x), *probe.shape[1:]), dtype=probe.dtype)
        y = encoder(x[out_rows]) if extra is None else encoder(x[out_rows], extra[out_rows])
        out = torch.zeros((len(x), *y.shape[1:]), dtype=y.dtype)
        return out.index_put((out_rows,), y)

    @torch.no_grad()
    def contributions(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, M] leave-one-modality-out deltas in probability (0 for absent modalities)."""
        full = torch.sigmoid(self(batch))
        out = torch.zeros_like(batch["staleness_h"])
        for j in range(len(self.spec.modalities)):
            present = batch["present"].clone()
            was = present[:, j].clone()
            present[:, j] = False
            # A row whose only modality is j has no "without j": its delta is taken against 0.5 (no information).
            without = torch.sigmoid(self({**batch, "present": present}))
            delta = torch.where(present.any(dim=1), full - without, full - 0.5)
            out[:, j] = torch.where(was, delta, torch.zeros_like(delta))
        return out

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def to_tensors(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if k == "present":
            t = t.bool()
        elif t.dtype in (torch.float64, torch.float16):
            t = t.float()
        elif k == "report" and not t.is_floating_point():  # token ids (a bag of words stays float)
            t = t.long()
        out[k] = t
    return out


class StalenessEmbedding(nn.Module):
    """How old a modality's newest data is, as a vector: log-hours and a day-scale ramp, projected."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.proj = nn.Linear(3, d)

    def forward(self, hours: torch.Tensor) -> torch.Tensor:
        h = hours.clamp(min=0.0).unsqueeze(-1)
        feats = torch.cat([torch.log1p(h), (h / 24.0).clamp(max=7.0), torch.exp(-h / 6.0)], dim=-1)
        return self.proj(feats)


def masked_softmax(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    scores = scores.masked_fill(~present, float("-inf"))
    w = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(w, nan=0.0)
