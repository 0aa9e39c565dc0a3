"""Patient-level, sepsis-stratified K-fold cross-validation of a sepsis model (``icuwatch evaluate cv``).

Protocol (every choice inside the training folds):

1. Stays are read once and featurised with the model's causal feature builder (features are a
   fixed function of a stay's own rows <= t: nothing is fitted across stays).
2. :func:`assign_folds`: each stay goes to one of K folds, stratified on whether the stay ever has
   ``SepsisLabel = 1`` (a seeded permutation per class, dealt round-robin): folds are disjoint
   sets of patients, deterministic for a seed.
3. Per fold: the other K-1 folds are split again (:func:`inner_split`, stratified, 20 % of their
   stays) into *fit* and *inner validation* stays. The model is fitted on the fit stays (LightGBM:
   early stopping on the inner validation stays; with ``tune``, each setting of
   ``lightgbm_model.TUNING_GRID`` is fitted and the one with the best inner-validation utility kept);
   isotonic calibration is fitted on the inner validation predictions; the alert threshold is the
   one that maximises the challenge's normalized utility on the inner validation stays. The
   held-out fold is only predicted.
4. On the held-out fold: normalized utility at that threshold, AUROC and AUPRC (all rows, raw
   scores), ECE of the calibrated probabilities, alert episodes per patient-day, share of septic
   patients alerted before onset, median lead time (``metrics.patient_alert_stats``).

Mean over folds with a 95 % t-interval over the K fold values (``mean ± t_{0.975, K-1} · sd / √K``).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from icuwatch.sources.physionet import Stay, list_stays, read_psv

FUSION_STRATEGIES = ("early", "late", "stacked", "attention")
"""The strategies ``fusion.evaluation.cv_fusion`` cross-validates (named here so listing the models loads no torch)."""
MODELS = ("lightgbm", "gbt", "student_live", "teacher_live", "ensemble") + FUSION_STRATEGIES
INNER_VAL_FRACTION = 0.2
N_THRESHOLDS = 400
METRICS = (
    "utility",
    "auroc",
    "auprc",
    "ece",
    "alerts_per_patient_day",
    "alerted_before_onset",
    "median_lead_time_h",
    "sensitivity",
    "threshold",
)
OPTIONAL_METRICS = (
    "auroc_missing_30",
    "auroc_loss_missing_30",
    "auroc_loss_missing_30_relative",
    "dropped_modality_share_30",
)
"""Reported for the models whose ``Fitted.held_out`` gives them."""


# ------------------------------------------------------------------------------------------ data


@dataclass
class Cohort:
    """Every stay's feature rows stacked: stay ``i`` is rows ``starts[i] : starts[i] + lengths[i]``."""

    patient_ids: list[str]
    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray
    starts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.lengths = np.asarray(self.lengths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    @property
    def septic(self) -> np.ndarray:
        """Per stay: whether it ever has SepsisLabel = 1."""
        return np.maximum.reduceat(self.y, self.starts) > 0 if len(self.y) else np.zeros(0, bool)

    def rows(self, stays: np.ndarray) -> np.ndarray:
        """Row indices of ``stays`` (in the given order)."""
        stays = np.asarray(stays, dtype=np.int64)
        if stays.size == 0:
            return np.zeros(0, dtype=np.int64)
        lengths = self.lengths[stays]
        offsets = np.repeat(self.starts[stays] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        return np.arange(lengths.sum()) + offsets

    def labels_per_stay(self, stays: np.ndarray) -> list[np.ndarray]:
        return [self.y[s : s + n] for s, n in zip(self.starts[stays], self.lengths[stays])]


def load_cohort(
    data_dir: Path,
    featurise: Callable[[Stay], np.ndarray],
    patients: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Cohort:
    """Read and featurise every stay of ``data_dir`` (or a seeded random ``patients`` of them)."""
    from tqdm import tqdm

    paths = list_stays(data_dir)
    if not paths:
        raise FileNotFoundError(f"no p*.psv stays in {data_dir}")
    if patients is not None and patients < len(paths):
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), size=patients, replace=False))
        paths = [paths[i] for i in keep]
    ids, xs, ys = [], [], []
    for path in tqdm(paths, desc="read + featurise", unit="stay", disable=not progress, file=sys.stderr):
        stay = read_psv(path)
        if stay.labels is None:
            raise ValueError(f"{path.name}: no SepsisLabel column")
        ids.append(stay.patient_id)
        xs.append(featurise(stay))
        ys.append(stay.labels.astype(np.int8))
    return Cohort(ids, np.concatenate(xs), np.concatenate(ys), np.array([len(y) for y in ys]))


