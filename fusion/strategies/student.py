"""The distilled student: a small residual MLP with early exits (``icuwatch distill``).

Cheap per-modality encoders (by default one dense layer over the flattened input; ``series`` in the
spec options picks one of ``encoders.timeseries.KINDS`` instead) give one embedding per modality,
kept only where the modality is present (an absent modality's embedding is exactly zero, whatever
its input held: masked, never imputed). The embeddings, the present flags, log1p staleness and the
static context are concatenated, projected to ``width`` and run through ``n_exits`` residual MLP
blocks; after each block an exit head gives one logit.

``forward`` runs every block and returns the last exit's logit (the shared interface; training and
evaluation need nothing else) and keeps all of them in ``exit_logits`` [B, n_exits].
``forward_early_exit`` answers a row at the first early exit ``k`` where going deeper could not
change the alert decision: where the calibrated logit ``z_k / exit_temperatures[k]`` is at least
``exit_margins[k]`` away from ``exit_center``, the calibrated logit of the alert threshold
(``logit(op)``, ``op`` the student's operating threshold on calibrated probability). Only the rows
near the threshold run the next block, and the last exit answers for everyone left. The question is
"could a deeper exit flip this alert?", not "is the model confident?": with 1-2 % positive rows a
confidence rule (``max(p, 1 - p)``) finds nearly every row "confidently negative" and sends rows
sitting at the alert threshold out at exit 0. Temperatures, centre and margins are buffers (saved in
the ``state_dict``), set by ``fusion.distill`` on the VAL split; untrained the temperatures are 1.0,
the centre 0 and the margins infinite (never exit early). A ``state_dict`` saved before the centre
and margins existed (it holds the old confidence thresholds ``exit_thresholds``) loads as centre 0,
margins ``logit(threshold)``: ``|z / T| >= logit(thr)`` is the old ``max(p, 1 - p) >= thr``.

Spec options: ``n_exits`` (3), ``width`` of the residual stream, ``hidden`` (one size or one per
block), ``activation`` (relu | gelu), ``dropout``, ``series`` (flat | gru | tcn | transformer),
``flat_inputs`` (modalities that get the one-layer encoder too, e.g. the live cohort's X-ray thumbnail
and report bag), ``n_heads`` (1; the live student has 2, sepsis and deterioration: every exit head
gives one logit per risk, ``forward`` returns the first and keeps all in ``head_logits``).
The defaults (``strategies.DEFAULTS``: width 32, hidden 32/256/256) keep block 1 cheap and put the
capacity in the blocks only the rows near the alert threshold reach. Timing (``icuwatch bench
models``, PhysioNet test rows, exported TorchScript, 1,000 rows, one CPU thread of a 2-core machine,
student distilled from the 3-epoch attention teacher): teacher 9.6 ms, full student 0.94 ms (10x),
early exit with 97 % of rows leaving at exit 0 0.31 ms (3.0x the full student): the stem plus
block 1 (~0.23 ms) and the per-operation cost of the gathers bound the gain.
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


def confidence_margins(thresholds: Sequence[float]) -> list[float]:
    """The margins (around centre 0) of the old confidence rule: ``max(p, 1 - p) >= thr`` with
    ``p = sigmoid(c)`` is ``|c| >= logit(thr)`` (thr >= 1: never, inf; thr <= 0.5: always, 0)."""
    out = []
    for thr in thresholds:
        thr = float(thr)
        out.append(math.inf if thr >= 1.0 else 0.0 if thr <= 0.5 else math.log(thr / (1.0 - thr)))
    return out


def logit(p: float) -> float:
    """``log(p / (1 - p))`` (+-inf at 1 and 0)."""
    p = float(p)
    return math.inf if p >= 1.0 else -math.inf if p <= 0.0 else math.log(p / (1.0 - p))


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
        flat_inputs = set(opts.get("flat_inputs", ()))
        self.flat = {
            m: (m in encoders.TABULAR or (m in encoders.SERIES and series == FLAT) or m in flat_inputs)
            for m in spec.modalities
        }
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
        self.n_heads = int(opts.get("n_heads", 1))
        heads = () if self.n_heads == 1 else (self.n_heads,)
        self.exits = nn.ModuleList(nn.Linear(width, self.n_heads) for _ in range(self.n_exits))
        self.register_buffer("exit_temperatures", torch.ones((self.n_exits, *heads)))
        self.register_buffer("exit_center", torch.zeros(heads))
        self.register_buffer("exit_margins", torch.full((self.n_exits - 1, *heads), math.inf))
        self.exit_logits: torch.Tensor | None = None
        """[B, n_exits] (one head) or [B, n_exits, n_heads]: every exit's raw logits of the last forward."""
        self.head_logits: torch.Tensor | None = None
        """[B, n_heads]: the last exit's raw logits of the last forward, every head."""

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
        stacked = torch.stack(logits, dim=1)
        self.exit_logits = stacked[:, :, 0] if self.n_heads == 1 else stacked
        self.head_logits = logits[-1]
        return logits[-1][:, 0]

    def forward_early_exit(
        self, batch: dict[str, torch.Tensor], margins: Sequence[float] | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw logits [B], exit index [B]): each row answered by the first early exit ``k`` where
        ``|z_k / exit_temperatures[k] - exit_center| >= margins[k]`` (its alert decision is settled
        there), else by the last exit. ``margins``: one per early exit, ``n_exits - 1`` (a last entry
        for the final exit is ignored; inf: nobody leaves there); default the ``exit_margins`` buffer.
        Rows that leave never run a deeper block. ``calibrated(logits, exit_index)`` puts the logits
        on one scale."""
        if margins is None:
            margins = self.exit_margins
        margins = torch.as_tensor(margins, dtype=torch.float32).reshape(-1, self.n_heads)[: self.n_exits - 1]
        if len(margins) != self.n_exits - 1:
            raise ValueError(f"need {self.n_exits - 1} margins (one per early exit)")
        temperatures = self.exit_temperatures.reshape(self.n_exits, self.n_heads)
        center = self.exit_center.reshape(self.n_heads)
        one = self.n_heads == 1
        last = self.n_exits - 1
        h = self.features(batch)
        out = h.new_empty((h.shape[0],) if one else (h.shape[0], self.n_heads))
        exit_index = torch.full((h.shape[0],), last, dtype=torch.long, device=h.device)
        rows = None  # original row numbers of h; None: all of them, in order
        for k in range(self.n_exits):
            h = self.blocks[k](h)
            z = self.exits[k](h)
            if one:
                z = z.squeeze(-1)
            if k == last:
                if rows is None:
                    return z, exit_index
                out[rows] = z
                break
            if bool(torch.isinf(margins[k]).any()):
                continue
            if one:
                stop = exit_decided(z, self.exit_temperatures[k], self.exit_center, margins[k, 0])
            else:  # every head's alert decision must be settled
                stop = exit_decided(z, temperatures[k], center, margins[k]).all(dim=1)
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

    def parameters_to_exit(self) -> list[int]:
        """Parameters a row runs through when it leaves at exit k (encoders, stem, blocks and exit
        heads 0..k): its compute, up to per-operation overhead."""

        def count(mod: nn.Module) -> int:
            return sum(p.numel() for p in mod.parameters())

        out, used = [], count(self.encoders) + count(self.stem)
        for block, head in zip(self.blocks, self.exits):
            used += count(block) + count(head)
            out.append(used)
        return out

    def calibrated(self, logits: torch.Tensor, exit_index: torch.Tensor) -> torch.Tensor:
        """Logits divided by their exit's temperature: ``sigmoid`` of these are calibrated probabilities
        ([B] or, with several heads, [B, n_heads])."""
        return logits / self.exit_temperatures[exit_index]

    def set_exits(
        self,
        temperatures: Sequence[float] | None = None,
        margins: Sequence[float] | None = None,
        center: float | None = None,
    ) -> None:
        """Set the exit buffers: per-exit temperatures, per-early-exit margins (inf: never), the
        centre (calibrated logit of the alert threshold, ``logit(op)``). With several heads: per exit
        one temperature and one margin per head, one centre per head (a row leaves an early exit when
        every head's decision is settled there)."""
        with torch.no_grad():
            if temperatures is not None:
                t = torch.as_tensor(temperatures, dtype=torch.float32)
                self.exit_temperatures.copy_(t.reshape(self.exit_temperatures.shape))
            if margins is not None:
                m = torch.as_tensor(margins, dtype=torch.float32)[: self.n_exits - 1]
                self.exit_margins.copy_(m.reshape(self.exit_margins.shape))
            if center is not None:
                self.exit_center.copy_(torch.as_tensor(center, dtype=torch.float32).reshape(self.exit_center.shape))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        """A student saved with the old confidence thresholds (``exit_thresholds``, no centre or
        margins) loads with the rule that reproduces it: centre 0, margins ``logit(threshold)``."""
        old = state_dict.get(prefix + "exit_thresholds")
        if old is not None and prefix + "exit_margins" not in state_dict:
            state_dict.pop(prefix + "exit_thresholds")
            state_dict[prefix + "exit_margins"] = torch.tensor(confidence_margins(old.tolist()), dtype=torch.float32)
            state_dict.setdefault(prefix + "exit_center", torch.tensor(0.0))
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def exit_decided(
    z: torch.Tensor, temperature: torch.Tensor, center: torch.Tensor, margin: torch.Tensor
) -> torch.Tensor:
    """Rows whose alert decision is settled at this exit: ``|z / T - centre| >= margin`` (float32;
    ``fusion.distill.simulate_exits`` and the exported module compute exactly this)."""
    return (z / temperature - center).abs() >= margin
