"""Per-patient picture of every modality: a :class:`PatientState`, a JSON-able typed dict (the
Faust table's value, stored as is).

Pure functions, no I/O. Event-time rules:

* The patient's clock (``now``) is the newest vital-sign event time: the bedside monitor is the
  patient's heartbeat, and scores are stamped with it. Other modalities arrive on other topics, so a
  lab result may be consumed before the vital signs of the hour it was drawn in (replays run topics
  at different paces). Labs, X-rays and waveform features are therefore kept as short histories,
  and :func:`features_at` takes, for each one, the newest value with event time <= the scoring time.
* Important events (a lab, an X-ray, an admission) trigger a score once the clock reaches them.
* Out-of-order delivery cannot roll a value back, and a duplicate changes nothing.
* Vital signs are also kept as hourly buckets (``hourly``, hours ending at the first sample's time
  plus whole hours) for the PhysioNet-cohort row of :mod:`icuwatch.streams.student_row`; states
  checkpointed without them start them on their next vital sign.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import math
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

import numpy as np
from PIL import Image

from icuwatch.core import features, schemas, topics
from icuwatch.core.live_row import thumbnail
from icuwatch.signals.cxr_image import png_to_array

if TYPE_CHECKING:
    from icuwatch.streams.waveform_state import WaveformState

MODALITIES = features.MODALITIES
WINDOW_MINUTES = 60
RECENT_VITALS = 120
HISTORY = 8
VITAL_WINDOW_FIELDS = ("hr", "spo2", "rr", "sbp", "map", "temp")
HOURLY_FIELDS = ("hr", "spo2", "temp", "sbp", "map", "dbp", "rr")
"""Vitals of the hourly window, in the PhysioNet cohort's channel order (HR, O2Sat, Temp, SBP, MAP,
DBP, Resp): what :mod:`icuwatch.streams.student_row` builds the student's 8-hour window from."""
HOURLY_BUCKETS = 12
"""Hourly buckets kept (8 for the window, the rest for scores recomputed a little in the past)."""
LAB_FEATURES = ("lactate", "wbc", "creatinine", "platelets", "bilirubin")
RED_FLAG_DELAY_S = 60.0
CHECKPOINT_EVERY_S = 60.0

History = list[list[Any]]
"""``[[event_time, value], ...]`` oldest first, at most ``HISTORY`` entries, one per event time."""


class PatientState(TypedDict):
    """One patient's state. Lists, not tuples, and str keys throughout: it goes through JSON."""

    now: float | None
    """The patient's clock: the newest vital-sign event time (None before the first)."""
    vitals: dict[str, list[Any]]
    """Per vital field, ``[event_time, value]`` of its newest sample."""
    recent_vitals_t: list[float]
    """Event times of the last ``RECENT_VITALS`` vital-sign samples (duplicates are recognised by them)."""
    window: list[list[float]]
    """Per minute ``[minute_start, n_hr, sum_hr, n_spo2, ...]`` (``VITAL_WINDOW_FIELDS``), the last hour."""
    hourly: list[list[float]]
    """Per hour ``[bucket, n_hr, sum_hr, ...]`` (``HOURLY_FIELDS``), at most ``HOURLY_BUCKETS``."""
    hourly_anchor: float | None
    """Event time the hourly buckets count from (the first vital sign)."""
    hourly_carry: dict[str, list[float]]
    """Per field ``[bucket, mean]`` of the newest bucket pushed out of ``hourly``."""
    labs: dict[str, History]
    """Per analyte, its newest results."""
    waveforms_t: History
    """Event times at which waveform chunks arrived (values None): staleness of the waveforms."""
    waveform_features: dict[str, History]
    """Per waveform feature (heart rate from ECG, pulse rate from PPG...), its newest values."""
    cxr: History
    """The newest X-ray studies: ``[event_time, {"study_id", "report", "thumbnail"}]`` (thumbnail:
    :func:`cxr_thumbnail`; absent in states saved before it existed)."""
    adt: dict[str, Any]
    """Admission: newest event and its time, unit, bed, age, sex, admit and hospital admit times, and
    the ``seen`` events (``event@time``)."""
    pending: list[list[Any]]
    """Important events ``[event_time, kind]`` that trigger a score once the clock reaches them."""
    last_scored: float | None
    """Event time of the last score submitted."""
    checkpoint_t: float
    """Event time of the last checkpoint to the table."""
    offsets: dict[str, list[float]]
    """Per ``topic/partition``, ``[offset, timestamp]`` of the newest record applied (redelivery)."""
    revision: NotRequired[int]
    """Revision of the last score (> 0 when late data recomputed a score already published)."""
    received: NotRequired[dict[str, float]]
    """Per modality, the Kafka timestamp (wall clock, the sender's) of the newest record taken,
    duplicates included: how long its data has been silent (``streams/liveness.py``)."""


