"""The live student: one early-exit student, two risks (sepsis, deterioration), all five modalities,
distilled from any teacher on the live cohort (``fusion.cohorts.live``). ``icuwatch distill-live``.

What it does, in order:

1. **Teacher logits** (``fusion.teachers``): by default cross-fitted LightGBM, one model per risk;
   or trained fusion models, or an ensemble of both. Each row's soft target comes from a teacher that
   did not see its stay (cross-fitting) or from the teacher's own training rows (fusion models: say
   so in the card).
2. **Distillation** on TRAIN rows, per exit ``k`` and risk ``r`` where the risk is known:
   ``alpha * T^2 * KL(sigmoid(teacher_r / T) || sigmoid(student_kr / T)) + (1 - alpha) * focal``,
   exits weighted ``1 + deep_weight * k``. Deterioration is unknown on PhysioNet stays: those rows
   train the sepsis head only. Simulated TRAIN rows can be drawn ``sim_repeat`` times as often
   (they are 6 % of the rows and the only ones that teach deterioration and the X-ray, report and
   waveform encoders; the default, 1, draws them as often as the rest). Modality dropout as in every fusion model.
3. **On VAL** (PhysioNet VAL stays, at most ``max_val_rows`` rows, plus every simulated VAL patient):
   epoch by the mean of the two risks' last-exit AUROC; per risk and exit a temperature; per risk
   the alert threshold with the best normalized utility (the PhysioNet 2019 rule; the simulated
   deterioration label follows the same rule on the simulated onset); per risk the exit margins
   (``distill.choose_exit_margins``). A row leaves early exit ``k`` only when both risks' alert
   decisions are settled there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from icuwatch.core import live_row
from icuwatch.fusion.cohorts.base import Cohort, gather
from icuwatch.fusion.distill import DistillConfig, choose_exit_margins, exit_report
from icuwatch.fusion.strategies import build
from icuwatch.fusion.strategies.base import to_tensors
from icuwatch.fusion.strategies.student import EarlyExitStudent, logit
from icuwatch.fusion.training import (
    _auroc,
    data_card,
    fit_epochs,
    fit_temperature,
    focal_loss,
    model_spec,
    set_seeds,
    validation_rows,
)

MODEL_NAME = "student-live"
SPEC = {
    "d_model": 16,
    "options": {
        "n_exits": 3,
        "n_heads": len(live_row.HEADS),
        "width": 32,
        "hidden": [32, 256, 256],
        "series": "flat",
        "flat_inputs": ["cxr", "report"],
    },
}


@dataclass
class LiveDistillConfig(DistillConfig):
    epochs: int = 6
    rows_per_epoch: int = 150_000
    sim_repeat: int = 1
    """Simulated TRAIN rows are drawn this many times as often as PhysioNet rows. 1 since the
    simulator's faults and X-ray findings (population v2): at 3 the deterioration head learned the
    training patients' films and reports by heart (its VAL AUROC fell from epoch 1); chosen on VAL
    over seeds 0 and 1 (mean of the epoch-selected VAL AUROC 0.815 at 1, 0.807 at 3; VAL utility
    sepsis 0.347 vs 0.325, deterioration 0.210 vs 0.202; README)."""
    teacher_folds: int = 3
    alert_budget: float = 0.5
    """Alert episodes per patient-day the alert threshold may give on VAL (runs of hourly rows at or
    above it, per stay, per 24 rows). The utility-best threshold alone sat below every simulated
    stable patient's risk (0.022 sepsis, 0.053 deterioration): nurses would be paged for everyone."""


