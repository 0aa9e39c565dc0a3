"""Distilling a trained teacher (the attention fusion model) into the early-exit student.

The student (``strategies.student.EarlyExitStudent``) is fitted on the cohort's TRAIN rows with, at
every exit ``k``,

    alpha * T^2 * KL(sigmoid(teacher_logit / T) || sigmoid(student_logit_k / T))
        + (1 - alpha) * focal(student_logit_k, label)

summed over the exits, deeper exits weighted more (``1 + deep_weight * k``). The teacher sees the
same modality-dropped inputs as the student, so the student learns the teacher's answer for the
modalities the row actually has. The epoch is chosen by the VAL AUROC of the last exit; then, on VAL:
a temperature per exit (``training.fit_temperature``), the alert threshold ``op`` on the last exit's
calibrated probability (``training.utility_threshold``, as ``icuwatch train`` does), and the exit
rule (``choose_exit_margins``): the student's ``exit_center`` is ``logit(op)`` and a row leaves early
exit ``k`` when its calibrated logit there is at least ``exit_margins[k]`` from it, i.e. when going
deeper could not plausibly flip its alert. Per early exit, in order, the smallest margin such that
the early-exit alert decisions (calibrated p >= op) agree with the full student's on at least
``exit_agreement`` of the VAL rows (all exits together) and the early-exit AUROC stays within
``exit_tolerance`` (relative) of the full student's; the disagreement budget is split between the
exits where that makes the expected compute (parameters a row runs through) smallest. Temperatures,
centre and margins are buffers of the student, so ``model_store.load`` restores them;
``recalibrate_exits`` redoes only this last step for a saved student (``icuwatch distill
--exits-only``), e.g. one distilled with the old confidence rule.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icuwatch.fusion.cohorts.base import Cohort, gather
from icuwatch.fusion.strategies import build
from icuwatch.fusion.strategies.base import FusionModel, to_tensors
from icuwatch.fusion.strategies.student import EarlyExitStudent, logit
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
    exit_agreement: float = 0.998
    """Early exit's alert decisions must equal the full student's on at least this share of VAL rows.
    0.998, not the 0.995 goal: on PhysioNet VAL (student distilled from the 3-epoch attention teacher)
    0.995 let 98.8 % of rows leave at exit 0 but cost 0.007 normalized utility (the 0.5 % of flipped
    decisions sit where utility is decided); 0.998 let 97.2 % leave at a 0.002 utility change, the same
    speed (block 1 on 2.8 % of a batch instead of 1.2 %), and leaves TEST headroom above 0.995."""
    exit_tolerance: float = 0.002
    """Early exit may lose at most this share of the full student's VAL AUROC."""
    exit_grid: int = 100
    """Margins tried per exit for the AUROC check (quantiles of that exit's VAL distances, plus inf)."""
    exit_budget_splits: int = 11
    """Shares of the disagreement budget tried for the earlier exits (1: all to the first, greedy)."""


