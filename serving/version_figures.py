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


def same_norm(a, b) -> bool:
    """Whether two normalisations (nested dicts of numbers and lists) agree to float32 precision."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_norm(a[k], b[k]) for k in a)
    if a is None or b is None:
        return a is b
    try:
        x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    except (TypeError, ValueError):  # names, flags: equal or not
        return a == b
    return x.shape == y.shape and bool(np.allclose(x, y, rtol=1e-6, atol=1e-9))


def version_figures(model_dir: Path, cohort: Cohort, chosen: list[int] | None = None) -> dict:
    """``{"rows", "versions": {version: {"exit_shares", "physionet": {...}, "sim": {...}}}}`` for the
    exported versions in ``model_dir`` (all, or ``chosen``) on ``cohort``'s TEST rows."""
    held = versions(model_dir)
    wanted = held if chosen is None else chosen
    missing = sorted(set(wanted) - set(held))
    if missing:
        raise OperatorError(f"{model_dir.name}: no version {', '.join(map(str, missing))} (held: {held})")
    rows = cohort.rows("test")
    out: dict = {"rows": int(len(rows)), "versions": {}}
    for version in wanted:
        directory = model_dir / str(version)
        info = json.loads((directory / PROVENANCE).read_text())
        if not same_norm(info.get("norm"), cohort.meta.get("norm")):
            raise OperatorError(
                f"{model_dir.name}/{version} was exported with another input normalisation than this cohort's:"
                " its figures here would be wrong"
            )
        module = load_torchscript(directory / TORCHSCRIPT)
        full, _ = _probabilities(module, cohort, rows, early_exit=False)
        early, exits = _probabilities(module, cohort, rows, early_exit=True)
        figures = figures_by_source(cohort, rows, full, full, early, info["thresholds"])
        for by_risk in figures.values():
            for entry in by_risk.values():
                entry.pop("teacher", None)  # the teacher is not exported
        shares = np.bincount(exits.astype(np.int64), minlength=len(info.get("exit_temperatures") or [0])) / len(rows)
        out["versions"][version] = {"exit_shares": [round(float(s), 4) for s in shares], **figures}
    return out
