"""Causal per-hour features of the kinds the 2019 sepsis challenge's leaders used, for the LightGBM model.

``stay_features(stay)`` gives one ``float32`` row per hour of a PhysioNet 2019 stay; row ``t`` is
computed from rows ``<= t`` only (forward fills, cumulative counts, windows that look back), so the
features of the first ``k`` hours are the first ``k`` rows of the whole stay's features
(``tests/fusion/test_cv.py`` checks it by truncating and by altering the later rows).

Families (numpy, vectorised over the hours and columns of a stay):

* every analyte (vital signs and labs): last value (forward fill), hours since measured
  (``NEVER`` when it never was), measurement count so far, and the count in the last 24 h;
* vital signs: rolling mean, min, max and standard deviation of the values measured in the last
  6, 12 and 24 hours; change of the last value over 1, 6 and 24 hours (÷ hours: a slope);
* labs: change since the previous measurement;
* ratios and scores on the forward-filled values: shock index (HR/SBP), pulse pressure, BUN/creatinine,
  SpO2/FiO2, SaO2/FiO2, partial SOFA components (respiration from SpO2/FiO2 — no PaO2 column, coagulation from
  platelets, liver from bilirubin, cardiovascular from MAP, renal from creatinine) and their sum,
  its change over 24 h, SIRS criteria, NEWS2 / qSOFA / infection signs (:mod:`icuwatch.core.rules`);
* hospital time and demographics: ICULOS, HospAdmTime, hours since hospital admission, Age,
  Gender, Unit1, Unit2.

Changing what a column means or their order is a model interface change: bump ``FEATURE_VERSION``.
"""

from __future__ import annotations

import warnings

import numpy as np

from icuwatch.fusion.baselines.features import NEVER as NEVER  # the same "never measured" hours
from icuwatch.fusion.baselines.features import _column, _forward_fill, _rule_scores, _shift_down, measurements
from icuwatch.sources.physionet import LAB_COLUMNS, VITAL_COLUMNS, Stay

FEATURE_VERSION = "leader-features-v1"
WINDOWS_H: tuple[int, ...] = (6, 12, 24)
"""Look-backs of the vital signs' rolling statistics, hours."""
DELTAS_H: tuple[int, ...] = (1, 6, 24)
"""Look-backs of the vital signs' changes (slopes), hours."""

VITALS: tuple[str, ...] = tuple(VITAL_COLUMNS)
LABS: tuple[str, ...] = tuple(LAB_COLUMNS)
STATIC: tuple[str, ...] = ("ICULOS", "HospAdmTime", "Age", "Gender", "Unit1", "Unit2")
DERIVED: tuple[str, ...] = (
    "hospital_hours",
    "shock_index",
    "pulse_pressure",
    "bun_creatinine",
    "spo2_fio2",
    "sao2_fio2",
    "sofa_respiration",
    "sofa_coagulation",
    "sofa_liver",
    "sofa_cardiovascular",
    "sofa_renal",
    "sofa_partial",
    "sofa_partial_delta24h",
    "sirs",
    "news2",
    "qsofa",
    "infection_signs",
    "analytes_measured_this_hour",
)


def _names() -> tuple[str, ...]:
    names: list[str] = []
    for c in VITALS + LABS:
        names += [f"{c}_last", f"{c}_hours_since", f"{c}_count", f"{c}_count24h"]
    for c in VITALS:
        for w in WINDOWS_H:
            names += [f"{c}_mean{w}h", f"{c}_min{w}h", f"{c}_max{w}h", f"{c}_std{w}h"]
        names += [f"{c}_slope{d}h" for d in DELTAS_H]
    names += [f"{c}_delta_prev" for c in LABS]
    names += list(STATIC) + list(DERIVED)
    return tuple(names)


FEATURE_NAMES: tuple[str, ...] = _names()
N_FEATURES = len(FEATURE_NAMES)


def _windows(raw: np.ndarray, hours: int) -> np.ndarray:
    """``[T, C, hours]``: rows ``t-hours+1 .. t`` of ``raw`` for every row ``t`` (NaN before the stay)."""
    padded = np.concatenate([np.full((hours - 1, raw.shape[1]), np.nan), raw], axis=0)
    return np.lib.stride_tricks.sliding_window_view(padded, hours, axis=0)


