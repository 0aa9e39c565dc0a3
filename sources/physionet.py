"""PhysioNet/CinC 2019 sepsis challenge stays (``pNNNNNN.psv``): reading, column meanings, the fixed split.

Each file is one ICU stay, one row per hour (``ICULOS`` hours since ICU admission), ``|``-separated,
``NaN`` where nothing was measured. ``SepsisLabel`` is 1 from 6 hours before the clinical onset
(t_sepsis - 6) on, as the challenge defines it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icuwatch.core.physionet_row import DEMOGRAPHIC_COLUMNS, LAB_COLUMNS, VITAL_COLUMNS

__all__ = [
    "DEMOGRAPHIC_COLUMNS",
    "LAB_COLUMNS",
    "VITAL_COLUMNS",
    "SPLITS",
    "Stay",
    "read_psv",
    "split_of",
    "list_stays",
    "default_data_dir",
]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Stay:
    patient_id: str
    columns: tuple[str, ...]
    values: np.ndarray
    """[hours, columns] float array, NaN where missing."""

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.columns.index(name)]

    @property
    def labels(self) -> np.ndarray | None:
        return self.column("SepsisLabel").astype(int) if "SepsisLabel" in self.columns else None


def read_psv(path: str | Path) -> Stay:
    path = Path(path)
    with open(path) as f:
        header = f.readline().strip().split("|")
    values = np.genfromtxt(path, delimiter="|", skip_header=1, dtype=np.float64, ndmin=2)
    if values.shape[1] != len(header):
        raise ValueError(f"{path.name}: {values.shape[1]} values per row, header has {len(header)}")
    return Stay(patient_id=path.stem, columns=tuple(header), values=values)


def split_of(patient_id: str) -> str:
    """The fixed 60/20/20 split by a hash of the patient id (stable across machines and runs)."""
    bucket = int(hashlib.sha256(patient_id.encode()).hexdigest()[:8], 16) % 10
    return "train" if bucket < 6 else ("val" if bucket < 8 else "test")


def list_stays(directory: str | Path, split: str | None = None, limit: int | None = None) -> list[Path]:
    """``pNNNNNN.psv`` files of ``directory`` in name order, optionally one split only."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}")
    paths = sorted(Path(directory).glob("p*.psv"))
    if split is not None:
        paths = [p for p in paths if split_of(p.stem) == split]
    return paths[:limit] if limit is not None else paths


def default_data_dir() -> Path:
    """``../shared/data/physionet2019/training_setB_dev`` beside the repository."""
    from icuwatch.core.settings import REPO_ROOT

    return REPO_ROOT.parent / "shared" / "data" / "physionet2019" / "training_setB_dev"
