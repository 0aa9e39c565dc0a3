"""The distilled student: a small residual MLP with early exits (``icuwatch distill``).

Cheap per-modality encoders (by default one dense layer over the flattened input; ``series`` in the
spec options picks one of ``encoders.timeseries.KINDS`` instead) give one embedding per modality,
kept only where the modality is present (an absent modality's embedding is exactly zero, whatever
its input held: masked, never imputed). The embeddings, the present flags, log1p staleness and the
static context are concatenated, projected to ``width`` and run through ``n_exits`` residual MLP
blocks; after each block an exit head gives one logit.

``forward`` runs every block and returns the last exit's logit (the shared interface; training and
evaluation need nothing else) and keeps all of them in ``exit_logits`` [B, n_exits].
``forward_early_exit`` answers a row at the first exit whose calibrated confidence
``max(p, 1 - p)`` (``p = sigmoid(logit / exit_temperatures[k])``) reaches ``exit_thresholds[k]``;
only the rows still uncertain run the next block, and the last exit answers for everyone left.
Both per-exit temperatures and thresholds are buffers (saved in the ``state_dict``), set by
``fusion.distill`` on the VAL split; untrained they are 1.0 (thresholds 1.0: never exit early).

Spec options: ``n_exits`` (3), ``width`` of the residual stream, ``hidden`` (one size or one per
block), ``activation`` (relu | gelu), ``dropout``, ``series`` (flat | gru | tcn | transformer).
The defaults (``strategies.DEFAULTS``: width 32, hidden 32/256/256) keep block 1 cheap and put the
capacity in the blocks only uncertain rows reach. Timing, untrained, PhysioNet dims, 256 rows, one
CPU thread (a busy 2-core machine, +-20 %): teacher ~3.0-3.5 ms, full student ~0.35-0.49 ms (7-10x),
early exit with 70 % of rows leaving at exit 1 ~0.25-0.30 ms (1.35-1.65x the full student): the
stem plus block 1 (~0.11 ms) and per-op overhead on the few rows that go deeper bound the gain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from icuwatch import encoders
from icuwatch.fusion.strategies.base import FusionModel, InputSpec

FLAT = "flat"
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}
# Modules below call their layers directly (no nn.Sequential / activation modules, dropout only in
# training): at a few microseconds per module call that is a measurable share of a ~0.3 ms forward
# on one CPU thread.


class FlatEncoder(nn.Module):
    """Any fixed-shape input, flattened, through one dense layer: the cheapest embedding."""

    def __init__(self, shape: tuple[int, ...], out_dim: int, act: str = "relu") -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(shape), out_dim)
        self.act = ACTIVATIONS[act]
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x.flatten(1)))


class ResidualBlock(nn.Module):
    """``LayerNorm(h + W2 act(W1 h))``: post-norm, so each exit head reads a normalised state."""

    def __init__(self, width: int, hidden: int, dropout: float = 0.1, act: str = "relu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.norm = nn.LayerNorm(width)
        self.act = ACTIVATIONS[act]
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.act(self.fc1(h))
        if self.training:  # (a no-op module call in eval costs microseconds)
            a = self.drop(a)
        return self.norm(h + self.fc2(a))


def exit_margins(temperatures: Sequence[float], thresholds: Sequence[float]) -> list[float]:
    """Per early exit, the |logit| at and above which a row leaves: ``max(p, 1 - p) >= thr`` with
    ``p = sigmoid(z / T)`` is ``|z| >= T * logit(thr)`` (thr >= 1: never; thr <= 0.5: always)."""
    out = []
    for t, thr in zip(temperatures, thresholds):
        thr = float(thr)
        out.append(math.inf if thr >= 1.0 else 0.0 if thr <= 0.5 else float(t) * math.log(thr / (1.0 - thr)))
    return out


class EarlyExitStudent(FusionModel):
    strategy = "student"

    def __init__(self, spec: InputSpec) -> None:
        super().__init__(spec)
        opts = spec.options
        d = spec.d_model
        self.n_exits = int(opts.get("n_exits", 3))
        if self.n_exits < 1:
            raise ValueError("n_exits must be >= 1")
        width = int(opts.get("width", 64))
        hidden = opts.get("hidden", 2 * width)
        hidden = [int(hidden)] * self.n_exits if isinstance(hidden, (int, float)) else [int(h) for h in hidden]
        if len(hidden) != self.n_exits:
            raise ValueError("hidden: one size, or one per block")
        series = opts.get("series", FLAT)
        act = opts.get("activation", "relu")
        self.flat = {m: (m in encoders.TABULAR or (m in encoders.SERIES and series == FLAT)) for m in spec.modalities}
        self.encoders = nn.ModuleDict(
            {
                m: FlatEncoder(spec.dims[m], d, act) if self.flat[m] else encoders.build(m, spec.dims[m], d, series)
                for m in spec.modalities
            }
        )
        n_mod = len(spec.modalities)
        self.stem = nn.Linear(n_mod * d + 2 * n_mod + spec.dims["static"][-1], width)
        self.act = ACTIVATIONS[act]
        self.blocks = nn.ModuleList(ResidualBlock(width, h, opts.get("dropout", 0.1), act) for h in hidden)
        self.exits = nn.ModuleList(nn.Linear(width, 1) for _ in range(self.n_exits))
        self.register_buffer("exit_temperatures", torch.ones(self.n_exits))
        self.register_buffer("exit_thresholds", torch.ones(self.n_exits - 1))
        self.exit_logits: torch.Tensor | None = None

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, width]: the stem's output (what block 1 reads)."""
        present = batch["present"]
        parts = []
        for j, m in enumerate(self.spec.modalities):
            if self.flat[m]:  # no batch statistics inside: run on every row, keep the present ones
                parts.append(torch.where(present[:, j : j + 1], self.encoders[m](batch[m]), 0.0))
            else:  # image / report / sequence encoders: present rows only (batch norm)
                parts.append(self.encode(self.encoders[m], batch, m))
        stale = torch.where(present, torch.log1p(batch["staleness_h"].clamp(min=0.0)), 0.0)
        parts += [present.to(stale.dtype), stale, batch["static"]]
        return self.act(self.stem(torch.cat(parts, dim=1)))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.features(batch)
        logits = []
        for block, head in zip(self.blocks, self.exits):
            h = block(h)
            logits.append(head(h))
        self.exit_logits = torch.cat(logits, dim=1)
        return logits[-1].squeeze(-1)

    def forward_early_exit(
        self, batch: dict[str, torch.Tensor], thresholds: Sequence[float] | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw logits [B], exit index [B]): each row answered by the first exit whose calibrated
        confidence reaches its threshold (``thresholds``: one per early exit, ``n_exits - 1``; a
        last entry for the final exit is ignored; default the ``exit_thresholds`` buffer). Rows that
        leave never run a deeper block. ``calibrated(logits, exit_index)`` puts the logits on one scale."""
        if thresholds is None:
            thresholds = self.exit_thresholds
        thresholds = [float(t) for t in thresholds][: self.n_exits - 1]
        if len(thresholds) != self.n_exits - 1:
            raise ValueError(f"need {self.n_exits - 1} thresholds (one per early exit)")
        margins = exit_margins(self.exit_temperatures.tolist(), thresholds)
        last = self.n_exits - 1
        h = self.features(batch)
        out = h.new_empty(h.shape[0])
        exit_index = torch.full((h.shape[0],), last, dtype=torch.long, device=h.device)
        rows = None  # original row numbers of h; None: all of them, in order
        for k in range(self.n_exits):
            h = self.blocks[k](h)
            z = self.exits[k](h).squeeze(-1)
            if k == last:
                if rows is None:
                    return z, exit_index
                out[rows] = z
                break
            if margins[k] == math.inf:
                continue
            stop = z.abs() >= margins[k]
            leave = stop.nonzero().squeeze(1)
            if len(leave) == 0:
                continue
            if len(leave) == len(z):
                if rows is None:
                    return z, exit_index.fill_(k)
                out[rows] = z
                exit_index[rows] = k
                break
            done = leave if rows is None else rows[leave]
            out[done] = z[leave]
            exit_index[done] = k
            stay = (~stop).nonzero().squeeze(1)
            h = h[stay]
            rows = stay if rows is None else rows[stay]
        return out, exit_index

    def calibrated(self, logits: torch.Tensor, exit_index: torch.Tensor) -> torch.Tensor:
        """Logits divided by their exit's temperature: ``sigmoid`` of these are calibrated probabilities."""
        return logits / self.exit_temperatures[exit_index]

    def set_exits(self, temperatures: Sequence[float] | None = None, thresholds: Sequence[float] | None = None) -> None:
        with torch.no_grad():
            if temperatures is not None:
                self.exit_temperatures.copy_(torch.as_tensor(list(temperatures), dtype=torch.float32))
            if thresholds is not None:
                self.exit_thresholds.copy_(torch.as_tensor(list(thresholds), dtype=torch.float32)[: self.n_exits - 1])
