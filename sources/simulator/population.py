"""Who is in the simulated unit: baseline vital signs and how they drift, fitted to real ICU stays.

The stylised simulator drew every baseline from narrow, clipped normals (heart rate 80 +- 9 within
60-98, SBP 122 +- 11 within 102-148, ...) and let a vital move only with severity and a few
seconds' noise, so a classifier told its charted hours from real ones at AUROC 0.975
(``icuwatch simulate --realism-report``). The ``icu`` population draws both from what real stays do:

* **baselines**: per stay, the median of each vital over its first ``FIT_HOURS`` hours; the six
  medians are drawn jointly through a Gaussian copula (the correlation of their normal scores and
  each median's empirical quantiles), so a tachycardic, hypotensive or COPD-like baseline comes
  with its usual companions.
* **drift**: the charted hourly values of a stay wander around its median (a robust sd, 1.4826
  times the median absolute residual, and the 1-hour autocorrelation per vital). Real residuals
  are heavy-tailed (heart rate: sd 8.7, robust 5.9 bpm): the bulk is a patient's wander, the tail
  what happens to them (agitation, fever, a procedure, a monitor's spike), which the simulator
  draws on its own (``course``, ``monitor_faults``), so the drift takes the bulk's spread only.
  The simulator adds, on top of its few-seconds noise, a stationary process with that sd and an
  exponential autocorrelation of the same 1-hour value, sampled spectrally (``DRIFT_TERMS`` cosines
  with Cauchy-distributed frequencies and uniform phases: the random-Fourier-feature form of an
  Ornstein-Uhlenbeck process), so it is a deterministic function of time per patient: no state
  across the streaming blocks, the same value for any block layout.

Labs (ordering pattern, baselines, spread) are fitted alongside: ``lab_orders``.

The fitted numbers are aggregate statistics (quantiles, correlations, spreads) in ``population.json``
next to this file, fitted on the PhysioNet 2019 set-B stays of the TRAIN split (``sources.physionet.
split_of``) only, so the realism report can test against the other stays. Refit with
``icuwatch simulate --fit-population``. Numpy and scipy only; the simulator runs without the data.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

POPULATION_FILE = Path(__file__).with_name("population.json")
VITALS: tuple[str, ...] = ("hr", "spo2", "sbp", "dbp", "rr", "temp")
DRIFTING: tuple[str, ...] = (*VITALS, "map")
"""``map`` drifts as the measured mean pressure's departure from (SBP + 2 DBP) / 3: a monitor measures
MAP (oscillometry, an arterial line) rather than computing it, and real charts show it."""
PSV_COLUMNS = {"hr": "HR", "spo2": "O2Sat", "sbp": "SBP", "dbp": "DBP", "rr": "Resp", "temp": "Temp", "map": "MAP"}
FIT_HOURS = 24
QUANTILES = 199
TAIL = 0.005
"""The copula's quantile grid runs from the 0.5th to the 99.5th percentile of the stay medians (the
extremes of 8,000 real stays include charting errors: a median heart rate of 26, respiration 1)."""
QUANTILE_GRID = np.linspace(TAIL, 1.0 - TAIL, QUANTILES)
"""The probabilities at which fitted quantiles are stored (``population.json``; labs too)."""
DRIFT_TERMS = 16
MIN_DRIFT_PERIOD_S = 600.0
"""Drift frequencies are capped at one cycle per 10 minutes: faster wander is the noise's job."""
STREAM_CHARTING = 7
"""Spawn-key stream of the charting mask (``patients`` uses 0..5 per patient)."""
DRIFT_GRID_S = 10.0
ROBUST_SD = 1.4826
"""A normal distribution's sd per unit of median absolute deviation."""
MIN_CHARTED_HOURS = 10
OFF_RATE_PRIOR_HOURS = 4.0
"""Pseudo-hours at the pooled rate a stay's own monitor-off rate is shrunk with (``_off_rate``)."""
RESOLUTION = {"temp": 0.1}
"""Charted steps (1 elsewhere): residuals are spread over their step before the robust sd (``_robust_sd``)."""
DBP_FROM_SBP = 0.5
"""``physiology``: diastolic pressure moves with half the systolic wander; its own drift is what is left."""
FAST_NOISE_SD = {"hr": 3.2, "spo2": 0.7, "sbp": 4.3, "dbp": 2.9, "rr": 1.5, "temp": 0.07, "map": 0.0}
"""sd of the simulator's own seconds-scale noise (``physiology._NOISE``: AR and white, combined);
the drift supplies the rest of a chart's hourly spread."""


