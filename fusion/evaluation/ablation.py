"""Which modalities earn their place: ``icuwatch evaluate ablation`` on a simulated cohort.

Modalities are added one at a time — vitals only, + waveforms, + labs, + X-ray, + report — and at
each step LightGBM learns the target (sepsis, and any deterioration) from the tree features of the
modalities used so far (:func:`modality_features`; the report's 256 buckets folded to 64 by max),
cross-validated by patient (folds stratified on whether the patient is positive for the target;
early stopping and the alert threshold chosen on an inner split of the training folds). Each step
reports AUROC, AUPRC and normalized utility (PhysioNet 2019 definition) per fold, their mean and a
95 % interval over the folds (t, with Nadeau and Bengio's correction for overlapping training
sets), and the change from the step before on the same folds (paired: same folds, same inner
splits); the threshold may be anything from "alarm on every row" to "never". ``VARIANTS`` add steps
such as the X-ray's pixels without the film's timing. Beside them, on the same folds: the rule
scores (NEWS2, qSOFA, the rule sepsis score, ``fusion.evaluation.sim_baselines``, which read the
newest hour only) at their clinical thresholds, and an always-alarm model.

Why LightGBM and not the fusion strategies: an ablation retrains at every step and fold (60 fits);
the trees take minutes on two cores, the neural strategies hours. What a modality adds to trees on
summary features is a floor on what it can add to a model that reads the raw signal.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np

from icuwatch.core import live_row
from icuwatch.fusion.cohorts.base import Cohort, gather

LADDER: tuple[tuple[str, ...], ...] = (
    ("vitals",),
    ("vitals", "waveforms"),
    ("vitals", "waveforms", "labs"),
    ("vitals", "waveforms", "labs", "cxr"),
    ("vitals", "waveforms", "labs", "cxr", "report"),
)
VARIANTS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("vitals", "waveforms", "labs", "cxr:image"): ("vitals", "waveforms", "labs"),
}
"""Extra steps, each against the step it extends: ``cxr:image`` is the X-ray's pixels without its
present flag and age. The simulator orders a film when a patient starts to deteriorate (``simulation.
cxr_schedule``), so that a film exists and how old it is say something before the image does; the
image-only step separates what the picture adds from what its timing gives away."""
PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 50,
    "feature_fraction": 0.7,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "num_threads": 2,
    "deterministic": True,
    "force_row_wise": True,
    "verbose": -1,
}
MAX_ROUNDS = 600
EARLY_STOPPING = 40
CHUNK = 2048


def _series(x: np.ndarray) -> np.ndarray:
    """[n, T, 2C] window (values, measured flags) -> newest, mean, min, max, change over 3 steps,
    steps measured; NaN where not measured."""
    c = x.shape[-1] // 2
    v = np.where(x[:, :, c:] > 0, x[:, :, :c], np.nan)
    with warnings.catch_warnings():  # an all-NaN window (nothing measured) is NaN, said once here
        warnings.simplefilter("ignore", RuntimeWarning)
        parts = [v[:, -1], np.nanmean(v, 1), np.nanmin(v, 1), np.nanmax(v, 1), v[:, -1] - v[:, -4]]
    return np.concatenate([*parts, (x[:, :, c:] > 0).sum(1)], axis=1)


def modality_features(cohort: Cohort, batch: dict[str, np.ndarray], modality: str, timing: bool = True) -> np.ndarray:
    """float32 [B, F] of one modality of a simulated cohort's batch (``gather``), with its present
    flag and staleness unless ``timing`` is False; NaN where absent (trees route it)."""
    j = cohort.modality_index(modality)
    present = batch["present"][:, j]
    if modality in ("vitals", "waveforms"):
        out = _series(batch[modality])
    elif modality == "labs":
        labs = batch["labs"].reshape(len(present), -1, 3)
        out = np.concatenate([np.where(labs[:, :, 1] > 0, labs[:, :, 0], np.nan), labs[:, :, 2]], axis=1)
    elif modality == "cxr":
        image = batch["cxr"].reshape(len(present), *batch["cxr"].shape[-2:])
        k = image.shape[-1] // 8
        out = image[:, : 8 * k, : 8 * k].reshape(len(present), 8, k, 8, k).mean(axis=(2, 4)).reshape(len(present), -1)
    elif modality == "report":
        out = live_row.report_bag(batch["report"]).reshape(len(present), -1, 64).max(axis=1)
    else:
        raise ValueError(f"no features for modality {modality!r}")
    out = np.asarray(out, np.float32)
    out[~present] = np.nan
    if not timing:
        return out
    return np.concatenate([out, present[:, None], batch["staleness_h"][:, j : j + 1]], axis=1).astype(np.float32)


def features(cohort: Cohort, modalities: tuple[str, ...]) -> np.ndarray:
    """[N, F]: static inputs, then each modality's features, over every row (in chunks). A name
    ``m:image`` takes the modality without its present flag and age."""
    parts = []
    for s in range(0, len(cohort), CHUNK):
        b = gather(cohort, np.arange(s, min(s + CHUNK, len(cohort))))
        columns = [b["static"]]
        for m in modalities:
            name, _, only = m.partition(":")
            columns.append(modality_features(cohort, b, name, timing=only != "image"))
        parts.append(np.concatenate(columns, axis=1))
    return np.concatenate(parts).astype(np.float32)


def targets(cohort: Cohort) -> dict[str, np.ndarray]:
    """Row labels per target: ``deterioration`` (the cohort's y: any condition, from 6 h before
    onset) and ``sepsis`` (the same rows of septic patients only: the challenge's question)."""
    condition = np.array([p["condition"] for p in cohort.meta["patients"]])[cohort.group]
    y = cohort.y.astype(np.int8)
    return {"deterioration": y, "sepsis": (y * (condition == "sepsis")).astype(np.int8)}


def _folds(cohort: Cohort, y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    patient_pos = np.zeros(int(cohort.group.max()) + 1)
    np.maximum.at(patient_pos, cohort.group, y)
    rows = np.arange(len(cohort))
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(rows, patient_pos[cohort.group], cohort.group))


def _utility(cohort: Cohort, y: np.ndarray, rows: np.ndarray, p: np.ndarray, threshold: float) -> float:
    from icuwatch.fusion.evaluation.metrics import utility_vs_threshold
    from icuwatch.fusion.training import per_group

    g = cohort.group[rows]
    return float(utility_vs_threshold(per_group(p, g), per_group(y[rows].astype(float), g), [threshold])[0])


def _best_threshold(cohort: Cohort, y: np.ndarray, rows: np.ndarray, p: np.ndarray) -> float:
    from icuwatch.fusion.evaluation.metrics import utility_vs_threshold
    from icuwatch.fusion.training import per_group

    g = cohort.group[rows]
    # every row alarming (0) to none (inf) are candidates: under this utility alarming on everyone can pay
    grid = np.unique(np.r_[0.0, np.quantile(p, np.linspace(0.0, 1.0, 101)), np.inf])
    u = np.asarray(utility_vs_threshold(per_group(p, g), per_group(y[rows].astype(float), g), list(grid)))
    if not np.isfinite(u).any():  # no positive patient in the inner split: never alarm
        return float("inf")
    return float(grid[int(np.nanargmax(u))])


def _scores(cohort: Cohort, y_all: np.ndarray, rows: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = y_all[rows]
    return {
        "auroc": float(roc_auc_score(y, p)) if 0 < y.mean() < 1 else float("nan"),
        "auprc": float(average_precision_score(y, p)) if y.any() else float("nan"),
        "utility": _utility(cohort, y_all, rows, p, threshold),
    }


def _fit_predict(x: np.ndarray, cohort: Cohort, y_all: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int):
    """(test probabilities, threshold chosen on the inner split) of one fold. The inner split (a
    fifth of the training folds' positive and negative patients) does both the early stopping and
    the threshold choice; the test fold does neither."""
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    positive = np.zeros(int(cohort.group.max()) + 1, bool)
    positive[cohort.group[train][y_all[train] > 0]] = True
    held = []
    for side in (True, False):  # a fifth of the positive and of the negative patients
        groups = np.unique(cohort.group[train][positive[cohort.group[train]] == side])
        if len(groups):
            held.append(rng.choice(groups, max(1, len(groups) // 5), replace=False))
    inner = np.isin(cohort.group[train], np.concatenate(held))
    fit, stop = train[~inner], train[inner]
    y = y_all.astype(float)
    booster = lgb.train(
        {**PARAMS, "seed": seed},
        lgb.Dataset(x[fit], label=y[fit]),
        num_boost_round=MAX_ROUNDS,
        valid_sets=[lgb.Dataset(x[stop], label=y[stop])],
        callbacks=[lgb.early_stopping(EARLY_STOPPING, verbose=False)],
    )
    threshold = _best_threshold(cohort, y_all, stop, booster.predict(x[stop]))
    return booster.predict(x[test]), threshold


def _interval(values: list[float]) -> dict:
    """Mean and 95 % interval over folds, with Nadeau and Bengio's (2003) corrected variance: the
    folds' training sets overlap, so the naive t-interval is too narrow; the variance is scaled by
    (1/k + n_test/n_train), n_test/n_train = 1/(k - 1) for k equal folds."""
    from scipy.stats import t

    a = np.asarray(values, float)
    a = a[np.isfinite(a)]
    if len(a) < 2:
        return {"mean": round(float(a.mean()), 4) if len(a) else None, "ci95": None}
    k = len(a)
    half = float(t.ppf(0.975, k - 1) * np.sqrt(a.var(ddof=1) * (1.0 / k + 1.0 / (k - 1))))
    return {
        "mean": round(float(a.mean()), 4),
        "ci95": [round(float(a.mean()) - half, 4), round(float(a.mean()) + half, 4)],
    }


def ablate(cohort: Cohort, folds: int = 5, seed: int = 0, progress: bool = True) -> dict:
    """The ablation ladder and the references on ``folds`` patient folds of ``cohort``, per target."""
    started = time.perf_counter()
    matrices = {}
    for modalities in (*LADDER, *VARIANTS):
        _say(progress, f"ablation: features of {' + '.join(modalities)}")
        matrices[modalities] = features(cohort, modalities)
    by_target = {
        name: _ablate_target(cohort, y, matrices, folds, seed, progress) for name, y in targets(cohort).items()
    }
    meta = cohort.meta
    return {
        "evaluation": "icuwatch evaluate ablation",
        "data": {
            "cohort": cohort.name,
            "source": meta.get("source"),
            "population": meta.get("population", "stylised"),
            "patients": int(len(np.unique(cohort.group))),
            "rows": int(len(cohort)),
            "deteriorating_patients": int(sum(p["condition"] != "stable" for p in meta.get("patients", []))),
            "septic_patients": int(sum(p["condition"] == "sepsis" for p in meta.get("patients", []))),
        },
        "folds": folds,
        "targets": {
            "deterioration": "y = 1 from 6 h before onset, any condition (sepsis, respiratory failure, haemorrhage)",
            "sepsis": "the same rule, septic patients only (the PhysioNet 2019 question)",
        },
        "model": "LightGBM on per-modality summary features, early stopping and threshold on an inner split",
        **by_target,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _ablate_target(cohort: Cohort, y: np.ndarray, matrices: dict, folds: int, seed: int, progress: bool) -> dict:
    from icuwatch.fusion.evaluation.sim_baselines import RULE_THRESHOLDS, rule_probabilities

    split = _folds(cohort, y, folds, seed)
    runs, per_fold = {}, {}
    for modalities, x in matrices.items():
        _say(progress, f"ablation: {' + '.join(modalities)}")
        results, thresholds = [], []
        for f, (train, test) in enumerate(split):
            p, threshold = _fit_predict(x, cohort, y, train, test, seed + f)
            results.append(_scores(cohort, y, test, p, threshold))
            thresholds.append(threshold)
        per_fold[modalities] = results
        runs[modalities] = {
            "modalities": list(modalities),
            "features": int(x.shape[1]),
            **_summary(results),
            "thresholds_per_fold": [None if not np.isfinite(t) else round(float(t), 5) for t in thresholds],
        }

    def change(before: tuple[str, ...], after: tuple[str, ...]) -> dict:
        a, b = per_fold[before], per_fold[after]
        return {m: _interval([q[m] - r[m] for r, q in zip(a, b)]) for m in ("auroc", "auprc", "utility")}

    steps = [runs[m] for m in LADDER]
    for before, after in zip(LADDER, LADDER[1:]):
        runs[after] |= {"added": after[-1], "change": change(before, after)}
    variants = [{**runs[m], "compared_with": list(base), "change": change(base, m)} for m, base in VARIANTS.items()]
    references = {}
    rules = rule_probabilities(cohort, np.arange(len(cohort)), cohort.present)
    for name, (_, threshold) in RULE_THRESHOLDS.items():
        references[name] = _summary([_scores(cohort, y, test, rules[name][test], threshold) for _, test in split])
    references["always-alarm"] = _summary([_scores(cohort, y, test, np.ones(len(test)), 0.5) for _, test in split])
    return {"positive_rows": int(y.sum()), "ladder": steps, "variants": variants, "references": references}


def _summary(results: list[dict]) -> dict:
    return {
        m: {**_interval([r[m] for r in results]), "per_fold": [round(r[m], 4) for r in results]}
        for m in ("auroc", "auprc", "utility")
    }


def markdown(summary: dict) -> str:
    d = summary["data"]
    lines = [
        f"Modality ablation on `{d['cohort']}` ({d['source']}; {d['patients']} patients, "
        f"{d['deteriorating_patients']} deteriorating, {d['septic_patients']} septic; {summary['folds']}-fold CV "
        "by patient; mean [95 % CI] over folds)",
    ]

    def fmt(m: dict) -> str:
        if m.get("mean") is None:
            return "–"
        return f"{m['mean']:.3f}" + (f" [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]" if m.get("ci95") else "")

    for target in summary["targets"]:
        lines += [
            "",
            f"**{target}**",
            "",
            "| model | AUROC | AUPRC | utility | AUROC change from the step before |",
            "| --- | --- | --- | --- | --- |",
        ]
        for s in summary[target]["ladder"]:
            change = fmt(s["change"]["auroc"]) if "change" in s else ""
            name = " + ".join(s["modalities"])
            lines.append(f"| {name} | {fmt(s['auroc'])} | {fmt(s['auprc'])} | {fmt(s['utility'])} | {change} |")
        for v in summary[target].get("variants", []):
            name = " + ".join(v["modalities"]).replace("cxr:image", "X-ray image only (no film presence or age)")
            lines.append(
                f"| {name} | {fmt(v['auroc'])} | {fmt(v['auprc'])} | {fmt(v['utility'])} | "
                f"{fmt(v['change']['auroc'])} (from {' + '.join(v['compared_with'])}) |"
            )
        for name, r in summary[target]["references"].items():
            lines.append(f"| {name} | {fmt(r['auroc'])} | {fmt(r['auprc'])} | {fmt(r['utility'])} | |")
    return "\n".join(lines)


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)
