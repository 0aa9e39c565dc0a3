"""``icuwatch evaluate cv --model student_live``: the served live student's *recipe* cross-validated.

The committed student was made once, on the fixed split. Here the whole recipe of
``icuwatch distill-live`` (``fusion.live_student``) runs again inside every fold: the live cohort
(``fusion.cohorts.live``) is cut to the fold's training PhysioNet stays (its fit and inner
validation stays as TRAIN and VAL) plus the simulated patients' TRAIN and VAL rows; the cross-fitted
LightGBM teacher and the student are fitted on that alone, the student's epoch, temperatures and
exit rule chosen on the inner validation stays; the held-out fold's stays are only predicted (the
student with early exit, its sepsis column). Threshold, calibration and the metrics then follow the
protocol of ``fusion.evaluation.cv`` like every other model's. ``--teacher leaders`` distils from
LightGBM on the 2019 leaders' features where a PhysioNet row has them and the live-row LightGBM
elsewhere (``distill-live --teacher leaders --teacher lightgbm --combine first``), cross-fitted the
same way on the fold's fit stays.

The feature "rows" ``cv`` reads per stay are the stay's row numbers in the live cohort (PhysioNet
rows there are ``stay_inputs``' rows, one per PSV row, the rows the worker builds on a replay).
"""

from __future__ import annotations

import numpy as np

from icuwatch.fusion.evaluation.cohort_rows import CohortRows, fold_cohort
from icuwatch.sources.physionet import Stay


class LiveRows(CohortRows):
    """``cv``'s feature builder: a stay's rows in the live cohort (its PhysioNet part)."""

    def __init__(self, sim_patients: int = 1000, progress: bool = True) -> None:
        from icuwatch.fusion.cohorts import live

        cohort = live.load_or_build(sim_patients=sim_patients, progress=progress)
        super().__init__(cohort, n_groups=int(cohort.meta["first_sim_group"]))
        self.progress = progress
        self._leader_features: np.ndarray | None = None

    def leader_features(self) -> np.ndarray:
        """The leaders' features of every live-cohort row (NaN on simulated rows), read once."""
        from icuwatch.fusion import teachers

        if self._leader_features is None:
            self._leader_features = teachers.leader_features(self.cohort, progress=self.progress)
        return self._leader_features


def _live_fold(rows: LiveRows, cohort, fit_stays: np.ndarray, val_stays: np.ndarray):
    """The live cohort cut to the fold: its fit and inner-validation PhysioNet stays as TRAIN and VAL,
    plus the simulated TRAIN and VAL patients (``fold_cohort``'s cohort and row numbers)."""
    from icuwatch.fusion.cohorts.base import SPLIT_CODES
    from icuwatch.fusion.cohorts.live import source_of

    live = rows.cohort
    return fold_cohort(
        live,
        cohort.x[cohort.rows(fit_stays), 0].astype(np.int64),
        cohort.x[cohort.rows(val_stays), 0].astype(np.int64),
        keep=np.flatnonzero(source_of(live) & (live.split != SPLIT_CODES["test"])),
    )


