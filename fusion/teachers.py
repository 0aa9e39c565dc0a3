"""Teachers for distillation, as what the student learns from: per row and risk, one logit.

Any teacher reduces to a float32 array ``[N, n_heads]`` of logits over a cohort's rows (NaN where it
has no answer for a risk: that row's soft term is left out). So a distillation never needs to know
what the teacher is:

* :func:`crossfit_lightgbm` — gradient-boosted trees (LightGBM, the field's strongest family on
  PhysioNet 2019, see ``fusion.baselines.lightgbm_model``) on :func:`tabular_features` of the row,
  one model per risk, **cross-fitted** on the TRAIN rows: they are split by stay into ``folds``
  groups and each one's logit comes from the model that did not train on its stay (a teacher's
  answers on its own training rows are overconfident; a student fitted to them learns that); VAL and
  TEST rows get the folds' mean and never train a tree, so the choices made on VAL and the figures
  reported on TEST do not see their labels through the teacher.
* :func:`crossfit_leaders` — the same cross-fitting on the 2019 leaders' features of a PhysioNet
  row (``fusion.baselines.leader_features``: counts, 24-h windows, slopes, SOFA parts, what
  ``evaluate cv --model lightgbm`` cross-validates best), sepsis only, PhysioNet rows only. A
  *privileged* teacher: it reads a stay's whole history so far, which the student's live row (an
  8-hour window) does not carry; the student learns what of it its own inputs can tell.
* :func:`model_logits` — a trained fusion model (``model_store``; one risk, the sepsis head).
* :func:`ensemble` — the mean logit of several teachers (per risk, over those that answer it);
  :func:`first_answer` — per row and risk, the first teacher that answers (a specialist where it
  knows, a generalist elsewhere).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from icuwatch.fusion.baselines import lightgbm_model
from icuwatch.fusion.cohorts.base import Cohort, gather

TEACHER_PARAMS: dict = {**lightgbm_model.PARAMS, "learning_rate": 0.08, "metric": "binary_logloss"}
"""``evaluate cv``'s LightGBM settings, a faster learning rate, early stopping on the log loss."""
MAX_ROUNDS = 400
"""Early stopping on the log loss of the inner split (AUC on a few hundred simulated patients stopped
after 2-8 rounds: too noisy to stop on)."""
EARLY_STOPPING_ROUNDS = 30
INNER_VAL_SHARE = 0.1


