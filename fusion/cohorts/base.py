"""A cohort: per-row multimodal examples every fusion strategy trains and is evaluated on.

One row is one patient at one scoring time ``t``; everything in it was known at ``t`` (strictly
causal). Each droppable modality has its own input array, a ``present`` flag and its staleness
(hours from the modality's newest data to ``t``). Nothing is imputed: an absent modality's inputs
are zeros *and* its ``present`` flag is False, so a model can mask it out (attention), skip it (late
fusion) or see the flag (early fusion).

Input layouts (``N`` rows; ``T`` steps back in time, oldest first; ``C`` channels):

==========  ==========================  ==========================================================
name        array                       meaning
==========  ==========================  ==========================================================
vitals      float32 [N, T, 2*C]         per step: C z-scored values then C measured flags
waveforms   float32 [N, T, 2*C]         waveform features (ECG heart rate, PPG pulse rate, ...), same layout
labs        float32 [N, 3*C]            per analyte: z-scored last value, measured-ever flag, log1p(hours since)/5
cxr         int32 [N] -> uint8 images   row index into ``lookups["cxr"]`` [S, 224, 224] (-1: none)
report      int32 [N] -> int32 tokens   row index into ``lookups["report"]`` [S, L] token ids (0 = pad; -1: none)
static      float32 [N, C]              always-present context (age, sex, hours since admission, ...)
==========  ==========================  ==========================================================

Cohorts are saved as one ``.npz`` (``save``/``load``) under ``var/cache``; builders live in
``fusion/cohorts/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
IMAGE_SIZE = 224
LOOKUP_INPUTS = ("cxr", "report")


@dataclass
class Cohort:
    name: str
    modalities: tuple[str, ...]
    """Droppable modalities, in token order; ``present``/``staleness_h`` columns follow it."""
    inputs: dict[str, np.ndarray]
    """Per modality (and ``static``): the row arrays described in the module docstring."""
    present: np.ndarray
    """[N, M] bool."""
    staleness_h: np.ndarray
    """[N, M] float32 hours since the modality's newest data at the row's time (0 where absent)."""
    y: np.ndarray
    """[N] int8 label (PhysioNet: SepsisLabel; sim: the same rule on the simulated onset)."""
    group: np.ndarray
    """[N] int32 index into ``group_ids`` (stay / patient); rows of a group are in time order."""
    hour: np.ndarray
    """[N] float32 hours since the stay's admission at the row's time."""
    split: np.ndarray
    """[N] uint8, ``SPLIT_CODES``."""
    group_ids: list[str]
    lookups: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    """Data source, channel names, normalisation, how it was built (goes into model cards)."""
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    """Labels beyond ``y`` for multi-risk models: per name float32 [N], 0/1, NaN where the source does
    not know (``fusion.cohorts.live``: deterioration is unknown on PhysioNet stays)."""

    def __len__(self) -> int:
        return len(self.y)

    def modality_index(self, name: str) -> int:
        return self.modalities.index(name)

    def rows(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLIT_CODES[split])

    def subset(self, idx: np.ndarray) -> "Cohort":
        """Rows ``idx`` (lookups are shared, not copied)."""
        return Cohort(
            name=self.name,
            modalities=self.modalities,
            inputs={k: v[idx] for k, v in self.inputs.items()},
            present=self.present[idx],
            staleness_h=self.staleness_h[idx],
            y=self.y[idx],
            group=self.group[idx],
            hour=self.hour[idx],
            split=self.split[idx],
            group_ids=self.group_ids,
            lookups=self.lookups,
            meta=self.meta,
            targets={k: v[idx] for k, v in self.targets.items()},
        )

    def dims(self) -> dict[str, tuple[int, ...]]:
        """Per input, the shape of one row as a model sees it (lookups resolved)."""
        out = {}
        for k, v in self.inputs.items():
            out[k] = tuple(self.lookups[k].shape[1:]) if k in self.lookups else tuple(v.shape[1:])
        return out

    def save(self, path: str | Path) -> Path:
        import json

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"input__{k}": v for k, v in self.inputs.items()}
        arrays |= {f"lookup__{k}": v for k, v in self.lookups.items()}
        arrays |= {f"target__{k}": v for k, v in self.targets.items()}
        header = {
            "name": self.name,
            "modalities": list(self.modalities),
            "group_ids": self.group_ids,
            "meta": self.meta,
        }
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            present=self.present,
            staleness_h=self.staleness_h,
            y=self.y,
            group=self.group,
            hour=self.hour,
            split=self.split,
            header=np.array(json.dumps(header)),
            **arrays,
        )
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Cohort":
        import json

        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            return cls(
                name=header["name"],
                modalities=tuple(header["modalities"]),
                inputs={k[len("input__") :]: z[k] for k in z.files if k.startswith("input__")},
                present=z["present"],
                staleness_h=z["staleness_h"],
                y=z["y"],
                group=z["group"],
                hour=z["hour"],
                split=z["split"],
                group_ids=list(header["group_ids"]),
                lookups={k[len("lookup__") :]: z[k] for k in z.files if k.startswith("lookup__")},
                meta=header["meta"],
                targets={k[len("target__") :]: z[k] for k in z.files if k.startswith("target__")},
            )

    def validate(self) -> None:
        """Shapes agree, flags are consistent, absent modalities carry no data."""
        n, m = len(self.y), len(self.modalities)
        if self.present.shape != (n, m) or self.staleness_h.shape != (n, m):
            raise ValueError(f"present/staleness_h must be [{n}, {m}]")
        for arr in (self.group, self.hour, self.split, *self.targets.values()):
            if arr.shape != (n,):
                raise ValueError("group/hour/split/targets must have one entry per row")
        for name in (*self.modalities, "static"):
            if name not in self.inputs or len(self.inputs[name]) != n:
                raise ValueError(f"input {name!r} missing or of the wrong length")
        for j, name in enumerate(self.modalities):
            x = self.inputs[name]
            if name in LOOKUP_INPUTS:
                if np.any((x >= 0) != self.present[:, j]):
                    raise ValueError(f"{name}: index >= 0 exactly where present")
            elif np.any(np.abs(x[~self.present[:, j]]) > 0):
                raise ValueError(f"{name}: an absent modality must carry zeros")
        if len(self.group) and (np.diff(self.group) < 0).any():
            raise ValueError("rows must be ordered by group (each group's rows contiguous, in time order)")
        if not np.isfinite(self.staleness_h).all() or (self.staleness_h < 0).any():
            raise ValueError("staleness_h must be finite and >= 0")


def gather(cohort: Cohort, idx: np.ndarray) -> dict[str, np.ndarray]:
    """The numpy batch a model's ``forward`` takes (as tensors): inputs with lookups resolved
    (``cxr`` as float32 [B, 1, 224, 224] in [0, 1]), plus ``present`` and ``staleness_h``."""
    batch: dict[str, np.ndarray] = {}
    for name, x in cohort.inputs.items():
        rows = x[idx]
        if name in cohort.lookups:
            table = cohort.lookups[name]
            safe = np.where(rows >= 0, rows, 0)
            resolved = table[safe] * (rows >= 0).reshape(-1, *([1] * (table.ndim - 1)))
            if name == "cxr":
                resolved = resolved.astype(np.float32)[:, None] / 255.0
            batch[name] = resolved
        else:
            batch[name] = rows
    batch["present"] = cohort.present[idx]
    batch["staleness_h"] = cohort.staleness_h[idx]
    return batch


def step_windows(steps: np.ndarray, t: int) -> np.ndarray:
    """[n, C] per-step rows -> float32 [n, t, C]: row i holds steps i-t+1 .. i, oldest first, zeros
    for steps before the first."""
    steps = np.asarray(steps, dtype=np.float32)
    padded = np.concatenate([np.zeros((t - 1, steps.shape[1]), np.float32), steps], axis=0)
    return np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(padded, t, axis=0).transpose(0, 2, 1))


def progress_bar(iterable, total: int, desc: str, unit: str, enabled: bool):
    """``iterable`` with a tqdm bar on stderr when ``enabled``."""
    if not enabled:
        return iterable
    import sys

    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=0.5)


def load_or_build_cached(path: Path, build, current) -> Cohort:
    """The cohort cached at ``path`` when it loads and ``current(cohort)`` accepts it; otherwise
    ``build()``, validated and saved there. A broken cache is rebuilt, not fatal."""
    if path.is_file():
        try:
            cohort = Cohort.load(path)
        except Exception:  # noqa: BLE001 - unreadable cache: rebuild
            cohort = None
        if cohort is not None and current(cohort):
            return cohort
    cohort = build()
    cohort.validate()
    cohort.save(path)
    return cohort


def default_cache_dir() -> Path:
    from icuwatch.core.settings import get_settings

    return get_settings().state_dir / "cache"
