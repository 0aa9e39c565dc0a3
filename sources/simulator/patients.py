"""Who the simulated patients are, what happens to them, and how sick they are at any moment.

Severity is a number in [0, 1]: 0 before onset, then ``peak * (1 - exp(-3 (t - onset) / ramp))``,
so it reaches 95 % of its peak ``ramp_s`` seconds after onset and never decreases. Everything
downstream (vitals, labs, X-rays) is a function of severity, which keeps the modalities coherent.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from . import course
from .population import Drift, draw_baseline, draw_drift

Condition = Literal["sepsis", "hemorrhage", "respiratory_failure", "stable"]
SepsisSource = Literal["pneumonia", "urinary", "abdominal"]

# Streams drawn from independent generators so that turning one modality off leaves the others
# byte-identical. New streams go at the end (``population`` uses 7, ``course`` 8, the monitor's
# clock phase 9).
(
    STREAM_SPEC,
    STREAM_VITALS,
    STREAM_WAVES,
    STREAM_LABS,
    STREAM_CXR,
    STREAM_POPULATION,
    STREAM_MONITOR_FAULTS,
) = range(7)
STREAM_MONITOR_CLOCK = 9
Population = Literal["stylised", "icu"]
POPULATIONS: tuple[str, ...] = ("stylised", "icu")
"""``stylised``: narrow hand-set baselines, vitals move with severity only; ``icu``: baselines and
slow drift fitted to real ICU stays (``population``)."""

_FOLLOWER_CONDITIONS: tuple[Condition, ...] = (
    "respiratory_failure",
    "sepsis",
    "hemorrhage",
    "sepsis",
)
_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


@dataclass(frozen=True)
class Baseline:
    hr: float
    rr: float
    spo2: float
    sbp: float
    dbp: float
    temp: float


@dataclass(frozen=True)
class PatientSpec:
    index: int
    patient_id: str
    seed: int
    age: float
    sex: Literal["F", "M"]
    unit: str
    bed: str
    baseline: Baseline
    condition: Condition
    onset_s: float | None
    """Seconds after the simulation start; None for stable patients."""
    ramp_s: float
    peak: float
    sepsis_source: SepsisSource | None = None
    fever: bool = True
    """Sepsis with fever (most) or hypothermia."""
    wbc_up: bool = True
    """Sepsis with leukocytosis (most) or leukopenia."""
    confusion_at: float = 2.0
    """Severity at which new confusion ('C') appears; > 1 means never."""
    voice_at: float = 2.0
    """Severity at which the patient responds only to voice ('V')."""
    lobe: Literal["right", "left"] = "right"
    """Lung first involved by pneumonia."""
    drift: Drift | None = None
    """Slow wander of the vitals around the baseline (``icu`` population); None: none."""
    population: Population = "stylised"
    treated_after_s: float | None = None
    """``icu``: seconds from onset to treatment (``course``); None: never treated (stylised)."""
    responds: bool = True
    recovery_s: float = 0.0
    comorbidities: tuple[str, ...] = ()
    agitation: tuple[tuple[float, float, float], ...] = ()
    """Episodes of pain or agitation: (start s, length s, size 0..1)."""

    @property
    def deteriorates(self) -> bool:
        return self.condition != "stable"

    @property
    def lung_involved(self) -> bool:
        return self.condition == "respiratory_failure" or self.sepsis_source == "pneumonia"

    def rng(self, stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self.index, stream)))

    def severity(self, t_rel: np.ndarray | float) -> np.ndarray:
        """Severity at ``t_rel`` seconds after the simulation start (vectorised)."""
        t = np.asarray(t_rel, dtype=float)
        if self.onset_s is None:
            return np.zeros_like(t)
        rising = self.peak * (1.0 - np.exp(-3.0 * np.maximum(t - self.onset_s, 0.0) / self.ramp_s))
        return course.bend(self, t, rising) if self.treated_after_s is not None else rising

    def time_at_severity(self, level: float) -> float | None:
        """First time (seconds after start) severity reaches ``level``; None if it never does."""
        if self.onset_s is None or level >= self.peak:
            return None
        if level <= 0:
            return self.onset_s
        t = self.onset_s - self.ramp_s / 3.0 * math.log(1.0 - level / self.peak)
        if self.treated_after_s is not None and self.responds and t > self.onset_s + self.treated_after_s:
            return None  # treated and recovering before it got there
        return t


def _baseline(rng: np.random.Generator) -> Baseline:
    sbp = float(np.clip(rng.normal(122, 11), 102, 148))
    return Baseline(
        hr=float(np.clip(rng.normal(80, 9), 60, 98)),
        rr=float(np.clip(rng.normal(15.5, 1.8), 12, 19)),
        spo2=float(rng.uniform(95.5, 98.5)),
        sbp=sbp,
        dbp=sbp * float(rng.uniform(0.56, 0.64)),
        temp=float(np.clip(rng.normal(36.9, 0.25), 36.4, 37.5)),
    )


def _icu_baseline(rng: np.random.Generator, comorbidities: tuple[str, ...]) -> Baseline:
    b = draw_baseline(rng, comorbidities=comorbidities)
    dbp = min(b["dbp"], b["sbp"] - 15.0)
    return Baseline(hr=b["hr"], rr=b["rr"], spo2=b["spo2"], sbp=b["sbp"], dbp=dbp, temp=b["temp"])


def draw_patients(
    n_patients: int,
    seed: int,
    duration_s: float,
    deteriorating_fraction: float,
    onset_window_s: tuple[float, float],
    prefix: str,
    population: Population = "stylised",
) -> list[PatientSpec]:
    """Draw every patient deterministically from ``seed``.

    ``population``: ``stylised`` (the hand-set baselines) or ``icu`` (baselines, drift, charting and
    labs fitted to real stays, ``population``; conditions drawn, treatment, comorbidities and
    confounders, ``course``; all from their own generator, so every other draw is the same in both).

    The first deteriorating patient (in a seeded order) is always a fast pneumonia sepsis, strong
    enough to cross NEWS2 >= 7 and qSOFA >= 2 well within 90 minutes of onset; the others cycle
    through respiratory failure, sepsis and hemorrhage (``icu``: drawn at ``course.CONDITION_MIX``)
    with drawn ramps and peaks.
    """
    if n_patients < 0:
        raise ValueError("n_patients must be >= 0")
    if not 0.0 <= deteriorating_fraction <= 1.0:
        raise ValueError("deteriorating_fraction must be in [0, 1]")
    lo, hi = onset_window_s
    if not lo <= hi:
        raise ValueError("onset_window_s must satisfy lo <= hi (lo < 0: admitted already deteriorating)")
    if population not in POPULATIONS:
        raise ValueError(f"population must be one of {POPULATIONS}, got {population!r}")
    if n_patients and not _ID_RE.match(prefix or "x"):
        raise ValueError(f"patient_prefix {prefix!r} is not a valid patient id prefix")
    hi = max(lo, min(hi, duration_s * 0.9))

    n_det = 0
    if deteriorating_fraction > 0 and n_patients >= 1:
        n_det = min(n_patients, max(1, round(deteriorating_fraction * n_patients)))
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2**32,))).permutation(n_patients)
    rank = {int(i): r for r, i in enumerate(order[:n_det])}

    patients = []
    for i in range(n_patients):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i, STREAM_SPEC)))
        unit = "MICU" if rng.random() < 0.6 else "SICU"
        common: dict = dict(
            index=i,
            patient_id=f"{prefix}{i:04d}",
            seed=seed,
            age=float(np.round(rng.uniform(24, 89), 0)),
            sex="F" if rng.random() < 0.45 else "M",
            unit=unit,
            bed=f"{unit}-{i + 1:03d}",
            baseline=_baseline(rng),
        )
        drawn_condition, treatment = None, {}
        if population == "icu":
            own = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i, STREAM_POPULATION)))
            common |= course.draw_confounders(own, unit, duration_s)
            common["baseline"] = _icu_baseline(own, common["comorbidities"])
            common["drift"] = draw_drift(own)
            common["population"] = "icu"
            drawn_condition = course.draw_condition(own)
            treatment = course.draw_course(own, drawn_condition)
        onset = float(np.round(rng.uniform(lo, hi), 1))
        r = rank.get(i)
        if r is None:
            patients.append(PatientSpec(**common, condition="stable", onset_s=None, ramp_s=1.0, peak=0.0))
            continue
        if r == 0:
            b = common["baseline"]
            common["baseline"] = Baseline(b.hr if b.hr >= 76 else 76.0, b.rr, b.spo2, b.sbp, b.dbp, b.temp)
            patients.append(
                PatientSpec(
                    **common,
                    **({} if drawn_condition is None else course.draw_course(own, "sepsis")),
                    condition="sepsis",
                    onset_s=onset,
                    ramp_s=7200.0,
                    peak=1.0,
                    sepsis_source="pneumonia",
                    fever=True,
                    wbc_up=True,
                    confusion_at=0.55,
                    voice_at=0.92,
                    lobe="right",
                )
            )
            continue
        condition = drawn_condition or _FOLLOWER_CONDITIONS[(r - 1) % len(_FOLLOWER_CONDITIONS)]
        source: SepsisSource | None = None
        if condition == "sepsis":
            source = ("pneumonia", "urinary", "abdominal")[int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
        patients.append(
            PatientSpec(
                **common,
                **treatment,
                condition=condition,
                onset_s=onset,
                ramp_s=float(np.round(rng.uniform(2.0, 6.0) * 3600.0, 0)),
                peak=float(np.round(rng.uniform(0.6, 1.0), 3)),
                sepsis_source=source,
                fever=bool(rng.random() < 0.8),
                wbc_up=bool(rng.random() < 0.75),
                confusion_at=float(rng.uniform(0.5, 0.8)),
                voice_at=float(rng.uniform(0.88, 1.2)),
                lobe="right" if rng.random() < 0.6 else "left",
            )
        )
    return patients