def _pooled(x: np.ndarray, size: int) -> np.ndarray:
    """[n, H, W] -> [n, size * size] block means."""
    n, h, w = x.shape
    return x.reshape(n, size, h // size, size, w // size).mean(axis=(2, 4)).reshape(n, -1)


def tabular_features(cohort: Cohort, idx: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """float32 [len(idx), F]: :func:`tabular_features_of` the cohort's rows (gathered in chunks)."""
    idx = np.asarray(idx)
    parts = [
        tabular_features_of(gather(cohort, idx[s : s + chunk]), cohort.modalities)
        for s in range(0, max(1, len(idx)), chunk)
    ]
    return np.concatenate(parts) if len(idx) else parts[0][:0]


def tabular_features_of(batch: dict[str, np.ndarray], modalities: tuple[str, ...]) -> np.ndarray:
    """float32 [B, F] of a live-layout batch for trees (``fusion.cohorts.base.gather``'s arrays, which
    are also what the served student receives): the vitals window summarised (newest, mean, min, max,
    change over 3 h, hours measured), the waveform, lab and static inputs, staleness and present flags,
    the X-ray thumbnail pooled to 8 x 8, the report bag folded to 64. NaN where a modality is absent or
    a lab never measured: trees route missing values, nothing is imputed. One function for training
    and serving (``serving/templates/lightgbm_teacher.py``)."""
    present = np.asarray(batch["present"], bool)
    n = len(present)
    mods = list(modalities)
    v = np.asarray(batch["vitals"], np.float32)
    c = v.shape[-1] // 2
    z = v[:, :, :c]
    vit = np.concatenate([z[:, -1], z.mean(1), z.min(1), z.max(1), z[:, -1] - z[:, -4], v[:, :, c:].sum(1)], axis=1)
    vit[~present[:, mods.index("vitals")]] = np.nan
    out = [vit]
    if "waveforms" in mods:
        w = np.asarray(batch["waveforms"], np.float32)
        k = w.shape[1] // 2
        wz = np.where(w[:, k:] > 0, w[:, :k], np.nan)
        wz[~present[:, mods.index("waveforms")]] = np.nan
        out.append(wz)
    labs = np.asarray(batch["labs"], np.float32).reshape(n, -1, 3).copy()
    labs[:, :, 0] = np.where(labs[:, :, 1] > 0, labs[:, :, 0], np.nan)
    labs = labs.reshape(n, -1)
    labs[~present[:, mods.index("labs")]] = np.nan
    staleness = np.where(present, np.asarray(batch["staleness_h"], np.float32), np.nan)
    out += [labs, batch["static"], staleness, present]
    if "cxr" in mods:
        image = np.asarray(batch["cxr"], np.float32)
        pooled = _pooled(image.reshape(n, *image.shape[-2:]), 8)
        pooled[~present[:, mods.index("cxr")]] = np.nan
        out.append(pooled)
    if "report" in mods:
        bag = np.asarray(batch["report"], np.float32).reshape(n, -1, 64).max(axis=1)
        bag[~present[:, mods.index("report")]] = np.nan
        out.append(bag)
    return np.concatenate([np.asarray(a, np.float32) for a in out], axis=1)


def stay_folds(cohort: Cohort, folds: int, seed: int) -> np.ndarray:
    """[N] fold number per row: stays (groups) shuffled and dealt into ``folds`` folds."""
    rng = np.random.default_rng(seed)
    groups = np.unique(cohort.group)
    fold_of = np.empty(int(groups.max()) + 1, np.int64)
    fold_of[rng.permutation(groups)] = np.arange(len(groups)) % folds
    return fold_of[cohort.group]


def crossfit_lightgbm(
    cohort: Cohort,
    labels: dict[str, np.ndarray],
    folds: int = 3,
    seed: int = 0,
    progress: bool = True,
    fit_rows: np.ndarray | None = None,
    save_to: Path | None = None,
    features: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Cross-fitted LightGBM logits ``[N, len(labels)]`` (NaN where the label is unknown: a row gets
    a teacher answer for a risk only if that risk is known in its source) and what was fitted.
    ``features``: float32 ``[N, F]`` the trees read (default :func:`tabular_features` of every row).

    ``labels``: per risk float [N] 0/1, NaN where unknown. Only ``fit_rows`` (default: every row;
    a distillation passes its TRAIN rows) ever train a tree. In each of the ``folds`` rounds the trees
    learn on the other folds' stays among them, stop early on ``INNER_VAL_SHARE`` of those stays, and
    answer for this fold's fit rows; every other row (VAL, TEST) gets the mean logit of the ``folds``
    models, none of which saw a label outside ``fit_rows``. ``save_to``: a folder the boosters are
    written to (``<risk>.fold<f>.txt``, LightGBM's text format, at their best round): what a VAL or TEST
    row got is their mean logit, which ``serving/templates/lightgbm_teacher.py`` serves."""
    import lightgbm as lgb
    from tqdm import tqdm

    t0 = time.perf_counter()
    fold = stay_folds(cohort, folds, seed)
    may_fit = np.ones(len(cohort), bool)
    if fit_rows is not None:
        may_fit[:] = False
        may_fit[fit_rows] = True
    x = tabular_features(cohort, np.arange(len(cohort))) if features is None else features
    if len(x) != len(cohort):
        raise ValueError(f"{len(x)} feature rows for a cohort of {len(cohort)} rows")
    out = np.full((len(cohort), len(labels)), np.nan, np.float32)
    info: dict = {"kind": "lightgbm", "folds": folds, "features": int(x.shape[1]), "params": TEACHER_PARAMS}
    rng = np.random.default_rng(seed + 1)
    bar = tqdm(total=folds * len(labels), desc="teacher (cross-fitted LightGBM)", disable=not progress, file=sys.stderr)
    for h, (risk, y) in enumerate(labels.items()):
        known = np.isfinite(y)
        if not (known & may_fit).any():  # a risk this teacher does not answer (NaN throughout)
            info[risk] = {"fit_rows": 0, "other_rows": 0, "rounds": []}
            bar.update(folds)
            continue
        others = np.flatnonzero(known & ~may_fit)
        mean_others = np.zeros(len(others))
        rounds = []
        for f in range(folds):
            train = known & may_fit & (fold != f)
            groups = np.unique(cohort.group[train])
            inner = np.isin(cohort.group, rng.choice(groups, max(1, int(INNER_VAL_SHARE * len(groups))), replace=False))
            fit_rows, stop_rows = np.flatnonzero(train & ~inner), np.flatnonzero(train & inner)
            train_set = lgb.Dataset(x[fit_rows], label=y[fit_rows], free_raw_data=True)
            stop_set = lgb.Dataset(x[stop_rows], label=y[stop_rows], reference=train_set)
            booster = lgb.train(
                {**TEACHER_PARAMS, "seed": seed + f},
                train_set,
                num_boost_round=MAX_ROUNDS,
                valid_sets=[stop_set],
                callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)],
            )
            best = int(booster.best_iteration or booster.current_iteration())
            answer = np.flatnonzero(known & may_fit & (fold == f))
            out[answer, h] = booster.predict(x[answer], num_iteration=best, raw_score=True)
            if len(others):
                mean_others += booster.predict(x[others], num_iteration=best, raw_score=True) / folds
            rounds.append(best)
            if save_to is not None:
                Path(save_to).mkdir(parents=True, exist_ok=True)
                booster.save_model(str(Path(save_to) / f"{risk}.fold{f}.txt"), num_iteration=best)
            bar.update(1)
        out[others, h] = mean_others
        info[risk] = {"fit_rows": int((known & may_fit).sum()), "other_rows": int(len(others)), "rounds": rounds}
    bar.close()
    info["fit_s"] = round(time.perf_counter() - t0, 1)
    return out, info


def model_logits(directory, cohort: Cohort, n_heads: int) -> np.ndarray:
    """A trained fusion model's logits ``[N, n_heads]`` (its one output in column 0, NaN elsewhere)."""
    from icuwatch.fusion import model_store
    from icuwatch.fusion.training import predict_logits

    trained = model_store.load(directory)
    out = np.full((len(cohort), n_heads), np.nan, np.float32)
    out[:, 0] = predict_logits(trained.model, cohort, np.arange(len(cohort)))
    return out


def leader_features(cohort: Cohort, data_dir: Path | None = None, progress: bool = True) -> np.ndarray:
    """float32 ``[N, leader_features.N_FEATURES]``: the PhysioNet rows of a live cohort
    (``fusion.cohorts.live``) get their stay's leader features at that hour (read again from the
    stay's ``.psv`` in ``data_dir``, default the shared data); simulated rows are NaN."""
    from tqdm import tqdm

    from icuwatch.fusion.baselines import leader_features as lf
    from icuwatch.fusion.cohorts.physionet import read_stay
    from icuwatch.sources.physionet import default_data_dir

    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    out = np.full((len(cohort), lf.N_FEATURES), np.nan, np.float32)
    first_sim = int(cohort.meta["first_sim_group"])
    starts = np.searchsorted(cohort.group, np.arange(first_sim + 1))  # PhysioNet rows come first, stay by stay
    for g in tqdm(range(first_sim), desc="leader features", unit="stay", disable=not progress, file=sys.stderr):
        rows = slice(int(starts[g]), int(starts[g + 1]))
        features = lf.stay_features(read_stay(data_dir / f"{cohort.group_ids[g]}.psv"))
        if len(features) != rows.stop - rows.start:
            raise ValueError(f"{cohort.group_ids[g]}: {len(features)} hours in the .psv, {rows.stop - rows.start} rows")
        out[rows] = features
    return out


def crossfit_leaders(
    cohort: Cohort,
    labels: dict[str, np.ndarray],
    folds: int = 3,
    seed: int = 0,
    progress: bool = True,
    fit_rows: np.ndarray | None = None,
    data_dir: Path | None = None,
    features: np.ndarray | None = None,
) -> tuple[np.ndarray, dict]:
    """Cross-fitted LightGBM on the leaders' features (:func:`leader_features`), sepsis only, on
    the PhysioNet rows of a live cohort: ``[N, len(labels)]`` logits, NaN on simulated rows and for
    every other risk (:func:`first_answer` completes it with a teacher that answers those).
    ``features``: those features already read (a subset cohort's rows of them)."""
    from icuwatch.fusion.baselines import leader_features as lf
    from icuwatch.fusion.cohorts.live import source_of

    real = ~source_of(cohort)
    only_sepsis = {
        risk: (np.where(real, y, np.nan) if risk == "sepsis" else np.full(len(y), np.nan)) for risk, y in labels.items()
    }
    x = leader_features(cohort, data_dir, progress) if features is None else features
    logits, info = crossfit_lightgbm(cohort, only_sepsis, folds, seed, progress, fit_rows, features=x)
    info |= {"kind": "lightgbm on the 2019 leaders' features", "feature_version": lf.FEATURE_VERSION}
    return logits, info


def first_answer(members: list[np.ndarray]) -> np.ndarray:
    """Per row and risk, the first member's logit that is not NaN (NaN where none answers)."""
    out = np.array(members[0], np.float32, copy=True)
    for m in members[1:]:
        out = np.where(np.isfinite(out), out, m).astype(np.float32)
    return out


def ensemble(members: list[np.ndarray]) -> np.ndarray:
    """Mean logit per row and risk over the members that answer it (NaN where none does)."""
    stack = np.stack(members)
    counts = np.isfinite(stack).sum(axis=0)
    total = np.nansum(stack, axis=0)
    return np.where(counts > 0, total / np.maximum(counts, 1), np.nan).astype(np.float32)