def new_state() -> PatientState:
    return {
        "now": None,
        "vitals": {},
        "recent_vitals_t": [],
        "window": [],
        "hourly": [],
        "hourly_anchor": None,
        "hourly_carry": {},
        "labs": {},
        "waveforms_t": [],
        "waveform_features": {},
        "cxr": [],
        "adt": {},
        "pending": [],
        "last_scored": None,
        "checkpoint_t": 0.0,
        "offsets": {},
    }


def _push(history: list, t: float, value) -> bool:
    """Insert ``[t, value]`` in time order, keeping the newest ``HISTORY``; False if ``t`` is held."""
    if not history or t > history[-1][0]:  # the usual case, in order: no search (1 Hz, per message)
        history.append([t, value])
        if len(history) > HISTORY:
            del history[0]
        return True
    times = [h[0] for h in history]
    i = bisect.bisect_left(times, t)
    if i < len(times) and times[i] == t:
        return False
    history.insert(i, [t, value])
    if len(history) > HISTORY:
        del history[: len(history) - HISTORY]
    return True


def _at(history: list, t: float) -> list | None:
    """The newest ``[time, value]`` with time <= ``t``."""
    for h in reversed(history):
        if h[0] <= t:
            return h
    return None


def _pending(state: PatientState, t: float, event: str) -> None:
    state["pending"].append([t, event])


def apply_vitals(state: PatientState, msg: schemas.Vitals) -> bool:
    """Fold a vitals sample into last values and the per-minute window; False for a duplicate."""
    t = msg.event_time
    recent = state["recent_vitals_t"]
    if t in recent:
        return False
    recent.append(t)
    if len(recent) > RECENT_VITALS:
        del recent[: len(recent) - RECENT_VITALS]
    for field in (*schemas.VITAL_FIELDS, "o2_supplement", "consciousness"):
        value = getattr(msg, field)
        held = state["vitals"].get(field)
        if value is not None and (held is None or t > held[0]):
            state["vitals"][field] = [t, value]
    _add_to_window(state, msg)
    _add_to_hourly(state, msg)
    state["now"] = t if state["now"] is None else max(state["now"], t)
    if red_flag(msg):
        _pending(state, t, "red_flag")
    return True


def _add_to_window(state: PatientState, msg: schemas.Vitals) -> None:
    """Window rows: [minute_start, n_hr, sum_hr, n_spo2, sum_spo2, ...], oldest first."""
    minute = math.floor(msg.event_time / 60.0) * 60.0
    window = state["window"]
    row = next((r for r in reversed(window) if r[0] == minute), None)
    if row is None:
        if window and minute < window[0][0] and len(window) >= WINDOW_MINUTES:
            return
        row = [minute] + [0.0] * (2 * len(VITAL_WINDOW_FIELDS))
        window.append(row)
        window.sort(key=lambda r: r[0])
        if len(window) > WINDOW_MINUTES:
            del window[: len(window) - WINDOW_MINUTES]
    _fill_row(row, msg, VITAL_WINDOW_FIELDS)


