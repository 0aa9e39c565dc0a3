"""A bedside monitor's faults, for the ``icu`` population: what a real ECG, PPG and respiration feed
and the 1 Hz numerics look like between the clean stretches.

Each fault kind is a Poisson process of episodes per patient (rate per hour of fault-free time,
the next episode starting an exponential gap after the previous one ended), with a duration drawn
per episode; ``FAULTS`` lists them:

* ``motion`` (4 / h; lognormal duration, median 8 s, 2-60 s): movement, turning, physiotherapy: a
  burst of 0.2-3 Hz noise on all three signals, several times their size (ECG 0.5-2.5 mV, PPG 1-4
  times the ~1 a.u. pulse, respiration 1-3 times a breath);
* ``saturation`` (0.5 / h; 1-5 s uniform): one signal (ECG 60 %, PPG 30 %, respiration 10 %) pinned
  at an ADC rail (``RAILS``): amplifier overload after a large movement or an electrode pop;
* ``lead_off`` (0.15 / h; median 45 s, 5 s-15 min): an ECG electrode off: the ECG reads exactly 0
  (the lead-off detector blanks the trace, no noise), and so does the impedance respiration, which
  uses the same electrodes; no respiration-rate numeric;
* ``probe_off`` (0.25 / h; median 30 s, 5 s-10 min): the SpO2 probe off: PPG exactly 0, no SpO2;
* ``af`` (0.1 / h, only in the ``AF_PRONE`` 12 % of patients; median 30 min, 2 min-6 h): paroxysmal
  atrial fibrillation: each beat's R-R interval times a lognormal factor (coefficient of variation
  0.15-0.25 per episode, mean rate unchanged), no P wave, fibrillatory f waves (0.03-0.06 mV, 5-7 Hz).

On top of the episodes the ECG, PPG and respiration trace wander continuously (baseline wander:
electrode impedance, respiration, vasomotion): a sum of ``WANDER_TERMS`` cosines at 0.02-0.3 Hz
with a per-patient sd (``WANDER_SD``), and the 1 Hz numerics carry one-sample spikes
(``SPIKES``): heart rate doubled (T waves or pacing spikes counted as beats, 0.3 / h), halved (low
QRS amplitude, missed beats, 0.1 / h), SpO2 15-35 points low (probe motion, 0.5 / h). The monitor-off
hours and uncharted vitals already exist (``population.chart_mask``) and are left to it.

Where the numbers come from: the share of ICU monitor alarms that are false (over 85 %, most
of them artefact: Tsien & Fackler 1997, Drew et al. 2014), technical alarms (leads off, probe off)
being several per patient-day, new-onset atrial fibrillation in 5-15 % of general ICU patients
(Moss et al. 2017; more in sepsis), paroxysms lasting minutes to hours, and an AF R-R interval
coefficient of variation around 0.2. They are illustrative orders of magnitude, not fitted to any
data set; a model trained on them learns the kinds of fault, not their real frequencies.

Everything is a function of time and the patient: each kind draws its episodes in order from its
own generator (``patients.STREAM_MONITOR_FAULTS``, one child per kind), extended lazily as far as
asked, and an episode's noise is a function of time from its own seed. Any block layout, and the
vitals and waveform generators each holding their own :class:`MonitorFaults`, see the same faults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .patients import STREAM_MONITOR_FAULTS, PatientSpec

RAILS: dict[str, tuple[float, float]] = {"ecg": (-5.0, 5.0), "ppg": (-4.0, 8.0), "resp": (-6.0, 6.0)}
"""ADC input range per signal (ECG: a +-5 mV front end; PPG and respiration in their own units)."""


@dataclass(frozen=True)
class Fault:
    """One kind of episode: rate per hour, duration (``lognormal``: median, sd of log; ``uniform``: lo,
    hi), clipped to ``bounds`` seconds."""

    rate_per_h: float
    duration: tuple[str, float, float]
    bounds: tuple[float, float]


FAULTS: dict[str, Fault] = {
    "motion": Fault(4.0, ("lognormal", 8.0, 0.8), (2.0, 60.0)),
    "saturation": Fault(0.5, ("uniform", 1.0, 5.0), (1.0, 5.0)),
    "lead_off": Fault(0.15, ("lognormal", 45.0, 1.0), (5.0, 900.0)),
    "probe_off": Fault(0.25, ("lognormal", 30.0, 1.0), (5.0, 600.0)),
    "af": Fault(0.1, ("lognormal", 1800.0, 1.0), (120.0, 6 * 3600.0)),
}
AF_PRONE = 0.12
MOTION_AMPLITUDE = {"ecg": (0.5, 2.5), "ppg": (1.0, 4.0), "resp": (1.0, 3.0)}
MOTION_HZ = (0.2, 3.0)
MOTION_TERMS = 6
SATURATION_SIGNAL = {"ecg": 0.6, "ppg": 0.3, "resp": 0.1}
AF_CV = (0.15, 0.25)
AF_F_WAVE_MV = (0.03, 0.06)
AF_F_WAVE_HZ = (5.0, 7.0)
AF_GRID_S = 0.05
"""AF interval factors are drawn on a grid of this step; beats are >= 0.25 s apart, so each beat gets
its own factor and the factor is a function of the beat's time alone."""
WANDER_SD = {"ecg": (0.03, 0.15), "ppg": (0.03, 0.15), "resp": (0.03, 0.12)}
WANDER_HZ = (0.02, 0.3)
WANDER_TERMS = 8
WANDER_GRID_S = 0.2
SPIKES = {"hr_double": 0.3, "hr_half": 0.1, "spo2_drop": 0.5}
SPO2_DROP = (15.0, 35.0)


