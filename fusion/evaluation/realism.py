"""How far the simulator's patients are from real ones: a two-sample test against PhysioNet 2019.

``icuwatch simulate --realism-report`` trains a classifier (LightGBM) to tell simulated
patient-hours from real ones and reports how well it does under cross-validation by patient: an
AUROC of 0.5 means the charts cannot be told apart, 1.0 that every hour gives itself away. Beside it,
per column, the two distributions (mean, sd, quantiles, Wasserstein distance in real sd units,
Kolmogorov-Smirnov statistic) and the columns the classifier leans on most, so a simulator change
can aim where the gap is.

Like with like, both sides as a chart has them:

* **one reading per hour**: real stays are charted hourly (PhysioNet's rows); the simulated monitor
  streams at 1 Hz, so each simulated hour contributes the reading at one (seeded) second of it, a
  nurse's charted spot value, not the hour's mean (a mean is far smoother than any chart);
* **the same hours**: real rows only up to the simulated stay length (``ICULOS <= hours``), since
  the hour since admission is a column and real stays run longer; from hour 2 on both sides
  (``FIRST_HOUR``);
* **the same columns, missingness the same way**: the vital signs both have, and (``all`` test) the
  shared labs at the hour they were collected, NaN where a column was not charted that hour on
  either side, plus per column the number of charted values so far. LightGBM routes NaN itself on
  both sides; nothing is imputed.

Two tests: ``vitals`` (the goal's: complete rows of HR, SpO2, SBP, MAP, DBP and respiration rate,
and the hour) and ``all`` (every shared column, missing values and measurement counts included).
The AUROC is of the out-of-fold predictions, pooled; its 95 % interval a bootstrap over patients of
those fixed predictions (the variation between folds' models is not in it; ``per_fold`` shows it).
Data: PhysioNet/CinC 2019 training set B (the shared stays, real) and the icuwatch simulator.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from icuwatch.core.physionet_row import LAB_COLUMNS, VITAL_COLUMNS
from icuwatch.fusion.cohorts.base import progress_bar

GOAL_VITALS: tuple[str, ...] = ("HR", "O2Sat", "SBP", "MAP", "DBP", "Resp")
HOUR = "ICULOS"
FIRST_HOUR = 2
"""PhysioNet 2019 set B charts no vital sign in a stay's first hour (ICULOS 1): in 1,406 of 1,500 stays
drawn, not one. There is nothing real to compare a simulated first hour with, so both sides start at
hour 2 (left in, the hour alone would give every simulated first hour away)."""
LGB_PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 50,
    "feature_fraction": 0.8,
    "num_threads": 2,
    "deterministic": True,
    "force_row_wise": True,
    "verbose": -1,
}
ROUNDS = 300
BOOTSTRAP = 200


def shared_columns() -> tuple[str, ...]:
    """PhysioNet vital and lab columns the simulator also produces (PaO2: the simulator's, not PhysioNet's)."""
    from icuwatch.sources.simulator.labs import FULL

    labs = tuple(col for col, analyte in LAB_COLUMNS.items() if analyte in FULL)
    return (*VITAL_COLUMNS, *labs)


class Charts:
    """Hourly chart rows of several patients: ``values`` [N, len(columns)] (NaN = not charted that
    hour), ``hour`` [N] (1 = the first hour), ``patient`` [N] (an index per patient)."""

    def __init__(self, columns: tuple[str, ...], values: np.ndarray, hour: np.ndarray, patient: np.ndarray):
        self.columns, self.values, self.hour, self.patient = columns, values, hour, patient

    def column(self, name: str) -> np.ndarray:
        return self.values[:, self.columns.index(name)]


def physionet_charts(data_dir: str | Path, stays: int, hours: int, seed: int = 0, progress: bool = True) -> Charts:
    """``stays`` shared PhysioNet stays of the VAL and TEST splits (the simulator's ``icu`` population
    is fitted on TRAIN) drawn at random (seeded), their rows with ``ICULOS <= hours``."""
    from icuwatch.sources.physionet import list_stays, read_psv, split_of

    columns = shared_columns()
    paths = [p for p in list_stays(data_dir) if split_of(p.stem) != "train"]
    if not paths:
        raise FileNotFoundError(f"no PhysioNet stays (*.psv) under {data_dir}")
    chosen = np.random.default_rng(seed).choice(len(paths), min(stays, len(paths)), replace=False)
    values, hour, patient = [], [], []
    for k, i in enumerate(progress_bar(sorted(chosen), len(chosen), "real stays", "stay", progress)):
        stay = read_psv(paths[i])
        h = stay.column(HOUR) if HOUR in stay.columns else np.arange(1, len(stay.values) + 1)
        keep = h <= hours
        values.append(np.stack([stay.column(c)[keep] for c in columns], axis=1))
        hour.append(h[keep])
        patient.append(np.full(int(keep.sum()), k))
    return Charts(columns, np.concatenate(values), np.concatenate(hour), np.concatenate(patient))


def simulated_charts(
    n_patients: int, hours: int, seed: int = 0, progress: bool = True, population: str = "stylised"
) -> Charts:
    """The simulator cohort's patients (``fusion.cohorts.sim``'s population), charted: per hour the
    1 Hz vitals at one seeded second (the latest reading before it in that hour when the monitor did
    not show that vital then; NaN when it showed none), each lab at the hour it was collected."""
    from icuwatch.fusion.cohorts import sim as sim_cohort
    from icuwatch.sources.simulator import labs as sim_labs
    from icuwatch.sources.simulator.patients import STREAM_LABS, draw_patients

    columns = shared_columns()
    horizon_h = max(hours, sim_cohort.MIN_HORIZON_H)
    H = sim_cohort.H
    patients = draw_patients(
        n_patients,
        seed,
        float(horizon_h * H),
        sim_cohort.DETERIORATING_FRACTION[population],
        (sim_cohort.ONSET_WINDOW_H[0] * H, sim_cohort.ONSET_WINDOW_H[1] * H),
        sim_cohort.PATIENT_PREFIX,
        population,  # type: ignore[arg-type]
    )
    analyte_column = {analyte: col for col, analyte in LAB_COLUMNS.items() if col in columns}
    values, hour, patient = [], [], []
    for k, p in enumerate(progress_bar(patients, len(patients), "simulated patients", "patient", progress)):
        v = sim_cohort.stream_vitals(p, hours * H, horizon_h * H)
        at = np.arange(hours) * H + np.random.default_rng([seed, p.index, 77]).integers(0, H, hours)
        chart = np.full((hours, len(columns)), np.nan)
        for col, field in VITAL_COLUMNS.items():
            chart[:, columns.index(col)] = _charted(np.asarray(v[field], float).reshape(hours, H), at % H)
        start = sim_cohort.START_TIME
        for lab in sim_labs.lab_messages(p, start, float(horizon_h * H), p.rng(STREAM_LABS)):
            h = int((lab.event_time - start) // H)
            col = analyte_column.get(lab.analyte)
            if col is not None and h < hours:
                chart[h, columns.index(col)] = lab.value
        values.append(chart)
        hour.append(np.arange(1, hours + 1, dtype=float))
        patient.append(np.full(hours, k))
    return Charts(columns, np.concatenate(values), np.concatenate(hour), np.concatenate(patient))


def _charted(per_second: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Per hour ([hours, 3600] readings, NaN = none): the reading at second ``at`` of the hour, else
    the hour's last reading before it, else NaN (nothing the monitor showed that hour)."""
    out = np.full(len(per_second), np.nan)
    for h, (row, s) in enumerate(zip(per_second, at)):
        seen = np.flatnonzero(np.isfinite(row[: s + 1]))
        if len(seen):
            out[h] = row[seen[-1]]
    return out