def hour_bucket(anchor: float, t: float) -> int:
    """Index of the hour ``(anchor + (b - 1) h, anchor + b h]`` holding event time ``t``: an hour
    ends at the patient's first vital-sign time plus whole hours, so a PhysioNet replay's hourly rows
    (ICU admission + ICULOS hours) each fall in their own bucket, the row's hour ending the bucket."""
    return math.ceil(round((t - anchor) / 3600.0, 6))


def _add_to_hourly(state: PatientState, msg: schemas.Vitals) -> None:
    """Hourly buckets ``[b, n_hr, sum_hr, n_spo2, ...]`` (``HOURLY_FIELDS``), oldest first, at most
    ``HOURLY_BUCKETS``; a bucket pushed out (or a sample older than all of them) leaves its means in
    ``hourly_carry`` ({field: [b, mean]}, the newest such per field) for the forward fill. States
    checkpointed before the hourly window existed start one on their next vital sign."""
    anchor = state.get("hourly_anchor")
    if anchor is None:
        anchor = state["hourly_anchor"] = msg.event_time
    hourly = state.setdefault("hourly", [])
    carry = state.setdefault("hourly_carry", {})
    b = hour_bucket(anchor, msg.event_time)
    row = next((r for r in reversed(hourly) if r[0] == b), None)
    if row is None:
        row = [b] + [0.0] * (2 * len(HOURLY_FIELDS))
        if hourly and b < hourly[0][0] and len(hourly) >= HOURLY_BUCKETS:
            _fill_row(row, msg, HOURLY_FIELDS)
            _to_carry(carry, row)
            return
        hourly.append(row)
        hourly.sort(key=lambda r: r[0])
        while len(hourly) > HOURLY_BUCKETS:
            _to_carry(carry, hourly.pop(0))
    _fill_row(row, msg, HOURLY_FIELDS)


def _fill_row(row: list, msg: schemas.Vitals, fields: tuple[str, ...]) -> None:
    """Add the sample's values to a bucket row ``[key, n_field1, sum_field1, n_field2, ...]``."""
    for i, field in enumerate(fields):
        value = getattr(msg, field)
        if value is not None:
            row[1 + 2 * i] += 1
            row[2 + 2 * i] += value


def _to_carry(carry: dict, row: list) -> None:
    for i, field in enumerate(HOURLY_FIELDS):
        n = row[1 + 2 * i]
        if n and (field not in carry or row[0] >= carry[field][0]):
            carry[field] = [row[0], row[2 + 2 * i] / n]


def window_means(state: PatientState) -> dict[str, list[tuple[float, float]]]:
    """Per vital, the (minute_start, mean) series of the recent window."""
    out: dict[str, list[tuple[float, float]]] = {f: [] for f in VITAL_WINDOW_FIELDS}
    for row in state["window"]:
        for i, field in enumerate(VITAL_WINDOW_FIELDS):
            n = row[1 + 2 * i]
            if n:
                out[field].append((row[0], row[2 + 2 * i] / n))
    return out


def apply_lab(state: PatientState, msg: schemas.Lab) -> bool:
    history = state["labs"].setdefault(msg.analyte, [])
    if not _push(history, msg.event_time, msg.value):
        return False
    _pending(state, msg.event_time, "lab")
    return True


def apply_waveform_features(state: PatientState, t: float, values: dict[str, float | None]) -> None:
    """Store features derived from the waveform buffers (heart rate from ECG, pulse rate...)."""
    for name, value in values.items():
        if value is not None:
            _push(state["waveform_features"].setdefault(name, []), t, float(value))


def refresh_waveform_features(state: PatientState, patient_id: str, t: float, waveforms: "WaveformState") -> None:
    """Before scoring at ``t``: features from the waveform windows up to ``t`` (see
    :meth:`WaveformState.features_until`), kept in the state's histories like any other value."""
    for t_end, values in waveforms.features_until(patient_id, t):
        apply_waveform_features(state, t_end, values)


