"""Labs of the ``icu`` population: when they are ordered and where a patient's values sit, fitted to real stays.

The stylised schedule (``labs.draws``: every analyte at admission, a routine panel every 4-8 h) charts a
bicarbonate in 22 % of hours; PhysioNet 2019 set B charts one in 0.3 %, a BUN in 6 %, a glucose in
22 % (fingersticks). Real orders come as panels, and the panels are what a chart shows: in set B
BUN, creatinine, potassium and glucose are always drawn together, a blood count mostly with them, a
blood gas with its lactate, potassium and glucose. So orders are drawn as **events** of a few types,
each a Poisson process whose hourly rate is fitted per bin of the hour since admission
(``HOUR_BINS``: admission work-ups come early), times a per-patient frailty (gamma, shape fitted to
how many real stays get none: most stays never see a blood gas, a ventilated one sees many), each
event drawing its analytes as one of the sets real events of that type show (BUN never without its
creatinine), with their frequencies:

==========  =================================================================
event       what makes a real lab-hour this type (first rule that matches)
==========  =================================================================
blood_gas   pH or PaCO2 measured
routine     BUN or creatinine measured
cbc         white count, haemoglobin or platelets measured
glucose     glucose alone (a fingerstick)
single      anything else alone (a lactate, a potassium)
==========  =================================================================

Sicker patients are tested more: the blood-gas and routine rates are multiplied by
``1 + SICK_GAIN * severity`` (a judgment, not fitted: set B records no severity). PaO2, which
set B does not report, joins every simulated blood gas.

Values: each analyte's baseline is drawn from the quantiles of real stays' 24-hour medians through a
Gaussian copula (pairwise normal-score correlations, e.g. BUN with creatinine), and each result
varies around it (and the condition's shift, ``labs._shift``) with the real stays' within-stay spread.
"""

from __future__ import annotations

import math

import numpy as np

from icuwatch.core.physionet_row import LAB_COLUMNS

from .population import QUANTILE_GRID, copula_draw

EVENT_TYPES: tuple[str, ...] = ("blood_gas", "routine", "cbc", "glucose", "single")
HOUR_BINS: tuple[int, ...] = (2, 3, 4, 7, 13)
"""Rates are fitted per bin of the hour since admission (PhysioNet's ICULOS: the first hour is 1):
[2], [3], [4, 6], [7, 12], [13, ...). Set B records nothing in hour 1, so neither does the simulator."""
SICK_GAIN = 2.0
SETS_KEPT = 25
"""Per event type, the analyte sets real lab-hours show, the most frequent kept (the rest are rare
combinations)."""
ABSOLUTE = ("ph",)
"""Analytes whose within-stay spread is absolute (pH units), not relative."""


def event_type(measured: set[str]) -> str | None:
    if measured & {"ph", "paco2"}:
        return "blood_gas"
    if measured & {"bun", "creatinine"}:
        return "routine"
    if measured & {"wbc", "hemoglobin", "platelets"}:
        return "cbc"
    if measured == {"glucose"}:
        return "glucose"
    return "single" if measured else None


