"""Baselines on the simulated multimodal cohort, scored from the cohort's own rows.

* ``news2``, ``qsofa``, ``rules``: the rule scores of ``core.rules`` on the newest hour's vital
  signs and the last lab values, de-normalised from the cohort (the simulator has no ACVPU or
  oxygen flag in the cohort, so those NEWS2 items score 0). Clinical default thresholds.
* ``gbt``: scikit-learn's histogram gradient-boosted trees on the flattened non-image inputs plus
  one hand-made X-ray feature (mean lung-field intensity) and the presence/staleness columns; an
  absent modality is NaN, which the trees route natively. Trained on TRAIN rows plus a copy with the
  same modality dropout the neural models train with, threshold tuned for utility on VAL.
"""

from __future__ import annotations

import numpy as np

from icuwatch.core import features, rules
from icuwatch.fusion.cohorts.base import Cohort
from icuwatch.fusion.training import modality_dropout, per_group

RULE_THRESHOLDS = {"news2": ("deterioration_risk", 0.5), "qsofa": ("qsofa", 2.0 / 3.0), "rules": ("sepsis_risk", 0.5)}


def _denorm(z: np.ndarray, norm: dict) -> np.ndarray:
    return z * np.asarray(norm["std"]) + np.asarray(norm["mean"])


def rule_features(cohort: Cohort, rows: np.ndarray, present: np.ndarray) -> np.ndarray:
    """[rows, features.N_FEATURES] from the newest vitals step and last labs (NaN where absent)."""
    norm = cohort.meta["norm"]
    x = features.empty(len(rows))
    v_names = cohort.meta["vital_channels"]
    vit = cohort.inputs["vitals"][rows, -1]
    c = len(v_names)
    v_ok = present[:, cohort.modality_index("vitals")]
    values = _denorm(vit[:, :c], norm["vitals"])
    for j, name in enumerate(v_names):
        if name in features.INDEX:
            x[:, features.INDEX[name]] = np.where(v_ok & (vit[:, c + j] > 0), values[:, j], np.nan)
    l_names = cohort.meta["lab_channels"]
    labs = cohort.inputs["labs"][rows]
    l_ok = present[:, cohort.modality_index("labs")]
    lab_values = _denorm(labs[:, 0::3], norm["labs"])
    for j, name in enumerate(l_names):
        if name in features.INDEX:
            x[:, features.INDEX[name]] = np.where(l_ok & (labs[:, 3 * j + 1] > 0), lab_values[:, j], np.nan)
    return x


def rule_probabilities(cohort: Cohort, rows: np.ndarray, present: np.ndarray) -> dict[str, np.ndarray]:
    out = rules.score(rule_features(cohort, rows, present))
    out["qsofa"] = out["qsofa"] / 3.0
    return {name: out[key].astype(float) for name, (key, _) in RULE_THRESHOLDS.items()}


def _lung_means(cohort: Cohort) -> np.ndarray:
    from icuwatch.sources.simulator.cxr import lung_mask

    mask = lung_mask() > 0.9
    return cohort.lookups["cxr"][:, mask].mean(axis=1) / 255.0


def flat_features(cohort: Cohort, rows: np.ndarray, present: np.ndarray, lung: np.ndarray) -> np.ndarray:
    parts = []
    for j, name in enumerate(cohort.modalities):
        ok = present[:, j]
        if name == "cxr":
            idx = cohort.inputs["cxr"][rows]
            parts.append(np.where(ok & (idx >= 0), lung[np.maximum(idx, 0)], np.nan)[:, None])
        elif name == "report":
            continue  # text has no hand-made feature here; its presence and staleness still go in
        else:
            x = cohort.inputs[name][rows].reshape(len(rows), -1).astype(np.float32)
            parts.append(np.where(ok[:, None], x, np.nan))
    stale = np.where(present, cohort.staleness_h[rows], np.nan)
    parts += [cohort.inputs["static"][rows], present.astype(np.float32), stale]
    return np.concatenate(parts, axis=1)


def train_gbt(cohort: Cohort, seed: int = 0, dropout: float = 0.4):
    from sklearn.ensemble import HistGradientBoostingClassifier

    from icuwatch.fusion.evaluation.metrics import best_threshold

    rng = np.random.default_rng(seed)
    lung = _lung_means(cohort)
    tr = cohort.rows("train")
    dropped, _ = modality_dropout(cohort.present[tr], cohort.staleness_h[tr], dropout, rng)
    x = np.concatenate([flat_features(cohort, tr, cohort.present[tr], lung), flat_features(cohort, tr, dropped, lung)])
    y = np.concatenate([cohort.y[tr], cohort.y[tr]])
    clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=seed).fit(x, y)
    va = cohort.rows("val")
    p = clf.predict_proba(flat_features(cohort, va, cohort.present[va], lung))[:, 1]
    g = cohort.group[va]
    threshold, _ = best_threshold(
        per_group(p, g), per_group(cohort.y[va], g), np.unique(np.quantile(p, np.linspace(0.05, 0.999, 300)))
    )
    return clf, threshold, lung


def sim_baseline_rows(
    cohort: Cohort, test: np.ndarray, keeps: dict[float, np.ndarray], curves: dict | None = None
) -> list[dict]:
    import time

    from icuwatch.fusion.evaluation.fusion_compare import row_metrics

    groups = cohort.group[test]
    y = per_group(cohort.y[test], groups)
    clf, gbt_threshold, lung = train_gbt(cohort)
    rows = []
    for rate, keep in keeps.items():
        present = cohort.present[test] & keep[groups]
        for name, p in rule_probabilities(cohort, test, present).items():
            if rate == 0.0 and curves is not None:
                curves[name] = per_group(p, groups)
            rows.append(
                {
                    "model": name,
                    "kind": "rule",
                    "missing": rate,
                    **row_metrics(y, per_group(p, groups), RULE_THRESHOLDS[name][1]),
                    "parameters": None,
                }
            )
        t = time.perf_counter()
        p = clf.predict_proba(flat_features(cohort, test, present, lung))[:, 1]
        per_row_ms = (time.perf_counter() - t) / len(test) * 1e3
        if rate == 0.0 and curves is not None:
            curves["gbt"] = per_group(p, groups)
        rows.append(
            {
                "model": "gbt",
                "kind": "gbt",
                "missing": rate,
                **row_metrics(y, per_group(p, groups), gbt_threshold),
                "parameters": None,
                "latency_ms_per_patient_batch256": round(per_row_ms, 4),
                "latency_note": "per row in one batch of the whole test split, features included",
            }
        )
    return rows