# ----------------------------------------------------------------------------------------- folds


def assign_folds(septic: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold (0..k-1) of each stay: stratified on ``septic``, deterministic for ``seed``."""
    septic = np.asarray(septic, dtype=bool)
    if k < 2:
        raise ValueError("at least 2 folds")
    if septic.sum() < k:
        raise ValueError(f"{int(septic.sum())} septic stays cannot stratify {k} folds")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(septic), dtype=np.int64)
    offset = 0
    for cls in (True, False):
        idx = rng.permutation(np.flatnonzero(septic == cls))
        folds[idx] = (offset + np.arange(len(idx))) % k
        offset += len(idx)
    return folds


def inner_split(
    stays: np.ndarray, septic: np.ndarray, seed: int, fraction: float = INNER_VAL_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """(fit stays, inner validation stays) of ``stays``, stratified on ``septic`` (per-stay, all stays)."""
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for cls in (True, False):
        idx = rng.permutation(stays[septic[stays] == cls])
        n_val = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


# ---------------------------------------------------------------------------------------- models


@dataclass
class Fitted:
    predict: Callable[[np.ndarray], np.ndarray]
    info: dict
    held_out: Callable[[np.ndarray, list[np.ndarray], dict], dict] | None = None
    """Metrics only this model can compute, from the held-out fold's features, per-stay labels and
    the fold's metrics so far (the fusion strategies: AUROC with modalities missing, ``OPTIONAL_METRICS``)."""


def _fit_lightgbm(cohort: Cohort, fit_stays: np.ndarray, val_stays: np.ndarray, seed: int, options: dict) -> Fitted:
    from icuwatch.fusion.baselines import lightgbm_model
    from icuwatch.fusion.evaluation.metrics import best_threshold

    fr, vr = cohort.rows(fit_stays), cohort.rows(val_stays)
    val_labels = cohort.labels_per_stay(val_stays)
    grid = lightgbm_model.TUNING_GRID if options.get("tune") else ({},)
    best: tuple[float, object, dict] | None = None
    for overrides in grid:
        model, info = lightgbm_model.fit(
            cohort.x[fr],
            cohort.y[fr],
            cohort.x[vr],
            cohort.y[vr],
            seed=seed,
            weights=options.get("weights", "none"),
            labels_per_stay=cohort.labels_per_stay(fit_stays),
            val_labels_per_stay=val_labels,
            params=overrides,
        )
        if len(grid) > 1:
            p = model.predict_features(cohort.x[vr])
            _, utility = best_threshold(_split(p, cohort.lengths[val_stays]), val_labels, candidate_thresholds(p))
            info = {**info, "params": overrides, "inner_val_utility_at_selection": utility}
            if best is None or utility > best[0]:
                best = (utility, model, info)
        else:
            best = (0.0, model, info)
    assert best is not None
    _, model, info = best
    if len(grid) > 1:
        info["tuned_over"] = len(grid)
    return Fitted(model.predict_features, info)  # type: ignore[attr-defined]


def _fit_gbt(cohort: Cohort, fit_stays: np.ndarray, val_stays: np.ndarray, seed: int, options: dict) -> Fitted:
    """``train-baseline gbt``'s recipe on the fit stays: every septic and a seeded 40 % of the
    non-septic stays, positive rows up-weighted to balance the classes, its fixed ``PARAMS``
    (no early stopping, as there)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from icuwatch.fusion.baselines import gbt

    rng = np.random.default_rng(seed)
    septic = cohort.septic
    negatives = fit_stays[~septic[fit_stays]]
    fraction = options.get("negative_fraction", gbt.NEGATIVE_STAY_FRACTION)
    kept = rng.choice(negatives, size=round(fraction * len(negatives)), replace=False)
    stays = np.sort(np.concatenate([fit_stays[septic[fit_stays]], kept]))
    rows = cohort.rows(stays)
    x, y = cohort.x[rows], cohort.y[rows]
    weights = np.where(y == 1, (y == 0).sum() / max(int(y.sum()), 1), 1.0)
    clf = HistGradientBoostingClassifier(**gbt.PARAMS, random_state=seed)
    clf.fit(x, y, sample_weight=weights)
    info = {"n_iter": int(clf.n_iter_), "fit_stays_used": int(len(stays)), "negative_stay_fraction": fraction}
    return Fitted(lambda features: clf.predict_proba(features)[:, 1] if len(features) else np.zeros(0), info)


def model_spec(
    model: str, data_dir: Path | None = None, progress: bool = True
) -> tuple[Callable[[Stay], np.ndarray], Callable[..., Fitted], dict]:
    """(feature builder, fit function, description) of a ``--model`` (``data_dir``: the stays a
    cohort-based model builds its cohort from)."""
    if model == "lightgbm":
        from icuwatch.fusion.baselines import leader_features, lightgbm_model

        return (
            leader_features.stay_features,
            _fit_lightgbm,
            {
                "estimator": "lightgbm.Booster (binary)",
                "params": lightgbm_model.PARAMS,
                "max_rounds": lightgbm_model.MAX_ROUNDS,
                "feature_version": leader_features.FEATURE_VERSION,
                "n_features": leader_features.N_FEATURES,
            },
        )
    if model == "gbt":
        from icuwatch.fusion.baselines import features, gbt

        return (
            features.stay_features,
            _fit_gbt,
            {
                "estimator": "sklearn.ensemble.HistGradientBoostingClassifier (train-baseline gbt's recipe)",
                "params": gbt.PARAMS,
                "feature_version": features.FEATURE_VERSION,
                "n_features": features.N_FEATURES,
            },
        )
    if model == "student_live":
        from functools import partial

        from icuwatch.fusion.evaluation.cv_student import LiveRows, fit_live_student
        from icuwatch.fusion.live_student import SPEC, LiveDistillConfig

        rows = LiveRows()
        return (
            rows,
            partial(fit_live_student, rows),
            {
                "estimator": "the live student's recipe (icuwatch distill-live): cross-fitted LightGBM teacher "
                "(options.teacher: lightgbm = on the live row; leaders = on the 2019 leaders' features where a "
                "PhysioNet row has them, the live row's elsewhere), two-risk early-exit student, per fold on the "
                "training stays + simulated TRAIN/VAL patients",
                "student": SPEC,
                "config": {k: v for k, v in LiveDistillConfig().__dict__.items()},
                "prediction": "sepsis column, early exit as served",
            },
        )
    if model == "teacher_live":
        from functools import partial

        from icuwatch.fusion.evaluation.cv_student import LiveRows, fit_live_teacher

        rows = LiveRows(progress=progress)
        return (
            rows,
            partial(fit_live_teacher, rows),
            {
                "estimator": "the live student's default teacher alone: LightGBM on the live row's tabular summary, "
                "cross-fitted per fold as distill-live fits it (fit stays + simulated TRAIN patients)",
                "prediction": "sepsis: mean logit of the cross-fit models",
            },
        )
    if model == "ensemble":
        from functools import partial

        from icuwatch.fusion.baselines import leader_features
        from icuwatch.fusion.evaluation.cv_student import EnsembleRows, LiveRows, fit_ensemble

        rows = LiveRows()
        return (
            EnsembleRows(rows),
            partial(fit_ensemble, rows),
            {
                "estimator": "mean logit of lightgbm (leaders' features) and the student_live recipe, both fitted "
                "per fold on the same stays",
                "n_features": leader_features.N_FEATURES,
            },
        )
    if model in FUSION_STRATEGIES:
        from functools import partial

        from icuwatch.fusion.evaluation.cv_fusion import FusionRows, fit_fusion
        from icuwatch.fusion.training import TrainConfig

        fusion_rows = FusionRows(data_dir, progress=progress)
        return (
            fusion_rows,
            partial(fit_fusion, model, fusion_rows),
            {
                "estimator": f"fusion strategy {model!r} as icuwatch train --cohort physionet fits it, per fold",
                "train_config": {k: v for k, v in TrainConfig().__dict__.items()},
                "prediction": "temperature-scaled probability",
            },
        )
    raise ValueError(f"unknown model {model!r}: one of {', '.join(MODELS)}")


# ------------------------------------------------------------------------------------------ folds


def _split(p: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return np.split(p, np.cumsum(lengths)[:-1]) if len(lengths) else []


def candidate_thresholds(p: np.ndarray) -> np.ndarray:
    """Quantiles of the inner validation scores: alarms on between 0.05 % and 70 % of the rows."""
    return np.unique(np.quantile(p, np.linspace(0.30, 0.9995, N_THRESHOLDS)))


@dataclass
class FoldResult:
    fold: int
    threshold: float
    inner_val_utility: float
    info: dict
    metrics: dict
    test_stays: np.ndarray
    test_scores: np.ndarray
    seconds: float


def run_fold(
    cohort: Cohort,
    fit: Callable[..., Fitted],
    train_stays: np.ndarray,
    test_stays: np.ndarray,
    seed: int,
    fold: int = 0,
    options: dict | None = None,
) -> tuple[FoldResult, Fitted]:
    """Fit on ``train_stays`` (inner split for early stopping, calibration, threshold); score ``test_stays``."""
    from sklearn.isotonic import IsotonicRegression

    from icuwatch.fusion.evaluation.metrics import auprc, auroc, best_threshold, calibration, patient_alert_stats
    from icuwatch.fusion.evaluation.utility import normalized_utility

    t0 = time.perf_counter()
    septic = cohort.septic
    fit_stays, val_stays = inner_split(train_stays, septic, seed + 1000 * (fold + 1))
    fitted = fit(cohort, fit_stays, val_stays, seed, options or {})
    val_p = fitted.predict(cohort.x[cohort.rows(val_stays)])
    val_labels = cohort.labels_per_stay(val_stays)
    threshold, val_utility = best_threshold(
        _split(val_p, cohort.lengths[val_stays]), val_labels, candidate_thresholds(val_p)
    )
    calibrator = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    calibrator.fit(val_p, np.concatenate(val_labels))

    test_p = fitted.predict(cohort.x[cohort.rows(test_stays)])
    test_labels = cohort.labels_per_stay(test_stays)
    per_stay = _split(test_p, cohort.lengths[test_stays])
    alarms = [(p >= threshold).astype(int) for p in per_stay]
    calibrated = _split(calibrator.predict(test_p), cohort.lengths[test_stays])
    stats = patient_alert_stats(test_labels, alarms)
    metrics = {
        "utility": float(normalized_utility(test_labels, alarms)),
        "auroc": float(auroc(test_labels, per_stay)),
        "auprc": float(auprc(test_labels, per_stay)),
        "ece": float(calibration(test_labels, calibrated)[0]),
        "alerts_per_patient_day": stats["alerts_per_patient_day"],
        "alerts_per_patient_day_nonseptic": stats["alerts_per_patient_day_nonseptic"],
        "alerted_before_onset": stats["alerted_before_onset"],
        "median_lead_time_h": stats["median_lead_time_h"],
        "sensitivity": stats["sensitivity"],
        "specificity": stats["specificity"],
        "threshold": float(threshold),
        "test_stays": int(len(test_stays)),
        "test_septic_stays": int(septic[test_stays].sum()),
        "fit_stays": int(len(fit_stays)),
        "inner_val_stays": int(len(val_stays)),
    }
    if fitted.held_out is not None:
        metrics.update(fitted.held_out(cohort.x[cohort.rows(test_stays)], test_labels, metrics))
    result = FoldResult(
        fold=fold,
        threshold=float(threshold),
        inner_val_utility=float(val_utility),
        info=fitted.info,
        metrics=metrics,
        test_stays=np.asarray(test_stays),
        test_scores=test_p,
        seconds=time.perf_counter() - t0,
    )
    return result, fitted


def _interval(values: list[float]) -> dict:
    from scipy import stats

    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"mean": None, "sd": None, "ci95": [None, None], "min": None, "max": None}
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
    half = float(stats.t.ppf(0.975, v.size - 1) * sd / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return {
        "mean": mean,
        "sd": sd,
        "ci95": [mean - half, mean + half] if np.isfinite(half) else [None, None],
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _clean(x):
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def cross_validate(
    model: str,
    data_dir: Path,
    folds: int = 5,
    seed: int = 0,
    patients: int | None = None,
    progress: bool = True,
    options: dict | None = None,
    out_dir: Path | None = None,
    figures: bool = True,
) -> dict:
    """Run the protocol of the module doc; write ``report.md``, ``summary.json`` (and a plot) to
    ``out_dir`` when given; returns the summary."""
    from tqdm import tqdm

    featurise, fit, description = model_spec(model, data_dir, progress)
    t0 = time.perf_counter()
    cohort = load_cohort(data_dir, featurise, patients=patients, seed=seed, progress=progress)
    featurise_s = time.perf_counter() - t0
    septic = cohort.septic
    fold_of = assign_folds(septic, folds, seed)
    results: list[FoldResult] = []
    for k in tqdm(range(folds), desc=f"cv {model}", unit="fold", disable=not progress, file=sys.stderr):
        test = np.flatnonzero(fold_of == k)
        train = np.flatnonzero(fold_of != k)
        result, _ = run_fold(cohort, fit, train, test, seed, fold=k, options=options)
        results.append(result)

    per_fold = [
        {
            "fold": r.fold,
            **r.metrics,
            "inner_val_utility": r.inner_val_utility,
            "fit": r.info,
            "seconds": round(r.seconds, 1),
        }
        for r in results
    ]
    summary = {
        "model": model,
        "options": options or {},
        "data": {
            "path": str(Path(data_dir).resolve()),
            "description": "real ICU stays: PhysioNet/CinC Challenge 2019 (sepsis), training set B, dev copy",
            "stays": len(cohort.patient_ids),
            "septic_stays": int(septic.sum()),
            "rows": int(len(cohort.y)),
            "patients_limit": patients,
        },
        "protocol": {
            "folds": folds,
            "seed": seed,
            "assignment": "patient-level, stratified on ever SepsisLabel=1, seeded permutation per class dealt "
            "round-robin",
            "inner_validation": f"stratified {int(INNER_VAL_FRACTION * 100)} % of the training folds' stays: "
            "early stopping, isotonic calibration, utility-maximising threshold",
            "interval": "95 % t-interval over the folds: mean ± t(0.975, K-1)·sd/√K",
            "auroc_auprc": "all hourly rows of the held-out fold, raw scores",
            "ece": "isotonic-calibrated probabilities (calibrator fitted on the inner validation stays)",
        },
        "model_description": description,
        "per_fold": per_fold,
        "mean": {
            m: _interval([f[m] for f in per_fold]) for m in METRICS + OPTIONAL_METRICS if all(m in f for f in per_fold)
        },
        "timing_s": {"read_and_featurise": round(featurise_s, 1), "total": round(time.perf_counter() - t0, 1)},
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    summary = _clean(summary)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if figures:
            summary["figure"] = str(_plot(cohort, results, out_dir / "utility_vs_threshold.png", model))
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        summary["report"] = str(write_report(summary, out_dir))
    return summary


def _plot(cohort: Cohort, results: list[FoldResult], path: Path, model: str) -> Path:
    """Held-out utility against the threshold, one line per fold, the threshold each fold chose marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from icuwatch.fusion.evaluation.metrics import utility_vs_threshold

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        labels = cohort.labels_per_stay(r.test_stays)
        grid = np.unique(np.quantile(r.test_scores, np.linspace(0.3, 0.9995, 200)))
        u = utility_vs_threshold(_split(r.test_scores, cohort.lengths[r.test_stays]), labels, grid)
        (line,) = ax.plot(grid, u, lw=1, label=f"fold {r.fold}")
        ax.plot([r.threshold], [r.metrics["utility"]], "o", color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("threshold (model score)")
    ax.set_ylabel("normalized utility, held-out fold")
    ax.set_title(f"{model}: held-out utility vs threshold (dots: threshold chosen on inner validation)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(summary: dict) -> str:
    names = {
        "utility": "normalized utility",
        "auroc": "AUROC",
        "auprc": "AUPRC",
        "ece": "ECE (calibrated)",
        "alerts_per_patient_day": "alert episodes / patient-day",
        "alerted_before_onset": "septic alerted before onset",
        "median_lead_time_h": "median lead time (h)",
        "sensitivity": "septic detected (≤ onset + 3 h)",
        "threshold": "threshold chosen",
        "auroc_missing_30": "AUROC, nominal 30 % of modalities missing per stay",
        "auroc_loss_missing_30": "AUROC lost to 30 % missing (absolute)",
        "auroc_loss_missing_30_relative": "AUROC lost to 30 % missing (relative)",
        "dropped_modality_share_30": "share of the stays' modalities actually dropped",
    }
    d, p = summary["data"], summary["protocol"]
    lines = [
        f"# {p['folds']}-fold cross-validation: {summary['model']}",
        "",
        f"Data: {d['stays']} stays ({d['septic_stays']} septic, {d['rows']} hourly rows) of `{d['path']}` "
        f"({d['description']}). Seed {p['seed']}; options {json.dumps(summary['options'])}.",
        "",
        f"Folds: {p['assignment']}. Inner validation: {p['inner_validation']}. "
        f"AUROC/AUPRC: {p['auroc_auprc']}; ECE: {p['ece']}. Interval: {p['interval']}.",
        "",
        "| metric | mean | 95 % CI | sd | min | max |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m, label in names.items():
        if m not in summary["mean"]:
            continue
        s = summary["mean"][m]
        digits = 4 if m == "threshold" else 3
        ci = f"{_fmt(s['ci95'][0], digits)} – {_fmt(s['ci95'][1], digits)}"
        lines.append(
            f"| {label} | {_fmt(s['mean'], digits)} | {ci} | {_fmt(s['sd'], digits)} | "
            f"{_fmt(s['min'], digits)} | {_fmt(s['max'], digits)} |"
        )
    lines += [
        "",
        "| fold | stays (septic) | utility | AUROC | AUPRC | ECE | alerts/pt-day | before onset | lead h | "
        "threshold | inner-val utility | fit | s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f in summary["per_fold"]:
        fit = ", ".join(f"{k} {v}" for k, v in f["fit"].items() if isinstance(v, int | float))
        lines.append(
            f"| {f['fold']} | {f['test_stays']} ({f['test_septic_stays']}) | {_fmt(f['utility'])} | "
            f"{_fmt(f['auroc'])} | {_fmt(f['auprc'])} | {_fmt(f['ece'])} | {_fmt(f['alerts_per_patient_day'])} | "
            f"{_fmt(f['alerted_before_onset'])} | {_fmt(f['median_lead_time_h'], 1)} | {_fmt(f['threshold'], 4)} | "
            f"{_fmt(f['inner_val_utility'])} | {fit} | {f['seconds']} |"
        )
    t = summary["timing_s"]
    lines += ["", f"Time: read + featurise {t['read_and_featurise']} s, total {t['total']} s."]
    if summary.get("figure"):
        lines += ["", f"![utility vs threshold]({Path(summary['figure']).name})"]
    return "\n".join(lines) + "\n"


def write_report(summary: dict, out_dir: Path) -> Path:
    path = out_dir / "report.md"
    path.write_text(markdown(summary))
    return path
