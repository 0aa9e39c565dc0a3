"""Distilling a trained teacher (the attention fusion model) into the early-exit student.

The student (``strategies.student.EarlyExitStudent``) is fitted on the cohort's TRAIN rows with, at
every exit ``k``,

    alpha * T^2 * KL(sigmoid(teacher_logit / T) || sigmoid(student_logit_k / T))
        + (1 - alpha) * focal(student_logit_k, label)

summed over the exits, deeper exits weighted more (``1 + deep_weight * k``). The teacher sees the
same modality-dropped inputs as the student, so the student learns the teacher's answer for the
modalities the row actually has. The epoch is chosen by the VAL AUROC of the last exit; then, on VAL:
a temperature per exit (``training.fit_temperature``), the alert threshold on the last exit's
calibrated probability (``training.utility_threshold``, as ``icuwatch train`` does), and a confidence
threshold per early exit: the smallest grid value from which on the early-exit AUROC stays within
``exit_tolerance`` (relative) of the full student's (exit by exit, deeper ones after the earlier are
fixed). Temperatures and thresholds are buffers of the student, so ``model_store.load`` restores them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icuwatch.fusion.cohorts.base import Cohort, gather
from icuwatch.fusion.strategies import build
from icuwatch.fusion.strategies.base import FusionModel, to_tensors
from icuwatch.fusion.strategies.student import EarlyExitStudent, exit_margins
from icuwatch.fusion.training import (
    TrainConfig,
    _auroc,
    data_card,
    fit_epochs,
    fit_temperature,
    focal_loss,
    model_spec,
    predict_logits,
    set_seeds,
    utility_threshold,
    validation_rows,
)

STUDENT = "student"


@dataclass
class DistillConfig(TrainConfig):
    temperature: float = 2.0
    """Distillation temperature T: soft targets sigmoid(teacher_logit / T)."""
    alpha: float = 0.7
    """Weight of the soft-target term; 1 - alpha goes to the focal loss on the hard labels."""
    deep_weight: float = 0.25
    """Exit k's loss is weighted 1 + deep_weight * k."""
    exit_tolerance: float = 0.002
    """Early exit may lose at most this share of the full student's VAL AUROC."""
    exit_grid: int = 100
    """Confidence thresholds tried per exit (quantiles of that exit's VAL confidences, plus 1.0)."""


