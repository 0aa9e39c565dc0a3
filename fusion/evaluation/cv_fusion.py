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

STRATEGIES = ("early", "late", "stacked", "attention")
"""The strategies that train on the PhysioNet cohort (``joint_embedding`` needs X-rays and reports)."""
MISSING_RATE = 0.3
"""The issue's robustness check: AUROC lost when 30 % of modalities are missing."""


class FusionRows(CohortRows):
    """``cv``'s feature builder: a stay's rows in the PhysioNet fusion cohort of ``data_dir``."""

    def __init__(self, data_dir: Path | None = None, progress: bool = True) -> None:
        from icuwatch.fusion.cohorts import physionet

        super().__init__(physionet.load_or_build(data_dir=data_dir, progress=progress))


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

    def held_out(features: np.ndarray, labels: list[np.ndarray]) -> dict:
        return missing_modalities_auroc(model, fusion_cohort, features[:, 0].astype(np.int64), seed)

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


def missing_modalities_auroc(model, cohort, idx: np.ndarray, seed: int, rate: float = MISSING_RATE) -> dict:
    """AUROC of rows ``idx`` with every modality present and with ``rate`` of them dropped per stay
    (``fusion_compare.keep_mask``: a dropped modality is absent for the whole stay; a stay keeps one)."""
    from icuwatch.fusion.evaluation.fusion_compare import available_modalities, keep_mask
    from icuwatch.fusion.evaluation.metrics import auroc
    from icuwatch.fusion.training import per_group, predict_logits

    groups = cohort.group[idx]
    keep = keep_mask(len(cohort.group_ids), len(cohort.modalities), rate, seed, available_modalities(cohort))
    y = per_group(cohort.y[idx], groups)
    full = auroc(y, per_group(predict_logits(model, cohort, idx), groups))
    missing = auroc(
        y, per_group(predict_logits(model, cohort, idx, present=cohort.present[idx] & keep[groups]), groups)
    )
    return {"auroc_missing_30": float(missing), "auroc_loss_missing_30": float(full - missing)}