def _rolling(raw: np.ndarray, hours: int) -> list[np.ndarray]:
    """NaN-aware mean, min, max, std of the measured values of the last ``hours`` rows."""
    w = _windows(raw, hours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows -> NaN, as wanted
        return [np.nanmean(w, axis=-1), np.nanmin(w, axis=-1), np.nanmax(w, axis=-1), np.nanstd(w, axis=-1)]


def _recent_count(measured: np.ndarray, hours: int) -> np.ndarray:
    count = np.cumsum(measured, axis=0).astype(np.float64)
    return count - np.nan_to_num(_shift_down(count, hours), nan=0.0)


def _points(x: np.ndarray, cuts: list[tuple[float, int]], higher_is_worse: bool) -> np.ndarray:
    """SOFA-style points: the highest ``points`` whose cut ``x`` reaches (NaN stays NaN)."""
    out = np.where(np.isnan(x), np.nan, 0.0)
    with np.errstate(invalid="ignore"):
        for cut, points in cuts:
            hit = x >= cut if higher_is_worse else x < cut
            out = np.where(hit, np.maximum(out, points), out)
    return out


def stay_features(stay: Stay) -> np.ndarray:
    """``[hours, N_FEATURES]`` float32 features, row ``t`` from rows ``<= t`` only (see module doc)."""
    n = stay.values.shape[0]
    cols = VITALS + LABS
    raw, measured, ffill, hours_since, count = measurements(stay, cols)
    per_column = np.stack([ffill, hours_since, count, _recent_count(measured, 24)], axis=2).reshape(n, -1)

    nv = len(VITALS)
    v_raw, v_ffill = raw[:, :nv], ffill[:, :nv]
    parts: list[np.ndarray] = []
    rolled = [_rolling(v_raw, w) for w in WINDOWS_H]
    slopes = [(v_ffill - _shift_down(v_ffill, d)) / d for d in DELTAS_H]
    per_vital = np.stack([s for r in rolled for s in r] + slopes, axis=2).reshape(n, -1)
    parts += [per_column, per_vital]

    l_ffill, l_measured = ffill[:, nv:], measured[:, nv:]
    previous_at_measurement = np.where(l_measured, _shift_down(l_ffill, 1), np.nan)
    previous, _ = _forward_fill(previous_at_measurement, l_measured)
    parts.append(l_ffill - previous)

    static = np.stack([_column(stay, c) for c in STATIC], axis=1)
    parts.append(static)

    f = {c: ffill[:, i] for i, c in enumerate(cols)}
    fio2 = f["FiO2"]
    fio2 = np.where(fio2 > 1.0, fio2 / 100.0, fio2)  # a few charts give percent
    with np.errstate(divide="ignore", invalid="ignore"):
        shock = np.where(f["SBP"] > 0, f["HR"] / f["SBP"], np.nan)
        bun_cr = np.where(f["Creatinine"] > 0, f["BUN"] / f["Creatinine"], np.nan)
        spo2_fio2 = np.where(fio2 > 0, f["O2Sat"] / fio2, np.nan)
        sao2_fio2 = np.where(fio2 > 0, f["SaO2"] / fio2, np.nan)
        sirs = (
            (f["HR"] > 90).astype(float)
            + ((f["Temp"] > 38) | (f["Temp"] < 36)).astype(float)
            + ((f["Resp"] > 20) | (f["PaCO2"] < 32)).astype(float)
            + ((f["WBC"] > 12) | (f["WBC"] < 4)).astype(float)
        )
    sofa = np.stack(
        [
            # PaO2 is not charted in the 2019 data: SpO2/FiO2 with the cuts matching PaO2/FiO2 400/300/200/100.
            _points(spo2_fio2, [(512, 1), (357, 2), (214, 3), (89, 4)], higher_is_worse=False),
            _points(f["Platelets"], [(150, 1), (100, 2), (50, 3), (20, 4)], higher_is_worse=False),
            _points(f["Bilirubin_total"], [(1.2, 1), (2.0, 2), (6.0, 3), (12.0, 4)], higher_is_worse=True),
            _points(f["MAP"], [(70, 1)], higher_is_worse=False),
            _points(f["Creatinine"], [(1.2, 1), (2.0, 2), (3.5, 3), (5.0, 4)], higher_is_worse=True),
        ],
        axis=1,
    )
    sofa_sum = np.nansum(sofa, axis=1)
    scores = _rule_scores(f, n)
    iculos = _column(stay, "ICULOS")
    derived = np.column_stack(
        [
            iculos - _column(stay, "HospAdmTime"),
            shock,
            f["SBP"] - f["DBP"],
            bun_cr,
            spo2_fio2,
            sao2_fio2,
            sofa,
            sofa_sum,
            sofa_sum - np.nan_to_num(_shift_down(sofa_sum[:, None], 24)[:, 0], nan=0.0),
            sirs,
            scores["news2"],
            scores["qsofa"],
            scores["infection_signs"],
            measured.sum(axis=1).astype(np.float64),
        ]
    )
    parts.append(derived)
    out = np.concatenate(parts, axis=1)
    assert out.shape[1] == N_FEATURES, (out.shape, N_FEATURES)
    return out.astype(np.float32)