@dataclass(frozen=True)
class Drift:
    """One patient's slow wander per ``DRIFTING`` vital: ``sd`` and the cosines' angular frequencies
    (rad/s) and phases."""

    sd: tuple[float, ...]
    omega: tuple[tuple[float, ...], ...]
    phase: tuple[tuple[float, ...], ...]
    offset: tuple[float, ...] = ()
    """A constant per vital (the measured MAP's own offset from (SBP + 2 DBP) / 3); empty: none."""

    def at(self, vital: str, t_rel: np.ndarray) -> np.ndarray:
        """The wander at ``t_rel`` seconds: exact on a ``DRIFT_GRID_S`` grid, linear in between (its
        fastest cycle is ``MIN_DRIFT_PERIOD_S``), which keeps a day at 1 Hz cheap."""
        i = DRIFTING.index(vital)
        t = np.asarray(t_rel, dtype=float)
        offset = self.offset[i] if self.offset else 0.0
        if self.sd[i] == 0.0:
            return np.full(t.shape, offset)
        knots = np.arange(np.floor(t.min() / DRIFT_GRID_S), np.floor(t.max() / DRIFT_GRID_S) + 2) * DRIFT_GRID_S
        terms = np.cos(knots[:, None] * np.asarray(self.omega[i]) + np.asarray(self.phase[i]))
        values = self.sd[i] * math.sqrt(2.0 / DRIFT_TERMS) * terms.sum(axis=1)
        return np.interp(t, knots, values) + offset


CHART_GROUPS: dict[str, tuple[str, ...]] = {
    "spo2": ("spo2",),
    "bp": ("sbp", "dbp", "map"),
    "rr": ("rr",),
    "temp": ("temp",),
}
"""Vitals charted (or not) together in an hour; heart rate stands for the monitor being on."""


def chart_mask(seed: int, index: int, hours: int) -> tuple[np.ndarray, np.ndarray]:
    """(monitor on [hours] bool, reported [hours, len(CHART_GROUPS)] bool) of one patient, hour by
    hour from admission: the monitor's on/off a two-state Markov chain (off = an hour with no vital
    sign: transport, procedures, gaps in charting) whose chance of going off is the patient's own,
    drawn from the quantiles of real stays' (``_off_rate``: most are charted every hour, a few have
    many gaps), and of staying off the pooled one; each group reported in an hour the monitor is on
    with the patient's own probability, drawn from the beta distribution fitted to real stays'
    shares (some patients' respiration is rarely charted); temperatures at real stays' intervals
    (``_temperature_hours``). Deterministic in (seed, index), and prefix-stable: a longer horizon
    extends the mask, never redraws it (each part has its own generator, and hourly draws are made
    in hour order). Read-only arrays."""
    return _chart_mask(seed, index, hours)