def design(charts: Charts, test: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(features [n, F], names, rows kept) of one test: ``vitals`` or ``all``. Hours before
    ``FIRST_HOUR`` are left out on both sides, from the measurement counts too."""
    charted = charts.hour >= FIRST_HOUR
    if test == "vitals":
        x = np.stack([charts.column(c) for c in GOAL_VITALS], axis=1)
        keep = np.isfinite(x).all(axis=1) & charted
        return np.column_stack([x[keep], charts.hour[keep]]), [*GOAL_VITALS, HOUR], np.flatnonzero(keep)
    if test != "all":
        raise ValueError(f"unknown test {test!r} (vitals, all)")
    values = np.where(charted[:, None], charts.values, np.nan)
    counts = np.zeros_like(values)
    for k in np.unique(charts.patient):
        rows = np.flatnonzero(charts.patient == k)
        rows = rows[np.argsort(charts.hour[rows], kind="stable")]
        counts[rows] = np.cumsum(np.isfinite(values[rows]), axis=0)
    names = [*charts.columns, *(f"{c}_count" for c in charts.columns), HOUR]
    keep = np.flatnonzero(charted)
    return np.column_stack([values, counts, charts.hour])[keep], names, keep


def two_sample(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, names: list[str], folds: int = 5, seed: int = 0
) -> dict:
    """Out-of-fold AUROC of LightGBM telling ``y`` = 1 (simulated) from 0 (real), folds by patient
    (stratified on the side), with a patient bootstrap interval and the features' share of the gain."""
    import lightgbm as lgb
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    oof = np.zeros(len(y))
    gain = np.zeros(x.shape[1])
    per_fold = []
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for f, (tr, te) in enumerate(splitter.split(x, y, groups)):
        booster = lgb.train({**LGB_PARAMS, "seed": seed + f}, lgb.Dataset(x[tr], label=y[tr]), num_boost_round=ROUNDS)
        oof[te] = booster.predict(x[te])
        gain += booster.feature_importance("gain")
        per_fold.append(round(float(roc_auc_score(y[te], oof[te])), 4))
    rng = np.random.default_rng(seed)
    patients = np.unique(groups)
    rows_of = {g: np.flatnonzero(groups == g) for g in patients}
    boot = []
    for _ in range(BOOTSTRAP):
        rows = np.concatenate([rows_of[g] for g in rng.choice(patients, len(patients))])
        if 0 < y[rows].mean() < 1:
            boot.append(roc_auc_score(y[rows], oof[rows]))
    share = gain / max(gain.sum(), 1e-12)
    order = np.argsort(-share)
    return {
        "auroc": round(float(roc_auc_score(y, oof)), 4),
        "ci95": [round(float(np.percentile(boot, 2.5)), 4), round(float(np.percentile(boot, 97.5)), 4)],
        "per_fold": per_fold,
        "rows": {"simulated": int(y.sum()), "real": int((1 - y).sum())},
        "most_telling": [{"feature": names[i], "gain_share": round(float(share[i]), 4)} for i in order[:10]],
    }


def distances(sim: Charts, real: Charts) -> dict:
    """Per shared column charted on both sides: mean, sd and quartiles of each, the Wasserstein
    distance in units of the real sd, the two-sample Kolmogorov-Smirnov statistic, charted share
    (hours from ``FIRST_HOUR`` on both sides)."""
    from scipy.stats import ks_2samp, wasserstein_distance

    out = {}
    for c in sim.columns:
        a, b = sim.column(c)[sim.hour >= FIRST_HOUR], real.column(c)[real.hour >= FIRST_HOUR]
        a, b, charted = a[np.isfinite(a)], b[np.isfinite(b)], (np.isfinite(a).mean(), np.isfinite(b).mean())
        if len(a) < 2 or len(b) < 2:
            continue
        sd = float(np.std(b)) or 1.0
        out[c] = {
            "simulated": _describe(a, charted[0]),
            "real": _describe(b, charted[1]),
            "wasserstein_real_sd": round(float(wasserstein_distance(a, b)) / sd, 4),
            "ks": round(float(ks_2samp(a, b).statistic), 4),
        }
    return out


def _describe(x: np.ndarray, charted: float) -> dict:
    q = np.percentile(x, [5, 25, 50, 75, 95])
    return {
        "mean": round(float(np.mean(x)), 3),
        "sd": round(float(np.std(x)), 3),
        "p5_25_50_75_95": [round(float(v), 3) for v in q],
        "charted_share_of_hours": round(float(charted), 4),
    }


def report(
    n_patients: int = 120,
    hours: int = 24,
    real_stays: int = 1500,
    seed: int = 0,
    data_dir: str | Path | None = None,
    plots_dir: str | Path | None = None,
    folds: int = 5,
    progress: bool = True,
    population: str = "stylised",
) -> dict:
    """The realism report (JSON-able); histograms of the goal's vitals into ``plots_dir`` if given.
    Real stays come from the VAL and TEST splits: ``population`` ``icu`` is fitted on TRAIN."""
    from icuwatch.sources.physionet import default_data_dir

    started = time.perf_counter()
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    real = physionet_charts(data_dir, real_stays, hours, seed, progress)
    sim = simulated_charts(n_patients, hours, seed, progress, population)
    tests = {}
    for test in ("vitals", "all"):
        xs, names, keep_s = design(sim, test)
        xr, _, keep_r = design(real, test)
        x = np.concatenate([xs, xr])
        y = np.concatenate([np.ones(len(xs)), np.zeros(len(xr))])
        groups = np.concatenate([sim.patient[keep_s], real.patient[keep_r] + n_patients])
        _say(progress, f"realism: two-sample test '{test}' ({len(xs)} simulated, {len(xr)} real hours)")
        tests[test] = two_sample(x, y, groups, names, folds, seed)
    out = {
        "report": "icuwatch simulate --realism-report",
        "data": {
            "real": f"PhysioNet/CinC 2019 training set B ({data_dir}), {len(np.unique(real.patient))} stays of the "
            f"VAL and TEST splits drawn at random (seed {seed}), hours 1..{hours}",
            "simulated": f"icuwatch simulator, the sim cohort's patients, population {population!r}: "
            f"{n_patients} patients x {hours} h (seed {seed})",
            "charting": "one reading per hour (a seeded second of the simulated 1 Hz stream), labs at the hour "
            "collected, hours from 2 on both sides",
        },
        "goal": {"test": "vitals", "auroc_at_most": 0.70, "met": tests["vitals"]["auroc"] <= 0.70},
        "tests": tests,
        "columns": distances(sim, real),
        "seconds": round(time.perf_counter() - started, 1),
    }
    if plots_dir is not None:
        out["plots"] = plot(sim, real, Path(plots_dir))
    return out


def plot(sim: Charts, real: Charts, directory: Path) -> list[str]:
    """One figure: per goal vital (and temperature), the simulated and the real distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    names = [*GOAL_VITALS, "Temp"]
    fig, axes = plt.subplots(2, 4, figsize=(14, 6))
    for ax, c in zip(axes.ravel(), names):
        a, b = sim.column(c), real.column(c)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        lo, hi = np.percentile(np.concatenate([a, b]), [0.5, 99.5])
        bins = np.linspace(lo, hi, 40)
        ax.hist(b, bins=bins, density=True, alpha=0.55, label="real (PhysioNet 2019 B)")
        ax.hist(a, bins=bins, density=True, alpha=0.55, label="simulated")
        ax.set_title(c)
    axes.ravel()[-1].axis("off")
    axes.ravel()[0].legend(fontsize=8)
    fig.suptitle("Charted hourly values: simulated vs real (icuwatch simulate --realism-report)")
    fig.tight_layout()
    path = directory / "realism-vitals.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [str(path)]


def _say(enabled: bool, text: str) -> None:
    if enabled:
        print(text, file=sys.stderr, flush=True)