def fit(stays, analytes: tuple[str, ...], hours: int) -> dict:
    """Ordering rates, inclusion probabilities, baseline quantiles, copula and spread of ``analytes``
    (simulator names) from ``stays`` (``sources.physionet.Stay``), their first ``hours`` hours."""
    from scipy.stats import norm, rankdata

    column = {a: c for c, a in LAB_COLUMNS.items() if a in analytes}
    present = [a for a in analytes if a in column]
    n_bins = len(HOUR_BINS)
    events: dict = {t: {"count": np.zeros(n_bins), "sets": {}, "per_stay": []} for t in EVENT_TYPES}
    exposure = np.zeros(n_bins)
    medians = np.full((len(stays), len(present)), np.nan)
    spread: dict[str, list[np.ndarray]] = {a: [] for a in present}
    for k, stay in enumerate(stays):
        h = stay.column("ICULOS") if "ICULOS" in stay.columns else np.arange(1, len(stay.values) + 1)
        keep = h <= hours
        x = np.stack([stay.column(column[a])[keep] for a in present], axis=1)
        bins = hour_bin(h[keep])
        exposure += np.bincount(bins[bins >= 0], minlength=n_bins)
        stay_counts = dict.fromkeys(EVENT_TYPES, 0)
        for row, b in zip(np.isfinite(x), bins):
            measured = {a for a, m in zip(present, row) if m}
            kind = event_type(measured)
            if kind is not None and b >= 0:
                events[kind]["count"][b] += 1
                stay_counts[kind] += 1
                key = " ".join(sorted(measured))
                events[kind]["sets"][key] = events[kind]["sets"].get(key, 0) + 1
        for kind, n in stay_counts.items():
            events[kind]["per_stay"].append(n)
        for j, a in enumerate(present):
            seen = x[np.isfinite(x[:, j]), j]
            if len(seen):
                medians[k, j] = np.median(seen)
            if len(seen) >= 2:
                m = medians[k, j]
                relative = np.log(np.maximum(seen, 1e-3) / max(m, 1e-3))
                spread[a].append(seen - m if a in ABSOLUTE else relative)
    grid = QUANTILE_GRID
    scores = np.full_like(medians, np.nan)
    for j in range(len(present)):
        ok = np.isfinite(medians[:, j])
        scores[ok, j] = norm.ppf((rankdata(medians[ok, j]) - 0.5) / ok.sum())
    corr = np.eye(len(present))
    for i in range(len(present)):
        for j in range(i + 1, len(present)):
            both = np.isfinite(scores[:, i]) & np.isfinite(scores[:, j])
            if both.sum() >= 30:
                corr[i, j] = corr[j, i] = np.corrcoef(scores[both, i], scores[both, j])[0, 1]
    return {
        "analytes": present,
        "hour_bins": list(HOUR_BINS),
        "events": {
            t: {
                "per_hour": [_rate(e["count"][b], exposure[b]) for b in range(n_bins)],
                "frailty_shape": frailty_shape(np.asarray(e["per_stay"])),
                "sets": _common_sets(e["sets"]),
            }
            for t, e in events.items()
        },
        "baseline_quantiles": {
            a: [round(float(q), 4) for q in np.quantile(medians[np.isfinite(medians[:, j]), j], grid)]
            for j, a in enumerate(present)
        },
        "normal_score_correlation": np.round(_nearest_correlation(corr), 4).tolist(),
        "within_stay_sd": {
            a: round(float(np.std(np.concatenate(spread[a]))), 4) if spread[a] else 0.0 for a in present
        },
    }


def _rate(hours_with: float, hours: float) -> float:
    """Poisson rate per hour that gives ``hours_with`` of ``hours`` at least one event: -log(1 - share)
    (several events in one hour chart as one)."""
    share = min(float(hours_with) / max(float(hours), 1.0), 0.999)
    return round(-math.log(1.0 - share), 5)


def _common_sets(counts: dict[str, int], top: int = SETS_KEPT) -> list[list]:
    """[[analytes joined by spaces, probability], ...]: the ``top`` most frequent sets of an event type."""
    kept = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    total = sum(n for _, n in kept) or 1
    return [[k, round(n / total, 5)] for k, n in kept]


def hour_bin(iculos: np.ndarray) -> np.ndarray:
    """Index into ``HOUR_BINS`` of each hour since admission (1 = the first); -1 before the first bin."""
    return np.searchsorted(np.asarray(HOUR_BINS), np.asarray(iculos), side="right") - 1