def touch_waveform(state: PatientState, t: float) -> None:
    _push(state["waveforms_t"], t, None)


def cxr_thumbnail(image_b64: str) -> str | None:
    """The study's 32 x 32 thumbnail (``core.live_row.thumbnail``) as base64 of its 1,024 bytes, what
    the live student reads; None when the image does not decode (the study still counts, with its
    report, but the student sees no image)."""
    try:
        image = png_to_array(base64.b64decode(image_b64, validate=False))
    except (ValueError, OSError, binascii.Error, Image.DecompressionBombError):
        return None
    return base64.b64encode(thumbnail(image).tobytes()).decode("ascii")


def apply_cxr(state: PatientState, msg: schemas.Cxr) -> bool:
    if any(h[1]["study_id"] == msg.study_id for h in state["cxr"]):
        return False
    study = {"study_id": msg.study_id, "report": msg.report, "thumbnail": cxr_thumbnail(msg.image_b64)}
    _push(state["cxr"], msg.event_time, study)
    _pending(state, msg.event_time, "cxr")
    return True


def apply_adt(state: PatientState, msg: schemas.Adt) -> bool:
    adt = state["adt"]
    key = f"{msg.event}@{msg.event_time}"
    if key in adt.get("seen", []):
        return False
    adt.setdefault("seen", []).append(key)
    if msg.event_time >= adt.get("t", 0.0):
        adt.update(t=msg.event_time, event=msg.event, unit=msg.unit, bed=msg.bed)
    for field in ("age", "sex"):
        if getattr(msg, field) is not None:
            adt[field] = getattr(msg, field)
    if msg.hospital_admit_time is not None:
        # the latest hospital admission given (a later one is a new hospital stay; out-of-order
        # delivery cannot roll it back)
        adt["hospital_admit_t"] = max(msg.hospital_admit_time, adt.get("hospital_admit_t", -math.inf))
    if msg.event == "admit":
        if msg.event_time >= adt.get("admit_t", -math.inf):
            adt["admit_t"] = msg.event_time
        _pending(state, msg.event_time, "admit")
    return True


def apply(state: PatientState, msg: schemas.Decoded, waveforms: "WaveformState | None" = None) -> bool:
    """Apply one decoded message of any input topic; False for a duplicate. Shared by the worker and
    the offline paths (``psv-predict``) so both derive the same features from the same messages."""
    if isinstance(msg, schemas.Vitals):
        return apply_vitals(state, msg)
    if isinstance(msg, schemas.WAVEFORM_TYPES):
        if waveforms is None:
            raise ValueError("waveform messages need a WaveformState")
        accepted, t = waveforms.add(msg)
        if accepted:
            touch_waveform(state, t)
        return accepted
    if isinstance(msg, schemas.Lab):
        return apply_lab(state, msg)
    if isinstance(msg, schemas.Cxr):
        return apply_cxr(state, msg)
    if isinstance(msg, schemas.Adt):
        return apply_adt(state, msg)
    raise TypeError(type(msg).__name__)


def redelivered(state: PatientState, topic: str, partition: int, offset: int, timestamp: float) -> bool:
    """Whether the record at ``offset`` of ``topic``/``partition``, stamped ``timestamp`` by its
    producer, is already folded into this state.

    A restarted worker re-reads its partitions from the committed offset, the oldest record not yet
    covered by a checkpoint of *any* patient on the partition: for this patient that can be minutes
    of event time it already holds, more than the event-time dedupe (``recent_vitals_t``) keeps.
    The newest offset applied per partition, checkpointed with the rest of the state, recognises
    them. Offsets name a record only within one life of a topic, though: a topic re-created (the
    local broker restarted with its memory storage) counts from 0 again. A re-read record is as old
    as the one it repeats, while a record of the topic's next life was produced after it, so the
    producer's timestamp tells the two apart. (Waveform chunks are re-read on purpose, into the
    in-memory buffers, and are not checked.)"""
    applied = state.get("offsets", {}).get(f"{topic}/{partition}")
    return applied is not None and offset <= applied[0] and timestamp <= applied[1]


