"""Labs of the ``icu`` population: when they are ordered and where a patient's values sit, fitted to real stays.

The stylised schedule (``labs.draws``: every analyte at admission, a routine panel every 4-8 h) charts a
bicarbonate in 22 % of hours; PhysioNet 2019 set B charts one in 0.3 %, a BUN in 6 %, a glucose in
22 % (fingersticks). Real orders come as panels, and the panels are what a chart shows: in set B
BUN, creatinine, potassium and glucose are always drawn together, a blood count mostly with them, a
blood gas with its lactate, potassium and glucose. So orders are drawn as **events** of a few types,
each a renewal process hour by hour: the chance of a type's first event at each hour since
admission, and of the next one each number of hours after the last, are the discrete-time hazards
of real stays (``hazards``: a stay that ends leaves the risk set, so short stays do not read as
"never tested"), so rounds come at real intervals (a basic panel every 12-24 h, fingersticks every
1-6 h) where a Poisson process would cluster them; a per-patient frailty (gamma, shape fitted to
how unevenly real stays are tested, ``frailty_for_counts``: most stays never see a blood gas, a
ventilated one sees many) scales each hour's chance. Each event draws its analytes as one of the
sets real events of that type show (BUN never without its creatinine), with their frequencies:

==========  =================================================================
event       what makes a real lab-hour this type (first rule that matches)
==========  =================================================================
blood_gas   pH or PaCO2 measured
routine     BUN or creatinine measured
cbc         white count, haemoglobin or platelets measured
glucose     glucose alone (a fingerstick)
single      anything else alone (a lactate, a potassium)
==========  =================================================================

Sicker patients are tested more: the blood-gas and routine chances are raised to
``1 - (1 - p) ** (frailty * (1 + SICK_GAIN * severity))`` (a judgment, not fitted: set B records
no severity). PaO2, which set B does not report, joins every simulated blood gas.

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
FIRST_HOUR = 2
"""Set B records no lab in a stay's first hour (ICULOS 1), so neither does the simulator."""
SICK_GAIN = 2.0
MIN_AT_RISK = 30
HAZARD_HOURS = 72
"""Hours since admission the order hazards are fitted over (values and sets: ``population.FIT_HOURS``):
a basic panel's daily round only shows in gaps of up to a day, which a 24-h window cannot hold."""
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
    """Ordering hazards and frailty, analyte sets, baseline quantiles, copula and spread of ``analytes``
    (simulator names) from ``stays`` (``sources.physionet.Stay``): values and sets from their first
    ``hours`` hours, the hazards from their first ``HAZARD_HOURS`` (a daily round needs more than a
    day to be seen)."""
    from scipy.stats import norm, rankdata

    column = {a: c for c, a in LAB_COLUMNS.items() if a in analytes}
    present = [a for a in analytes if a in column]
    events: dict = {t: {"sets": {}} for t in EVENT_TYPES}
    at_hours: dict[str, list[tuple[list[int], int, int]]] = {t: [] for t in EVENT_TYPES}
    medians = np.full((len(stays), len(present)), np.nan)
    spread: dict[str, list[np.ndarray]] = {a: [] for a in present}
    for k, stay in enumerate(stays):
        h = stay.column("ICULOS") if "ICULOS" in stay.columns else np.arange(1, len(stay.values) + 1)
        keep, watched = h <= hours, h <= HAZARD_HOURS
        x = np.stack([stay.column(column[a])[keep] for a in present], axis=1)
        measured_at = np.isfinite(np.stack([stay.column(column[a])[watched] for a in present], axis=1))
        stay_hours: dict[str, list[int]] = {t: [] for t in EVENT_TYPES}
        for row, hour in zip(measured_at, h[watched]):
            measured = {a for a, m in zip(present, row) if m}
            kind = event_type(measured)
            if kind is not None and hour >= FIRST_HOUR:
                stay_hours[kind].append(int(hour))
                if hour <= hours:
                    key = " ".join(sorted(measured))
                    events[kind]["sets"][key] = events[kind]["sets"].get(key, 0) + 1
        if watched.any():
            for kind in EVENT_TYPES:
                at_hours[kind].append((stay_hours[kind], int(h[watched].min()), int(h[watched].max())))
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
    fitted_hazards = {t: hazards(at_hours[t], HAZARD_HOURS) for t in EVENT_TYPES}
    return {
        "analytes": present,
        "hazard_hours": HAZARD_HOURS,
        "events": {
            t: {
                **fitted_hazards[t],
                "frailty_shape": frailty_for_counts(fitted_hazards[t], at_hours[t], hours),
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


def _common_sets(counts: dict[str, int], top: int = SETS_KEPT) -> list[list]:
    """[[analytes joined by spaces, probability], ...]: the ``top`` most frequent sets of an event type."""
    kept = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    total = sum(n for _, n in kept) or 1
    return [[k, round(n / total, 5)] for k, n in kept]


def hazards(stays: list[tuple[list[int], int, int]], hours: int) -> dict:
    """Discrete-time hazards of one event type from real stays (each: the hours since admission with
    an event, the stay's first and last charted hour within ``hours``): ``first_hazard[h - 1]``, the
    chance of the first event at hour h when none came before; ``gap_hazard[g - 1]``, the chance of
    the next event g hours after the last when none came between. A stay is at risk only while it is
    charted: one that ends leaves the risk set (short stays do not read as "never tested"), one whose
    chart starts late joins it then. An hour with fewer than ``MIN_AT_RISK`` stays at risk takes the
    previous hour's hazard."""
    first = np.zeros((2, hours))  # events, at risk
    gap = np.zeros((2, hours))
    for at, start, last in stays:
        end = min(last, hours)
        stop = at[0] if at else end
        first[1, max(start, 1) - 1 : stop] += 1
        if at:
            first[0, at[0] - 1] += 1
        for e, nxt in zip(at, [*at[1:], None]):
            reach = (nxt if nxt is not None else end) - e
            gap[1, : max(reach, 0)] += 1
            if nxt is not None:
                gap[0, nxt - e - 1] += 1
    return {"first_hazard": _ratio(first), "gap_hazard": _ratio(gap)}


def frailty_for_counts(fitted: dict, stays: list[tuple[list[int], int, int]], hours: int, n: int = 4000) -> float:
    """Shape k of the per-patient gamma(k, 1/k) frailty ``f`` (an hour's chance ``1 - (1 - p) ** f``)
    whose simulated counts over ``hours`` spread like real stays' that lasted them (variance to mean):
    the hazards alone give every patient the average habit, while a real unit has patients on hourly
    fingersticks and others never tested. Searched on a grid, seeded (the same fit every time)."""
    real = np.array([sum(e <= hours for e in at) for at, start, last in stays if start <= 2 <= hours <= last], float)
    if len(real) < MIN_AT_RISK or real.mean() <= 0:
        return 50.0
    target = real.var() / real.mean()
    rng = np.random.default_rng(0)
    u = rng.random((hours, n))
    best, best_k = np.inf, 50.0
    for k in np.exp(np.linspace(np.log(0.1), np.log(50.0), 25)):
        counts = _simulated_counts(fitted, rng.gamma(k, 1.0 / k, n), u)
        gap = abs(np.log(max(counts.var() / max(counts.mean(), 1e-9), 1e-9) / max(target, 1e-9)))
        if gap < best:
            best, best_k = gap, float(k)
    return round(best_k, 4)


def _simulated_counts(fitted: dict, frailty: np.ndarray, u: np.ndarray) -> np.ndarray:
    first, gap = np.asarray(fitted["first_hazard"]), np.asarray(fitted["gap_hazard"])
    counts = np.zeros(len(frailty))
    last = np.zeros(len(frailty), int)
    for h in range(1, len(u) + 1):
        p = np.where(last == 0, first[min(h, len(first)) - 1], gap[np.minimum(h - last, len(gap)) - 1])
        hit = u[h - 1] < 1.0 - (1.0 - p) ** frailty
        counts += hit
        last = np.where(hit, h, last)
    return counts


def _ratio(counts: np.ndarray) -> list[float]:
    out, previous = [], 0.0
    for events, at_risk in counts.T:
        previous = float(events / at_risk) if at_risk >= MIN_AT_RISK else previous
        out.append(round(previous, 5))
    return out


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
    """(collection time s, analytes) of every order within ``duration_s``: per event type, hour by
    hour, an event with the fitted hazard (of a first event, or of the next one the hours since the
    last; past the fitted hours the last fitted value), scaled by the patient's frailty and, for the
    sick types, raised with ``severity`` (``1 - (1 - p) ** (frailty * (1 + SICK_GAIN * severity))``),
    at a uniform second of the hour, its analytes one of the type's fitted sets; ``own_analytes``
    (the simulator's, not in the data) join every blood gas. A renewal process: real panels come at
    rounds (a basic panel every 12-24 h, a fingerstick every 1-6 h), which a Poisson process would
    cluster."""
    out = []
    n_hours = int(math.ceil(duration_s / 3600.0))
    for kind in EVENT_TYPES:
        spec = fitted["events"][kind]
        first, gap = np.asarray(spec["first_hazard"]), np.asarray(spec["gap_hazard"])
        gain = SICK_GAIN if kind in ("blood_gas", "routine") else 0.0
        if not spec["sets"]:  # a type the fitted stays never showed
            continue
        shape = float(spec["frailty_shape"])
        frailty = float(rng.gamma(shape, 1.0 / shape))
        sets, probs = zip(*spec["sets"])
        weights = np.asarray(probs) / sum(probs)
        u = rng.random((n_hours, 3))
        last = None
        for h in range(1, n_hours + 1):
            t = (h - 1 + float(u[h - 1, 1])) * 3600.0
            if t >= duration_s:
                break
            p = first[min(h, len(first)) - 1] if last is None else gap[min(h - last, len(gap)) - 1]
            p = 1.0 - (1.0 - p) ** (frailty * (1.0 + gain * float(severity(t))))
            if u[h - 1, 0] >= p:
                continue
            last = h
            pick = min(int(np.searchsorted(np.cumsum(weights), u[h - 1, 2])), len(sets) - 1)
            analytes = tuple(sets[pick].split())
            if kind == "blood_gas":
                analytes += own_analytes
            if analytes:
                out.append((t, analytes))
    return sorted(out)
