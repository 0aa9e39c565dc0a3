"""The exported versions of the live student side by side on the same held-out rows.

Each version's card reports TEST figures on the cohort it was distilled on; after the simulator
changes (a new ``icu`` population version) those are no longer the same patients, and a promotion
decision needs every candidate on one set of rows. Here each version's TorchScript (``model.pt``, what
Triton serves) scores the live cohort's TEST rows as built now, at that version's own alert
thresholds (``export.json``): AUROC and normalized utility per source and risk, for the full and the
early-exit student, and the exit shares. TEST rows are never used for a choice elsewhere; reading
them here is for the decision an engineer makes, reported as such.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from icuwatch.core.errors import OperatorError
from icuwatch.fusion.cohorts.base import Cohort, gather
from icuwatch.fusion.live_student import figures_by_source
from icuwatch.fusion.strategies.base import to_tensors
from icuwatch.serving.export import PROVENANCE, TORCHSCRIPT, load_torchscript, versions


def _probabilities(module, cohort: Cohort, rows: np.ndarray, early_exit: bool, batch: int = 4096):
    """(probabilities [len(rows), heads], exits [len(rows)]) of a served module."""
    probs, exits = [], []
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            p, e = module(to_tensors(gather(cohort, rows[start : start + batch])), early_exit)
            probs.append(p.numpy().astype(np.float64))
            exits.append(e.numpy().reshape(-1))
    return np.concatenate(probs), np.concatenate(exits)


def check_versions(model_dir: Path, wanted: list[int]) -> None:
    """Refuse (one line) versions ``model_dir`` does not hold, before anything slow is built."""
    held = versions(model_dir)
    missing = sorted(set(wanted) - set(held))
    if missing:
        raise OperatorError(f"{model_dir.name}: no version {', '.join(map(str, missing))} (held: {held})")


def version_figures(model_dir: Path, cohort: Cohort, chosen: list[int] | None = None) -> dict:
    """``{"rows", "versions": {version: {"exit_shares", "physionet": {...}, "sim": {...}}}}`` for the
    exported versions in ``model_dir`` (all, or ``chosen``) on ``cohort``'s TEST rows."""
    held = versions(model_dir)
    wanted = held if chosen is None else chosen
    check_versions(model_dir, wanted)
    rows = cohort.rows("test")
    out: dict = {"rows": int(len(rows)), "versions": {}}
    for version in wanted:
        directory = model_dir / str(version)
        info = json.loads((directory / PROVENANCE).read_text())
        if not info.get("norm") or not info.get("thresholds"):
            raise OperatorError(f"{model_dir.name}/{version} is not a live-layout student (no norm or thresholds)")
        if info["norm"] != cohort.meta.get("norm"):  # compared exactly, as serving.export compares versions
            raise OperatorError(
                f"{model_dir.name}/{version} was exported with another input normalisation than this cohort's:"
                " its figures here would be wrong"
            )
        module = load_torchscript(directory / TORCHSCRIPT)
        full, _ = _probabilities(module, cohort, rows, early_exit=False)
        early, exits = _probabilities(module, cohort, rows, early_exit=True)
        figures = figures_by_source(cohort, rows, None, full, early, info["thresholds"])
        shares = np.bincount(exits.astype(np.int64), minlength=len(info["exit_temperatures"])) / max(1, len(rows))
        out["versions"][version] = {"exit_shares": [round(float(s), 4) for s in shares], **figures}
    return out