def mark_applied(state: PatientState, topic: str, partition: int, offset: int, timestamp: float) -> None:
    """Record the newest offset applied (a lower one only when the topic started a new life)."""
    applied = state.setdefault("offsets", {})
    source = f"{topic}/{partition}"
    held = applied.get(source)
    if held is None or offset > held[0] or timestamp > held[1]:
        applied[source] = [offset, timestamp]


def checkpoint_due(state: PatientState) -> bool:
    """Whether a minute of event time has passed since the state was last written to the table."""
    return state["now"] is not None and state["now"] - state["checkpoint_t"] >= CHECKPOINT_EVERY_S


def mark_checkpoint(state: PatientState, phase_s: float) -> None:
    """Record a write to the table at ``state['now']``, rounded down to the patient's own minute
    (``phase_s`` in [0, 60), e.g. from a hash of the patient id): patients admitted together then
    checkpoint in different seconds instead of all in the same one every minute (a 1,000-bed
    bench stalled ~6 s a minute on that)."""
    now = state["now"] or 0.0
    state["checkpoint_t"] = now - (now + phase_s) % CHECKPOINT_EVERY_S


MODALITY_OF_TOPIC = {topics.VITALS: "vitals", topics.WAVEFORMS: "waveforms", topics.LABS: "labs", topics.CXR: "cxr"}


def mark_received(state: PatientState, topic: str, timestamp: float) -> None:
    """A record of ``topic`` with Kafka ``timestamp`` arrived (ADT is not a data modality)."""
    modality = MODALITY_OF_TOPIC.get(topic)
    if modality is not None and timestamp:
        received = state.setdefault("received", {})
        received[modality] = max(timestamp, received.get(modality, 0.0))


def last_event_time(state: PatientState, modality: str) -> float | None:
    """Event time of the newest data of ``modality`` held (None: none)."""
    return _last_time(state, modality, math.inf)


def discharged(state: PatientState, t: float) -> bool:
    adt = state["adt"]
    return adt.get("event") == "discharge" and adt["t"] <= t


def _last_time(state: PatientState, modality: str, t: float) -> float | None:
    if modality == "vitals":
        times = [h[0] for h in state["vitals"].values() if h[0] <= t]
        return max(times) if times else None
    if modality == "labs":
        times = [h[0] for hist in state["labs"].values() if (h := _at(hist, t))]
        return max(times) if times else None
    held = _at(state["waveforms_t" if modality == "waveforms" else "cxr"], t)
    return held[0] if held else None


def staleness(state: PatientState, t: float) -> dict[str, float | None]:
    """Per modality, seconds from its newest message at or before ``t`` to ``t`` (None: none yet)."""
    out = {}
    for m in MODALITIES:
        last = _last_time(state, m, t)
        out[m] = None if last is None else round(t - last, 3)
    return out


def _value_at(history: list | None, t: float) -> float:
    held = _at(history, t) if history else None
    return math.nan if held is None else float(held[1])


