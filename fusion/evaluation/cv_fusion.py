"""``icuwatch evaluate cv --model early|late|stacked|attention``: the fusion strategies on the same folds.

Each fold trains the strategy as ``icuwatch train --cohort physionet`` does (``fusion.training``:
modality dropout, focal loss, best epoch and temperature on the validation rows), with the fold's
fit stays as TRAIN and its inner-validation stays as VAL of the PhysioNet fusion cohort
(``fusion.cohorts.physionet``); the held-out fold's rows are only predicted. Threshold, isotonic
calibration and metrics then follow ``fusion.evaluation.cv`` as for every model.

One thing is not refitted per fold: the cohort's z-score normalisation (means and standard
deviations of the inputs, no labels) was fitted once on the fixed split's TRAIN stays, which
include some held-out stays of every fold. It is a fixed rescaling of the inputs; no label reaches
a fold through it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from icuwatch.fusion.evaluation.cohort_rows import CohortRows, fold_cohort
from icuwatch.fusion.evaluation.cv import FUSION_STRATEGIES, _split

STRATEGIES = FUSION_STRATEGIES
"""The strategies that train on the PhysioNet cohort (``joint_embedding`` needs X-rays and reports)."""
MISSING_RATE = 0.3
"""The issue's robustness check: AUROC lost when 30 % of modalities are missing (nominal rate)."""


class FusionRows(CohortRows):
    """``cv``'s feature builder: a stay's rows in the PhysioNet fusion cohort of ``data_dir``."""

    def __init__(self, data_dir: Path | None = None, progress: bool = True) -> None:
        from icuwatch.fusion.cohorts import physionet

        other_data = data_dir is not None and Path(data_dir).resolve() != physionet.default_data_dir().resolve()
        # the cache holds the shared data's cohort: another folder's is built for this run only
        cohort = (
            physionet.build(data_dir, progress=progress) if other_data else physionet.load_or_build(progress=progress)
        )
        super().__init__(cohort)


def fit_fusion(
    strategy: str, rows: FusionRows, cohort, fit_stays: np.ndarray, val_stays: np.ndarray, seed: int, options: dict
):
    """``strategy`` trained on the fold (see the module doc); returns ``cv.Fitted`` whose scores are
    the temperature-scaled probabilities."""
    from icuwatch.fusion.evaluation.cv import Fitted
    from icuwatch.fusion.training import TrainConfig, predict_logits, train

    fusion_cohort = rows.cohort
    fold, _ = fold_cohort(
        fusion_cohort,
        cohort.x[cohort.rows(fit_stays), 0].astype(np.int64),
        cohort.x[cohort.rows(val_stays), 0].astype(np.int64),
    )
    cfg = TrainConfig(seed=seed, epochs=int(options.get("epochs", TrainConfig.epochs)))
    model, card = train(strategy, fold, cfg, progress=bool(options.get("progress", False)))
    temperature = float(card["temperature"])

    def predict(features: np.ndarray) -> np.ndarray:
        idx = features[:, 0].astype(np.int64)
        if len(idx) == 0:
            return np.zeros(0)
        z = predict_logits(model, fusion_cohort, idx)
        return 1.0 / (1.0 + np.exp(-z.astype(np.float64) / temperature))

    def held_out(features: np.ndarray, labels: list[np.ndarray], metrics: dict) -> dict:
        idx = features[:, 0].astype(np.int64)
        return missing_modalities_metrics(
            lambda present: predict_logits(model, fusion_cohort, idx, present=present) / temperature,
            fusion_cohort,
            idx,
            labels,
            metrics["auroc"],
            seed,
        )

    info = {
        "strategy": strategy,
        "parameters": card["parameters"],
        "epochs": cfg.epochs,
        "best_epoch": card["best_epoch"],
        "temperature": temperature,
        "inner_val_auroc": card["val"]["auroc"],
        "fit_s": card["fit_s"],
        "rows": {"train": int((fold.split == 0).sum()), "val": int((fold.split == 1).sum())},
    }
    return Fitted(predict, info, held_out)


def missing_modalities_metrics(
    logits_with, cohort, idx: np.ndarray, labels: list[np.ndarray], full_auroc: float, seed: int
) -> dict:
    """The held-out rows ``idx`` scored again with a nominal ``MISSING_RATE`` of the modalities dropped
    per stay (``fusion_compare.keep_mask``: a dropped modality is absent for the whole stay; a stay
    keeps one of its own, so the share actually dropped is lower; it is reported). ``logits_with``:
    the model's logits given the present flags; ``labels``: per stay, in ``idx`` order; the loss is
    against ``full_auroc``, the fold's AUROC with every modality."""
    from icuwatch.fusion.evaluation.fusion_compare import available_modalities, keep_mask
    from icuwatch.fusion.evaluation.metrics import auroc

    groups = cohort.group[idx]
    available = available_modalities(cohort)
    keep = keep_mask(len(cohort.group_ids), len(cohort.modalities), MISSING_RATE, seed, available)
    z = logits_with(cohort.present[idx] & keep[groups])
    missing = float(auroc(labels, _split(z, np.array([len(y) for y in labels]))))
    stays = np.unique(groups)
    dropped = 1.0 - (keep & available)[stays].sum() / max(int(available[stays].sum()), 1)
    return {
        "auroc_missing_30": missing,
        "auroc_loss_missing_30": full_auroc - missing,
        "auroc_loss_missing_30_relative": (full_auroc - missing) / full_auroc,
        "dropped_modality_share_30": float(dropped),
    }
