"""Training any fusion strategy on a cohort: modality dropout, focal loss, model selection on the
validation split, temperature scaling, an alert threshold tuned for utility, and a model card.

Splits are the cohort's own (PhysioNet: the fixed hash split of ``sources.physionet.split_of``):
weights are fitted on TRAIN, the epoch, the temperature and the threshold are chosen on VAL, and
TEST is only touched by ``icuwatch evaluate fusion``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from icuwatch.fusion.cohorts.base import Cohort, gather
from icuwatch.fusion.strategies import DEFAULTS, build
from icuwatch.fusion.strategies.base import FusionModel, InputSpec, to_tensors


@dataclass
class TrainConfig:
    epochs: int = 10
    rows_per_epoch: int = 200_000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    modality_dropout: float = 0.4
    """Each present modality of a training row is dropped with this probability (one always stays)."""
    focal_gamma: float = 2.0
    focal_alpha: float = 0.75
    """Weight of the positive class in the focal loss (positives are ~2 % of PhysioNet rows)."""
    aux_weight: float = 0.5
    stage2_fraction: float = 0.2
    """Stacked fusion: share of TRAIN groups held out of stage 1 to fit the integrator on."""
    max_val_rows: int = 150_000
    seed: int = 0
    threads: int = 2
    series_kind: str = "tcn"


def set_seeds(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)
    return np.random.default_rng(seed)


def modality_dropout(
    present: np.ndarray, staleness: np.ndarray, p: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Drop each present modality with probability ``p``; a row keeps at least one of its own."""
    if p <= 0:
        return present, staleness
    drop = (rng.random(present.shape) < p) & present
    kept = present & ~drop
    empty = ~kept.any(axis=1) & present.any(axis=1)
    for i in np.flatnonzero(empty):
        kept[i, rng.choice(np.flatnonzero(present[i]))] = True
    return kept, np.where(kept, staleness, 0.0).astype(np.float32)


def focal_loss(
    logits: torch.Tensor, y: torch.Tensor, gamma: float, alpha: float, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): cross-entropy down-weighted on easy rows, ``alpha`` on positives;
    ``weights``: one more factor per row."""
    ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    p_true = torch.exp(-ce)
    weight = torch.where(y > 0.5, alpha, 1.0 - alpha)
    if weights is not None:
        weight = weights * weight
    return (weight * (1.0 - p_true) ** gamma * ce).mean()


@torch.no_grad()
def predict_logits(
    model: FusionModel,
    cohort: Cohort,
    idx: np.ndarray,
    batch_size: int = 2048,
    present: np.ndarray | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Logits of rows ``idx`` (``present`` overrides the cohort's flags: simulated missingness)."""
    from tqdm import tqdm

    model.eval()
    out = np.empty(len(idx), dtype=np.float32)
    for s in tqdm(
        range(0, len(idx), batch_size), disable=not progress, desc="predict", unit="batch", file=sys.stderr, leave=False
    ):
        rows = idx[s : s + batch_size]
        batch = gather(cohort, rows)
        if present is not None:
            batch["present"] = present[s : s + batch_size]
            batch["staleness_h"] = np.where(batch["present"], batch["staleness_h"], 0.0).astype(np.float32)
        out[s : s + len(rows)] = model(to_tensors(batch)).numpy()
    return out


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising the NLL of sigmoid(logit / T)."""
    from scipy.optimize import minimize_scalar

    yt = torch.as_tensor(y, dtype=torch.float64)
    zt = torch.as_tensor(logits, dtype=torch.float64)

    def nll(log_t: float) -> float:
        return float(F.binary_cross_entropy_with_logits(zt / np.exp(log_t), yt))

    res = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(res.x))


def per_group(values: np.ndarray, groups: np.ndarray) -> list[np.ndarray]:
    """Split row values into one array per group (rows of a group are contiguous, in time order)."""
    cuts = np.flatnonzero(np.diff(groups)) + 1
    return np.split(values, cuts)


def model_spec(strategy: str, cohort: Cohort, cfg: TrainConfig, spec_overrides: dict | None = None) -> InputSpec:
    """The ``InputSpec`` of ``strategy`` on the cohort: ``DEFAULTS``, then ``spec_overrides``."""
    defaults = {**DEFAULTS.get(strategy, {}), **(spec_overrides or {})}
    return InputSpec(
        cohort=cohort.name,
        modalities=cohort.modalities,
        dims=cohort.dims(),
        series_kind=cfg.series_kind,
        d_model=defaults.get("d_model", 32),
        options=defaults.get("options", {}),
    )


def validation_rows(
    cohort: Cohort, cfg: TrainConfig, rng: np.random.Generator, val_rows: np.ndarray | None = None
) -> np.ndarray:
    """The VAL rows models are selected and calibrated on (of ``val_rows``, default every VAL row): at
    most ``cfg.max_val_rows``, drawn as whole groups so per-stay utility stays meaningful."""
    val_rows = cohort.rows("val") if val_rows is None else val_rows
    if len(val_rows) > cfg.max_val_rows:
        groups = np.unique(cohort.group[val_rows])
        keep = rng.choice(groups, size=int(len(groups) * cfg.max_val_rows / len(val_rows)), replace=False)
        val_rows = val_rows[np.isin(cohort.group[val_rows], keep)]
    return val_rows


def utility_threshold(p: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """(alert threshold, normalized utility): the probability threshold maximising the PhysioNet 2019
    utility of rows ``p``/``y`` (grouped by stay) over 400 quantiles of ``p``; (0.5, nan) when the
    utility is undefined (no septic stay)."""
    from icuwatch.fusion.evaluation.metrics import best_threshold

    try:
        return best_threshold(
            per_group(p, groups), per_group(y, groups), np.unique(np.quantile(p, np.linspace(0.0, 0.999, 400)))
        )
    except ValueError:
        return 0.5, float("nan")


def data_card(cohort: Cohort, train_rows: np.ndarray, val_rows: np.ndarray, stage2_rows: np.ndarray) -> dict:
    """The card's ``data`` section: which cohort build, how many rows of each split were used."""
    return {
        "cohort": cohort.name,
        "meta": {
            k: v
            for k, v in cohort.meta.items()
            if k in ("source", "description", "real", "data_dir", "version", "norm")
        },
        "train_rows": int(len(train_rows)),
        "stage2_rows": int(len(stage2_rows)),
        "val_rows": int(len(val_rows)),
        "train_positive_rows": int(cohort.y[train_rows].sum()),
    }


