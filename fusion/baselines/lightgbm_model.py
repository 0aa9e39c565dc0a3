"""LightGBM (the library) on the 2019 leaders' feature families (:mod:`.leader_features`).

``fit`` trains a binary ``lightgbm.Booster`` on hourly rows with early stopping on a validation
set the caller holds out of its training data (``evaluate cv``: an inner split of the training
folds, never the held-out fold). Settings are fixed here, not tuned on any held-out data.

Row weights (``weights``):

* ``none``: every row weighs 1, the target is ``SepsisLabel``;
* ``utility``: utility-aware training: the target is whether predicting 1 at that hour earns more
  of the challenge's utility than predicting 0 (``u_pos > u_neg``, :func:`utility.row_utilities`),
  the weight how much is at stake there (``|u_pos - u_neg|``): non-septic hours weigh 0.05
  (a false alarm's cost), hours in the reward window up to 1, missed late hours up to 3, hours
  after the utility's window 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icuwatch.fusion.baselines.leader_features import FEATURE_VERSION, N_FEATURES, stay_features

MODEL_NAME = "lightgbm"
WEIGHTS = ("none", "utility")
PARAMS: dict = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 200,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 255,
    "metric": "auc",
    "num_threads": 2,
    "deterministic": True,
    "force_row_wise": True,
    "verbose": -1,
}
"""Fixed settings (no tuning on held-out data); ``seed`` is set per fit."""
TUNING_GRID: tuple[dict, ...] = (
    {},
    {"num_leaves": 15},
    {"num_leaves": 63, "min_child_samples": 100},
    {"learning_rate": 0.02},
)
"""Overrides of ``PARAMS`` tried by ``evaluate cv --tune``: the one with the best utility on the
inner validation split of the training folds is kept (chosen per outer fold, never on it)."""
MAX_ROUNDS = 1500
EARLY_STOPPING_ROUNDS = 50

__all__ = ["FEATURE_VERSION", "N_FEATURES", "stay_features", "LightGbmModel", "fit", "utility_targets"]


def utility_targets(labels_per_stay: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(0/1 target, weight) per row: ``u_pos > u_neg`` and ``|u_pos - u_neg|`` (see module doc)."""
    from icuwatch.fusion.evaluation.utility import row_utilities

    targets, weights = [], []
    for lab in labels_per_stay:
        pos, neg = row_utilities(np.asarray(lab, dtype=int))
        gain = pos - neg
        targets.append((gain > 0).astype(np.int8))
        weights.append(np.abs(gain))
    return np.concatenate(targets), np.concatenate(weights)


@dataclass
class LightGbmModel:
    booster: object
    best_iteration: int

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.zeros(0, dtype=float)
        return np.asarray(self.booster.predict(features, num_iteration=self.best_iteration), dtype=float)  # type: ignore[attr-defined]


def fit(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    seed: int = 0,
    weights: str = "none",
    labels_per_stay: list[np.ndarray] | None = None,
    val_labels_per_stay: list[np.ndarray] | None = None,
    params: dict | None = None,
) -> tuple[LightGbmModel, dict]:
    """Train with early stopping on (``x_val``, ``y_val``); returns the model and what it did.

    ``weights="utility"`` needs the per-stay labels of both sets (the utility depends on the onset).
    """
    import lightgbm as lgb

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}")
    w = w_val = None
    if weights == "utility":
        if labels_per_stay is None or val_labels_per_stay is None:
            raise ValueError("utility weights need the labels per stay")
        y, w = utility_targets(labels_per_stay)
        y_val, w_val = utility_targets(val_labels_per_stay)
    p = {**PARAMS, **(params or {}), "seed": seed}
    train_set = lgb.Dataset(x, label=y, weight=w, free_raw_data=True)
    val_set = lgb.Dataset(x_val, label=y_val, weight=w_val, reference=train_set)
    booster = lgb.train(
        p,
        train_set,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[val_set],
        valid_names=["inner_val"],
        callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, first_metric_only=True, verbose=False)],
    )
    best = int(booster.best_iteration or booster.current_iteration())
    info = {
        "best_iteration": best,
        "early_stopping": f"{p['metric']} on the inner validation split, patience {EARLY_STOPPING_ROUNDS}",
        "weights": weights,
        "inner_val_metric": float(booster.best_score["inner_val"][p["metric"]]),
    }
    return LightGbmModel(booster=booster, best_iteration=best), info