def frailty_shape(counts: np.ndarray) -> float:
    """Shape k of a gamma(k, 1/k) multiplier on a Poisson rate that gives ``counts`` their share of
    zeros: P(0) = (1 + mean / k) ** -k, solved by bisection on log k. 50 = as good as no frailty.
    Stays shorter than the fitted hours add zeros of their own, so k comes out somewhat small (more
    heterogeneity than real), and each event type's frailty is drawn on its own (a patient's blood
    gases and panels are not made to go together)."""
    mean, zeros = float(np.mean(counts)), float(np.mean(counts == 0))
    if mean <= 0 or zeros <= math.exp(-mean):
        return 50.0
    lo, hi = math.log(1e-3), math.log(50.0)
    for _ in range(60):
        k = math.exp((lo + hi) / 2)
        if (1 + mean / k) ** -k > zeros:  # too many zeros: P(0) falls as k grows
            lo = math.log(k)
        else:
            hi = math.log(k)
    return round(math.exp((lo + hi) / 2), 4)


def _nearest_correlation(c: np.ndarray) -> np.ndarray:
    """A correlation matrix near ``c`` (pairwise estimates need not be positive definite): eigenvalues
    floored, then rescaled to a unit diagonal."""
    w, v = np.linalg.eigh((c + c.T) / 2.0)
    fixed = (v * np.maximum(w, 1e-3)) @ v.T
    d = np.sqrt(np.diag(fixed))
    return fixed / np.outer(d, d)


def draw_baseline(fitted: dict, rng: np.random.Generator, comorbidities: tuple[str, ...] = ()) -> dict[str, float]:
    """Baseline per analyte through the fitted copula (tilted by comorbidity, ``course.LAB_TILTS``)."""
    from .course import LAB_TILTS

    return copula_draw(
        rng,
        fitted["analytes"],
        fitted["normal_score_correlation"],
        fitted["baseline_quantiles"],
        comorbidities,
        LAB_TILTS,
    )


def vary(fitted: dict, analyte: str, value: float, rng: np.random.Generator) -> float:
    """``value`` with the real within-stay spread of ``analyte`` (relative, pH absolute), around it as
    a median (the baseline is a stay's median)."""
    sd = float(fitted["within_stay_sd"].get(analyte, 0.0))
    if analyte in ABSOLUTE:
        return value + sd * float(rng.standard_normal())
    return value * math.exp(sd * float(rng.standard_normal()))


def draw_orders(
    fitted: dict, severity, duration_s: float, rng: np.random.Generator, own_analytes: tuple[str, ...] = ("pao2",)
) -> list[tuple[float, tuple[str, ...]]]:
    """(collection time s, analytes) of every order within ``duration_s``: per event type a Poisson
    process at the fitted rate of the hour's bin times the patient's frailty, the sick types' rate
    raised with ``severity(t)`` (by thinning), its analytes one of the type's fitted sets;
    ``own_analytes`` (the simulator's, not in the data) join every blood gas."""
    out = []
    for kind in EVENT_TYPES:
        spec = fitted["events"][kind]
        shape = float(spec["frailty_shape"])
        frailty = float(rng.gamma(shape, 1.0 / shape))
        gain = SICK_GAIN if kind in ("blood_gas", "routine") else 0.0
        per_hour = np.asarray(spec["per_hour"]) * frailty
        top = float(per_hour.max()) * (1.0 + gain) / 3600.0
        if top <= 0:
            continue
        t = 0.0
        while True:
            t += float(rng.exponential(1.0 / top))
            if t >= duration_s:
                break
            b = int(hour_bin(np.array([t // 3600.0 + 1]))[0])
            rate = 0.0 if b < 0 else per_hour[b] * (1.0 + gain * float(severity(t))) / 3600.0
            if rng.random() * top >= rate:
                continue
            sets, probs = zip(*spec["sets"])
            analytes = tuple(sets[int(rng.choice(len(sets), p=np.asarray(probs) / sum(probs)))].split())
            if kind == "blood_gas":
                analytes += own_analytes
            if analytes:
                out.append((t, analytes))
    return sorted(out)