@dataclass(frozen=True)
class Episode:
    start: float
    end: float
    seed: int
    """Seeds the episode's own content (motion noise, AF factors, which signal saturates)."""


class _Process:
    """Episodes of one kind in time order, drawn from one generator and extended on demand."""

    def __init__(self, fault: Fault, rng: np.random.Generator) -> None:
        self.fault = fault
        self.rng = rng
        self.episodes: list[Episode] = []
        self._next = float(rng.exponential(3600.0 / fault.rate_per_h))

    def _duration(self) -> float:
        kind, a, b = self.fault.duration
        d = a * float(np.exp(b * self.rng.standard_normal())) if kind == "lognormal" else float(self.rng.uniform(a, b))
        return float(np.clip(d, *self.fault.bounds))

    def until(self, t: float) -> list[Episode]:
        """Every episode starting before ``t``."""
        while self._next < t:
            end = self._next + self._duration()
            self.episodes.append(Episode(self._next, end, int(self.rng.integers(2**63))))
            self._next = end + float(self.rng.exponential(3600.0 / self.fault.rate_per_h))
        return self.episodes

    def overlapping(self, t0: float, t1: float) -> list[Episode]:
        return [e for e in self.until(t1) if e.end > t0]


def _cosines(t: np.ndarray, amp: np.ndarray, omega: np.ndarray, phase: np.ndarray) -> np.ndarray:
    return (amp * np.cos(t[:, None] * omega + phase)).sum(axis=1)


