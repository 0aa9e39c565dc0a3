"""Gradient-boosted trees on causal hand-made features: the sepsis baseline of the 2019 challenge kind.

The challenge's winners were gradient-boosted tree ensembles on hand-made features (forward fills,
time since measurement, short trends). This baseline is scikit-learn's ``HistGradientBoostingClassifier``
(LightGBM's histogram algorithm, NaN handled natively), kept as the first baseline; the LightGBM
library on the 2019 leaders' feature families is ``lightgbm_model.py``, compared with this one by
``icuwatch evaluate cv`` (cross-validated utility 0.411 vs 0.329, README).

``train`` reads the real PhysioNet 2019 stays of the fixed hash split (``sources.physionet.split_of``):

* TRAIN: fit (fixed seed; every septic stay and by default a seeded 40 % of the non-septic ones,
  optionally a seeded subset of the stays first; positive rows up-weighted so both classes weigh
  the same in the loss);
* VAL: the alarm threshold that maximises the challenge's normalized utility;
* TEST: AUROC and AUPRC over all rows, normalized utility at that threshold.

It writes ``model.pkl`` (pickle, scikit-learn's documented way to persist an estimator; unpickling
runs code, so load only files you produced yourself) and ``model_card.json`` (data, split sizes,
seed, feature version, timings, threshold and the figures) to ``out_dir``. Weights come from this
command; they are never committed.
"""

from __future__ import annotations

import json
import pickle
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from icuwatch.fusion.baselines.features import FEATURE_NAMES, FEATURE_VERSION, N_FEATURES, stay_features
from icuwatch.sources.physionet import Stay, list_stays, read_psv, split_of

MODEL_FILE = "model.pkl"
CARD_FILE = "model_card.json"
MODEL_NAME = "gbt"

PARAMS = {
    "learning_rate": 0.05,
    "max_iter": 300,
    "max_leaf_nodes": 31,
    "min_samples_leaf": 200,
    "l2_regularization": 1.0,
    "max_bins": 255,
    "early_stopping": False,
}
"""``HistGradientBoostingClassifier`` settings (fixed: no tuning on the test split)."""

NEGATIVE_STAY_FRACTION = 0.4
"""Share of the train split's non-septic stays kept by default (all septic stays are kept), so the
default run stays within a few minutes on 2 shared cores. Measured on setB dev, seed 0: all 8,353
train stays fitted in 499 s (val utility 0.355, test 0.378); 40 % of the non-septic ones (3,639
stays) in 144 s (val 0.292, test 0.363). ``--negative-fraction 1`` when the CPU can be spared."""

N_THRESHOLDS = 400


def default_out_dir() -> Path:
    from icuwatch.core.settings import get_settings

    return get_settings().state_dir / "models" / MODEL_NAME


def is_trained(out_dir: Path | None = None) -> bool:
    """Whether ``train-baseline gbt`` has saved a model (in ``out_dir``, default ``var/models/gbt``)."""
    return ((out_dir or default_out_dir()) / CARD_FILE).exists()


@dataclass
class _Split:
    name: str
    available: int
    patient_ids: list[str] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return int(sum(len(y) for y in self.labels))

    def keep_negatives(self, fraction: float, rng: np.random.Generator) -> None:
        """Keep every septic stay and a seeded random ``fraction`` of the non-septic ones."""
        if fraction >= 1.0:
            return
        negatives = [i for i, y in enumerate(self.labels) if not y.any()]
        drop = set(
            rng.choice(negatives, size=len(negatives) - round(fraction * len(negatives)), replace=False).tolist()
        )
        for name in ("patient_ids", "features", "labels"):
            setattr(self, name, [v for i, v in enumerate(getattr(self, name)) if i not in drop])

    def summary(self) -> dict:
        return {
            "stays_in_split": self.available,
            "stays_used": len(self.patient_ids),
            "septic_stays": int(sum(bool(y.any()) for y in self.labels)),
            "rows": self.rows,
            "positive_rows": int(sum(int(y.sum()) for y in self.labels)),
        }


def _subset(paths: list[Path], limit: int | None, rng: np.random.Generator) -> list[Path]:
    if limit is None or limit >= len(paths):
        return paths
    keep = np.sort(rng.choice(len(paths), size=limit, replace=False))
    return [paths[i] for i in keep]


