"""The simulation: a set of patients and the merged, time-ordered stream of their messages."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from icuwatch.core import topics
from icuwatch.core.schemas import EARLIEST_EVENT_TIME, VITAL_FIELDS, Adt, Cxr, Message, Vitals, Waveform, WaveformV2

from . import cxr as cxr_images
from .cxr_findings import Findings, course_for
from .drift import Injection, inject
from .labs import lab_messages
from .patients import (
    STREAM_CXR,
    STREAM_LABS,
    STREAM_MONITOR_CLOCK,
    STREAM_VITALS,
    STREAM_WAVES,
    PatientSpec,
    Population,
    draw_patients,
)
from .physiology import VitalsGenerator
from .waveforms import FS, UNITS, WaveformGenerator

BLOCK_S = 30
"""Seconds of vitals and waveforms generated per vectorised step, per patient. Each patient's first
block is shorter by a patient-dependent amount, so that with many beds the block computations are
spread over time instead of all falling on the same second (and the first message comes quickly)."""

# (publish time, patient index, order within patient, topic, message or a thunk making it).
# (time, index, order) is unique, so tuple comparison never reaches the payload.
Item = tuple[float, int, int, str, "Message | Callable[[], Message]"]

_ORDER_ADT, _ORDER_VITALS = 0, 1
_ORDER_WAVE = {"ecg": 2, "ppg": 3, "resp": 4}
_ORDER_LAB, _ORDER_CXR = 100, 100_000


def monitor_phase_s(p: PatientSpec) -> float:
    """Where in the second this bed's monitor sends (``Simulation(monitor_phases=True)``)."""
    return round(float(p.rng(STREAM_MONITOR_CLOCK).random()), 3) % 1.0


@dataclass(frozen=True)
class Study:
    number: int
    t_rel: float
    arrival_rel: float
    severity: float
    pattern: str
    prior_severity: float | None
    image_seed: int
    findings: Findings | None = None
    """``icu`` population: atelectasis, effusion, edema, lines and tubes (``cxr_findings``); None:
    the stylised film with the opacity alone."""
    prior_findings: Findings | None = None


def cxr_schedule(p: PatientSpec, duration_s: float, rng: np.random.Generator) -> list[Study]:
    """Admission film, routine films every 24-48 h, and extra films when the lungs get worse
    (pneumonia or respiratory failure) or as part of a sepsis work-up from another source.

    ``icu`` patients' studies also carry the findings of ``cxr_findings.course_for`` at each film's
    time, drawn from the patient's own generator (``rng``'s draws are the same in both populations)."""
    times = [rng.uniform(5.0, 30.0) * 60.0]
    while True:
        t = times[-1] + rng.uniform(24.0, 48.0) * 3600.0
        if t >= duration_s:
            break
        times.append(t)
    if p.lung_involved:
        t1 = p.time_at_severity(0.35)
        if t1 is not None:
            t1 += rng.uniform(10.0, 40.0) * 60.0
            times.append(t1)
            t2 = t1 + rng.uniform(3.0, 6.0) * 3600.0
            if float(p.severity(t2)) >= float(p.severity(t1)) + 0.15:
                times.append(t2)
    elif p.condition == "sepsis" and p.onset_s is not None:
        times.append(p.onset_s + rng.uniform(30.0, 60.0) * 60.0)

    pattern = (
        "pneumonia"
        if p.sepsis_source == "pneumonia"
        else ("diffuse" if p.condition == "respiratory_failure" else "clear")
    )
    findings = course_for(p, duration_s) if p.population == "icu" else None
    studies: list[Study] = []
    prior: float | None = None
    prior_findings: Findings | None = None
    for t in sorted(t for t in times if t >= 0.0):
        arrival = t + rng.uniform(10.0, 40.0) * 60.0
        seed = int(rng.integers(2**63))
        if arrival > duration_s:
            continue
        sev = float(p.severity(t)) if pattern != "clear" else 0.0
        now = None if findings is None else findings.at(t)
        studies.append(Study(len(studies) + 1, t, arrival, sev, pattern, prior, seed, now, prior_findings))
        prior, prior_findings = sev, now
    return studies


def study_report(p: PatientSpec, study: Study) -> str:
    """The report of ``study`` (varied wording from its seed where it carries findings)."""
    return cxr_images.report(
        study.severity,
        study.pattern,
        p.lobe,
        study.prior_severity,
        findings=study.findings,
        prior_findings=study.prior_findings,
        seed=study.image_seed,
    )