@lru_cache(maxsize=4096)
def _chart_mask(seed: int, index: int, hours: int) -> tuple[np.ndarray, np.ndarray]:
    fitted = load()["charting"]

    def stream(part: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, STREAM_CHARTING, part)))

    groups = stream(0)
    p_group = np.array([groups.beta(*fitted["reported_share_beta"][g]) for g in CHART_GROUPS])
    u = stream(1).random((hours, 1 + len(CHART_GROUPS)))
    off_after_on = float(np.interp(stream(3).random(), QUANTILE_GRID, fitted["off_after_on_quantiles"]))
    on = np.ones(hours, bool)
    for h in range(1, hours):
        p_off = fitted["off_after_off"] if not on[h - 1] else off_after_on
        on[h] = u[h, 0] >= p_off
    reported = (u[:, 1:] < p_group) & on[:, None]
    reported[:, list(CHART_GROUPS).index("temp")] = _temperature_hours(fitted["temp"], hours, stream(2)) & on
    on.setflags(write=False)
    reported.setflags(write=False)
    return on, reported


@lru_cache(maxsize=1)
def load(path: str | Path = POPULATION_FILE) -> dict:
    """The fitted population (cached: one shared dict, read it, do not change it)."""
    return json.loads(Path(path).read_text())


def draw_baseline(
    rng: np.random.Generator, population: dict | None = None, comorbidities: tuple[str, ...] = ()
) -> dict[str, float]:
    """One patient's baseline per vital (``VITALS``), drawn through the fitted Gaussian copula (tilted
    into a tail where a comorbidity says so, ``course.VITAL_TILTS``)."""
    from .course import VITAL_TILTS

    pop = population or load()
    base = pop["baseline"]
    return copula_draw(rng, VITALS, base["normal_score_correlation"], base["quantiles"], comorbidities, VITAL_TILTS)


def copula_draw(
    rng: np.random.Generator,
    names: tuple[str, ...] | list[str],
    correlation: list,
    quantiles: dict[str, list[float]],
    comorbidities: tuple[str, ...] = (),
    tilts: dict | None = None,
) -> dict[str, float]:
    """Values per name through a Gaussian copula: correlated normal scores (pushed into a tail where a
    comorbidity says so, ``course.tilt``), each mapped through its fitted quantiles (``QUANTILE_GRID``)."""
    from scipy.stats import norm

    from .course import tilt

    z = rng.multivariate_normal(np.zeros(len(names)), np.asarray(correlation))
    u = norm.cdf(tilt(z, names, comorbidities, tilts or {}))
    return {n: float(np.interp(u[i], QUANTILE_GRID, quantiles[n])) for i, n in enumerate(names)}


def draw_drift(rng: np.random.Generator, population: dict | None = None) -> Drift:
    """One patient's drift: per vital the fitted sd beyond the simulator's own noise, and an
    Ornstein-Uhlenbeck autocorrelation with the fitted 1-hour value."""
    pop = population or load()
    sds, omegas, phases = [], [], []
    cap = 2.0 * math.pi / MIN_DRIFT_PERIOD_S
    offsets = []
    sbp = pop["drift"]["sbp"]
    sbp_within_var = max(sbp["residual_sd"] ** 2 - FAST_NOISE_SD["sbp"] ** 2, 0.0)
    sbp_cov = sbp["autocorrelation_1h"] * sbp["residual_sd"] ** 2
    for v in DRIFTING:
        d = pop["drift"][v]
        carried = (DBP_FROM_SBP**2 * sbp_within_var, DBP_FROM_SBP**2 * sbp_cov) if v == "dbp" else (0.0, 0.0)
        sd, rho = drift_process(d["residual_sd"], d["autocorrelation_1h"], v, carried)
        sds.append(sd)
        tau_s = -3600.0 / math.log(rho)
        omega = np.minimum(np.abs(rng.standard_cauchy(DRIFT_TERMS)) / tau_s, cap)
        omegas.append(tuple(float(w) for w in omega))
        phases.append(tuple(float(p) for p in rng.uniform(0.0, 2.0 * math.pi, DRIFT_TERMS)))
        offsets.append(float(rng.normal(0.0, d.get("between_stay_sd", 0.0))))
    return Drift(tuple(sds), tuple(omegas), tuple(phases), tuple(offsets))


