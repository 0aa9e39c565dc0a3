"""Bedside numerics at 1 Hz: severity-driven targets plus autocorrelated physiological noise.

Each vital is ``target(severity) + AR(1) process + white measurement noise``. The AR(1) part is
the patient's own variability (it also drives the beat timing of the waveforms); the white part is
the monitor's. Values are rounded the way monitors display them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.signal import lfilter

from . import course
from .monitor_faults import MonitorFaults
from .patients import PatientSpec
from .population import CHART_GROUPS, chart_mask, counted_hours

O2_DELAY_S = 300.0
"""Nurses put the patient on oxygen this long after SpO2 would first fall below 92 %."""
O2_BOOST = 4.0
ICU_O2_FALL = 4.0


@dataclass(frozen=True)
class Effect:
    """Change of each vital at severity 1 (additive, or a fraction of baseline for blood pressure)."""

    hr: float = 0.0
    rr: float = 0.0
    spo2: float = 0.0
    sbp_frac: float = 0.0
    dbp_frac: float = 0.0
    temp: float = 0.0
    bp_exponent: float = 1.0
    """> 1: blood pressure holds up early (compensated shock) and falls late."""


def effect(p: PatientSpec) -> Effect:
    e = _condition_effect(p)
    if "beta_blocker" in p.comorbidities:
        return replace(e, hr=e.hr * 0.5)
    return e


def _condition_effect(p: PatientSpec) -> Effect:
    if p.condition == "sepsis":
        return Effect(
            hr=60.0,
            rr=16.0,
            spo2=-9.0 if p.sepsis_source == "pneumonia" else -4.0,
            sbp_frac=-0.38,
            dbp_frac=-0.40,
            temp=2.4 if p.fever else -2.3,
        )
    if p.condition == "hemorrhage":
        return Effect(hr=55.0, rr=9.0, spo2=-2.0, sbp_frac=-0.45, dbp_frac=-0.40, temp=-0.6, bp_exponent=1.6)
    if p.condition == "respiratory_failure":
        return Effect(hr=30.0, rr=18.0, spo2=-14.0, sbp_frac=0.08, dbp_frac=0.05, temp=0.5)
    return Effect()


def o2_on(p: PatientSpec, t_rel: np.ndarray | float) -> np.ndarray:
    """Whether the patient is on supplemental oxygen at ``t_rel`` (monotone: never taken off)."""
    e = effect(p)
    t = np.asarray(t_rel, dtype=float)
    if e.spo2 >= 0:
        return np.zeros(t.shape, dtype=bool)
    if p.population == "icu":  # baselines are charted values, O2 included: oxygen for a 4-point fall
        s_needed = ICU_O2_FALL / -e.spo2
    else:
        s_needed = (p.baseline.spo2 - 92.0) / -e.spo2
    return p.severity(t - O2_DELAY_S) >= s_needed


# (AR time constant s, AR sd, white sd) per noisy vital.
_NOISE = {
    "hr": (40.0, 3.0, 1.0),
    "rr": (20.0, 1.3, 0.7),
    "spo2": (30.0, 0.6, 0.3),
    "sbp": (90.0, 4.0, 1.5),
    "dbp": (90.0, 2.5, 1.0),
    "temp": (900.0, 0.07, 0.02),
}


class VitalsGenerator:
    """Produces blocks of consecutive seconds for one patient, carrying the AR state across blocks."""

    def __init__(self, p: PatientSpec, rng: np.random.Generator) -> None:
        self.p = p
        self.rng = rng
        self.effect = effect(p)
        self.coef = {k: np.exp(-1.0 / tau) for k, (tau, _, _) in _NOISE.items()}
        self.state = {k: float(rng.normal(0.0, sd)) for k, (_, sd, _) in _NOISE.items()}
        self.faults = MonitorFaults.for_patient(p) if p.population == "icu" else None

    def _ar(self, name: str, n: int) -> np.ndarray:
        a = self.coef[name]
        sd = _NOISE[name][1]
        eps = self.rng.standard_normal(n)
        y, _ = lfilter([np.sqrt(1.0 - a * a) * sd], [1.0, -a], eps, zi=[a * self.state[name]])
        self.state[name] = float(y[-1])
        return y

    def _drift(self, name: str, t_rel: np.ndarray) -> np.ndarray | float:
        """The patient's slow wander (``population.Drift``): a function of time, no random draw here."""
        return 0.0 if self.p.drift is None else self.p.drift.at(name, t_rel)

    def block(self, t_rel: np.ndarray) -> dict[str, np.ndarray]:
        """Vitals for the seconds ``t_rel``; also returns the noise-free-of-monitor ``hr_true``,
        ``rr_true`` and the severity ``s`` used by the waveforms. ``icu`` population: NaN where not
        charted (``population.chart_mask``) and ``monitor_on``, with the monitor's spikes and probe-
        or lead-off gaps (``monitor_faults``)."""
        p, e, b, n = self.p, self.effect, self.p.baseline, len(t_rel)
        s = p.severity(t_rel)
        o2 = o2_on(p, t_rel)
        s_bp = s**e.bp_exponent
        c: dict = {"hr": 0.0, "rr": 0.0, "sbp": 0.0, "temp": 0.0}
        if p.population == "icu":
            c = course.confounding(p, t_rel)
            s_bp = s_bp * np.where(course.on_pressors(p, t_rel), course.PRESSOR_BP_SHARE, 1.0)
        hr_true = b.hr + e.hr * s + self._ar("hr", n) + self._drift("hr", t_rel) + c["hr"]
        rr_true = b.rr + e.rr * s + self._ar("rr", n) + self._drift("rr", t_rel) + c["rr"]
        sbp_ar = self._ar("sbp", n) + self._drift("sbp", t_rel) + c["sbp"]
        sbp = b.sbp * (1.0 + e.sbp_frac * s_bp) + sbp_ar
        dbp = b.dbp * (1.0 + e.dbp_frac * s_bp) + 0.5 * sbp_ar + self._ar("dbp", n) + self._drift("dbp", t_rel)
        spo2 = b.spo2 + e.spo2 * s + O2_BOOST * o2 + self._ar("spo2", n) + self._drift("spo2", t_rel)
        temp = b.temp + e.temp * s + self._ar("temp", n) + self._drift("temp", t_rel) + c["temp"]

        w = {k: self.rng.standard_normal(n) * sd for k, (_, _, sd) in _NOISE.items()}
        sbp_m = np.clip(sbp + w["sbp"], 40, 250)
        dbp_m = np.clip(np.minimum(dbp + w["dbp"], sbp_m - 10), 20, 200)
        consciousness = np.where(s >= p.voice_at, "V", np.where(s >= p.confusion_at, "C", "A"))
        out = {
            "hr": np.round(np.clip(hr_true + w["hr"], 20, 250)),
            "rr": np.round(np.clip(rr_true + w["rr"], 4, 60)),
            "spo2": np.round(np.clip(spo2 + w["spo2"], 50, 100)),
            "sbp": np.round(sbp_m),
            "dbp": np.round(dbp_m),
            "map": np.round(np.clip((sbp_m + 2.0 * dbp_m) / 3.0 + self._drift("map", t_rel), dbp_m, sbp_m)),
            "temp": np.round(np.clip(temp + w["temp"], 30, 43), 1),
            "o2_supplement": o2,
            "consciousness": consciousness,
            "hr_true": np.clip(hr_true, 25, 240),
            "rr_true": np.clip(rr_true, 4, 60),
            "s": s,
        }
        if self.faults is not None:
            self.faults.apply_vitals(np.asarray(t_rel, dtype=float), out)
        if p.population == "icu":
            _apply_chart_mask(p, t_rel, out)
        return out


MASK_HOURS_STEP = 64


def _apply_chart_mask(p: PatientSpec, t_rel: np.ndarray, out: dict[str, np.ndarray]) -> None:
    """``icu`` population: NaN where the monitor is off or a group is not reported in that hour
    (``population.chart_mask``); ``monitor_on`` per second; a respiration rate a nurse counted
    that hour is even (``population.counted_hours``)."""
    hour = (np.asarray(t_rel) // 3600.0).astype(int)
    n = MASK_HOURS_STEP * (int(hour.max()) // MASK_HOURS_STEP + 1)
    on, reported = chart_mask(p.seed, p.index, n)
    out["rr"] = np.where(counted_hours(p.seed, p.index, n)[hour], 2.0 * np.round(out["rr"] / 2.0), out["rr"])
    out["monitor_on"] = on[hour]
    out["hr"] = np.where(on[hour], out["hr"], np.nan)
    for g, (_, members) in enumerate(CHART_GROUPS.items()):
        keep = reported[hour, g]
        for name in members:
            out[name] = np.where(keep, out[name], np.nan)
