"""The ``icu`` population's clinical course: a unit's mix of conditions, treatment that bends the
course, and confounders that look like deterioration and are not.

The stylised population cycles through conditions and lets severity only rise. Here:

* **conditions** are drawn at ``CONDITION_MIX`` (the share of deteriorating patients is the caller's
  ``deteriorating_fraction``; the sim cohort sets a real unit's, ``fusion.cohorts.sim``);
* **treatment**: ``TREATMENT_DELAY_H`` after onset the team recognises the condition and treats it
  (antibiotics and fluids, transfusion, ventilatory support). A responder's severity then falls
  back with a time constant drawn in ``RECOVERY_H``; a non-responder keeps worsening and, in shock
  (sepsis, haemorrhage), goes on vasopressors an hour later, which hold up part of the blood
  pressure (``PRESSOR_BP_SHARE`` of the fall remains);
* **comorbidities** shape baselines and responses: COPD (low SpO2 and high PaCO2 and bicarbonate
  at baseline: the baseline draw is tilted into the low or high quantiles, so the population's
  distributions stay the fitted ones), chronic kidney disease (high creatinine and BUN), beta
  blockade (half the heart-rate response);
* **signal amplitude**: a PPG's pulse amplitude and a respiration trace's depth depend on the probe
  site, the belt or electrode placement and vasomotor tone as much as on the patient's state, so
  each patient gets a gain (lognormal, ``AMPLITUDE_GAIN_SD``) and a slow wander of it
  (``AMPLITUDE_WANDER_SD``, ``AMPLITUDE_WANDER_TAU_S``), applied to the streamed samples and to the
  cohort's waveform features alike (``amplitude_factors``);
* **confounders**: post-operative SIRS in surgical patients (fever and tachycardia fading over
  ``POST_OP_FADE_H``), and episodes of pain or agitation (heart rate, respiration and blood pressure
  up for 20-60 minutes, ``AGITATION_PER_DAY``), in stable and deteriorating patients alike.

The numbers are judgments from the clinical picture, not fitted (the shared data records neither
treatments nor comorbidities); the realism report measures what they do to the charts.
"""

from __future__ import annotations

import math

import numpy as np

CONDITION_MIX = {"sepsis": 0.60, "respiratory_failure": 0.25, "hemorrhage": 0.15}
RESPONDS = {"sepsis": 0.75, "respiratory_failure": 0.70, "hemorrhage": 0.85}
TREATMENT_DELAY_H = (1.0, 4.0)
RECOVERY_H = (6.0, 18.0)
PRESSOR_AFTER_S = 3600.0
PRESSOR_BP_SHARE = 0.6
COMORBIDITIES = {"copd": 0.12, "ckd": 0.12, "beta_blocker": 0.25}
POST_OP_SHARE_OF_SICU = 0.6
POST_OP_FADE_H = 12.0
AGITATION_PER_DAY = 2.0
AGITATION_MIN_S = (1200.0, 3600.0)
AMPLITUDE_GAIN_SD = {"ppg": 0.4, "resp": 0.35}
AMPLITUDE_WANDER_SD = {"ppg": 0.3, "resp": 0.25}
AMPLITUDE_WANDER_TAU_S = 1800.0
STREAM_AMPLITUDE = 8
"""Spawn-key stream of the amplitude factors (``patients`` uses 0..5, ``population`` 7)."""
VITAL_TILTS = {"copd": {"spo2": -1}}
LAB_TILTS = {"copd": {"paco2": 1, "bicarbonate": 1}, "ckd": {"creatinine": 1, "bun": 1}}
"""Comorbidity -> {quantity: +1 (drawn from its upper tail) or -1 (lower)} of the baseline draw."""
TILT_Z = 1.04
"""A tilted normal score is pushed beyond +-1.04 (the outer 15 % of the fitted distribution)."""


def draw_condition(rng: np.random.Generator) -> str:
    names = list(CONDITION_MIX)
    return names[int(rng.choice(len(names), p=list(CONDITION_MIX.values())))]


def draw_course(rng: np.random.Generator, condition: str) -> dict:
    """PatientSpec fields of a deteriorating patient's treatment (drawn even when unused: stable)."""
    delay = float(rng.uniform(*TREATMENT_DELAY_H)) * 3600.0
    responds = bool(rng.random() < RESPONDS.get(condition, 1.0))
    recovery = float(rng.uniform(*RECOVERY_H)) * 3600.0
    return {"treated_after_s": round(delay, 1), "responds": responds, "recovery_s": round(recovery, 1)}


