"""Stacked late fusion: per-modality risk models, then a logistic integrator over their risks.

The two-stage recipe: stage 1 trains each modality's head on every patient who has that modality
(rows where it is absent are left out of that head's loss); stage 2 fits a logistic regression
(scikit-learn) on the heads' logits of held-out rows where several modalities are present (as they
are and with modality dropout applied, so it learns what an absent modality means). The
integrator sees ``logit_m * present_m`` and ``present_m``, so an absent modality adds only its
learned "absent" offset. The fitted coefficients are copied into a ``nn.Linear`` so the whole
model stays one torch module.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from icuwatch.fusion.strategies.base import InputSpec
from icuwatch.fusion.strategies.late import PerModalityHeads


class StackedLateFusion(PerModalityHeads):
    strategy = "stacked"
    two_stage = True

    def __init__(self, spec: InputSpec) -> None:
        super().__init__(spec)
        m = len(spec.modalities)
        self.integrator = nn.Linear(2 * m, 1)
        with torch.no_grad():  # before stage 2: the heads' logits summed, divided by the number of modalities
            self.integrator.weight.zero_()
            self.integrator.bias.zero_()
            self.integrator.weight[0, :m] = 1.0 / m

    def integrator_inputs(self, logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        p = present.float()
        return torch.cat([logits * p, p], dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.head_logits(batch)
        self.aux_logits = logits
        return self.integrator(self.integrator_inputs(logits, batch["present"])).squeeze(-1)

    def fit_integrator(self, features: np.ndarray, y: np.ndarray, seed: int = 0, dropout: float = 0.4) -> dict:
        """Stage 2: logistic regression on integrator inputs of rows with >= 2 modalities present.

        Those rows are used twice: as they are, and with each present modality dropped with
        probability ``dropout`` (one always kept: the same modality dropout stage 1 trains with), so
        the integrator also learns what an absent modality's ``present = 0`` column means instead of
        extrapolating to it."""
        from sklearn.linear_model import LogisticRegression

        from icuwatch.fusion.training import modality_dropout

        m = len(self.spec.modalities)
        several = features[:, m:].sum(axis=1) >= 2
        x, t = features[several], y[several]
        if len(np.unique(t)) < 2:
            raise ValueError("stage 2 needs both classes among rows with several modalities")
        rng = np.random.default_rng(seed)
        kept, _ = modality_dropout(x[:, m:] > 0.5, np.zeros((len(x), m), dtype=np.float32), dropout, rng)
        dropped = np.concatenate([x[:, :m] * kept, kept.astype(x.dtype)], axis=1)
        x, t = np.concatenate([x, dropped]), np.concatenate([t, t])
        lr = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(x, t)
        with torch.no_grad():
            self.integrator.weight.copy_(torch.as_tensor(lr.coef_, dtype=torch.float32))
            self.integrator.bias.copy_(torch.as_tensor(lr.intercept_, dtype=torch.float32))
        return {
            "rows": int(several.sum()),
            "positives": int(y[several].sum()),
            "coefficients": dict(
                zip(
                    [f"logit_{n}" for n in self.spec.modalities] + [f"present_{n}" for n in self.spec.modalities],
                    np.round(lr.coef_[0], 4).tolist(),
                )
            ),
        }
