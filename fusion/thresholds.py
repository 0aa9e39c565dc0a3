"""Alert thresholds tuned for the challenge's utility on the validation split, stored per model.

``icuwatch tune-thresholds`` scores the validation stays with each rule model, picks the threshold
that maximizes the normalized utility, and writes ``var/models/<model>/model_card.json``;
``psv_predict`` reads it back (the learned models keep their own card from training).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from icuwatch.sources.physionet import list_stays, read_psv

CARD = "model_card.json"


def card_path(models_dir: Path, model: str) -> Path:
    return models_dir / model / CARD


def stored_threshold(models_dir: Path, model: str) -> float | None:
    try:
        return float(json.loads(card_path(models_dir, model).read_text())["threshold"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def tune(model: str, data_dir: Path, models_dir: Path, max_stays: int | None = None, progress: bool = True) -> dict:
    from tqdm import tqdm

    from icuwatch.fusion.evaluation.metrics import auroc, best_threshold
    from icuwatch.fusion.psv_predict import RULE_MODELS, predictor

    if model not in RULE_MODELS:
        raise ValueError(
            f"tune-thresholds handles the rule models {list(RULE_MODELS)}; "
            "learned models tune their threshold when trained"
        )
    predict, default = predictor(model, use_stored_threshold=False)
    paths = list_stays(data_dir, split="val", limit=max_stays)
    probs, labels = [], []
    for path in tqdm(paths, desc=f"tune {model}", unit="stay", disable=not progress):
        stay = read_psv(path)
        probs.append(predict(stay))
        labels.append(stay.labels)
    threshold, utility = best_threshold(probs, labels)
    card = {
        "model": model,
        "kind": "rule score (NEWS2 / qSOFA), no learned weights",
        "threshold": threshold,
        "default_threshold": default,
        "tuned_for": "PhysioNet 2019 normalized utility",
        "data": {
            "source": str(data_dir),
            "real_data": "physionet2019" in str(data_dir),
            "split": "val (fixed hash split)",
            "stays": len(paths),
            "septic_stays": int(sum(1 for y in labels if y.any())),
        },
        "val": {"utility": utility, "auroc": auroc(labels, probs)},
        "tuned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = card_path(models_dir, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=2))
    return card