def draw_confounders(rng: np.random.Generator, unit: str, duration_s: float) -> dict:
    """PatientSpec fields: comorbidities and agitation episodes ((start s, length s, size 0..1), ...)."""
    comorbid = [name for name, share in COMORBIDITIES.items() if rng.random() < share]
    if unit == "SICU" and rng.random() < POST_OP_SHARE_OF_SICU:
        comorbid.append("post_op")
    episodes = []
    t = 0.0
    while True:
        t += float(rng.exponential(86400.0 / AGITATION_PER_DAY))
        if t >= duration_s:
            break
        length, size = float(rng.uniform(*AGITATION_MIN_S)), float(rng.uniform(0.3, 1.0))
        episodes.append((round(t, 1), round(length, 1), round(size, 3)))
    return {"comorbidities": tuple(comorbid), "agitation": tuple(episodes)}


def tilt(z: np.ndarray, names: list[str] | tuple[str, ...], comorbidities, tilts: dict) -> np.ndarray:
    """Normal scores ``z`` (one per name) pushed into an outer tail where a comorbidity says so."""
    z = np.array(z, dtype=float)
    for c in comorbidities:
        for name, sign in tilts.get(c, {}).items():
            if name in names:
                i = list(names).index(name)
                z[i] = sign * (abs(z[i]) + TILT_Z)
    return z


def bend(p, t: np.ndarray, rising: np.ndarray) -> np.ndarray:
    """Severity after treatment: a responder's falls back from where it was when treated."""
    if p.onset_s is None or p.treated_after_s is None or not p.responds:
        return rising
    treated = p.onset_s + p.treated_after_s
    at_treatment = p.peak * (1.0 - math.exp(-3.0 * p.treated_after_s / p.ramp_s))
    falling = at_treatment * np.exp(-np.maximum(t - treated, 0.0) / max(p.recovery_s, 1.0))
    return np.where(t > treated, falling, rising)


def on_pressors(p, t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, dtype=float)
    if p.onset_s is None or p.treated_after_s is None or p.responds or p.condition not in ("sepsis", "hemorrhage"):
        return np.zeros(t.shape, bool)
    return t >= p.onset_s + p.treated_after_s + PRESSOR_AFTER_S


def confounding(p, t: np.ndarray) -> dict[str, np.ndarray | float]:
    """Additive offsets per vital at ``t``: post-operative SIRS and agitation episodes."""
    t = np.asarray(t, dtype=float)
    hr = np.zeros(t.shape)
    rr = np.zeros(t.shape)
    sbp = np.zeros(t.shape)
    temp = np.zeros(t.shape)
    if "post_op" in p.comorbidities:
        fade = np.exp(-np.maximum(t, 0.0) / (POST_OP_FADE_H * 3600.0))
        hr += 12.0 * fade
        temp += 0.9 * fade
    for start, length, size in p.agitation:
        inside = (t >= start) & (t < start + length)
        if inside.any():
            bump = size * np.sin(np.pi * (t - start) / length) * inside
            hr += 22.0 * bump
            rr += 6.0 * bump
            sbp += 16.0 * bump
    return {"hr": hr, "rr": rr, "sbp": sbp, "temp": temp}


def amplitude_factors(p, t: np.ndarray) -> dict[str, np.ndarray]:
    """Multiplicative factors on the PPG pulse amplitude and the respiration depth at ``t`` (``icu``
    population; 1 otherwise): a per-patient gain times exp of a slow Ornstein-Uhlenbeck-like wander
    (``population.Drift``'s spectral form), deterministic in the patient and time."""
    t = np.asarray(t, dtype=float)
    if p.population != "icu" or t.size == 0:
        return {"ppg": np.ones(t.shape), "resp": np.ones(t.shape)}
    out = {}
    for k, name in enumerate(("ppg", "resp")):
        rng = np.random.default_rng(np.random.SeedSequence(p.seed, spawn_key=(p.index, STREAM_AMPLITUDE, k)))
        gain = float(np.exp(rng.normal(0.0, AMPLITUDE_GAIN_SD[name])))
        omega = np.minimum(np.abs(rng.standard_cauchy(16)) / AMPLITUDE_WANDER_TAU_S, 2 * np.pi / 60.0)
        phase = rng.uniform(0.0, 2 * np.pi, 16)
        grid = np.arange(np.floor(t.min() / 10.0), np.floor(t.max() / 10.0) + 2) * 10.0
        wander = AMPLITUDE_WANDER_SD[name] * np.sqrt(2.0 / 16) * np.cos(grid[:, None] * omega + phase).sum(axis=1)
        out[name] = gain * np.exp(np.interp(t, grid, wander))
    return out
