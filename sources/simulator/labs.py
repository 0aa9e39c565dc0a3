"""Laboratory draws: when they are collected, what they show, and when the results come back.

Schedule: the full admission panel at t=0, a routine panel every 4-8 h, a full work-up panel
20-45 min after a deterioration starts (when the bedside team notices), then lactate (and the
condition's key analytes) every 1-2 h. Each result comes back 30-90 min after collection.
"""

from __future__ import annotations

import numpy as np

from icuwatch.core.schemas import LAB_UNITS, Lab

from . import lab_orders, population
from .patients import PatientSpec
from .physiology import o2_on

FULL = (
    "lactate",
    "wbc",
    "creatinine",
    "platelets",
    "bilirubin",
    "hemoglobin",
    "ph",
    "paco2",
    "pao2",
    "bicarbonate",
    "glucose",
    "bun",
    "potassium",
    "fio2",
)
"""The analytes the simulator models (the schema accepts more: every PhysioNet 2019 lab)."""
ROUTINE = tuple(a for a in FULL if a not in ("ph", "paco2", "pao2", "fio2"))
BLOOD_GAS = ("ph", "paco2", "pao2", "bicarbonate", "fio2")

_DECIMALS = {
    "lactate": 1,
    "wbc": 1,
    "creatinine": 2,
    "platelets": 0,
    "bilirubin": 1,
    "hemoglobin": 1,
    "ph": 2,
    "paco2": 0,
    "pao2": 0,
    "bicarbonate": 0,
    "glucose": 0,
    "bun": 0,
    "potassium": 1,
    "fio2": 2,
}
# Analytical noise: coefficient of variation, except pH (absolute).
_CV = {
    "lactate": 0.05,
    "wbc": 0.04,
    "creatinine": 0.04,
    "platelets": 0.05,
    "bilirubin": 0.06,
    "hemoglobin": 0.02,
    "paco2": 0.03,
    "pao2": 0.04,
    "bicarbonate": 0.03,
    "glucose": 0.05,
    "bun": 0.05,
    "potassium": 0.03,
    "fio2": 0.0,
}
_FLOOR = {
    "lactate": 0.3,
    "wbc": 0.5,
    "creatinine": 0.2,
    "platelets": 5.0,
    "bilirubin": 0.1,
    "hemoglobin": 3.0,
    "paco2": 15.0,
    "pao2": 35.0,
    "bicarbonate": 5.0,
    "glucose": 40.0,
    "bun": 3.0,
    "potassium": 2.5,
}


def baseline_labs(p: PatientSpec, rng: np.random.Generator) -> dict[str, float]:
    male = p.sex == "M"
    return {
        "lactate": rng.uniform(0.7, 1.6),
        "wbc": float(np.clip(rng.normal(7.5, 1.6), 4.5, 10.8)),
        "creatinine": rng.uniform(0.7, 1.15) if male else rng.uniform(0.55, 0.95),
        "platelets": float(np.clip(rng.normal(240, 45), 160, 380)),
        "bilirubin": rng.uniform(0.3, 1.0),
        "hemoglobin": float(np.clip(rng.normal(14.0 if male else 12.8, 0.9), 11.5, 16.5)),
        "ph": float(np.clip(rng.normal(7.40, 0.015), 7.36, 7.44)),
        "paco2": float(np.clip(rng.normal(40, 2.5), 35, 45)),
        "pao2": float(np.clip(rng.normal(90, 6), 80, 100)),
        "bicarbonate": float(np.clip(rng.normal(24.5, 1.3), 22, 27)),
        "glucose": float(np.clip(rng.normal(110, 14), 80, 140)),
        "bun": float(np.clip(rng.normal(15, 3.5), 8, 22)),
        "potassium": float(np.clip(rng.normal(4.1, 0.25), 3.6, 4.8)),
        "fio2": 0.21,
    }


def _shift(p: PatientSpec, base: dict[str, float], analyte: str, s: float) -> float:
    """Change from baseline at severity ``s``."""
    if p.condition == "sepsis":
        pneumonia = p.sepsis_source == "pneumonia"
        d = {
            "lactate": 6.0 * s,
            "creatinine": 1.8 * s**1.3,
            "bilirubin": 2.4 * s**1.5,
            "platelets": -0.6 * base["platelets"] * s,
            "glucose": 60.0 * s,
            "bun": 25.0 * s,
            "ph": -0.12 * s,
            "bicarbonate": -8.0 * s,
            "paco2": -6.0 * s,
            "pao2": (-30.0 if pneumonia else -8.0) * s,
            "potassium": 0.5 * s,
            "hemoglobin": -1.0 * s,
            "wbc": 14.0 * s if p.wbc_up else -(base["wbc"] - 2.2) * s,
        }
    elif p.condition == "hemorrhage":
        d = {
            "hemoglobin": -5.5 * s,
            "lactate": 5.0 * s**1.3,
            "platelets": -70.0 * s,
            "ph": -0.10 * s,
            "bicarbonate": -7.0 * s,
            "creatinine": 0.6 * s,
            "bun": 15.0 * s,
            "wbc": 3.0 * s,
            "paco2": -5.0 * s,
            "potassium": 0.3 * s,
        }
    elif p.condition == "respiratory_failure":
        d = {
            "paco2": 35.0 * s,
            "ph": -0.22 * s,
            "pao2": -30.0 * s,
            "bicarbonate": 3.0 * s,
            "lactate": 1.2 * s,
            "wbc": 3.0 * s,
            "potassium": 0.4 * s,
        }
    else:
        d = {}
    return d.get(analyte, 0.0)