def alert_threshold(p: np.ndarray, y: np.ndarray, groups: np.ndarray, budget: float) -> dict:
    """The alert threshold: the best normalized utility among the thresholds whose alert episodes per
    patient-day on these rows stay within ``budget`` (400 quantiles of ``p``); also the utility-best
    threshold without the budget, for the card."""
    from icuwatch.fusion.evaluation.metrics import utility_vs_threshold
    from icuwatch.fusion.training import per_group

    candidates = np.unique(np.quantile(p, np.linspace(0.0, 0.999, 400)))
    utilities = np.asarray(utility_vs_threshold(per_group(p, groups), per_group(y, groups), candidates), float)
    first = np.r_[True, groups[1:] != groups[:-1]]
    days = len(p) / 24.0
    episodes = np.array([np.count_nonzero((p >= c) & (first | (np.r_[-np.inf, p[:-1]] < c))) for c in candidates])
    per_day = episodes / days
    ok = per_day <= budget
    best_any = int(np.nanargmax(utilities)) if np.isfinite(utilities).any() else 0
    pick = (
        int(np.flatnonzero(ok)[np.nanargmax(utilities[ok])])
        if ok.any() and np.isfinite(utilities[ok]).any()
        else len(candidates) - 1
    )
    return {
        "threshold": float(candidates[pick]),
        "val_utility": float(utilities[pick]),
        "val_alert_episodes_per_patient_day": round(float(per_day[pick]), 4),
        "utility_best_threshold": float(candidates[best_any]),
        "utility_best_val_utility": float(utilities[best_any]),
        "utility_best_alert_episodes_per_patient_day": round(float(per_day[best_any]), 4),
    }


def labels_of(cohort: Cohort) -> dict[str, np.ndarray]:
    """Per risk (``core.live_row.HEADS``) float32 [N] 0/1, NaN where unknown."""
    return {"sepsis": cohort.y.astype(np.float32), "deterioration": cohort.targets["deterioration"].astype(np.float32)}


def val_rows(cohort: Cohort, cfg: LiveDistillConfig, rng: np.random.Generator) -> np.ndarray:
    """PhysioNet VAL rows (whole stays, at most ``cfg.max_val_rows``) and every simulated VAL row."""
    from icuwatch.fusion.cohorts.live import source_of

    rows = cohort.rows("val")
    sim = source_of(cohort)[rows]
    pn_rows = validation_rows(cohort, cfg, rng, rows[~sim])
    sim_rows = rows[sim]
    return np.sort(np.concatenate([pn_rows, sim_rows]))


