"""The simulated multimodal cohort: one :class:`~icuwatch.fusion.cohorts.base.Cohort` row per patient per
simulated hour, every modality drawn from the bedside simulator (``sources/simulator``).

Everything comes from the simulator's own generators, called directly (no Kafka messages):

* patients: ``patients.draw_patients`` (seeded; condition, onset, ramp, peak per patient). The
  simulator's default onset window (10-60 min after admission) would make every deteriorating
  patient positive from the first row, so onsets are drawn in ``ONSET_WINDOW_H`` instead.
* vitals: ``physiology.VitalsGenerator.block``, fed the very random numbers the streaming
  simulation draws block by block (``simulation.BLOCK_S`` blocks), so the 1 Hz values are the ones
  ``Simulation.messages()`` publishes, computed for a whole stay in one vectorised call.
* waveform features: beat times from ``waveforms.WaveformGenerator`` (its own beat recursion, solved
  vectorised), the PPG/respiration templates of ``waveforms`` on a short snippet per hour. Not the
  streamed samples (the stream interleaves beat jitter with sample noise), the same model.
* labs: ``labs.lab_messages`` (its draw schedule: admission panel, routine panels, work-up).
* chest X-rays and reports: ``simulation.cxr_schedule``, ``cxr.render`` (decoded PNG), ``cxr.report``.

Causality: the row at hour ``t`` (``t * 3600`` s after admission) only uses what a bedside system
had by then: vitals/waveform seconds ``< t``, labs whose *result* time is ``<= t`` and X-rays whose
*arrival* time is ``<= t`` (both later than the collection/acquisition ``event_time``, so this is
stricter than ``event_time <= t``). Staleness and "hours since" are measured from the
collection/acquisition time. The simulated world is drawn over ``max(hours, MIN_HORIZON_H)`` hours,
so cohorts with fewer hours are exact prefixes of longer ones (same seed, hours <= 36).

Modalities ``MODALITIES`` plus always-present ``static``:

``vitals``    float32 [N, T=8, 14]: steps are the hours ending at t-7 .. t, oldest first. Per step the
              hourly mean of the 7 ``VITALS`` (PhysioNet cohort order) z-scored, then 7 measured flags
              (stylised population: 1 after admission, the monitor streams at 1 Hz; ``icu``: 1 where
              the monitor showed the vital in that hour, value 0 where it did not). Steps before
              admission are zeros.
``waveforms`` float32 [N, T=8, 10]: same layout with the ``WAVEFORM_CHANNELS`` hourly features; all
              zeros (absent) for the ``NO_WAVEFORM_FRACTION`` of patients without waveform monitoring.
``labs``      float32 [N, 3 * 14]: per ``labs.FULL`` analyte: z-scored last value, measured-ever flag,
              log1p(hours since collection) / 5.
``cxr``       int32 [N]: index into ``lookups["cxr"]`` uint8 [S, 224, 224] of the newest arrived study.
``report``    int32 [N]: index into ``lookups["report"]`` int32 [S, 96] (``encoders.tokenizer``) of that
              same study, -1 when its report is not written (``NO_REPORT_FRACTION`` of studies).
``static``    float32 [N, 3]: ``STATIC_CHANNELS``.

Labels: ``y = 1`` from ``onset - 6 h`` on for deteriorating patients (sepsis, hemorrhage, respiratory
failure), the PhysioNet 2019 rule on the simulated onset. Z-scores use the TRAIN split only
(``meta["norm"]``), clipped to +-``Z_CLIP``. ``meta["studies"]``/``meta["reports"]`` describe every
study (index = lookup row), ``meta["patients"]`` the ground truth per patient.

Changing a layout, a channel or the simulated world is a model interface change: bump
``COHORT_VERSION``.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from icuwatch.core.physionet_row import VITAL_COLUMNS, zscore
from icuwatch.encoders.tokenizer import encode
from icuwatch.fusion.cohorts.base import (
    IMAGE_SIZE,
    SPLIT_CODES,
    Cohort,
    default_cache_dir,
    load_or_build_cached,
    progress_bar,
    step_windows,
)
from icuwatch.sources.physionet import split_of
from icuwatch.sources.simulator import course
from icuwatch.sources.simulator import cxr as cxr_images
from icuwatch.sources.simulator import labs as sim_labs
from icuwatch.sources.simulator import waveforms as sim_waves
from icuwatch.sources.simulator.cxr_findings import as_dict
from icuwatch.sources.simulator.patients import (
    STREAM_CXR,
    STREAM_LABS,
    STREAM_VITALS,
    STREAM_WAVES,
    PatientSpec,
    draw_patients,
)
from icuwatch.sources.simulator.physiology import VitalsGenerator
from icuwatch.sources.simulator.simulation import BLOCK_S, Study, cxr_schedule, study_report

COHORT_VERSION = "sim-cohort-v1"
POPULATION_VERSION = "v3"
"""Bump when the ``icu`` population's simulated world changes (``sources/simulator``: population,
course, lab_orders, cxr_findings); the stylised cohort is keyed by ``COHORT_VERSION`` alone.
v2: chest films with findings of their own and reports in varied wording (``cxr_findings``), and a
monitor's faults (``monitor_faults``: vital-sign spikes and gaps, AF beat timing).
v3: 10 % deteriorating (6 % septic); each patient's own monitor-off rate and temperature round,
labs ordered as rounds (fitted hazards, ``lab_orders``), FiO2 at the patient's fitted setting, a
non-responder intubated 2-6 h after treatment (not at a fixed hour)."""
NAME = "sim"
SOURCE = "icuwatch bedside simulator (sources/simulator)"
MODALITIES = ("vitals", "waveforms", "labs", "cxr", "report")
T = 8
Z_CLIP = 10.0
LAB_HOURS_SCALE = 5.0
H = 3600

VITALS: tuple[str, ...] = tuple(VITAL_COLUMNS.values())  # hr, spo2, temp, sbp, map, dbp, rr
WAVEFORM_CHANNELS: tuple[str, ...] = (
    "ecg_hr",  # 60 / mean R-R interval of the hour's beats (beats/min)
    "rmssd_ms",  # root mean square of successive R-R differences over the hour (ms)
    "ppg_amp",  # PPG pulse amplitude (99th - 1st percentile) over the hour's last 10 s (a.u.)
    "resp_rate",  # breaths/min from the respiration waveform's phase advance over the hour
    "resp_amp",  # respiration amplitude (99th - 1st percentile) over the hour's last 30 s (a.u.)
)
LABS: tuple[str, ...] = sim_labs.FULL
STATIC_CHANNELS: tuple[str, ...] = (
    "age_div100",  # age / 100
    "gender",  # 1 male, 0 female (as PhysioNet's Gender)
    "hours_div100",  # hours since admission (the row's hour) / 100
)
VITALS_LAYOUT = tuple(f"{c}_z" for c in VITALS) + tuple(f"{c}_measured" for c in VITALS)
WAVEFORMS_LAYOUT = tuple(f"{c}_z" for c in WAVEFORM_CHANNELS) + tuple(f"{c}_measured" for c in WAVEFORM_CHANNELS)
LABS_LAYOUT = tuple(n for c in LABS for n in (f"{c}_z", f"{c}_measured_ever", f"{c}_log1p_hours_since_div5"))

ONSET_WINDOW_H = (4.0, 30.0)
"""Onsets are uniform in this window (hours after admission); fixed, so shorter cohorts are prefixes."""
MIN_HORIZON_H = 36
DETERIORATING_FRACTION = {"stylised": 0.5, "icu": 0.10}
"""Share of patients who deteriorate. ``icu``: a real unit's order. Sepsis: PhysioNet 2019 set B labels
about 6 % of stays septic, and ``course.CONDITION_MIX`` makes 60 % of 10 % septic = 6 %. The other
deteriorations are a judgment (set B does not label them): acute respiratory failure needing
ventilation after admission 2.5 % and a bleed needing transfusion 1.5 % of stays, the order of
unplanned intubation and major haemorrhage rates reported for mixed ICUs. At 15 % (v2) alarming on
every patient-hour scored +0.37 deterioration utility in 36-h stays, so the utility could not rank
models; at 10 % it is negative."""
NO_WAVEFORM_FRACTION = 0.15
NO_REPORT_FRACTION = 0.30
LABEL_LEAD_H = 6.0
PATIENT_PREFIX = "sim"
START_TIME = 1_700_000_000.0
"""Epoch of every admission (only used to build the simulator's messages; rows use relative time)."""
_STREAM_COHORT = 1000
"""Spawn-key stream of this builder's own draws (monitoring, report availability, snippet noise);
the simulator uses streams 0..4."""
_SNIPPET_PPG_S, _SNIPPET_RESP_S = 10, 30


# --- one patient -----------------------------------------------------------------------------------


class _Replay:
    """Stands in for ``VitalsGenerator.rng``: hands out pre-arranged normals, one array per call."""

    def __init__(self, chunks: list[np.ndarray]) -> None:
        self.chunks = chunks
        self.calls = 0

    def standard_normal(self, n: int) -> np.ndarray:
        out = self.chunks[self.calls]
        if len(out) != n:
            raise RuntimeError("VitalsGenerator.block drew in an unexpected order")
        self.calls += 1
        return out


def stream_vitals(p: PatientSpec, n_sec: int, horizon_s: int) -> dict[str, np.ndarray]:
    """The 1 Hz vitals of seconds ``0 .. n_sec - 1`` exactly as ``Simulation`` (duration
    ``horizon_s``) streams them: ``VitalsGenerator.block`` over the whole span, fed the normals its
    30 s blocks draw (per block: 6 AR channels then 6 white channels of ``n`` values each), so the AR
    state carries across blocks as it does there."""
    gen = VitalsGenerator(p, p.rng(STREAM_VITALS))
    first = 1 + (p.index * 7919) % BLOCK_S  # Simulation._dense's block layout
    end = first if n_sec <= first else first + BLOCK_S * math.ceil((n_sec - first) / BLOCK_S)
    end = min(end, horizon_s)
    starts = np.concatenate([[0], np.arange(first, end, BLOCK_S)]).astype(np.int64)
    sizes = np.minimum(np.append(starts[1:], end), end) - starts
    sec = np.arange(end, dtype=np.int64)
    blk = np.searchsorted(starts, sec, side="right") - 1
    k0, n, j = starts[blk], sizes[blk], sec - starts[blk]
    z = gen.rng.standard_normal(12 * end)
    gen.rng = _Replay([z[12 * k0 + c * n + j] for c in range(12)])
    out = gen.block(sec.astype(float))
    if gen.rng.calls != 12:
        raise RuntimeError("VitalsGenerator.block drew in an unexpected order")
    return {k: v[:n_sec] for k, v in out.items()}


def beat_times(
    gen: sim_waves.WaveformGenerator, hr: np.ndarray, until: float, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """``gen._extend_beats(0, until, hr)`` solved vectorised: the same recursion
    ``t += max(60 / hr[int(t)] * (1 + 0.015 z) * af(t), 0.25)`` on the same jitter draws (``af``: the
    monitor's atrial fibrillation factor, ``icu``; 1 in sinus rhythm), by fixed-point iteration chunk
    by chunk (each pass makes at least one more beat exact). Returns (beat times, their R-R values),
    initial beats included."""
    beats, rrs = [np.asarray(gen.beats, float)], [np.asarray(gen.beat_rr, float)]
    t0 = float(gen.beats[-1])
    last = len(hr) - 1
    while t0 < until:
        z = gen.rng.standard_normal(chunk)
        guess = t0 + np.arange(chunk, dtype=float) * 60.0 / hr[min(max(int(t0), 0), last)]
        for _ in range(chunk + 1):
            previous = np.concatenate([[t0], guess[:-1]])
            idx = np.clip(np.floor(previous), 0, last).astype(np.int64)
            rr = 60.0 / hr[idx] * (1.0 + 0.015 * z)
            if gen.faults is not None:
                rr = rr * gen.faults.af_factors(previous)
            new = np.cumsum(np.concatenate([[t0], np.maximum(rr, 0.25)]))[1:]
            if np.array_equal(new, guess):
                break
            guess = new
        else:  # pragma: no cover - cannot happen: each pass fixes one more beat
            raise RuntimeError("beat recursion did not converge")
        # The sequential loop stops at the first beat >= until. Draws past it are unused: the jitter
        # of every kept beat is the same draw as in the sequential loop.
        stop = np.flatnonzero(guess >= until)
        keep = stop[0] + 1 if len(stop) else chunk
        beats.append(guess[:keep])
        rrs.append(rr[:keep])
        t0 = float(guess[keep - 1])
    return np.concatenate(beats), np.concatenate(rrs)


def _pctl_range(x: np.ndarray) -> np.ndarray:
    """[hours, samples] -> 99th - 1st percentile per hour."""
    lo, hi = np.percentile(x, [1.0, 99.0], axis=1)
    return hi - lo


def waveform_features(p: PatientSpec, v: dict[str, np.ndarray], hours: int, rng: np.random.Generator) -> np.ndarray:
    """[hours, len(WAVEFORM_CHANNELS)] hourly features (bin ``b`` = seconds ``b*3600 .. (b+1)*3600 - 1``)."""
    gen = sim_waves.WaveformGenerator(p, p.rng(STREAM_WAVES))
    n_sec = hours * H
    hr_true, rr_true, s = v["hr_true"][:n_sec], v["rr_true"][:n_sec], v["s"][:n_sec]
    beats, beat_rr = beat_times(gen, hr_true, float(n_sec))
    ibi = np.diff(beats)
    later = beats[1:]
    ok = (later >= 0) & (later < n_sec) & (beats[:-1] >= 0)
    b_ibi = (later[ok] // H).astype(np.int64)
    count = np.bincount(b_ibi, minlength=hours)
    mean_ibi = np.bincount(b_ibi, weights=ibi[ok], minlength=hours) / np.maximum(count, 1)
    ecg_hr = np.where(count > 0, 60.0 / np.where(mean_ibi > 0, mean_ibi, 1.0), 0.0)
    d = np.diff(ibi)
    ok2 = ok[1:] & ok[:-1]
    b_d = (beats[2:][ok2] // H).astype(np.int64)
    n_d = np.bincount(b_d, minlength=hours)
    rmssd = np.sqrt(np.bincount(b_d, weights=d[ok2] ** 2, minlength=hours) / np.maximum(n_d, 1)) * 1000.0

    # Respiration phase as the waveform generator advances it: 2 pi rr / 60 per second.
    phase_sec = gen.resp_phase + np.concatenate([[0.0], np.cumsum(2 * np.pi * rr_true / 60.0)])

    def phase_at(tt: np.ndarray) -> np.ndarray:
        k = np.minimum(tt.astype(np.int64), n_sec - 1)
        return phase_sec[k] + (tt - k) * 2 * np.pi * rr_true[k] / 60.0

    resp_rate = (phase_sec[H::H] - phase_sec[:-1:H][:hours]) / (2 * np.pi) / 60.0

    ends = (np.arange(hours, dtype=float) + 1.0) * H
    fs_p, fs_r = sim_waves.FS["ppg"], sim_waves.FS["resp"]
    t_ppg = (ends[:, None] - _SNIPPET_PPG_S + np.arange(_SNIPPET_PPG_S * fs_p) / fs_p).ravel()
    shock = p.condition in ("sepsis", "hemorrhage")
    perfusion = 1.0 - 0.5 * s[t_ppg.astype(np.int64)] * shock
    if p.population == "icu":  # probe gain and vasomotion (sources.simulator.course)
        perfusion = perfusion * course.amplitude_factors(p, t_ppg)["ppg"]
    ppg = perfusion * sim_waves._beat_sum(t_ppg, beats + gen.pat, beat_rr, sim_waves._PPG_WAVES)
    # Sample noise drawn hour by hour (ppg then resp), so a shorter cohort draws a prefix of it.
    n_ppg, n_resp = _SNIPPET_PPG_S * fs_p, _SNIPPET_RESP_S * fs_r
    noise = rng.standard_normal((hours, n_ppg + n_resp))
    ppg += 0.04 * np.sin(phase_at(t_ppg)) + 0.01 * noise[:, :n_ppg].ravel()

    t_resp = (ends[:, None] - _SNIPPET_RESP_S + np.arange(_SNIPPET_RESP_S * fs_r) / fs_r).ravel()
    depth = 1.0 - 0.45 * s[t_resp.astype(np.int64)] * (p.condition == "respiratory_failure")
    if p.population == "icu":
        depth = depth * course.amplitude_factors(p, t_resp)["resp"]
    ph = phase_at(t_resp)
    resp = depth * (np.sin(ph) + 0.15 * np.sin(2 * ph + 0.7)) + 0.02 * noise[:, n_ppg:].ravel()

    return np.stack(
        [ecg_hr, rmssd, _pctl_range(ppg.reshape(hours, -1)), resp_rate, _pctl_range(resp.reshape(hours, -1))], axis=1
    )


@dataclass
class _Patient:
    vitals: np.ndarray  # [hours, 7] hourly means of what the monitor showed (0 where nothing)
    vitals_measured: np.ndarray  # [hours, 7] bool: the monitor showed the vital in that hour
    waves: np.ndarray | None  # [hours, C] or None (not monitored)
    waves_measured: np.ndarray  # [hours] bool: the monitor was on (waveforms stream) in that hour
    labs: np.ndarray  # [L, 4]: collection h, result h, analyte index, value
    studies: list[Study]  # arrival <= hours
    images: list[np.ndarray]
    reports: list[str]
    has_report: list[bool]


def simulate_patient(p: PatientSpec, hours: int, horizon_h: int) -> _Patient:
    own = np.random.default_rng(np.random.SeedSequence(p.seed, spawn_key=(p.index, _STREAM_COHORT)))
    monitored = bool(own.random() >= NO_WAVEFORM_FRACTION)
    n_sec, horizon_s = hours * H, horizon_h * H

    v = stream_vitals(p, n_sec, horizon_s)
    vitals, vitals_measured = np.stack([_hourly(v[c], hours) for c in VITALS], axis=2)
    vitals_measured = vitals_measured.astype(bool)
    on = v.get("monitor_on")
    waves_measured = np.ones(hours, bool) if on is None else np.asarray(on).reshape(hours, H).any(axis=1)
    waves = None
    if monitored:
        noise = np.random.default_rng(np.random.SeedSequence(p.seed, spawn_key=(p.index, _STREAM_COHORT + 1)))
        waves = waveform_features(p, v, hours, noise)
    del v

    labs = [
        ((lab.event_time - START_TIME) / H, (lab.result_time - START_TIME) / H, LABS.index(lab.analyte), lab.value)
        for lab in sim_labs.lab_messages(p, START_TIME, float(horizon_s), p.rng(STREAM_LABS))
    ]
    labs_arr = np.asarray(labs, dtype=float).reshape(-1, 4)
    labs_arr = labs_arr[labs_arr[:, 1] <= hours]

    studies, images, reports, has_report = [], [], [], []
    for st in cxr_schedule(p, float(horizon_s), p.rng(STREAM_CXR)):
        written = bool(own.random() >= NO_REPORT_FRACTION)  # drawn for every study: prefix-stable
        if st.arrival_rel > n_sec:
            continue
        png = cxr_images.render(
            st.severity, st.pattern, p.lobe, np.random.default_rng(st.image_seed), findings=st.findings
        )
        img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.uint8)
        if img.shape != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"simulated study is {img.shape}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
        studies.append(st)
        images.append(img)
        reports.append(study_report(p, st))
        has_report.append(written)
    return _Patient(vitals, vitals_measured, waves, waves_measured, labs_arr, studies, images, reports, has_report)


# --- rows ------------------------------------------------------------------------------------------


def _fit(x: np.ndarray) -> dict:
    """Mean/std (ddof 0) per column of [n, C]; std 1 where constant or empty."""
    if len(x):
        mean, std = x.mean(axis=0), x.std(axis=0)
    else:
        mean, std = np.zeros(x.shape[1]), np.ones(x.shape[1])
    std = np.where(std > 1e-6, std, 1.0)
    return {"mean": [float(m) for m in mean], "std": [float(s) for s in std], "count": int(len(x))}


def _hourly(per_second: np.ndarray, hours: int) -> np.ndarray:
    """[2, hours]: per hour the mean of its readings (NaN marks a second without one), 0 for an hour
    without any; and whether it has any."""
    x = np.asarray(per_second, float).reshape(hours, H)
    seen = np.isfinite(x)
    if seen.all():
        return np.stack([x.mean(axis=1), np.ones(hours)])
    count = seen.sum(axis=1)
    return np.stack([np.where(seen, x, 0.0).sum(axis=1) / np.maximum(count, 1), count > 0])


def _hours_since(measured: np.ndarray, present: np.ndarray) -> np.ndarray:
    """[hours] hours from each row's hour back to the newest measured hour (0: measured in it), 0
    where the modality is not present (continuous streams: 0 throughout)."""
    hours = np.arange(len(measured))
    newest = np.maximum.accumulate(np.where(measured, hours, -1))
    return np.where(present & (newest >= 0), hours - newest, 0).astype(float)


def _fit_measured(parts: list[tuple[np.ndarray, np.ndarray]], width: int) -> dict:
    """:func:`_fit` per column over the measured values only (all of them for the stylised population)."""
    if all(m.all() for _, m in parts):
        return _fit(np.concatenate([x for x, _ in parts] or [np.zeros((0, width))]))
    out: dict = {"mean": [], "std": [], "count": 0}
    for c in range(width):
        col = np.concatenate([x[m[:, c], c] for x, m in parts] or [np.zeros(0)])
        f = _fit(col[:, None])
        out["mean"] += f["mean"]
        out["std"] += f["std"]
        out["count"] = max(out["count"], f["count"])
    return out


def _z(x: np.ndarray, norm: dict) -> np.ndarray:
    return zscore(x, norm, Z_CLIP)


def _windows(values_z: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """[hours, C] z-scored hourly values and [hours, C] (or [hours]) measured flags -> [hours, T, 2C]
    (values, flags; a value not measured is 0), steps before admission zero."""
    flags = np.broadcast_to(np.asarray(measured, bool).reshape(len(values_z), -1), values_z.shape)
    return step_windows(np.concatenate([np.where(flags, values_z, 0.0), flags], axis=1), T)


def _lab_rows(labs: np.ndarray, hours: int, norm: dict) -> tuple[np.ndarray, np.ndarray]:
    """([hours, 3 * 14] lab inputs, [hours] collection hour of the newest available result or -inf)."""
    t = np.arange(1, hours + 1, dtype=float)
    value = np.zeros((hours, len(LABS)))
    coll = np.full((hours, len(LABS)), -np.inf)
    for c_h, r_h, a, val in labs[np.argsort(labs[:, 0], kind="stable")]:
        a = int(a)
        rows = t >= r_h
        newer = rows & (c_h >= coll[:, a])
        value[newer, a] = val
        coll[newer, a] = c_h
    ever = np.isfinite(coll)
    z = np.where(ever, _z(value, norm), 0.0)
    since = np.where(ever, np.log1p(np.maximum(t[:, None] - np.where(ever, coll, 0.0), 0.0)) / LAB_HOURS_SCALE, 0.0)
    out = np.stack([z, ever, since], axis=2).reshape(hours, 3 * len(LABS)).astype(np.float32)
    return out, coll.max(axis=1)


def build(
    n_patients: int = 1000, hours: int = 36, seed: int = 0, progress: bool = True, population: str = "stylised"
) -> Cohort:
    """The cohort of ``n_patients`` simulated patients, rows at hours ``1 .. hours``. Deterministic in
    ``seed``; a cohort with fewer hours (<= 36) is a prefix of a longer one (same raw values).
    ``population`` (``sources.simulator.patients.POPULATIONS``): ``icu`` draws patients fitted to real
    stays at a real unit's share of deteriorating ones (``DETERIORATING_FRACTION[population]``)."""
    if n_patients < 1 or hours < 1:
        raise ValueError("n_patients and hours must be >= 1")
    started = time.perf_counter()
    horizon_h = max(hours, MIN_HORIZON_H)
    patients = draw_patients(
        n_patients,
        seed,
        float(horizon_h * H),
        DETERIORATING_FRACTION[population],
        (ONSET_WINDOW_H[0] * H, ONSET_WINDOW_H[1] * H),
        PATIENT_PREFIX,
        population,  # type: ignore[arg-type]
    )
    sims = [
        simulate_patient(p, hours, horizon_h)
        for p in progress_bar(patients, n_patients, "sim cohort", "patient", progress)
    ]

    ids = [p.patient_id for p in patients]
    split_p = np.array([SPLIT_CODES[split_of(i)] for i in ids], np.uint8)
    train = [s for s, c in zip(sims, split_p) if c == SPLIT_CODES["train"]]
    norm = {
        "computed_on": "train",
        "n_train_patients": len(train),
        "z_clip": Z_CLIP,
        "vitals": {"channels": list(VITALS), **_fit_measured([(s.vitals, s.vitals_measured) for s in train], 7)},
        "waveforms": {
            "channels": list(WAVEFORM_CHANNELS),
            **_fit(
                np.concatenate(
                    [s.waves[s.waves_measured] for s in train if s.waves is not None]
                    or [np.zeros((0, len(WAVEFORM_CHANNELS)))]
                )
            ),
        },
        "labs": {"channels": list(LABS)},
    }
    lab_vals = np.concatenate([s.labs for s in train] or [np.zeros((0, 4))])
    lab_norm = [_fit(lab_vals[lab_vals[:, 2] == a, 3:4]) for a in range(len(LABS))]
    norm["labs"] |= {
        "mean": [n["mean"][0] for n in lab_norm],
        "std": [n["std"][0] for n in lab_norm],
        "count": [n["count"] for n in lab_norm],
    }

    n = n_patients * hours
    m = len(MODALITIES)
    t = np.arange(1, hours + 1, dtype=float)
    inputs = {
        "vitals": np.zeros((n, T, 2 * len(VITALS)), np.float32),
        "waveforms": np.zeros((n, T, 2 * len(WAVEFORM_CHANNELS)), np.float32),
        "labs": np.zeros((n, 3 * len(LABS)), np.float32),
        "cxr": np.full(n, -1, np.int32),
        "report": np.full(n, -1, np.int32),
        "static": np.zeros((n, len(STATIC_CHANNELS)), np.float32),
    }
    present = np.zeros((n, m), bool)
    staleness = np.zeros((n, m), np.float64)
    y = np.zeros(n, np.int8)
    images, report_texts, studies_meta, patients_meta = [], [], [], []
    for i, (p, sim) in enumerate(zip(patients, sims)):
        rows = slice(i * hours, (i + 1) * hours)
        inputs["vitals"][rows] = _windows(_z(sim.vitals, norm["vitals"]), sim.vitals_measured)
        present[rows, 0] = inputs["vitals"][rows][:, :, len(VITALS) :].any(axis=(1, 2))
        staleness[rows, 0] = _hours_since(sim.vitals_measured.any(axis=1), present[rows, 0])
        if sim.waves is not None:
            inputs["waveforms"][rows] = _windows(_z(sim.waves, norm["waveforms"]), sim.waves_measured)
            present[rows, 1] = inputs["waveforms"][rows][:, :, len(WAVEFORM_CHANNELS) :].any(axis=(1, 2))
            staleness[rows, 1] = _hours_since(sim.waves_measured, present[rows, 1])
        lab_x, newest = _lab_rows(sim.labs, hours, norm["labs"])
        inputs["labs"][rows] = lab_x
        present[rows, 2] = np.isfinite(newest)
        staleness[rows, 2] = np.where(np.isfinite(newest), t - np.where(np.isfinite(newest), newest, 0.0), 0.0)

        base = len(images)
        cxr_idx = np.full(hours, -1, np.int64)
        cxr_t = np.full(hours, -np.inf)
        for k, st in enumerate(sim.studies):  # newest acquisition among the arrived studies
            newer = (t * H >= st.arrival_rel) & (st.t_rel >= cxr_t)
            cxr_idx[newer], cxr_t[newer] = base + k, st.t_rel
            studies_meta.append(
                {
                    "patient": i,
                    "patient_id": p.patient_id,
                    "study_id": f"{p.patient_id}-cxr{st.number:03d}",
                    "time_h": round(st.t_rel / H, 4),
                    "arrival_h": round(st.arrival_rel / H, 4),
                    "severity": round(st.severity, 4),
                    "pattern": st.pattern,
                    "lobe": p.lobe,
                    "prior_severity": None if st.prior_severity is None else round(st.prior_severity, 4),
                    "has_report": sim.has_report[k],
                    **({} if st.findings is None else {"findings": as_dict(st.findings)}),
                }
            )
            report_texts.append(sim.reports[k] if sim.has_report[k] else None)
        images.extend(sim.images)
        has = cxr_idx >= 0
        written = np.array(sim.has_report + [False], bool)[np.where(has, cxr_idx - base, len(sim.studies))]
        inputs["cxr"][rows] = cxr_idx
        inputs["report"][rows] = np.where(written, cxr_idx, -1)
        present[rows, 3], present[rows, 4] = has, written
        age_h = np.where(has, t - np.where(has, cxr_t, 0.0) / H, 0.0)
        staleness[rows, 3], staleness[rows, 4] = age_h, np.where(written, age_h, 0.0)

        inputs["static"][rows] = np.stack(
            [np.full(hours, p.age / 100.0), np.full(hours, float(p.sex == "M")), t / 100.0], axis=1
        )
        onset_h = None if p.onset_s is None else p.onset_s / H
        if onset_h is not None:
            y[rows] = t >= onset_h - LABEL_LEAD_H
        patients_meta.append(
            {
                "patient_id": p.patient_id,
                "condition": p.condition,
                "onset_h": onset_h,
                "sepsis_source": p.sepsis_source,
                "peak": p.peak,
                "ramp_h": p.ramp_s / H if p.deteriorates else None,
                "age": p.age,
                "sex": p.sex,
                "unit": p.unit,
                "waveforms_monitored": sim.waves is not None,
            }
        )
    del sims

    s_count = len(images)
    lookups = {
        "cxr": np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8),
        "report": encode([r or "" for r in report_texts]),  # unwritten report: all padding
    }
    group = np.repeat(np.arange(n_patients, dtype=np.int32), hours)
    split = np.repeat(split_p, hours)
    hour = np.tile(t.astype(np.float32), n_patients)
    per_split = {}
    for name, code in SPLIT_CODES.items():
        sel = split == code
        per_split[name] = {
            "patients": int((split_p == code).sum()),
            "rows": int(sel.sum()),
            "positive_rows": int(y[sel].sum()),
            "positive_patients": int(len(np.unique(group[sel & (y == 1)]))),
        }
    meta = {
        "version": COHORT_VERSION,
        "source": SOURCE if population == "stylised" else f"{SOURCE}, population {population!r}",
        "n_patients": n_patients,
        "hours": hours,
        "seed": seed,
        "horizon_h": horizon_h,
        "T": T,
        "onset_window_h": list(ONSET_WINDOW_H),
        "deteriorating_fraction": DETERIORATING_FRACTION[population],
        "population": population,
        "population_version": "" if population == "stylised" else POPULATION_VERSION,
        "simulator_fingerprint": simulator_fingerprint(),
        "no_waveform_fraction": NO_WAVEFORM_FRACTION,
        "no_report_fraction": NO_REPORT_FRACTION,
        "label_rule": f"y = 1 from onset - {LABEL_LEAD_H:g} h on for deteriorating patients (PhysioNet 2019 rule)",
        "vital_channels": list(VITALS),
        "waveform_channels": list(WAVEFORM_CHANNELS),
        "lab_channels": list(LABS),
        "static_channels": list(STATIC_CHANNELS),
        "vitals_layout": list(VITALS_LAYOUT),
        "waveforms_layout": list(WAVEFORMS_LAYOUT),
        "labs_layout": list(LABS_LAYOUT),
        "causality": "row at hour t: vitals/waveform seconds < t, labs with result time <= t, X-rays with "
        "arrival time <= t; staleness / hours-since from collection/acquisition time",
        "staleness": "vitals, waveforms: hours since the newest hour the monitor showed them (0 when streaming); "
        "labs: hours since the newest available collection; "
        "cxr/report: hours since the shown study's acquisition",
        "norm": norm,
        "per_split": per_split,
        "n_studies": s_count,
        "studies": studies_meta,
        "reports": report_texts,
        "patients": patients_meta,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    return Cohort(
        name=NAME,
        modalities=MODALITIES,
        inputs=inputs,
        present=present,
        staleness_h=staleness.astype(np.float32),
        y=y,
        group=group,
        hour=hour,
        split=split,
        group_ids=ids,
        lookups=lookups,
        meta=meta,
    )


def cache_path(
    n_patients: int = 1000,
    hours: int = 36,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    population: str = "stylised",
) -> Path:
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tag = "" if population == "stylised" else f"-{population}-{POPULATION_VERSION}"
    return cache_dir / f"{COHORT_VERSION}{tag}-n{n_patients}-h{hours}-s{seed}.npz"


def load_or_build(
    n_patients: int = 1000,
    hours: int = 36,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    population: str = "stylised",
) -> Cohort:
    """The cached cohort (``cache_path``: ``var/cache/sim-cohort-v1[-icu-v1]-n{n}-h{h}-s{seed}.npz``),
    built and saved when the cache is missing, unreadable or of another version or population."""
    return load_or_build_cached(
        cache_path(n_patients, hours, seed, cache_dir, population),
        lambda: build(n_patients, hours, seed, progress=progress, population=population),
        lambda c: (
            c.meta.get("version") == COHORT_VERSION
            and c.meta.get("population", "stylised") == population
            and c.meta.get("population_version", "") == ("" if population == "stylised" else POPULATION_VERSION)
            and c.meta.get("simulator_fingerprint") == simulator_fingerprint()
        ),
    )


@lru_cache(maxsize=1)
def simulator_fingerprint() -> str:
    """A hash of what makes the simulated patients and their rows: the simulator's sources, its fitted
    ``population.json`` and this module. A cached cohort built by other code is rebuilt: the version
    tags only change when someone remembers to bump them (a cohort built while a version was being
    made, or a refit ``population.json``, would otherwise be read back)."""
    from icuwatch.sources import simulator

    folder = Path(simulator.__file__).parent
    digest = hashlib.sha256()
    for path in [*sorted(folder.glob("*.py")), folder / "population.json", Path(__file__)]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