def drift_process(
    residual_sd: float, autocorrelation_1h: float, vital: str, carried: tuple[float, float] = (0.0, 0.0)
) -> tuple[float, float]:
    """(sd, 1-hour autocorrelation) of the drift process that reproduces a real chart's spread around
    its stay median and its 1-hour autocorrelation, once the simulator's own noise is added:

    * the noise (``FAST_NOISE_SD``) is uncorrelated an hour apart: it adds variance, no covariance;
    * ``carried`` (variance, 1-hour covariance) is what the vital carries of another's drift (DBP:
      half the SBP wander, ``physiology``), taken off both;
    * a persistent process' spread around its own window median is smaller than its variance by the
      window mean's share ``f`` (``window_share``, ``FIT_HOURS`` hourly values), so the process'
      variance is the chart's divided by ``1 - f``."""
    total = residual_sd**2
    own_var = total - FAST_NOISE_SD[vital] ** 2 - carried[0]
    if own_var <= 0:
        return 0.0, 0.05
    own_cov = autocorrelation_1h * total - carried[1]
    rho = float(np.clip(own_cov / own_var, 0.05, 0.98))
    return math.sqrt(own_var / (1.0 - window_share(rho, FIT_HOURS))), rho


def window_share(rho: float, n: int) -> float:
    """Share of an AR(1) process' variance (lag-1 correlation ``rho``) carried by the mean of ``n``
    consecutive values: (1/n^2) sum_ij rho^|i-j|."""
    lags = np.arange(1, n)
    return float((n + 2.0 * np.sum((n - lags) * rho**lags)) / n**2)


def counted_hours(seed: int, index: int, hours: int) -> np.ndarray:
    """[hours] bool: hours whose charted respiration rate a nurse counted (breaths in 30 s, doubled: an
    even number), at the fitted share of real charts (set B's rates are even far more often than odd).
    Deterministic in (seed, index) and prefix-stable, like ``chart_mask``. Read-only."""
    return _counted_hours(seed, index, hours)


@lru_cache(maxsize=4096)
def _counted_hours(seed: int, index: int, hours: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, STREAM_CHARTING, 4)))
    out = rng.random(hours) < load()["charting"]["rr_counted_share"]
    out.setflags(write=False)
    return out


def _temperature_hours(fitted: dict, hours: int, rng: np.random.Generator) -> np.ndarray:
    """[hours] bool: hours a temperature is taken. The first at an hour drawn from real stays' first
    temperature hour; then each interval is an hour with the patient's own chance (drawn from the
    quantiles of real stays' share of hourly intervals: most stays have none, a patient on a probe
    nearly all), else drawn from real stays' longer intervals (a q4h round)."""
    out = np.zeros(hours, bool)
    h = int(rng.choice(len(fitted["first_hour"]), p=_norm(fitted["first_hour"])))
    hourly = float(np.interp(rng.random(), QUANTILE_GRID, fitted["hourly_share_quantiles"]))
    longer = _norm(fitted["interval_over_1h"])
    while h < hours:
        if h >= 1:
            out[h - 1] = True  # hour h since admission (1 = the first) is index h - 1
        h += 1 if rng.random() < hourly else max(int(rng.choice(len(longer), p=longer)), 2)
    return out


def _norm(p: list[float]) -> np.ndarray:
    a = np.asarray(p, float)
    return a / a.sum()


def _off_rate(offs: float, ons: float, pooled: float) -> float:
    """A stay's chance of an hour without vitals after one with them (``offs`` of ``ons``), shrunk
    towards the ``pooled`` rate by ``OFF_RATE_PRIOR_HOURS`` (a stay's few transitions alone would
    overstate the spread)."""
    return float((offs + pooled * OFF_RATE_PRIOR_HOURS) / (ons + OFF_RATE_PRIOR_HOURS))


