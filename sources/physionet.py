"""PhysioNet/CinC 2019 sepsis challenge stays (``pNNNNNN.psv``): reading, column meanings, the fixed split.

Each file is one ICU stay, one row per hour (``ICULOS`` hours since ICU admission), ``|``-separated,
``NaN`` where nothing was measured. ``SepsisLabel`` is 1 from 6 hours before the clinical onset
(t_sepsis - 6) on, as the challenge defines it.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icuwatch.core.errors import BadFile, OperatorError
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
    "stay_folder",
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
    """One stay; :class:`BadFile` (naming the file and, for a ragged row, the line) when it is not one.
    A value that is not a number reads as NaN."""
    path = Path(path)
    try:
        with open(path) as f:
            header = f.readline().strip().split("|")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Empty input file": reported below
            values = np.genfromtxt(path, delimiter="|", skip_header=1, dtype=np.float64, ndmin=2)
    except UnicodeDecodeError:
        raise BadFile(path, "not a text file") from None
    except ValueError as exc:  # rows of different widths
        ragged = _ragged_row(path, len(header))
        if ragged is None:
            raise BadFile(path, " ".join(str(exc).split())) from None
        line, width = ragged
        raise BadFile(path, f"{width} values, the header has {len(header)}", line=line) from None
    if values.size == 0:
        raise BadFile(path, "no rows under the header" if header != [""] else "empty file")
    if values.shape[1] != len(header):  # every row alike, none as wide as the header
        raise BadFile(path, f"{values.shape[1]} values, the header has {len(header)}", line=2)
    return Stay(patient_id=path.stem, columns=tuple(header), values=values)


def _ragged_row(path: Path, width: int) -> tuple[int, int] | None:
    """(line number, values) of the first row whose width is not the header's; blank lines skipped."""
    with open(path) as f:
        f.readline()
        for lineno, line in enumerate(f, start=2):
            n = len(line.strip().split("|"))
            if line.strip() and n != width:
                return lineno, n
    return None


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


def stay_folder(directory: str | Path) -> Path:
    """``directory``, checked to be a folder with at least one ``pNNNNNN.psv`` stay (else :class:`OperatorError`)."""
    folder = Path(directory)
    if not folder.is_dir():
        raise OperatorError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}")
    if next(folder.glob("p*.psv"), None) is None:
        raise OperatorError(f"{folder}: no pNNNNNN.psv stays in this folder")
    return folder


def default_data_dir() -> Path:
    """``../shared/data/physionet2019/training_setB_dev`` beside the repository."""
    from icuwatch.core.settings import REPO_ROOT

    return REPO_ROOT.parent / "shared" / "data" / "physionet2019" / "training_setB_dev"