@torch.no_grad()
def exit_logits(model: EarlyExitStudent, cohort: Cohort, idx: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """[len(idx), n_exits, n_heads] raw logits (the full student)."""
    model.eval()
    out = np.empty((len(idx), model.n_exits, model.n_heads), np.float32)
    for s in range(0, len(idx), batch_size):
        model(to_tensors(gather(cohort, idx[s : s + batch_size])))
        z = model.exit_logits
        out[s : s + batch_size] = (z[:, :, None] if model.n_heads == 1 else z).numpy()
    return out


def _training_view(cohort: Cohort, teacher: np.ndarray, labels: dict[str, np.ndarray], weights: np.ndarray) -> Cohort:
    """The cohort with the teacher's logits, the risk labels and the rows' label weights as extra
    per-row inputs (the model never reads them; the loss does)."""
    import dataclasses

    extra = {"_teacher": teacher, "_labels": np.stack(list(labels.values()), axis=1), "_weights": weights}
    return dataclasses.replace(cohort, inputs={**cohort.inputs, **extra})


def sepsis_prior_shift(
    cohort: Cohort, teacher: np.ndarray, train_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Simulated sepsis at PhysioNet's prevalence: (teacher logits with the simulated rows' sepsis
    logit shifted, per-row label weights [N, 2], what was done).

    The simulator makes a quarter of its patients septic with onsets in their first 30 hours, so 17 %
    of its rows carry a sepsis label against 2 % of PhysioNet's. A student fitted to both learns
    "a simulated patient in the first hours" as sepsis risk (calibrated for that world: ~0.05 for a
    stable simulated patient), above the alert threshold chosen for real stays. The standard label-
    shift correction (Saerens et al. 2002) moves the simulated rows to PhysioNet's prior: the
    teacher's sepsis logit on them shifted by log(odds_pn / odds_sim), and their hard labels weighted
    pi_pn(y) / pi_sim(y). Deterioration (simulated rows only) keeps its own prior."""
    from icuwatch.fusion.cohorts.live import source_of

    sim = source_of(cohort)
    train_sim = np.zeros(len(cohort), bool)
    train_sim[train_rows] = True
    pn_prev = float(cohort.y[train_rows][~sim[train_rows]].mean())
    sim_prev = float(cohort.y[train_sim & sim].mean()) if (train_sim & sim).any() else pn_prev
    odds = lambda q: q / (1.0 - q)  # noqa: E731
    shift = float(np.log(odds(pn_prev)) - np.log(odds(sim_prev))) if 0 < pn_prev < 1 and 0 < sim_prev < 1 else 0.0
    shifted = teacher.copy()
    shifted[sim, 0] += shift
    weights = np.ones((len(cohort), teacher.shape[1]), np.float32)
    if shift:
        weights[sim, 0] = np.where(cohort.y[sim] > 0, pn_prev / sim_prev, (1 - pn_prev) / (1 - sim_prev))
    info = {
        "sepsis_row_prevalence_train": {"physionet": round(pn_prev, 4), "sim": round(sim_prev, 4)},
        "sim_sepsis_logit_shift": round(shift, 4),
        "rule": "label shift (Saerens et al. 2002): simulated rows' teacher sepsis logit + log(odds_pn / odds_sim), "
        "their hard sepsis labels weighted pi_pn(y) / pi_sim(y)",
    }
    return shifted, weights, info


def distill_live(
    cohort: Cohort,
    teacher: np.ndarray,
    teacher_info: dict,
    cfg: LiveDistillConfig | None = None,
    progress: bool = True,
) -> tuple[EarlyExitStudent, dict]:
    """Fit the live student on ``cohort`` against ``teacher`` logits ``[N, 2]`` (NaN: no answer)."""
    from icuwatch.fusion.cohorts.live import source_of

    cfg = cfg or LiveDistillConfig()
    torch.set_num_threads(cfg.threads)
    rng = set_seeds(cfg.seed)
    heads = live_row.HEADS
    labels = labels_of(cohort)
    spec = model_spec("student", cohort, cfg, SPEC)
    student: EarlyExitStudent = build("student", spec)  # type: ignore[assignment]
    n_exits = student.n_exits
    weights = [1.0 + cfg.deep_weight * k for k in range(n_exits)]
    train_rows = cohort.rows("train")
    sim_train = train_rows[source_of(cohort)[train_rows]]
    drawn = np.concatenate([train_rows, *([sim_train] * (cfg.sim_repeat - 1))])
    vrows = val_rows(cohort, cfg, rng)
    y_val = np.stack([labels[h][vrows] for h in heads], axis=1)
    shifted, weights_of_rows, prior = sepsis_prior_shift(cohort, teacher, train_rows)
    view = _training_view(cohort, shifted, labels, weights_of_rows)
    t, alpha = cfg.temperature, cfg.alpha

    def loss_fn(model: EarlyExitStudent, tensors: dict, _y: torch.Tensor) -> torch.Tensor:
        model(tensors)
        z = model.exit_logits  # [B, n_exits, n_heads]
        total = z.new_zeros(())
        for r in range(len(heads)):
            y = tensors["_labels"][:, r]
            known = torch.isfinite(y)
            if not bool(known.any()):
                continue
            soft_known = known & torch.isfinite(tensors["_teacher"][:, r])
            soft = torch.sigmoid(torch.nan_to_num(tensors["_teacher"][:, r]) / t)
            entropy = F.binary_cross_entropy(soft, soft, reduction="none")
            row_w = tensors["_weights"][:, r]
            for k, w in enumerate(weights):
                zk = z[:, k, r]
                kl = F.binary_cross_entropy_with_logits(zk / t, soft, reduction="none") - entropy
                soft_term = (kl * soft_known).sum() / soft_known.sum().clamp(min=1)
                hard = focal_loss(zk[known], torch.nan_to_num(y)[known], cfg.focal_gamma, cfg.focal_alpha, row_w[known])
                total = total + w * (alpha * t * t * soft_term + (1.0 - alpha) * hard)
        return total

    def after_epoch(model: EarlyExitStudent) -> dict:
        z = exit_logits(model, cohort, vrows)
        aurocs = [_auroc(y_val[:, r][np.isfinite(y_val[:, r])], z[np.isfinite(y_val[:, r]), -1, r]) for r in range(2)]
        return {"val_auroc": float(np.mean(aurocs)), **{f"val_auroc_{h}": a for h, a in zip(heads, aurocs)}}

    history, best, fit_s = fit_epochs(
        student, view, drawn, cfg, loss_fn, after_epoch, "distill teacher -> live student", rng, progress
    )
    student.load_state_dict(best[1])
    student.eval()

    z = exit_logits(student, cohort, vrows)
    temperatures = np.ones((n_exits, len(heads)))
    centers, margins, thresholds, per_risk = [], [], {}, {}
    for r, risk in enumerate(heads):
        known = np.isfinite(y_val[:, r])
        zr, yr, gr = z[known, :, r], y_val[known, r], cohort.group[vrows][known]
        temperatures[:, r] = [fit_temperature(zr[:, k], yr) for k in range(n_exits)]
        p = 1.0 / (1.0 + np.exp(-zr[:, -1].astype(np.float64) / temperatures[-1, r]))
        chosen = alert_threshold(p, yr, gr, cfg.alert_budget)
        threshold, utility = chosen["threshold"], chosen["val_utility"]
        center = logit(float(threshold))
        m = choose_exit_margins(
            zr,
            temperatures[:, r],
            center,
            yr,
            agreement=cfg.exit_agreement,
            tolerance=cfg.exit_tolerance,
            grid=cfg.exit_grid,
            costs=student.parameters_to_exit(),
            budget_splits=cfg.exit_budget_splits,
        )
        centers.append(center)
        margins.append(m)
        thresholds[risk] = float(threshold)
        teacher_r = teacher[vrows][known, r]
        answered = np.isfinite(teacher_r)
        per_risk[risk] = {
            "val_rows": int(known.sum()),
            "threshold": float(threshold),
            "val_utility": round(float(utility), 4),
            "val_auroc": round(_auroc(yr, zr[:, -1]), 4),
            "alert_threshold": chosen,
            "teacher_val_auroc": round(_auroc(yr[answered], teacher_r[answered]), 4) if answered.any() else None,
            "exit_margins": [None if math.isinf(x) else x for x in m],
            "early_exit_val": exit_report(zr, temperatures[:, r], center, m, yr, gr, float(threshold)),
        }
    student.set_exits(temperatures=temperatures, margins=np.array(margins).T, center=centers)
    where, _ = simulate_exits_multi(z, temperatures, np.array(centers), np.array(margins).T)
    card = {
        "model": MODEL_NAME,
        "strategy": "student",
        "heads": list(heads),
        "spec": spec.to_json(),
        "parameters": student.n_parameters(),
        "train_config": asdict(cfg),
        "data": data_card(cohort, train_rows, vrows, np.zeros(0, np.int64)),
        "teacher": teacher_info,
        "distillation": {
            "temperature": t,
            "alpha": alpha,
            "exit_weights": weights,
            "loss": "per risk where known: alpha * T^2 * KL(sigmoid(teacher/T) || sigmoid(student_k/T)) + (1 - alpha) "
            "* focal, summed over exits k with exit_weights and over risks",
            "sim_repeat": cfg.sim_repeat,
            "prior_shift": prior,
        },
        "history": history,
        "best_epoch": best[2],
        "exit_temperatures": temperatures.tolist(),
        "exit_center": centers,
        "exit_margins": [[None if math.isinf(x) else x for x in m] for m in np.array(margins).T.tolist()],
        "exit_shares_val": [round(float(s), 4) for s in np.bincount(where, minlength=n_exits) / max(1, len(where))],
        "threshold": thresholds["sepsis"],
        "thresholds": thresholds,
        "threshold_selection": "per risk, on the VAL rows where the risk is known (last exit): the maximum "
        "normalized utility (PhysioNet 2019 definition) among thresholds giving at most "
        f"{cfg.alert_budget} alert episodes per patient-day",
        "per_risk": per_risk,
        "fit_s": round(fit_s, 1),
        "calibration": "temperature scaling per exit and risk on VAL logits",
        "modality_dropout": cfg.modality_dropout,
    }
    return student, card


def simulate_exits_multi(
    exit_logits_: np.ndarray, temperatures: np.ndarray, centers: np.ndarray, margins: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """What the multi-risk student's early exit answers from every exit's logits ``[N, n_exits, H]``:
    (exit index [N], calibrated probabilities [N, H]). A row leaves early exit k when every risk's
    ``|z / T - centre| >= margin``."""
    zc = np.asarray(exit_logits_, np.float32) / np.asarray(temperatures, np.float32)[None]
    n, n_exits, _ = zc.shape
    where = np.full(n, n_exits - 1)
    undecided = np.ones(n, bool)
    for k in range(n_exits - 1):
        m = np.asarray(margins[k], np.float32)
        if np.isinf(m).any():
            continue
        stop = undecided & (np.abs(zc[:, k] - np.asarray(centers, np.float32)) >= m).all(axis=1)
        where[stop] = k
        undecided &= ~stop
    z = zc[np.arange(n), where].astype(np.float64)
    return where, 1.0 / (1.0 + np.exp(-z))


def held_out_report(student: EarlyExitStudent, cohort: Cohort, teacher: np.ndarray, card: dict) -> dict:
    """TEST figures (reported, never used for a choice), per source (PhysioNet stays, simulated
    patients) and risk: AUROC and normalized utility at the card's threshold of the teacher, the
    full student and the early-exit student, alert agreement of early exit with the full student,
    exit shares."""
    rows = cohort.rows("test")
    z = exit_logits(student, cohort, rows)
    temperatures = student.exit_temperatures.reshape(student.n_exits, student.n_heads).numpy()
    centers = student.exit_center.reshape(-1).numpy()
    margins = student.exit_margins.reshape(student.n_exits - 1, student.n_heads).numpy()
    where, p_early = simulate_exits_multi(z, temperatures, centers, margins)
    p_full = 1.0 / (1.0 + np.exp(-(z[:, -1] / temperatures[-1]).astype(np.float64)))
    teacher_p = 1.0 / (1.0 + np.exp(-teacher[rows].astype(np.float64)))
    return {
        "rows": int(len(rows)),
        "exit_shares": [round(float(s), 4) for s in np.bincount(where, minlength=student.n_exits) / max(1, len(rows))],
        **figures_by_source(cohort, rows, teacher_p, p_full, p_early, card["thresholds"]),
    }


def figures_by_source(
    cohort: Cohort,
    rows: np.ndarray,
    teacher: np.ndarray | None,
    full: np.ndarray,
    early: np.ndarray,
    thresholds: dict[str, float],
) -> dict:
    """Per source (``physionet``, ``sim``) and risk known there, from probabilities ``[len(rows), H]``:
    AUROC of the teacher, the full and the early-exit student, their normalized utility at the risk's
    alert threshold, and the early exit's alert agreement with the full student (no teacher entry when
    ``teacher`` is None)."""
    from icuwatch.fusion.cohorts.live import source_of
    from icuwatch.fusion.distill import alert_agreement
    from icuwatch.fusion.evaluation.metrics import utility_vs_threshold
    from icuwatch.fusion.training import per_group

    labels = labels_of(cohort)
    sim = source_of(cohort)[rows]
    out: dict = {}
    for source, mask in (("physionet", ~sim), ("sim", sim)):
        out[source] = {}
        for r, risk in enumerate(live_row.HEADS):
            y = labels[risk][rows]
            keep = mask & np.isfinite(y)
            if not keep.any():
                continue
            yk, groups, thr = y[keep], cohort.group[rows][keep], thresholds[risk]
            entry = {"rows": int(keep.sum()), "stays": int(len(np.unique(groups)))}
            scored = [("student_full", full[keep, r], thr), ("student_early_exit", early[keep, r], thr)]
            if teacher is not None:
                scored.insert(0, ("teacher", teacher[keep, r], None))
            for name, p, t_ in scored:
                fig = {"auroc": round(_auroc(yk, p), 4)}
                if t_ is not None:
                    u = utility_vs_threshold(per_group(p, groups), per_group(yk, groups), [t_])[0]
                    fig["utility"] = None if not np.isfinite(u) else round(float(u), 4)
                entry[name] = fig
            entry["alert_agreement_early_exit"] = round(alert_agreement(early[keep, r], full[keep, r], thr), 5)
            out[source][risk] = entry
    return out