def fit_epochs(
    model: FusionModel,
    cohort: Cohort,
    train_rows: np.ndarray,
    cfg: TrainConfig,
    loss_fn,
    after_epoch,
    desc: str,
    rng: np.random.Generator,
    progress: bool,
) -> tuple[list[dict], tuple, float]:
    """The training loop every strategy and the distillation share: AdamW with a one-cycle schedule
    over ``cfg.epochs`` epochs of ``cfg.rows_per_epoch`` TRAIN rows (drawn without replacement),
    modality dropout on every batch, gradient clipping; after each epoch ``after_epoch(model)``
    returns that epoch's VAL figures (``val_auroc`` first), and the best epoch's weights are kept.

    Returns (history, (best val AUROC, best state_dict, best epoch), seconds)."""
    from tqdm import tqdm

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    steps_per_epoch = max(1, min(cfg.rows_per_epoch, len(train_rows)) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    history, best = [], (-1.0, None, -1)
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        rows = rng.choice(train_rows, size=steps_per_epoch * cfg.batch_size, replace=False)
        losses = []
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not progress,
            file=sys.stderr,
        )
        for b in bar:
            idx = np.sort(rows[b * cfg.batch_size : (b + 1) * cfg.batch_size])
            batch = gather(cohort, idx)
            batch["present"], batch["staleness_h"] = modality_dropout(
                batch["present"], batch["staleness_h"], cfg.modality_dropout, rng
            )
            loss = loss_fn(model, to_tensors(batch), torch.as_tensor(cohort.y[idx], dtype=torch.float32))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if b % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        figures = after_epoch(model)
        val_auroc = figures["val_auroc"]
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": round(float(np.mean(losses)), 5),
                **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()},
            }
        )
        if best[1] is None or val_auroc > best[0]:
            best = (val_auroc, {k: v.detach().clone() for k, v in model.state_dict().items()}, epoch + 1)
    return history, best, time.perf_counter() - t0


