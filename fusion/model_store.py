"""Saving and loading trained fusion models: ``var/models/<strategy>-<cohort>/``.

``model.pt`` holds the torch ``state_dict`` only (weights, no pickled code: ``torch.load`` with
``weights_only=True``), ``model_card.json`` what the model is for and how it was made (data, split,
config, metrics, temperature, threshold) and the ``InputSpec`` to rebuild it. Weights come from
``icuwatch train``; they are never committed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from icuwatch.fusion.strategies import build
from icuwatch.fusion.strategies.base import FusionModel, InputSpec

WEIGHTS = "model.pt"
CARD = "model_card.json"


def models_dir() -> Path:
    from icuwatch.core.settings import get_settings

    return get_settings().state_dir / "models"


def model_dir(name: str) -> Path:
    return models_dir() / name


@dataclass
class TrainedModel:
    model: FusionModel
    card: dict

    @property
    def temperature(self) -> float:
        return float(self.card.get("temperature", 1.0))

    @property
    def threshold(self) -> float:
        return float(self.card["threshold"])

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64) / self.temperature))


def save(model: FusionModel, card: dict, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / WEIGHTS)
    (directory / CARD).write_text(json.dumps(card, indent=2, default=float) + "\n")
    return directory


def load(directory: str | Path) -> TrainedModel:
    directory = Path(directory)
    if not (directory / CARD).exists():
        raise FileNotFoundError(f"no trained model in {directory}; run `icuwatch train` first")
    card = json.loads((directory / CARD).read_text())
    model = build(card["strategy"], InputSpec.from_json(card["spec"]))
    model.load_state_dict(torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True))
    model.eval()
    return TrainedModel(model=model, card=card)


def trained_names() -> list[str]:
    root = models_dir()
    return sorted(p.parent.name for p in root.glob(f"*/{WEIGHTS}")) if root.exists() else []
