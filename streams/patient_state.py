"""Per-patient picture of every modality, as a plain JSON-able dict (the Faust table's value).

Pure functions, no I/O. Event time rules: a value is kept only if it is at least as new as the one
held (out-of-order delivery cannot roll a patient back), a duplicate changes nothing, and
:func:`features_at` uses only data with event time <= the scoring time.
"""

from __future__ import annotations

import math

import numpy as np

from icuwatch.fusion import features
from icuwatch.streams import schemas

MODALITIES = ("vitals", "waveforms", "labs", "cxr")
WINDOW_MINUTES = 60
RECENT_VITALS = 120
VITAL_WINDOW_FIELDS = ("hr", "spo2", "rr", "sbp", "map", "temp")
LAB_FEATURES = ("lactate", "wbc", "creatinine", "platelets", "bilirubin")
RED_FLAG_DELAY_S = 60.0


def new_state() -> dict:
    return {
        "clock": 0.0,
        "last_seen": {},
        "vitals": {},
        "recent_vitals_t": [],
        "window": [],
        "labs": {},
        "waveform_features": {},
        "cxr": None,
        "adt": {},
        "last_scored": None,
    }


def _newer(held: list | None, t: float) -> bool:
    return held is None or t > held[0]


def _touch(state: dict, modality: str, t: float) -> None:
    state["last_seen"][modality] = max(state["last_seen"].get(modality, 0.0), t)
    state["clock"] = max(state["clock"], t)


def apply_vitals(state: dict, msg: schemas.Vitals) -> bool:
    """Fold a vitals sample into last values and the per-minute window; False for a duplicate."""
    t = msg.event_time
    if t in state["recent_vitals_t"]:
        return False
    recent = state["recent_vitals_t"]
    recent.append(t)
    if len(recent) > RECENT_VITALS:
        del recent[: len(recent) - RECENT_VITALS]
    for field in (*schemas.VITAL_FIELDS, "o2_supplement", "consciousness"):
        value = getattr(msg, field)
        if value is not None and _newer(state["vitals"].get(field), t):
            state["vitals"][field] = [t, value]
    _add_to_window(state, msg)
    _touch(state, "vitals", t)
    return True


def _add_to_window(state: dict, msg: schemas.Vitals) -> None:
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
    for i, field in enumerate(VITAL_WINDOW_FIELDS):
        value = getattr(msg, field)
        if value is not None:
            row[1 + 2 * i] += 1
            row[2 + 2 * i] += value


def window_means(state: dict) -> dict[str, list[tuple[float, float]]]:
    """Per vital, the (minute_start, mean) series of the recent window."""
    out: dict[str, list[tuple[float, float]]] = {f: [] for f in VITAL_WINDOW_FIELDS}
    for row in state["window"]:
        for i, field in enumerate(VITAL_WINDOW_FIELDS):
            n = row[1 + 2 * i]
            if n:
                out[field].append((row[0], row[2 + 2 * i] / n))
    return out


def apply_lab(state: dict, msg: schemas.Lab) -> bool:
    held = state["labs"].get(msg.analyte)
    if held is not None and held[0] == msg.event_time:
        return False
    if _newer(held, msg.event_time):
        state["labs"][msg.analyte] = [msg.event_time, msg.value]
    _touch(state, "labs", msg.event_time)
    return True


def apply_waveform_features(state: dict, t: float, values: dict[str, float | None]) -> None:
    """Store features derived from the waveform buffers (heart rate from ECG, pulse rate...)."""
    for name, value in values.items():
        if value is not None and _newer(state["waveform_features"].get(name), t):
            state["waveform_features"][name] = [t, float(value)]


def touch_waveform(state: dict, t: float) -> None:
    _touch(state, "waveforms", t)


def apply_cxr(state: dict, msg: schemas.Cxr) -> bool:
    held = state["cxr"]
    if held is not None and held["study_id"] == msg.study_id:
        return False
    if held is None or msg.event_time > held["t"]:
        state["cxr"] = {"t": msg.event_time, "study_id": msg.study_id, "report": msg.report}
    _touch(state, "cxr", msg.event_time)
    return True


def apply_adt(state: dict, msg: schemas.Adt) -> bool:
    adt = state["adt"]
    key = f"{msg.event}@{msg.event_time}"
    if adt.get("last") == key:
        return False
    if msg.event_time >= adt.get("t", 0.0):
        adt.update(t=msg.event_time, last=key, event=msg.event, unit=msg.unit, bed=msg.bed)
    state["clock"] = max(state["clock"], msg.event_time)
    return True


def discharged(state: dict) -> bool:
    return state["adt"].get("event") == "discharge"


def staleness(state: dict, t: float) -> dict[str, float | None]:
    return {
        m: (round(t - state["last_seen"][m], 3) if m in state["last_seen"] else None) for m in MODALITIES
    }


def _value_at(held: list | None, t: float) -> float:
    if held is None or held[0] > t:
        return math.nan
    return float(held[1])


def features_at(state: dict, t: float) -> np.ndarray:
    """The feature row (see :mod:`icuwatch.fusion.features`) from data with event time <= ``t``."""
    x = features.empty(1)
    row = x[0]
    vitals = state["vitals"]
    for name in VITAL_WINDOW_FIELDS:
        row[features.INDEX[name]] = _value_at(vitals.get(name), t)
    o2 = vitals.get("o2_supplement")
    row[features.INDEX["o2_supplement"]] = math.nan if o2 is None or o2[0] > t else float(bool(o2[1]))
    avpu = vitals.get("consciousness")
    if avpu is not None and avpu[0] <= t:
        row[features.INDEX["altered_mentation"]] = float(avpu[1] != "A")
    for name in LAB_FEATURES:
        row[features.INDEX[name]] = _value_at(state["labs"].get(name), t)
    row[features.INDEX["ecg_hr"]] = _value_at(state["waveform_features"].get("ecg_hr"), t)
    row[features.INDEX["ppg_pr"]] = _value_at(state["waveform_features"].get("ppg_pr"), t)
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


def scoring_trigger(state: dict, event: str | None, interval_s: float) -> str | None:
    """Why the patient should be scored now (at ``state['clock']``), or None.

    ``event`` names an important event that just arrived ('lab', 'cxr', 'admit', 'red_flag'); the
    cadence fires once ``interval_s`` of event time has passed since the last score.
    """
    if discharged(state) or not state["last_seen"]:
        return None
    last = state["last_scored"]
    now = state["clock"]
    if last is not None and now <= last:
        return None
    if last is None:
        return event or "first"
    if event in ("lab", "cxr", "admit"):
        return event
    if event == "red_flag" and now - last >= RED_FLAG_DELAY_S:
        return event
    if now - last >= interval_s:
        return "cadence"
    return None