def _value(
    p: PatientSpec,
    base: dict[str, float],
    analyte: str,
    t_rel: float,
    rng: np.random.Generator,
    fitted: dict | None = None,
) -> float:
    """One result; ``fitted`` (``icu`` population): the real within-stay spread instead of analytical noise."""
    s = float(p.severity(t_rel))
    if analyte == "fio2" and fitted is not None:
        return fio2_setting(base["fio2"] + 0.35 * s * bool(o2_on(p, t_rel)))
    if analyte == "fio2":
        return round(0.28 + 0.35 * s, 2) if bool(o2_on(p, t_rel)) else 0.21
    v = base[analyte] + _shift(p, base, analyte, s)
    if analyte == "pao2" and bool(o2_on(p, t_rel)):
        v += 25.0
    if fitted is not None and analyte in fitted["within_stay_sd"]:
        v = lab_orders.vary(fitted, analyte, v, rng)
        if analyte == "ph":
            return round(float(np.clip(v, 6.8, 7.7)), 2)
    elif analyte == "ph":
        v += rng.normal(0.0, 0.01)
        return round(float(np.clip(v, 6.8, 7.7)), 2)
    else:
        v *= 1.0 + _CV[analyte] * rng.standard_normal()
    return round(max(float(v), _FLOOR[analyte]), _DECIMALS[analyte])


def fio2_setting(fraction: float) -> float:
    """An FiO2 as charted (``icu``): the patient's fitted level, set in steps of 0.05 within 0.21-1.0.
    Set B charts FiO2 mostly for ventilated patients (median 0.40), never a fixed room air."""
    return round(float(np.clip(round(fraction / 0.05) * 0.05, 0.21, 1.0)), 2)


def _follow_up(p: PatientSpec) -> tuple[str, ...]:
    if p.condition == "hemorrhage":
        return ("lactate", "hemoglobin")
    if p.condition == "respiratory_failure":
        return ("lactate",) + BLOOD_GAS
    return ("lactate",)


def draws(p: PatientSpec, duration_s: float, rng: np.random.Generator) -> list[tuple[float, tuple[str, ...]]]:
    """Collection times (seconds after start, none before it) and the analytes drawn at each."""
    out: list[tuple[float, tuple[str, ...]]] = [(0.0, FULL)]
    t = 0.0
    while True:
        t += rng.uniform(4.0, 8.0) * 3600.0
        if t >= duration_s:
            break
        out.append((t, ROUTINE))
    if p.onset_s is not None:
        t = p.onset_s + rng.uniform(20.0, 45.0) * 60.0
        if t < duration_s:
            out.append((t, FULL))
        while True:
            t += rng.uniform(60.0, 120.0) * 60.0
            if t >= duration_s:
                break
            out.append((t, _follow_up(p)))
    return sorted(d for d in out if d[0] >= 0.0)  # onset before admission: no draws before it


def lab_messages(p: PatientSpec, start_time: float, duration_s: float, rng: np.random.Generator) -> list[Lab]:
    """Every result the patient gets whose result time falls within the simulated span. The ``icu``
    population's orders, baselines and spread are fitted to real stays (``lab_orders``)."""
    base = baseline_labs(p, rng)
    fitted = None
    if p.population == "icu":
        fitted = population.load()["labs"]
        base.update(lab_orders.draw_baseline(fitted, rng, p.comorbidities))
        schedule = lab_orders.draw_orders(fitted, p.severity, duration_s, rng)
    else:
        schedule = draws(p, duration_s, rng)
    out = []
    for t_rel, analytes in schedule:
        for analyte in analytes:
            value = _value(p, base, analyte, t_rel, rng, fitted)
            result_rel = t_rel + rng.uniform(30.0, 90.0) * 60.0
            if result_rel > duration_s:
                continue
            out.append(
                Lab(
                    patient_id=p.patient_id,
                    event_time=round(start_time + t_rel, 3),
                    analyte=analyte,
                    value=value,
                    unit=LAB_UNITS[analyte],
                    result_time=round(start_time + result_rel, 3),
                )
            )
    return out