@torch.no_grad()
def predict_exit_logits(model: EarlyExitStudent, cohort: Cohort, idx: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """[len(idx), n_exits] raw logits of every exit (the full student, no early exit)."""
    model.eval()
    out = np.empty((len(idx), model.n_exits), dtype=np.float32)
    for s in range(0, len(idx), batch_size):
        model(to_tensors(gather(cohort, idx[s : s + batch_size])))
        out[s : s + batch_size] = model.exit_logits.numpy()
    return out


def simulate_exits(exit_logits: np.ndarray, temperatures, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """What ``forward_early_exit`` answers, from all exits' logits: (exit index [N], calibrated
    probability [N])."""
    n, n_exits = exit_logits.shape
    where = np.full(n, n_exits - 1)
    undecided = np.ones(n, dtype=bool)
    for k, margin in enumerate(exit_margins(temperatures, thresholds)):
        stop = undecided & (np.abs(exit_logits[:, k]) >= margin)
        where[stop] = k
        undecided &= ~stop
    z = exit_logits[np.arange(n), where].astype(np.float64) / np.asarray(temperatures, dtype=np.float64)[where]
    return where, 1.0 / (1.0 + np.exp(-z))


def choose_exit_thresholds(
    exit_logits: np.ndarray, temperatures, y: np.ndarray, tolerance: float, grid: int = 100
) -> list[float]:
    """Per early exit (in order, later ones never-exit while an earlier one is chosen), the smallest
    confidence threshold on the grid from which on (it and every larger grid value) the early-exit
    AUROC is >= (1 - tolerance) x the full student's (last exit)."""
    n_exits = exit_logits.shape[1]
    thresholds = [1.0] * (n_exits - 1)
    full = _auroc(y, exit_logits[:, -1])
    if not np.isfinite(full):
        return thresholds
    floor = full * (1.0 - tolerance)
    for k in range(n_exits - 1):
        where, _ = simulate_exits(exit_logits, temperatures, thresholds)
        open_rows = where >= k
        conf = 1.0 / (1.0 + np.exp(-np.abs(exit_logits[open_rows, k].astype(np.float64)) / temperatures[k]))
        if len(conf) == 0:
            break
        candidates = np.unique(
            np.clip(np.concatenate([np.quantile(conf, np.linspace(0.0, 1.0, grid)), [1.0]]), 0.5, 1.0)
        )
        ok = []
        for c in candidates:
            trial = thresholds[:k] + [float(c)] + thresholds[k + 1 :]
            ok.append(_auroc(y, simulate_exits(exit_logits, temperatures, trial)[1]) >= floor)
        bad = np.flatnonzero(~np.asarray(ok))
        first = 0 if len(bad) == 0 else int(bad[-1]) + 1  # 1.0 (nobody leaves here) is always ok
        thresholds[k] = float(candidates[min(first, len(candidates) - 1)])
    return thresholds


def _teacher(teacher) -> tuple[FusionModel, str]:
    from icuwatch.fusion import model_store

    if isinstance(teacher, model_store.TrainedModel):
        return teacher.model, teacher.card["model"]
    if isinstance(teacher, FusionModel):
        return teacher, f"{teacher.strategy}-{teacher.spec.cohort}"
    path = Path(teacher)
    if not path.exists() and not path.is_absolute() and len(path.parts) == 1:
        path = model_store.model_dir(str(teacher))  # a model name: var/models/<name>
    trained = model_store.load(path)
    return trained.model, trained.card["model"]


def distill(
    teacher, cohort: Cohort, cfg: DistillConfig | None = None, progress: bool = True, spec_overrides: dict | None = None
) -> tuple[EarlyExitStudent, dict]:
    """Fit the student on the cohort's TRAIN rows against ``teacher`` (a model directory or name under
    ``var/models``, a ``model_store.TrainedModel`` or a ``FusionModel``); returns the student (eval
    mode, exit temperatures and thresholds set) and its card."""

    cfg = cfg or DistillConfig()
    torch.set_num_threads(cfg.threads)
    teacher_model, teacher_name = _teacher(teacher)
    if tuple(teacher_model.spec.modalities) != tuple(cohort.modalities) or any(
        tuple(teacher_model.spec.dims.get(k, ())) != tuple(v) for k, v in cohort.dims().items()
    ):
        raise ValueError(f"teacher {teacher_name} was built for other inputs than the {cohort.name} cohort")
    teacher_model.eval()
    rng = set_seeds(cfg.seed)
    spec = model_spec(STUDENT, cohort, cfg, spec_overrides)
    student: EarlyExitStudent = build(STUDENT, spec)  # type: ignore[assignment]
    n_exits = student.n_exits
    weights = [1.0 + cfg.deep_weight * k for k in range(n_exits)]

    train_rows = cohort.rows("train")
    val_rows = validation_rows(cohort, cfg, rng)
    y_val = cohort.y[val_rows].astype(np.float32)
    t, alpha = cfg.temperature, cfg.alpha

    def loss_fn(model: EarlyExitStudent, tensors: dict, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft = torch.sigmoid(teacher_model(tensors) / t)
            entropy = F.binary_cross_entropy(soft, soft)  # so the soft term is KL (0 when matched)
        model(tensors)
        z = model.exit_logits
        return sum(
            w
            * (
                alpha * t * t * (F.binary_cross_entropy_with_logits(z[:, k] / t, soft) - entropy)
                + (1.0 - alpha) * focal_loss(z[:, k], y, cfg.focal_gamma, cfg.focal_alpha)
            )
            for k, w in enumerate(weights)
        )

    def after_epoch(model: EarlyExitStudent) -> dict:
        val_z = predict_exit_logits(model, cohort, val_rows)
        aurocs = [_auroc(y_val, val_z[:, k]) for k in range(n_exits)]
        return {"val_auroc": aurocs[-1], "val_auroc_exits": [round(a, 4) for a in aurocs]}

    history, best, fit_s = fit_epochs(
        student, cohort, train_rows, cfg, loss_fn, after_epoch, f"distill {teacher_name} -> student", rng, progress
    )
    student.load_state_dict(best[1])
    student.eval()

    val_z = predict_exit_logits(student, cohort, val_rows)
    temperatures = [fit_temperature(val_z[:, k], y_val) for k in range(n_exits)]
    student.set_exits(temperatures=temperatures)
    val_p = 1.0 / (1.0 + np.exp(-val_z[:, -1].astype(np.float64) / temperatures[-1]))
    threshold, val_utility = utility_threshold(val_p, y_val, cohort.group[val_rows])
    exit_thresholds = choose_exit_thresholds(val_z, temperatures, y_val, cfg.exit_tolerance, cfg.exit_grid)
    student.set_exits(thresholds=exit_thresholds)
    where, early_p = simulate_exits(val_z, temperatures, exit_thresholds)
    shares = np.bincount(where, minlength=n_exits) / max(1, len(where))
    teacher_val = _auroc(y_val, predict_logits(teacher_model, cohort, val_rows))

    card = {
        "model": f"{STUDENT}-{cohort.name}",
        "strategy": STUDENT,
        "spec": spec.to_json(),
        "parameters": student.n_parameters(),
        "train_config": asdict(cfg),
        "data": data_card(cohort, train_rows, val_rows, np.zeros(0, dtype=np.int64)),
        "teacher": {
            "model": teacher_name,
            "strategy": teacher_model.strategy,
            "parameters": teacher_model.n_parameters(),
            "val_auroc": round(teacher_val, 4),
        },
        "distillation": {
            "temperature": t,
            "alpha": alpha,
            "exit_weights": weights,
            "loss": "alpha * T^2 * KL(sigmoid(teacher/T) || sigmoid(student_k/T)) + (1 - alpha) * focal, "
            "summed over exits k with exit_weights; teacher and student see the same "
            "modality-dropped inputs",
        },
        "history": history,
        "best_epoch": best[2],
        "temperature": temperatures[-1],
        "threshold": float(threshold),
        "threshold_selection": "maximum normalized utility (PhysioNet 2019 definition) on VAL rows, last exit",
        "exit_temperatures": temperatures,
        "exit_thresholds": exit_thresholds,
        "exit_shares": [round(float(s), 4) for s in shares],
        "exit_selection": (
            f"per early exit, the smallest VAL confidence max(p, 1-p) from which on the early-exit "
            f"AUROC stays >= (1 - {cfg.exit_tolerance}) x the full student's; the last exit "
            "answers every row left"
        ),
        "val": {
            "auroc": round(best[0], 4),
            "utility": round(float(val_utility), 4),
            "auroc_exits": [round(_auroc(y_val, val_z[:, k]), 4) for k in range(n_exits)],
            "early_exit_auroc": round(_auroc(y_val, early_p), 4),
        },
        "fit_s": round(fit_s, 1),
        "calibration": "temperature scaling per exit on VAL logits (probability = sigmoid(logit / temperature of "
        "the answering exit); `temperature` is the last exit's, for forward())",
        "imbalance": f"focal loss (gamma {cfg.focal_gamma}, alpha {cfg.focal_alpha} on positives) on the hard labels",
        "modality_dropout": cfg.modality_dropout,
    }
    return student, card