def _robust_sd(residuals: np.ndarray, step: float) -> float:
    """1.4826 x the median absolute residual, the residuals first spread uniformly over their charted
    ``step`` (seeded): whole-number charts would otherwise give a median absolute residual of exactly
    1 or 2, a robust sd quantised to 1.48 or 2.97 (SpO2's is 1.23, respiration's 2.49)."""
    r = residuals + np.random.default_rng(0).uniform(-step / 2.0, step / 2.0, len(residuals))
    return float(ROBUST_SD * np.median(np.abs(r - np.median(r))))


def _beta_moments(x: np.ndarray) -> list[float]:
    """(a, b) of the beta distribution with the mean and variance of shares ``x`` (method of moments)."""
    m = float(np.clip(np.mean(x), 1e-3, 1 - 1e-3))
    v = float(min(max(np.var(x), 1e-6), m * (1 - m) * 0.99))
    common = m * (1 - m) / v - 1.0
    return [round(m * common, 4), round((1 - m) * common, 4)]


def fit(data_dir: str | Path, split: str = "train", limit: int | None = None, progress: bool = True) -> dict:
    """The population's statistics from the PhysioNet stays of ``split`` (their first ``FIT_HOURS`` hours)."""
    from scipy.stats import norm, rankdata

    from icuwatch.sources.physionet import list_stays, read_psv

    from . import lab_orders
    from .labs import FULL

    paths = list_stays(data_dir, split=split, limit=limit)
    if not paths:
        raise FileNotFoundError(f"no PhysioNet stays (*.psv) of split {split!r} under {data_dir}")
    if progress:
        import sys

        from tqdm import tqdm

        paths = tqdm(paths, desc="fit population", file=sys.stderr, mininterval=0.5)
    medians, residuals, pairs = [], {v: [] for v in DRIFTING}, {v: [] for v in DRIFTING}
    stays = []
    map_offsets: list[float] = []
    transitions = np.zeros((2, 2))
    group_shares: dict[str, list[float]] = {g: [] for g in CHART_GROUPS}
    temp_first, temp_gaps, temp_hourly = np.zeros(FIT_HOURS + 1), np.zeros(FIT_HOURS + 1), []
    rr_whole = np.zeros(2)  # whole-number respiration rates charted: [even, odd]
    stay_transitions: list[tuple[float, float]] = []
    for path in paths:
        stay = read_psv(path)
        stays.append(stay)
        hours = stay.column("ICULOS") if "ICULOS" in stay.columns else np.arange(1, len(stay.values) + 1)
        first = hours <= FIT_HOURS
        row = []
        for v in VITALS:
            x = stay.column(PSV_COLUMNS[v])[first]
            seen = x[np.isfinite(x)]
            row.append(float(np.median(seen)) if len(seen) else np.nan)
            if len(seen) >= 4:
                r = x - row[-1]
                residuals[v].append(r[np.isfinite(r)])
                a, b = r[:-1], r[1:]
                both = np.isfinite(a) & np.isfinite(b)
                pairs[v].append(np.stack([a[both], b[both]], axis=1))
        medians.append(row)
        charted = hours[first] >= 2  # set B charts no vital in a stay's first hour
        on = np.isfinite(stay.column("HR")[first][charted])
        for a, b in zip(on[:-1], on[1:]):
            transitions[int(a), int(b)] += 1
        if len(on) >= MIN_CHARTED_HOURS:
            stay_transitions.append((float((on[:-1] & ~on[1:]).sum()), float(on[:-1].sum())))
        for g, members in CHART_GROUPS.items():
            seen = np.isfinite(stay.column(PSV_COLUMNS[members[0]])[first][charted])[on]
            if len(seen) >= 6:
                group_shares[g].append(float(seen.mean()))
        rr = stay.column("Resp")[first]
        rr = rr[np.isfinite(rr) & (rr == np.round(rr))]
        rr_whole += [np.sum(rr % 2 == 0), np.sum(rr % 2 == 1)]
        taken = hours[first][np.isfinite(stay.column("Temp")[first])]
        if len(taken):
            temp_first[int(min(taken[0], FIT_HOURS))] += 1
            gaps = np.diff(taken).astype(int)
            np.add.at(temp_gaps, np.minimum(gaps, FIT_HOURS), 1)
            if len(gaps) >= 2:  # (one interval alone says little of a habit)
                temp_hourly.append(float(np.mean(gaps == 1)))
        sbp, dbp, mean_bp = (stay.column(PSV_COLUMNS[v])[first] for v in ("sbp", "dbp", "map"))
        r = mean_bp - (sbp + 2.0 * dbp) / 3.0
        if np.isfinite(r).sum() >= 4:
            map_offsets.append(float(np.nanmedian(r)))
            r = r - map_offsets[-1]
        residuals["map"].append(r[np.isfinite(r)])
        both = np.isfinite(r[:-1]) & np.isfinite(r[1:])
        pairs["map"].append(np.stack([r[:-1][both], r[1:][both]], axis=1))
    m = np.asarray(medians)
    complete = np.isfinite(m).all(axis=1)
    scores = norm.ppf((np.apply_along_axis(rankdata, 0, m[complete]) - 0.5) / complete.sum())
    grid = QUANTILE_GRID
    drift = {}
    for v in DRIFTING:
        r = np.concatenate(residuals[v])
        p = np.concatenate(pairs[v])
        drift[v] = {
            "residual_sd": round(_robust_sd(r, RESOLUTION.get(v, 1.0)), 4),
            "autocorrelation_1h": round(float(np.corrcoef(p[:, 0], p[:, 1])[0, 1]), 4),
        }
    drift["map"]["between_stay_sd"] = round(float(np.std(map_offsets)), 4)
    longer_gaps = np.where(np.arange(FIT_HOURS + 1) >= 2, temp_gaps, 0.0)
    pooled_off = float(transitions[1, 0] / max(transitions[1].sum(), 1))
    off_rates = [_off_rate(offs, ons, pooled_off) for offs, ons in stay_transitions]
    return {
        "fitted_on": f"PhysioNet/CinC 2019 training set B, split {split!r}: {len(m)} stays, first {FIT_HOURS} h",
        "refit": "icuwatch simulate --fit-population",
        "vitals": list(VITALS),
        "drifting": list(DRIFTING),
        "baseline": {
            "stays_with_every_vital": int(complete.sum()),
            "quantiles": {
                v: [round(float(q), 3) for q in np.quantile(m[np.isfinite(m[:, i]), i], grid)]
                for i, v in enumerate(VITALS)
            },
            "normal_score_correlation": np.round(np.corrcoef(scores, rowvar=False), 4).tolist(),
        },
        "drift": drift,
        "charting": {
            "hours": "from hour 2 (set B charts nothing in a stay's first hour); monitor on = heart rate charted",
            "off_after_on": round(pooled_off, 4),
            "off_after_on_quantiles": [round(float(q), 4) for q in np.quantile(off_rates, grid)],
            "off_after_off": round(float(transitions[0, 0] / max(transitions[0].sum(), 1)), 4),
            "rr_counted_share": round(float(max(0.0, 1.0 - 2.0 * rr_whole[1] / max(rr_whole.sum(), 1))), 4),
            "reported_share_beta": {g: _beta_moments(np.asarray(x)) for g, x in group_shares.items()},
            "temp": {
                "first_hour": np.round(temp_first / temp_first.sum(), 5).tolist(),
                "interval_over_1h": np.round(longer_gaps / longer_gaps.sum(), 5).tolist(),
                "hourly_share_quantiles": [round(float(q), 4) for q in np.quantile(temp_hourly, grid)],
            },
        },
        "labs": lab_orders.fit(stays, FULL, FIT_HOURS),
    }
