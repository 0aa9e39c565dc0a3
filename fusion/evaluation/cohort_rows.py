"""``cv``'s feature builder for models that train on a prepared fusion cohort rather than on
per-stay features: a stay's "features" are its row numbers in that cohort, one float column.

``cv`` then deals stays to folds as for any model, and the model's fit function turns the row
numbers of the fold's fit and inner-validation stays back into cohort rows (``fusion.cohorts``).
"""

from __future__ import annotations

import numpy as np

from icuwatch.fusion.cohorts.base import Cohort
from icuwatch.sources.physionet import Stay


class CohortRows:
    """Row numbers of a PhysioNet stay in ``cohort`` (groups below ``n_groups``: the PhysioNet stays;
    a mixed cohort puts its simulated patients after them)."""

    def __init__(self, cohort: Cohort, n_groups: int | None = None) -> None:
        self.cohort = cohort
        n_groups = len(cohort.group_ids) if n_groups is None else n_groups
        stays = cohort.group < n_groups
        groups, starts, counts = np.unique(cohort.group[stays], return_index=True, return_counts=True)
        self.rows_of = {cohort.group_ids[g]: (int(s), int(n)) for g, s, n in zip(groups, starts, counts)}

    def __call__(self, stay: Stay) -> np.ndarray:
        if stay.patient_id not in self.rows_of:
            raise ValueError(
                f"{stay.patient_id} is not in the {self.cohort.name} cohort "
                f"(built from {self.cohort.meta.get('data_dir', 'the shared data')})"
            )
        start, n = self.rows_of[stay.patient_id]
        if n != len(stay.values):
            raise ValueError(f"{stay.patient_id}: {n} {self.cohort.name} cohort rows for {len(stay.values)} PSV rows")
        return np.arange(start, start + n, dtype=np.float64)[:, None]


def fold_cohort(
    cohort: Cohort, fit_rows: np.ndarray, val_rows: np.ndarray, keep: np.ndarray | None = None
) -> tuple[Cohort, np.ndarray]:
    """The rows a fold may train on: ``fit_rows`` as TRAIN, ``val_rows`` as VAL, plus ``keep`` rows
    with their own split (a mixed cohort's simulated patients); the held-out stays are left out.
    Returns the fold's cohort and its rows' numbers in ``cohort``."""
    from icuwatch.fusion.cohorts.base import SPLIT_CODES

    excluded = np.uint8(255)
    split = np.full(len(cohort), excluded, np.uint8)
    split[fit_rows] = SPLIT_CODES["train"]
    split[val_rows] = SPLIT_CODES["val"]
    if keep is not None:
        split[keep] = cohort.split[keep]
    used = np.flatnonzero(split != excluded)
    out = cohort.subset(used)
    out.split = split[used]
    return out, used