def _load_split(data_dir: Path, name: str, limit: int | None, rng: np.random.Generator, progress: bool) -> _Split:
    from tqdm import tqdm

    all_paths = list_stays(data_dir, name)
    split = _Split(name=name, available=len(all_paths))
    for path in tqdm(
        _subset(all_paths, limit, rng),
        desc=f"{name}: read + featurise",
        unit="stay",
        disable=not progress,
        file=sys.stderr,
    ):
        stay = read_psv(path)
        if stay.labels is None:
            raise ValueError(f"{path}: no SepsisLabel column")
        split.patient_ids.append(stay.patient_id)
        split.features.append(stay_features(stay))
        split.labels.append(stay.labels)
    return split


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _auc_metrics(probabilities: list[np.ndarray], labels: list[np.ndarray]) -> dict:
    """Row-level AUROC and AUPRC over all hours of all stays (None when undefined: one class only)."""
    from icuwatch.fusion.evaluation.metrics import auprc, auroc

    return {"auroc": _finite(auroc(labels, probabilities)), "auprc": _finite(auprc(labels, probabilities))}


def _utility_at(probabilities: list[np.ndarray], labels: list[np.ndarray], threshold: float) -> float:
    from icuwatch.fusion.evaluation.utility import normalized_utility

    return float(normalized_utility(labels, [(p >= threshold).astype(int) for p in probabilities]))


def _candidate_thresholds(probabilities: list[np.ndarray]) -> np.ndarray:
    """Quantiles of the validation probabilities: alarms on between 0.05 % and 70 % of the rows."""
    p = np.concatenate(probabilities)
    return np.unique(np.quantile(p, np.linspace(0.30, 0.9995, N_THRESHOLDS)))


@dataclass
class GbtModel:
    classifier: object
    threshold: float
    card: dict

    @classmethod
    def load(cls, path: str | Path | None = None) -> "GbtModel":
        """Load ``model.pkl`` + ``model_card.json`` from a directory (default ``var/models/gbt``).

        Unpickling runs code: only load models this project's ``train`` wrote."""
        path = Path(path) if path is not None else default_out_dir()
        card = json.loads((path / CARD_FILE).read_text())
        if card.get("feature_version") != FEATURE_VERSION:
            raise ValueError(
                f"{path}: model built on features {card.get('feature_version')!r}, "
                f"this code computes {FEATURE_VERSION!r}; retrain"
            )
        with open(path / MODEL_FILE, "rb") as f:
            classifier = pickle.load(f)
        if getattr(classifier, "n_features_in_", N_FEATURES) != N_FEATURES:
            raise ValueError(f"{path}: model expects {classifier.n_features_in_} features, not {N_FEATURES}")
        return cls(classifier=classifier, threshold=float(card["threshold"]), card=card)

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """Probability of a positive SepsisLabel per feature row."""
        if len(features) == 0:
            return np.zeros(0, dtype=float)
        return self.classifier.predict_proba(features)[:, 1]

    def predict_stay(self, stay: Stay) -> np.ndarray:
        """One probability per hour of the stay, each from that hour and the ones before it only."""
        return self.predict_features(stay_features(stay))

    def alarms(self, stay: Stay) -> np.ndarray:
        """0/1 per hour: probability at or above the utility-tuned threshold."""
        return (self.predict_stay(stay) >= self.threshold).astype(int)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with open(path / MODEL_FILE, "wb") as f:
            pickle.dump(self.classifier, f, protocol=pickle.HIGHEST_PROTOCOL)
        (path / CARD_FILE).write_text(json.dumps(self.card, indent=2) + "\n")