def features_at(state: PatientState, t: float) -> np.ndarray:
    """The feature row (see :mod:`icuwatch.core.features`) from data with event time <= ``t``."""
    x = features.empty(1)
    row = x[0]
    vitals = state["vitals"]
    for name in VITAL_WINDOW_FIELDS:
        row[features.INDEX[name]] = _value_at([vitals[name]] if name in vitals else None, t)
    o2 = vitals.get("o2_supplement")
    if o2 is not None and o2[0] <= t:
        row[features.INDEX["o2_supplement"]] = float(bool(o2[1]))
    avpu = vitals.get("consciousness")
    if avpu is not None and avpu[0] <= t:
        row[features.INDEX["altered_mentation"]] = float(avpu[1] != "A")
    for name in LAB_FEATURES:
        row[features.INDEX[name]] = _value_at(state["labs"].get(name), t)
    for name in ("ecg_hr", "ppg_pr"):
        row[features.INDEX[name]] = _value_at(state["waveform_features"].get(name), t)
    for modality, age in staleness(state, t).items():
        row[features.INDEX[f"stale_{modality}_s"]] = math.nan if age is None else age
    return x


def red_flag(msg: schemas.Vitals) -> bool:
    """A single NEWS2 parameter scoring 3: the RCP asks for an urgent review, so rescore now."""
    return (
        (msg.rr is not None and (msg.rr <= 8 or msg.rr >= 25))
        or (msg.spo2 is not None and msg.spo2 <= 91)
        or (msg.sbp is not None and (msg.sbp <= 90 or msg.sbp >= 220))
        or (msg.hr is not None and (msg.hr <= 40 or msg.hr >= 131))
        or (msg.temp is not None and msg.temp <= 35.0)
        or (msg.consciousness is not None and msg.consciousness != "A")
    )


def _next_period(last: float, now: float, period_s: float, phase_s: float) -> bool:
    """Whether ``now`` has reached the patient's next time on its own grid (periods shifted by
    ``phase_s``): the first boundary after ``last``, or, when that is less than half a period after
    ``last``, half a period after the boundary. Gaps stay between half a period and a period, and
    patients scored in the same second spread over the second half of the period: the rule this
    replaced (fire at ``last`` + half a period) put every patient whose boundary fell in the first
    half, half of a ward scored together, into the same second.
    """
    boundary = math.floor((last + phase_s) / period_s) * period_s - phase_s + period_s
    if boundary - last < period_s / 2:
        boundary += period_s / 2
    return now >= boundary


def scoring_trigger(state: PatientState, interval_s: float, phase_s: float = 0.0) -> str | None:
    """Why the patient should be scored now (at ``state['now']``), or None.

    Pending important events whose event time the clock has reached fire first (a red flag at most
    once a minute, and kept until then); otherwise the cadence fires once per ``interval_s`` of
    event time. Both run on the patient's own grid, shifted by ``phase_s`` (the worker derives it
    from the patient id): the first boundary of that grid at least half a minute (interval) after
    the last score, or half a minute (interval) after a boundary closer than that
    (``_next_period``), so a red flag is rescored 30-60 s after the last score. Without the grid a
    ward admitted together was rescored all in the same second every minute; a 1,000-bed bench's
    alerts waited behind those bursts. A lab, X-ray or admission that arrives after its time was
    already scored gives a "revision": the latest score is recomputed at the same time with the
    late data in it.
    """
    now, last = state["now"], state["last_scored"]
    if now is None or discharged(state, now):
        return None
    if last is not None and now <= last:
        late = [p for p in state["pending"] if p[0] <= last and p[1] != "red_flag"]
        state["pending"] = [p for p in state["pending"] if p not in late]
        return "revision" if late else None
    due = [p for p in state["pending"] if p[0] <= now]
    if due:
        state["pending"] = [p for p in state["pending"] if p[0] > now]
    events = {p[1] for p in due}
    if last is None:
        return next((e for e in ("admit", "lab", "cxr") if e in events), "first")
    for event in ("lab", "cxr", "admit"):
        if event in events:
            return event
    if "red_flag" in events and _next_period(last, now, RED_FLAG_DELAY_S, phase_s):
        return "red_flag"
    if _next_period(last, now, interval_s, phase_s):
        return "cadence"
    if "red_flag" in events:  # not its time yet: the earliest waits, so one abnormal reading is rescored
        state["pending"].append(min(p for p in due if p[1] == "red_flag"))
    return None