@torch.no_grad()
def predict_exit_logits(model: EarlyExitStudent, cohort: Cohort, idx: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """[len(idx), n_exits] raw logits of every exit (the full student, no early exit)."""
    model.eval()
    out = np.empty((len(idx), model.n_exits), dtype=np.float32)
    for s in range(0, len(idx), batch_size):
        model(to_tensors(gather(cohort, idx[s : s + batch_size])))
        out[s : s + batch_size] = model.exit_logits.numpy()
    return out


def calibrated_logits(exit_logits: np.ndarray, temperatures) -> np.ndarray:
    """[N, n_exits] float32 ``z_k / T_k``: the same float32 arithmetic as the model's exit rule."""
    return np.asarray(exit_logits, dtype=np.float32) / np.asarray(temperatures, dtype=np.float32)[None, :]


def simulate_exits(exit_logits: np.ndarray, temperatures, center: float, margins) -> tuple[np.ndarray, np.ndarray]:
    """What ``forward_early_exit`` answers, from all exits' logits: (exit index [N], calibrated
    probability [N]). Row leaves early exit k where ``|z_k / T_k - center| >= margins[k]``."""
    zc = calibrated_logits(exit_logits, temperatures)
    n, n_exits = zc.shape
    where = np.full(n, n_exits - 1)
    undecided = np.ones(n, dtype=bool)
    c = np.float32(center)
    for k, margin in enumerate(list(margins)[: n_exits - 1]):
        if math.isinf(float(margin)):
            continue
        stop = undecided & (np.abs(zc[:, k] - c) >= np.float32(margin))
        where[stop] = k
        undecided &= ~stop
    z = zc[np.arange(n), where].astype(np.float64)
    return where, 1.0 / (1.0 + np.exp(-z))


def alert_agreement(p: np.ndarray, p_full: np.ndarray, threshold: float) -> float:
    """Share of rows whose alert decision (p >= threshold) equals the full student's."""
    p, p_full = np.asarray(p), np.asarray(p_full)
    return float(np.mean((p >= threshold) == (p_full >= threshold))) if len(p) else float("nan")


def _smallest_margin(distance: np.ndarray, mismatch: np.ndarray, budget: float) -> float:
    """The smallest margin m such that the rows with ``distance >= m`` hold at most ``budget``
    mismatches (inf when even the farthest row alone breaks it)."""
    if len(distance) == 0:
        return math.inf
    order = np.argsort(-distance, kind="stable")
    d = distance[order]
    wrong = np.cumsum(mismatch[order])
    last_of_value = np.flatnonzero(np.append(d[1:] != d[:-1], True))  # ties leave together
    ok = wrong[last_of_value] <= budget
    if not ok[0]:
        return math.inf
    return float(d[last_of_value[int(np.flatnonzero(ok)[-1])]])


def _margins_for_budgets(zc, full_decision, y, center, shares, budget, floor, grid, check_auroc) -> list[float]:
    """Exit by exit (deeper ones never-exit while an earlier one is chosen), the smallest margin that
    keeps the total disagreements within ``shares[k] * budget`` (the last early exit: all of what is
    left) and the AUROC >= ``floor`` for it and every larger grid margin."""
    n_exits = zc.shape[1]
    c = np.float32(center)
    temps_one = np.ones(n_exits, dtype=np.float32)
    margins = [math.inf] * (n_exits - 1)
    used = 0
    for k in range(n_exits - 1):
        where, _ = simulate_exits(zc, temps_one, center, margins)
        open_rows = np.flatnonzero(where >= k)
        if len(open_rows) == 0:
            break
        distance = np.abs(zc[open_rows, k] - c)
        mismatch = (zc[open_rows, k] >= c) != full_decision[open_rows]
        allowed = budget - used if k == n_exits - 2 else min(budget - used, shares[k] * budget)
        m = _smallest_margin(distance, mismatch, allowed)
        if check_auroc and not math.isinf(m):
            above = distance[distance >= m]
            candidates = np.unique(np.concatenate([[m], np.quantile(above, np.linspace(0.0, 1.0, grid))]))
            ok = [
                _auroc(y, simulate_exits(zc, temps_one, center, margins[:k] + [float(c_)] + margins[k + 1 :])[1])
                >= floor
                for c_ in candidates
            ]
            bad = np.flatnonzero(~np.asarray(ok))
            first = 0 if len(bad) == 0 else int(bad[-1]) + 1
            m = float(candidates[first]) if first < len(candidates) else math.inf  # inf: nobody leaves, always ok
        margins[k] = m
        if not math.isinf(m):
            leave = distance >= np.float32(m)
            used += int(mismatch[leave].sum())
    return margins


def choose_exit_margins(
    exit_logits: np.ndarray,
    temperatures,
    center: float,
    y: np.ndarray,
    agreement: float = 0.998,
    tolerance: float = 0.002,
    grid: int = 100,
    costs=None,
    budget_splits: int = 11,
) -> list[float]:
    """The exit rule's margins (one per early exit, inf: nobody leaves there) from VAL rows' logits
    of every exit: each the smallest that keeps the early-exit alert decisions (calibrated logit >=
    ``center``) equal to the full student's on >= ``agreement`` of the rows and the early-exit AUROC
    >= (1 - ``tolerance``) x the full student's (for that margin and every larger one on the grid).
    With ``costs`` (per exit, what a row answered there costs, e.g. parameters run through) and more
    than one early exit, the disagreement budget is split between the early exits (``budget_splits``
    shares of it for each but the last) and the margins with the smallest mean cost are kept."""
    zc = calibrated_logits(exit_logits, temperatures)
    n, n_exits = zc.shape
    if n_exits < 2 or n == 0:
        return [math.inf] * (n_exits - 1)
    full_decision = zc[:, -1] >= np.float32(center)
    budget = math.floor((1.0 - agreement) * n + 1e-9)
    full_auroc = _auroc(y, zc[:, -1])
    check_auroc = bool(np.isfinite(full_auroc))
    floor = full_auroc * (1.0 - tolerance) if check_auroc else -math.inf
    temps_one = np.ones(n_exits, dtype=np.float32)
    if costs is None or n_exits == 2 or budget_splits <= 1:
        plans = [[1.0] * (n_exits - 1)]
    else:
        plans = [[float(f)] * (n_exits - 1) for f in np.linspace(1.0, 0.0, budget_splits)]
    best, best_cost = None, math.inf
    for shares in plans:
        margins = _margins_for_budgets(zc, full_decision, y, center, shares, budget, floor, grid, check_auroc)
        if costs is None:
            return margins
        where, _ = simulate_exits(zc, temps_one, center, margins)
        cost = float(np.mean(np.asarray(costs, dtype=np.float64)[where]))
        if cost < best_cost - 1e-9:
            best, best_cost = margins, cost
    return best if best is not None else [math.inf] * (n_exits - 1)


def exit_report(
    exit_logits: np.ndarray, temperatures, center: float, margins, y: np.ndarray, groups, threshold
) -> dict:
    """Early exit against the full student on these rows: exit shares, alert agreement, AUROC and
    normalized utility (at ``threshold``) of both, and the change."""
    from icuwatch.fusion.evaluation.metrics import utility_vs_threshold
    from icuwatch.fusion.training import per_group

    where, p_early = simulate_exits(exit_logits, temperatures, center, margins)
    n_exits = exit_logits.shape[1]
    p_full = simulate_exits(exit_logits, temperatures, center, [math.inf] * (n_exits - 1))[1]
    out = {
        "rows": int(len(where)),
        "exit_shares": [round(float(s), 4) for s in np.bincount(where, minlength=n_exits) / max(1, len(where))],
        "alert_agreement": round(alert_agreement(p_early, p_full, threshold), 5),
        "auroc_full": round(_auroc(y, p_full), 4),
        "auroc_early_exit": round(_auroc(y, p_early), 4),
    }
    labels = per_group(np.asarray(y, dtype=float), groups)
    u_full, u_early = (
        float(utility_vs_threshold(per_group(p, groups), labels, [threshold])[0]) for p in (p_full, p_early)
    )
    finite = np.isfinite(u_full) and np.isfinite(u_early)
    out["utility_full"] = round(u_full, 4) if finite else None
    out["utility_early_exit"] = round(u_early, 4) if finite else None
    out["utility_change"] = round(u_early - u_full, 4) if finite else None
    out["auroc_change"] = round(out["auroc_early_exit"] - out["auroc_full"], 4)
    return out


def set_exit_rule(
    student: EarlyExitStudent, val_z: np.ndarray, y_val: np.ndarray, groups: np.ndarray, threshold: float, cfg
) -> dict:
    """Choose the exit rule on VAL (``val_z``: every exit's raw logits; the student's temperatures
    already set; ``threshold``: its alert threshold) and set the student's centre and margins.
    Returns ``{"card": exit fields of the model card, "val": early exit on VAL}``."""
    temperatures = [float(t) for t in student.exit_temperatures]
    center = logit(threshold)
    margins = choose_exit_margins(
        val_z,
        temperatures,
        center,
        y_val,
        agreement=cfg.exit_agreement,
        tolerance=cfg.exit_tolerance,
        grid=cfg.exit_grid,
        costs=student.parameters_to_exit(),
        budget_splits=cfg.exit_budget_splits,
    )
    student.set_exits(margins=margins, center=center)
    report = exit_report(val_z, temperatures, center, margins, y_val, groups, threshold)
    return {
        "card": {
            "exit_center": center,
            "exit_margins": [None if math.isinf(m) else m for m in margins],
            "exit_shares": report["exit_shares"],
            "exit_selection": (
                "a row leaves early exit k when |logit_k / T_k - exit_center| >= exit_margins[k] (null: never), "
                "exit_center = logit(threshold); per early exit, in order, the smallest margin such that the "
                f"early-exit alert decisions (p >= threshold) equal the full student's on >= {cfg.exit_agreement} "
                f"of the VAL rows (all exits together) and the early-exit AUROC stays >= (1 - {cfg.exit_tolerance}) "
                "x the full student's; the disagreement budget split between the exits for the least mean "
                "compute (parameters run to the answering exit); the last exit answers every row left"
            ),
        },
        "val": {
            "early_exit_auroc": report["auroc_early_exit"],
            "early_exit_alert_agreement": report["alert_agreement"],
            "early_exit_utility": report["utility_early_exit"],
            "utility_change_early_exit": report["utility_change"],
        },
    }


def recalibrate_exits(trained, cohort: Cohort, cfg: DistillConfig | None = None) -> tuple[EarlyExitStudent, dict]:
    """A saved student's exit rule chosen again on its VAL rows (the same rows as at distillation:
    its card's seed and ``max_val_rows``), weights, temperatures and alert threshold kept. For a
    student distilled with the old confidence rule, or to try another agreement target."""
    student = trained.model
    if not isinstance(student, EarlyExitStudent):
        raise ValueError(f"{trained.card.get('model')} is not an early-exit student")
    saved = trained.card.get("train_config", {})
    cfg = cfg or DistillConfig(**{k: v for k, v in saved.items() if k in DistillConfig.__dataclass_fields__})
    val_cfg = DistillConfig(
        seed=int(saved.get("seed", cfg.seed)), max_val_rows=int(saved.get("max_val_rows", cfg.max_val_rows))
    )
    torch.set_num_threads(cfg.threads)
    val_rows = validation_rows(cohort, val_cfg, np.random.default_rng(val_cfg.seed))
    y_val = cohort.y[val_rows].astype(np.float32)
    val_z = predict_exit_logits(student, cohort, val_rows)
    rule = set_exit_rule(student, val_z, y_val, cohort.group[val_rows], float(trained.card["threshold"]), cfg)
    card = {k: v for k, v in trained.card.items() if k != "exit_thresholds"}
    card.update(rule["card"])
    card["val"] = {**card.get("val", {}), **rule["val"]}
    card["train_config"] = {
        **saved,
        **{k: getattr(cfg, k) for k in ("exit_agreement", "exit_tolerance", "exit_grid", "exit_budget_splits")},
    }
    return student, card


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
    rule = set_exit_rule(student, val_z, y_val, cohort.group[val_rows], float(threshold), cfg)
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
        **rule["card"],
        "val": {
            "auroc": round(best[0], 4),
            "utility": round(float(val_utility), 4),
            "auroc_exits": [round(_auroc(y_val, val_z[:, k]), 4) for k in range(n_exits)],
            **rule["val"],
        },
        "fit_s": round(fit_s, 1),
        "calibration": "temperature scaling per exit on VAL logits (probability = sigmoid(logit / temperature of "
        "the answering exit); `temperature` is the last exit's, for forward())",
        "imbalance": f"focal loss (gamma {cfg.focal_gamma}, alpha {cfg.focal_alpha} on positives) on the hard labels",
        "modality_dropout": cfg.modality_dropout,
    }
    return student, card