def train(
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    max_train_stays: int | None = None,
    seed: int = 0,
    progress: bool = True,
    max_eval_stays: int | None = None,
    params: dict | None = None,
    negative_stay_fraction: float = NEGATIVE_STAY_FRACTION,
) -> dict:
    """Fit on TRAIN, tune the threshold on VAL, measure on TEST, save; returns the model card.

    ``max_train_stays`` / ``max_eval_stays``: seeded random subsets of the train / val and test
    splits (quick runs); None uses every stay of the split. ``negative_stay_fraction``: share of the
    (used) non-septic train stays fitted on, all septic ones always are. ``params``: overrides of ``PARAMS``.
    """
    import sklearn
    from sklearn.ensemble import HistGradientBoostingClassifier

    from icuwatch.fusion.evaluation.metrics import best_threshold
    from icuwatch.sources.physionet import default_data_dir

    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir()
    if not list_stays(data_dir):
        raise FileNotFoundError(f"no p*.psv stays in {data_dir}")
    rng = np.random.default_rng(seed)

    t0 = time.perf_counter()
    splits = {
        "train": _load_split(data_dir, "train", max_train_stays, rng, progress),
        "val": _load_split(data_dir, "val", max_eval_stays, rng, progress),
        "test": _load_split(data_dir, "test", max_eval_stays, rng, progress),
    }
    featurise_s = time.perf_counter() - t0
    tr = splits["train"]
    read_train = len(tr.patient_ids)
    tr.keep_negatives(negative_stay_fraction, rng)
    assert all(split_of(pid) == "train" for pid in tr.patient_ids)
    x = np.concatenate(tr.features)
    y = np.concatenate(tr.labels)
    if y.min() == y.max():
        raise ValueError("training rows hold one class only; use more stays")
    # Balance the classes in the loss: every positive row weighs n_negative / n_positive.
    weights = np.where(y == 1, (y == 0).sum() / max(int(y.sum()), 1), 1.0)

    params = {**PARAMS, **(params or {})}
    classifier = HistGradientBoostingClassifier(**params, random_state=seed)
    t1 = time.perf_counter()
    classifier.fit(x, y, sample_weight=weights)
    fit_s = time.perf_counter() - t1
    del x, y, weights

    def probabilities(split: _Split) -> list[np.ndarray]:
        """One batch per split (per-call overhead dominates per-stay calls), cut back into stays."""
        p = classifier.predict_proba(np.concatenate(split.features))[:, 1]
        return np.split(p, np.cumsum([len(f) for f in split.features])[:-1])

    t2 = time.perf_counter()
    val_p = probabilities(splits["val"])
    threshold, val_utility = best_threshold(val_p, splits["val"].labels, _candidate_thresholds(val_p))
    threshold = float(threshold)
    test_p = probabilities(splits["test"])
    test = {
        **_auc_metrics(test_p, splits["test"].labels),
        "utility": _finite(_utility_at(test_p, splits["test"].labels, threshold)),
    }
    evaluate_s = time.perf_counter() - t2

    card = {
        "model": MODEL_NAME,
        "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
        "params": {**params, "random_state": seed, "sample_weight": "positive rows x n_negative/n_positive"},
        "data": {
            "path": str(data_dir.resolve()),
            "description": "real ICU stays: PhysioNet/CinC Challenge 2019 (sepsis), training set B, dev copy; "
            "hourly rows, SepsisLabel = 1 from 6 h before clinical onset",
            "real": True,
            "split": "fixed hash split icuwatch.sources.physionet.split_of: sha256(patient id) % 10, "
            "0-5 train, 6-7 val, 8-9 test",
            "splits": {name: s.summary() for name, s in splits.items()},
            "max_train_stays": max_train_stays,
            "max_eval_stays": max_eval_stays,
            "train_negative_stay_fraction": negative_stay_fraction,
            "train_stays_read": read_train,
        },
        "seed": seed,
        "feature_version": FEATURE_VERSION,
        "n_features": N_FEATURES,
        "feature_names": list(FEATURE_NAMES),
        "timing_s": {
            "read_and_featurise": round(featurise_s, 1),
            "fit": round(fit_s, 1),
            "evaluate": round(evaluate_s, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
        "threshold": threshold,
        "threshold_selection": "maximum normalized utility on the VAL split over quantiles of its probabilities",
        "val": {"utility": float(val_utility), **_auc_metrics(val_p, splits["val"].labels)},
        "test": test,
        "metric_notes": "AUROC/AUPRC over all hourly rows of the split; utility: the challenge's normalized "
        "utility (icuwatch.fusion.evaluation.utility) of 0/1 alarms at the threshold",
        "versions": {"sklearn": sklearn.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": {
            "dir": str(out_dir),
            "weights": MODEL_FILE,
            "format": "pickle (load only files you produced yourself)",
        },
    }
    GbtModel(classifier=classifier, threshold=threshold, card=card).save(out_dir)
    return card
