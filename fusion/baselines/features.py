"""Causal hand-made features of a PhysioNet 2019 stay for the tree baselines.

``stay_features(stay)`` gives one row per hour of the stay; row ``t`` is computed from rows ``<= t``
only (forward fills, counts and windows that look back, never forward), so a model scoring hour
``t`` sees exactly what a bedside system would have had at that hour. ``tests/fusion/test_gbt_baseline.py``
checks this by truncating stays: the features of the first ``k`` hours are the first ``k`` rows of
the features of the whole stay.

Per vital sign and lab column: the last observed value (forward fill), hours since it was measured
(``NEVER`` if it never was), how many times it has been measured so far. Vital signs also get a
measured-this-hour flag, the change of the last value over 6 hours and min/max/mean of the values
measured in the last 6 hours; labs get the change since the previous measurement. Then ICULOS,
Age, Gender, Unit1, Unit2, HospAdmTime, the shock index and the rule scores (NEWS2, qSOFA,
infection signs of :mod:`icuwatch.core.rules`) on the forward-filled values.

Numpy only, vectorised over hours and columns. Changing what a column means or their order is a
model interface change: bump ``FEATURE_VERSION`` (saved models refuse to load with another).
"""

from __future__ import annotations

import warnings

import numpy as np

from icuwatch.core import features as fusion_features
from icuwatch.core import rules
from icuwatch.sources.physionet import LAB_COLUMNS, VITAL_COLUMNS, Stay

FEATURE_VERSION = "gbt-features-v1"
NEVER = 1000.0
"""Hours since a value that was never measured (longer than any stay in the data)."""
WINDOW_H = 6
"""Look-back of the vital-sign trends and rolling statistics, hours."""

VITALS: tuple[str, ...] = tuple(VITAL_COLUMNS)
LABS: tuple[str, ...] = tuple(LAB_COLUMNS)
STATIC: tuple[str, ...] = ("ICULOS", "Age", "Gender", "Unit1", "Unit2", "HospAdmTime")


def _names() -> tuple[str, ...]:
    names: list[str] = []
    for c in VITALS + LABS:
        names += [f"{c}_last", f"{c}_hours_since", f"{c}_count"]
    for c in VITALS:
        names += [
            f"{c}_measured",
            f"{c}_delta{WINDOW_H}h",
            f"{c}_min{WINDOW_H}h",
            f"{c}_max{WINDOW_H}h",
            f"{c}_mean{WINDOW_H}h",
        ]
    names += [f"{c}_delta_prev" for c in LABS]
    names += ["labs_measured_this_hour"]
    names += list(STATIC)
    names += ["shock_index", "news2", "qsofa", "infection_signs"]
    return tuple(names)


FEATURE_NAMES: tuple[str, ...] = _names()
N_FEATURES = len(FEATURE_NAMES)