def _step(model: FusionModel, batch: dict, y: torch.Tensor, cfg: TrainConfig, stage1_only: bool) -> torch.Tensor:
    logits = model(batch)
    aux = getattr(model, "aux_logits", None)
    if aux is None:
        return focal_loss(logits, y, cfg.focal_gamma, cfg.focal_alpha)
    present = batch["present"]
    aux_losses = [
        focal_loss(aux[present[:, j], j], y[present[:, j]], cfg.focal_gamma, cfg.focal_alpha)
        for j in range(aux.shape[1])
        if present[:, j].any()
    ]
    aux_loss = torch.stack(aux_losses).mean()
    if stage1_only:
        return aux_loss
    return focal_loss(logits, y, cfg.focal_gamma, cfg.focal_alpha) + cfg.aux_weight * aux_loss


def _auroc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def train(
    strategy: str,
    cohort: Cohort,
    cfg: TrainConfig | None = None,
    progress: bool = True,
    spec_overrides: dict | None = None,
) -> tuple[FusionModel, dict]:
    """Fit ``strategy`` on the cohort's TRAIN rows; returns the model (eval mode) and its card."""

    cfg = cfg or TrainConfig()
    torch.set_num_threads(cfg.threads)
    rng = set_seeds(cfg.seed)
    spec = model_spec(strategy, cohort, cfg, spec_overrides)
    model = build(strategy, spec)
    prepared = model.prepare(cohort, progress) if hasattr(model, "prepare") else None
    two_stage = getattr(model, "two_stage", False)

    train_rows = cohort.rows("train")
    stage2_rows = np.zeros(0, dtype=np.int64)
    if two_stage:
        groups = np.unique(cohort.group[train_rows])
        held = rng.choice(groups, size=max(1, int(cfg.stage2_fraction * len(groups))), replace=False)
        in_held = np.isin(cohort.group[train_rows], held)
        stage2_rows, train_rows = train_rows[in_held], train_rows[~in_held]
    val_rows = validation_rows(cohort, cfg, rng)
    y_val = cohort.y[val_rows].astype(np.float32)

    def loss_fn(m: FusionModel, tensors: dict, y: torch.Tensor) -> torch.Tensor:
        return _step(m, tensors, y, cfg, two_stage)

    def after_epoch(m: FusionModel) -> dict:
        if two_stage:
            _fit_stage2(m, cohort, stage2_rows, cfg)
        return {"val_auroc": _auroc(y_val, predict_logits(m, cohort, val_rows))}

    history, best, fit_s = fit_epochs(
        model, cohort, train_rows, cfg, loss_fn, after_epoch, f"{strategy}/{cohort.name}", rng, progress
    )
    model.load_state_dict(best[1])
    model.eval()
    stage2 = _fit_stage2(model, cohort, stage2_rows, cfg) if two_stage else None

    val_logits = predict_logits(model, cohort, val_rows)
    temperature = fit_temperature(val_logits, y_val)
    val_p = 1.0 / (1.0 + np.exp(-val_logits / temperature))
    threshold, val_utility = utility_threshold(val_p, y_val, cohort.group[val_rows])
    card = {
        "model": f"{strategy}-{cohort.name}",
        "strategy": strategy,
        "spec": spec.to_json(),
        "parameters": model.n_parameters(),
        "train_config": asdict(cfg),
        "data": data_card(cohort, train_rows, val_rows, stage2_rows),
        "history": history,
        "best_epoch": best[2],
        "stage2": stage2,
        "prepared": prepared,
        "temperature": temperature,
        "threshold": float(threshold),
        "threshold_selection": "maximum normalized utility (PhysioNet 2019 definition) on VAL rows",
        "val": {"auroc": round(best[0], 4), "utility": round(float(val_utility), 4)},
        "fit_s": round(fit_s, 1),
        "calibration": "temperature scaling on VAL logits (probability = sigmoid(logit / temperature))",
        "imbalance": f"focal loss (gamma {cfg.focal_gamma}, alpha {cfg.focal_alpha} on positives)",
        "modality_dropout": cfg.modality_dropout,
    }
    return model, card


def _fit_stage2(model: FusionModel, cohort: Cohort, rows: np.ndarray, cfg: TrainConfig) -> dict:
    model.eval()
    feats = []
    with torch.no_grad():
        for s in range(0, len(rows), 2048):
            batch = to_tensors(gather(cohort, rows[s : s + 2048]))
            feats.append(model.integrator_inputs(model.head_logits(batch), batch["present"]).numpy())
    return model.fit_integrator(np.concatenate(feats), cohort.y[rows], cfg.seed, cfg.modality_dropout)