def _cxr_thunk(p: PatientSpec, study: Study, start_time: float) -> Callable[[], Message]:
    def make() -> Message:
        rng = np.random.default_rng(study.image_seed)
        png = cxr_images.render(study.severity, study.pattern, p.lobe, rng, findings=study.findings)
        return Cxr(
            patient_id=p.patient_id,
            event_time=round(start_time + study.t_rel, 3),
            study_id=f"{p.patient_id}-cxr{study.number:03d}",
            arrival_time=round(start_time + study.arrival_rel, 3),
            image_b64=cxr_images.to_b64(png),
            image_format="png",
            view="AP",
            report=study_report(p, study),
        )

    return make


class Simulation:
    """A deterministic ward of simulated ICU patients.

    ``messages()`` can be iterated any number of times and yields the same messages each time.
    Onsets are drawn in ``onset_window_s`` (seconds after ``start_time``), with the window's upper
    end pulled in to 90 % of the duration when the duration is shorter than the window. A negative
    lower end admits some patients already deteriorating (onset before admission; the ground truth
    gives that earlier onset time). ``waveform_chunk_s`` is the seconds of signal per waveform
    message (1: a bedside monitor's stream; more: a gateway that batches), sent at the chunk's start.
    ``population``: ``patients.POPULATIONS`` (``icu``: baselines and drift fitted to real stays).
    ``monitor_phases``: each bed's monitor sends its 1-Hz numerics and waveform chunks at its own
    phase within the second (uniform, per bed, in ms), as independent monitors do; off (the default,
    which tests and cohorts are built on), every bed sends at the same phase (``start_time`` + whole
    seconds): a burst of every bed's messages each second, the worst case for a consumer.
    """

    def __init__(
        self,
        n_patients: int,
        seed: int,
        start_time: float,
        duration_s: float,
        deteriorating_fraction: float = 0.5,
        onset_window_s: tuple[float, float] = (600.0, 3600.0),
        waveforms: bool = True,
        cxr: bool = True,
        patient_prefix: str = "sim",
        waveform_chunk_s: int = 1,
        population: Population = "stylised",
        waveform_payload: int = 1,
        drift: Sequence[Injection] = (),
        monitor_phases: bool = False,
    ) -> None:
        if seed < 0:
            raise ValueError("seed must be >= 0")
        if duration_s <= 0:
            raise ValueError("duration_s must be > 0")
        if not EARLIEST_EVENT_TIME <= start_time < 4.0e9 - duration_s:
            raise ValueError("start_time must be an epoch time in seconds, from 2000 on")
        self.n_patients = n_patients
        self.seed = seed
        self.start_time = float(start_time)
        self.duration_s = float(duration_s)
        if not 1 <= waveform_chunk_s <= BLOCK_S or BLOCK_S % waveform_chunk_s:
            raise ValueError(f"waveform_chunk_s must divide {BLOCK_S}")
        if waveform_payload not in (1, 2):
            raise ValueError("waveform_payload must be 1 (JSON) or 2 (binary, core/schemas.WaveformV2)")
        self.waveforms = waveforms
        self.waveform_chunk_s = waveform_chunk_s
        self.waveform_payload = waveform_payload
        self.cxr = cxr
        self.patients: list[PatientSpec] = draw_patients(
            n_patients, seed, self.duration_s, deteriorating_fraction, onset_window_s, patient_prefix, population
        )
        self.population = population
        self.drift = tuple(drift)
        """Faults injected into a unit's feeds (``sources/simulator/drift.py``)."""
        self.monitor_phases = monitor_phases

    @property
    def end_time(self) -> float:
        return self.start_time + self.duration_s

    def ground_truth(self) -> list[dict]:
        out = []
        for p in self.patients:
            out.append(
                {
                    "patient_id": p.patient_id,
                    "condition": p.condition,
                    "kind": p.condition,
                    "deteriorates": p.deteriorates,
                    "onset_time": None if p.onset_s is None else round(self.start_time + p.onset_s, 3),
                    "sepsis_source": p.sepsis_source,
                    "peak_severity": p.peak,
                    "ramp_s": p.ramp_s if p.deteriorates else None,
                    "age": p.age,
                    "sex": p.sex,
                    "unit": p.unit,
                    "bed": p.bed,
                    "admit_time": self.start_time,
                    "discharge_time": self.end_time,
                    "seed": self.seed,
                }
            )
        return out

    def messages(self) -> Iterator[tuple[str, Message]]:
        """(topic, message) in publish order: event time, except labs at result time and X-rays
        at arrival time (their ``event_time`` stays the collection/acquisition time)."""
        for _, topic, msg in self.timed_messages():
            yield topic, msg

    def timed_messages(self) -> Iterator[tuple[float, str, Message]]:
        """Like :meth:`messages` with the publish time first (what a paced publisher waits for)."""
        streams: list[Iterator[Item]] = [self._dense(p) for p in self.patients]
        streams.append(iter(sorted(self._sparse(), key=lambda it: it[:3])))
        out = (
            (t, topic, payload() if callable(payload) else payload) for t, _, _, topic, payload in heapq.merge(*streams)
        )
        if self.drift:
            out = inject(out, self.drift, {p.patient_id: p.unit for p in self.patients}, self.start_time)
        yield from out

    def _sparse(self) -> Iterator[Item]:
        t0, t1 = self.start_time, self.end_time
        for p in self.patients:
            i = p.index
            yield (
                t0,
                i,
                _ORDER_ADT,
                topics.ADT,
                Adt(
                    patient_id=p.patient_id, event_time=t0, event="admit", unit=p.unit, bed=p.bed, age=p.age, sex=p.sex
                ),
            )
            yield (
                t1,
                i,
                _ORDER_ADT,
                topics.ADT,
                Adt(patient_id=p.patient_id, event_time=t1, event="discharge", unit=p.unit, bed=p.bed),
            )
            for n, lab in enumerate(lab_messages(p, t0, self.duration_s, p.rng(STREAM_LABS))):
                yield (lab.result_time, i, _ORDER_LAB + n, topics.LABS, lab)
            if self.cxr:
                for study in cxr_schedule(p, self.duration_s, p.rng(STREAM_CXR)):
                    yield (
                        round(t0 + study.arrival_rel, 3),
                        i,
                        _ORDER_CXR + study.number,
                        topics.CXR,
                        _cxr_thunk(p, study, t0),
                    )

    def _dense(self, p: PatientSpec) -> Iterator[Item]:
        vitals = VitalsGenerator(p, p.rng(STREAM_VITALS))
        waves = WaveformGenerator(p, p.rng(STREAM_WAVES)) if self.waveforms else None
        pid, i, n_sec = p.patient_id, p.index, math.ceil(self.duration_s)
        t0 = self.start_time + (monitor_phase_s(p) if self.monitor_phases else 0.0)
        chunk_s = self.waveform_chunk_s
        first = 1 + (i * 7919) % BLOCK_S
        for k0 in [0, *range(first, n_sec, BLOCK_S)]:
            k = np.arange(k0, min(k0 + (first if k0 == 0 else BLOCK_S), n_sec), dtype=float)
            v = vitals.block(k)
            cols = {
                name: v[name].tolist()
                for name in ("hr", "spo2", "rr", "sbp", "dbp", "map", "temp", "o2_supplement", "consciousness")
            }
            monitor_on = v["monitor_on"].tolist() if "monitor_on" in v else None
            if monitor_on is not None:  # icu population: not charted = absent
                for name in VITAL_FIELDS:
                    cols[name] = [None if x != x else x for x in cols[name]]
            # Waveforms skip pydantic validation (WaveformGenerator checks the samples are finite,
            # all other fields are ours): the per-sample Python validator would triple the cost.
            chunks = waves.block(k0, v["hr_true"], v["rr_true"], v["s"]) if waves else None
            for j in range(len(k)):
                t = t0 + k0 + j
                if t >= self.end_time:
                    break  # a phase past the last whole second of a fractional duration
                if monitor_on is not None and not monitor_on[j]:
                    continue  # monitor off: no numerics, no waveforms
                yield (
                    t,
                    i,
                    _ORDER_VITALS,
                    topics.VITALS,
                    Vitals(
                        patient_id=pid,
                        event_time=t,
                        hr=cols["hr"][j],
                        spo2=cols["spo2"][j],
                        rr=cols["rr"][j],
                        sbp=cols["sbp"][j],
                        dbp=cols["dbp"][j],
                        map=cols["map"][j],
                        temp=cols["temp"][j],
                        o2_supplement=cols["o2_supplement"][j],
                        consciousness=cols["consciousness"][j],
                    ),
                )
                if chunks is not None and ((k0 + j) % chunk_s == 0 or j == 0):
                    # one chunk per chunk_s seconds of signal (cut at block ends), sent at its start
                    n = min(chunk_s - (k0 + j) % chunk_s, len(k) - j)
                    for signal in ("ecg", "ppg", "resp"):
                        piece = chunks[signal][j] if n == 1 else np.concatenate(chunks[signal][j : j + n])
                        yield (
                            t,
                            i,
                            _ORDER_WAVE[signal],
                            topics.WAVEFORMS,
                            WaveformV2.of(pid, t, signal, FS[signal], piece, UNITS[signal])
                            if self.waveform_payload == 2
                            else Waveform.model_construct(
                                patient_id=pid,
                                event_time=t,
                                signal=signal,
                                fs=FS[signal],
                                samples=piece.tolist(),
                                units=UNITS[signal],
                            ),
                        )