def _forward_fill(values: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Last observed value per row and column, and the row index it came from (-1: none yet)."""
    rows = np.arange(values.shape[0])[:, None]
    last = np.maximum.accumulate(np.where(measured, rows, -1), axis=0)
    filled = np.take_along_axis(values, np.maximum(last, 0), axis=0)
    return np.where(last >= 0, filled, np.nan), last


def _shift_down(x: np.ndarray, k: int) -> np.ndarray:
    """``x`` moved ``k`` rows later; the first ``k`` rows are NaN (nothing known before the stay)."""
    out = np.full_like(x, np.nan)
    if k < x.shape[0]:
        out[k:] = x[: x.shape[0] - k]
    return out


def _window_stats(raw: np.ndarray, hours: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NaN-aware min, max, mean of rows ``t-hours+1 .. t`` (NaN where nothing was measured)."""
    padded = np.concatenate([np.full((hours - 1, raw.shape[1]), np.nan), raw], axis=0)
    windows = np.lib.stride_tricks.sliding_window_view(padded, hours, axis=0)  # [T, C, hours]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows -> NaN, as wanted
        return np.nanmin(windows, axis=-1), np.nanmax(windows, axis=-1), np.nanmean(windows, axis=-1)


def _rule_scores(ffill: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """NEWS2, qSOFA and infection signs from forward-filled values, via the shared rule code."""
    x = fusion_features.empty(n)
    layout = {
        "hr": "HR",
        "spo2": "O2Sat",
        "rr": "Resp",
        "sbp": "SBP",
        "map": "MAP",
        "temp": "Temp",
        "lactate": "Lactate",
        "wbc": "WBC",
        "creatinine": "Creatinine",
        "platelets": "Platelets",
        "bilirubin": "Bilirubin_total",
    }
    for name, psv in layout.items():
        x[:, fusion_features.INDEX[name]] = ffill[psv]
    fio2 = ffill["FiO2"]  # a fraction in the challenge data; a few charts give percent
    with np.errstate(invalid="ignore"):
        on_o2 = np.where(fio2 > 1.0, fio2 > 21.0, fio2 > 0.21)
    x[:, fusion_features.INDEX["o2_supplement"]] = np.where(np.isnan(fio2), np.nan, on_o2)
    # altered_mentation: the challenge data has no GCS/ACVPU column, so it stays NaN (scores 0).
    return {"news2": rules.news2(x), "qsofa": rules.qsofa(x), "infection_signs": rules.infection_signs(x)}


def _column(stay: Stay, name: str) -> np.ndarray:
    """The stay's column, or NaN throughout when its file has no such column."""
    if name in stay.columns:
        return stay.column(name).astype(np.float64)
    return np.full(stay.values.shape[0], np.nan)


def measurements(stay: Stay, cols: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    """Per hour and column (``[hours, len(cols)]`` each): the raw value (NaN when not measured), the
    measured flag, the forward-filled value, hours since measured (``NEVER`` before the first) and the
    count of measurements so far; row ``t`` from rows ``<= t`` only."""
    raw = np.stack([_column(stay, c) for c in cols], axis=1)
    measured = ~np.isnan(raw)
    ffill, last = _forward_fill(raw, measured)
    rows = np.arange(raw.shape[0])[:, None]
    hours_since = np.where(last >= 0, rows - last, NEVER).astype(np.float64)
    count = np.cumsum(measured, axis=0).astype(np.float64)
    return raw, measured, ffill, hours_since, count


def stay_features(stay: Stay) -> np.ndarray:
    """``[hours, N_FEATURES]`` float32 features, row ``t`` from rows ``<= t`` only (see module doc)."""
    n = stay.values.shape[0]
    cols = VITALS + LABS
    raw, measured, ffill, hours_since, count = measurements(stay, cols)

    nv = len(VITALS)
    per_column = np.stack([ffill, hours_since, count], axis=2).reshape(n, 3 * len(cols))

    v_raw, v_ffill = raw[:, :nv], ffill[:, :nv]
    v_delta = v_ffill - _shift_down(v_ffill, WINDOW_H)
    v_min, v_max, v_mean = _window_stats(v_raw, WINDOW_H)
    per_vital = np.stack([measured[:, :nv].astype(np.float64), v_delta, v_min, v_max, v_mean], axis=2).reshape(
        n, 5 * nv
    )

    # Change since the previous measurement: at a measured row the value before it is the forward
    # fill of the row above; carry that forward with the latest value.
    l_ffill, l_measured = ffill[:, nv:], measured[:, nv:]
    previous_at_measurement = np.where(l_measured, _shift_down(l_ffill, 1), np.nan)
    previous, _ = _forward_fill(previous_at_measurement, l_measured)
    lab_delta = l_ffill - previous
    labs_now = l_measured.sum(axis=1, keepdims=True).astype(np.float64)

    static = np.stack([_column(stay, c) for c in STATIC], axis=1)

    named = {c: ffill[:, i] for i, c in enumerate(cols)}
    with np.errstate(divide="ignore", invalid="ignore"):
        shock = np.where(named["SBP"] > 0, named["HR"] / named["SBP"], np.nan)
    scores = _rule_scores(named, n)
    tail = np.stack([shock, scores["news2"], scores["qsofa"], scores["infection_signs"]], axis=1)

    out = np.concatenate([per_column, per_vital, lab_delta, labs_now, static, tail], axis=1)
    assert out.shape[1] == N_FEATURES
    return out.astype(np.float32)