def fit_live_teacher(rows: LiveRows, cohort, fit_stays: np.ndarray, val_stays: np.ndarray, seed: int, options: dict):
    """``--model teacher_live``: the live student's default teacher alone, answering rows it never
    trained on. The cross-fitted LightGBM of ``distill-live`` is fitted on the fold as
    :func:`fit_live_student` fits it (the fit stays and simulated TRAIN patients train trees); a
    held-out or inner-validation row's sepsis logit is the mean of the cross-fit models', as VAL and
    TEST rows get theirs in a distillation and as ``serving/templates/lightgbm_teacher.py`` serves it."""
    import tempfile
    from pathlib import Path

    import lightgbm as lgb

    from icuwatch.fusion import teachers
    from icuwatch.fusion.evaluation.cv import Fitted
    from icuwatch.fusion.live_student import LiveDistillConfig, labels_of

    fold, _ = _live_fold(rows, cohort, fit_stays, val_stays)
    cfg = LiveDistillConfig(seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        _, info = teachers.crossfit_lightgbm(
            fold,
            labels_of(fold),
            folds=cfg.teacher_folds,
            seed=seed,
            progress=bool(options.get("progress", False)),
            fit_rows=fold.rows("train"),
            save_to=Path(tmp),
        )
        boosters = [lgb.Booster(model_file=str(Path(tmp) / f"sepsis.fold{f}.txt")) for f in range(cfg.teacher_folds)]

    def predict(features: np.ndarray) -> np.ndarray:
        idx = features[:, 0].astype(np.int64)
        if len(idx) == 0:
            return np.zeros(0)
        x = teachers.tabular_features(rows.cohort, idx)
        z = np.mean([b.predict(x, raw_score=True) for b in boosters], axis=0)
        return 1.0 / (1.0 + np.exp(-z))

    return Fitted(predict, {"teacher": _without_params(info)})


def fit_live_student(rows: LiveRows, cohort, fit_stays: np.ndarray, val_stays: np.ndarray, seed: int, options: dict):
    """The recipe on the fold's training stays (see the module doc); returns ``cv.Fitted``."""
    import torch

    from icuwatch.fusion import teachers
    from icuwatch.fusion.evaluation.cv import Fitted
    from icuwatch.fusion.live_student import (
        LiveDistillConfig,
        distill_live,
        exit_logits,
        labels_of,
        simulate_exits_multi,
    )

    live = rows.cohort
    fold, used = _live_fold(rows, cohort, fit_stays, val_stays)
    progress = bool(options.get("progress", False))
    labels = labels_of(fold)
    cfg = LiveDistillConfig(seed=seed)
    crossfit = {"folds": cfg.teacher_folds, "seed": seed, "progress": progress, "fit_rows": fold.rows("train")}
    teacher, teacher_info = teachers.crossfit_lightgbm(fold, labels, **crossfit)
    if options.get("teacher", "lightgbm") == "leaders":
        # as distill-live --teacher leaders --teacher lightgbm --combine first
        leaders, leaders_info = teachers.crossfit_leaders(
            fold, labels, **crossfit, features=rows.leader_features()[used]
        )
        teacher = teachers.first_answer([leaders, teacher])
        teacher_info = {"kind": "first teacher that answers, per row and risk", "members": [leaders_info, teacher_info]}
    student, card = distill_live(fold, teacher, teacher_info, cfg, progress=progress)
    temperatures = student.exit_temperatures.reshape(student.n_exits, student.n_heads).numpy()
    centers = student.exit_center.reshape(-1).numpy()
    margins = student.exit_margins.reshape(student.n_exits - 1, student.n_heads).numpy()

    def predict(features: np.ndarray) -> np.ndarray:
        idx = features[:, 0].astype(np.int64)
        if len(idx) == 0:
            return np.zeros(0)
        with torch.no_grad():
            z = exit_logits(student, live, idx)
        return simulate_exits_multi(z, temperatures, centers, margins)[1][:, 0]

    info = {
        "teacher": _without_params(teacher_info),
        "best_epoch": card["best_epoch"],
        "student_thresholds": card["thresholds"],
        "exit_shares_val": card["exit_shares_val"],
        "rows": {"train": int((fold.split == 0).sum()), "val": int((fold.split == 1).sum())},
    }
    return Fitted(predict, info)


class EnsembleRows:
    """``cv``'s feature builder for the ensemble: the leaders' LightGBM features, then the live row
    number (last column)."""

    def __init__(self, rows: LiveRows) -> None:
        from icuwatch.fusion.baselines import leader_features

        self.rows = rows
        self.leader = leader_features.stay_features

    def __call__(self, stay: Stay) -> np.ndarray:
        # float32 holds row numbers exactly up to 2^24
        return np.concatenate([np.asarray(self.leader(stay), np.float32), self.rows(stay).astype(np.float32)], axis=1)


def fit_ensemble(rows: LiveRows, cohort, fit_stays: np.ndarray, val_stays: np.ndarray, seed: int, options: dict):
    """The mean logit of LightGBM on the leaders' features (``cv``'s ``lightgbm``) and the live
    student's recipe, both fitted on the same fold's stays; ``cv`` then chooses the threshold and
    calibration on the inner validation stays as for any model."""
    import dataclasses

    from icuwatch.fusion.evaluation.cv import Fitted, _fit_lightgbm

    leader = dataclasses.replace(cohort, x=cohort.x[:, :-1])
    live = dataclasses.replace(cohort, x=cohort.x[:, -1:])
    lightgbm = _fit_lightgbm(leader, fit_stays, val_stays, seed, {})
    student = fit_live_student(rows, live, fit_stays, val_stays, seed, options)

    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    def predict(features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.zeros(0)
        z = 0.5 * (logit(lightgbm.predict(features[:, :-1])) + logit(student.predict(features[:, -1:])))
        return 1.0 / (1.0 + np.exp(-z))

    return Fitted(predict, {"lightgbm": lightgbm.info, "student_live": student.info, "combine": "mean logit"})


def _without_params(info: dict) -> dict:
    out = {k: v for k, v in info.items() if k != "params"}
    if "members" in out:
        out["members"] = [_without_params(m) for m in out["members"]]
    return out