class MonitorFaults:
    """One patient's monitor faults (``icu`` population), a function of time: see the module."""

    def __init__(self, seed: int, index: int, stream: int) -> None:
        def child(*key: int) -> np.random.Generator:
            return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, stream, *key)))

        self.processes = {kind: _Process(f, child(k)) for k, (kind, f) in enumerate(FAULTS.items())}
        self.af_prone = bool(child(len(FAULTS)).random() < AF_PRONE)
        w = child(len(FAULTS) + 1)
        self.wander: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for signal, (lo, hi) in WANDER_SD.items():
            amp = np.full(WANDER_TERMS, float(w.uniform(lo, hi)) * np.sqrt(2.0 / WANDER_TERMS))
            self.wander[signal] = (
                amp,
                2 * np.pi * w.uniform(*WANDER_HZ, WANDER_TERMS),
                w.uniform(0, 2 * np.pi, WANDER_TERMS),
            )
        self.spikes = {
            name: _Process(Fault(rate, ("uniform", 1.0, 1.0), (1.0, 1.0)), child(len(FAULTS) + 2, k))
            for k, (name, rate) in enumerate(SPIKES.items())
        }
        self._af_cache: tuple[int, float, np.ndarray] | None = None

    @classmethod
    def for_patient(cls, p: PatientSpec) -> MonitorFaults:
        return cls(p.seed, p.index, STREAM_MONITOR_FAULTS)

    def episodes(self, kind: str, t0: float, t1: float) -> list[Episode]:
        """Episodes of ``kind`` (``FAULTS``) overlapping ``[t0, t1)``; AF only for an AF-prone patient."""
        if kind == "af" and not self.af_prone:
            return []
        return self.processes[kind].overlapping(t0, t1)

    def active(self, kind: str, t: np.ndarray) -> np.ndarray:
        """Whether an episode of ``kind`` covers each time in ``t`` (sorted)."""
        t = np.asarray(t, dtype=float)
        out = np.zeros(t.shape, dtype=bool)
        if t.size:
            for e in self.episodes(kind, float(t[0]), float(t[-1]) + 1e-9):
                out[np.searchsorted(t, e.start) : np.searchsorted(t, e.end)] = True
        return out

    def af_factor(self, t: float) -> float | None:
        """Multiplier on the R-R interval of a beat at ``t`` in atrial fibrillation; None in sinus rhythm."""
        if not self.af_prone:
            return None
        eps = self.processes["af"].until(t)
        if not eps or not eps[-1].start <= t < eps[-1].end:
            return None
        e = eps[-1]
        return float(self._af_grid(e)[int((t - e.start) / AF_GRID_S)])

    def af_factors(self, t: np.ndarray) -> np.ndarray:
        """``af_factor`` of every time in ``t`` at once, 1.0 in sinus rhythm (the sim cohort's
        vectorised beat recursion): the same values, bit for bit."""
        t = np.asarray(t, dtype=float)
        out = np.ones(t.shape)
        if not self.af_prone or not t.size:
            return out
        for e in self.processes["af"].overlapping(float(t.min()), float(t.max()) + 1e-9):
            inside = (t >= e.start) & (t < e.end)
            if inside.any():
                out[inside] = self._af_grid(e)[((t[inside] - e.start) / AF_GRID_S).astype(np.int64)]
        return out

    def _af_grid(self, e: Episode) -> np.ndarray:
        if self._af_cache is None or self._af_cache[0] != e.seed:
            rng = np.random.default_rng(e.seed)
            sigma = float(np.sqrt(np.log1p(rng.uniform(*AF_CV) ** 2)))
            z = rng.standard_normal(int(np.ceil((e.end - e.start) / AF_GRID_S)) + 1)
            self._af_cache = (e.seed, sigma, np.exp(sigma * z - 0.5 * sigma**2))
        return self._af_cache[2]

    def apply(self, signal: str, t: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``x`` (samples of ``signal`` at the sorted times ``t``) with the monitor's faults: baseline
        wander, motion bursts, AF f waves (ECG), lead or probe off (flat 0), saturation, then the rails."""
        if not t.size:
            return x
        t0, t1 = float(t[0]), float(t[-1]) + 1e-9
        grid = np.arange(np.floor(t0 / WANDER_GRID_S), np.floor(t1 / WANDER_GRID_S) + 2) * WANDER_GRID_S
        x = x + np.interp(t, grid, _cosines(grid, *self.wander[signal]))

        def span(e: Episode) -> slice:
            return slice(int(np.searchsorted(t, e.start)), int(np.searchsorted(t, e.end)))

        for e in self.episodes("motion", t0, t1):
            s = span(e)
            x[s] += _motion(signal, e, t[s])
        if signal == "ecg":
            for e in self.episodes("af", t0, t1):
                s = span(e)
                rng = np.random.default_rng(e.seed + 1)
                amp, hz, phase = rng.uniform(*AF_F_WAVE_MV), rng.uniform(*AF_F_WAVE_HZ), rng.uniform(0, 2 * np.pi)
                x[s] += amp * (np.sin(2 * np.pi * hz * t[s] + phase) + 0.4 * np.sin(2 * np.pi * 1.6 * hz * t[s]))
        for e in self.episodes("probe_off" if signal == "ppg" else "lead_off", t0, t1):
            x[span(e)] = 0.0
        lo, hi = RAILS[signal]
        names = list(SATURATION_SIGNAL)
        for e in self.episodes("saturation", t0, t1):
            rng = np.random.default_rng(e.seed)
            if names[int(rng.choice(len(names), p=list(SATURATION_SIGNAL.values())))] == signal:
                x[span(e)] = hi if rng.random() < 0.5 else lo
        return np.clip(x, lo, hi)

    def apply_vitals(self, t_rel: np.ndarray, out: dict[str, np.ndarray]) -> None:
        """One-sample spikes on the rounded numerics, in place, and no SpO2 while the probe is off,
        no respiration rate (impedance, from the ECG electrodes) while a lead is off. ``t_rel``:
        sorted whole seconds."""
        if not t_rel.size:
            return
        t0, t1 = float(t_rel[0]), float(t_rel[-1]) + 1.0
        for name, process in self.spikes.items():
            for e in process.overlapping(t0, t1):
                i = int(np.searchsorted(t_rel, np.floor(e.start)))
                if i >= len(t_rel) or t_rel[i] != np.floor(e.start):
                    continue
                if name == "hr_double":
                    out["hr"][i] = min(out["hr"][i] * 2.0, 250.0)
                elif name == "hr_half":
                    out["hr"][i] = max(np.round(out["hr"][i] / 2.0), 20.0)
                else:
                    drop = np.random.default_rng(e.seed).uniform(*SPO2_DROP)
                    out["spo2"][i] = max(np.round(out["spo2"][i] - drop), 50.0)
        out["spo2"][self.active("probe_off", t_rel)] = np.nan
        out["rr"][self.active("lead_off", t_rel)] = np.nan


def _motion(signal: str, e: Episode, t: np.ndarray) -> np.ndarray:
    """A motion burst on ``signal``: band-limited noise (a few cosines) with a 0.3-s onset and offset."""
    rng = np.random.default_rng([e.seed, list(RAILS).index(signal)])
    size = rng.uniform(*MOTION_AMPLITUDE[signal])
    amp = np.full(MOTION_TERMS, 0.5 * size * np.sqrt(2.0 / MOTION_TERMS))
    omega = 2 * np.pi * rng.uniform(*MOTION_HZ, MOTION_TERMS)
    phase = rng.uniform(0, 2 * np.pi, MOTION_TERMS)
    ramp = np.minimum(1.0, np.minimum(t - e.start, e.end - t) / 0.3)
    return ramp * _cosines(t - e.start, amp, omega, phase)
