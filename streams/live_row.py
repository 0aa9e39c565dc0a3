"""The live student's row of a streamed patient (``core.live_row`` layout), built from the worker's
patient state. Pure, no I/O.

Vitals, labs and static are :func:`streams.student_row.cohort_row`'s (the PhysioNet layout, checked
row by row against replayed stays in ``tests/streams/test_student_row.py``). The other three:

``waveforms`` [4]        the newest ECG heart rate and PPG pulse rate with event time <= ``t``
                         (``streams.waveform_state``: computed on the 10-s window ending at scoring
                         time, at most once a minute), z-scored with the card's ``norm["waveforms"]``;
                         present when either exists, staleness from the newer of the two.
``cxr`` [1, 32, 32]      the newest study with acquisition time <= ``t``: its thumbnail in [0, 1]
                         (``patient_state.cxr_thumbnail``); absent if it has none (undecodable image,
                         or a state saved before thumbnails existed).
``report`` [256]         that study's report (``core.live_row.report_text_bag``); absent if unwritten.

Where the stream differs from the cohort (``fusion.cohorts.live``): the cohort's waveform value is
the mean over the newest hour of simulated beats, the stream's the rate over the newest 10 s; the
cohort shows the newest study that has *arrived* by ``t``, the stream the newest acquired by ``t``
among those it has received (the same once the study has arrived, which is when a score sees it).
"""

from __future__ import annotations

import base64

import numpy as np

from icuwatch.core import live_row
from icuwatch.streams import patient_state
from icuwatch.streams.student_row import _hours, cohort_row

EMPTY_CXR = np.zeros((1, live_row.THUMBNAIL, live_row.THUMBNAIL), np.float32)
EMPTY_REPORT = np.zeros(live_row.REPORT_BUCKETS, np.float32)


def row(state: patient_state.PatientState, t: float, norm: dict) -> dict:
    """One live-layout row of the patient at event time ``t`` (``norm``: the served student's
    ``norm``): ``{"inputs": {...}, "present" [5], "staleness_h" [5], "hour"}``."""
    base = cohort_row(state, t, norm)
    inputs = {k: base["inputs"][k] for k in ("vitals", "labs", "static")}
    present = np.zeros(len(live_row.MODALITIES), bool)
    staleness = np.zeros(len(live_row.MODALITIES), np.float32)
    for src, name in enumerate(("vitals", "labs")):
        j = live_row.MODALITIES.index(name)
        present[j], staleness[j] = base["present"][src], base["staleness_h"][src]

    newest: dict[str, float | None] = {}
    newest_t = None
    for name in live_row.WAVEFORM_CHANNELS:
        held = patient_state._at(state["waveform_features"].get(name) or [], t)
        if held is None or held[1] is None or not np.isfinite(held[1]):
            newest[name] = None
            continue
        newest[name] = float(held[1])
        newest_t = held[0] if newest_t is None else max(newest_t, held[0])  # staleness from a value used
    inputs["waveforms"] = live_row.waveform_input(newest, norm)
    if newest_t is not None and inputs["waveforms"][len(live_row.WAVEFORM_CHANNELS) :].any():
        j = live_row.MODALITIES.index("waveforms")
        present[j], staleness[j] = True, _hours(t - newest_t)
    else:
        inputs["waveforms"][:] = 0.0

    inputs["cxr"], inputs["report"] = EMPTY_CXR, EMPTY_REPORT
    study = patient_state._at(state["cxr"], t)
    if study is not None:
        age = _hours(t - study[0])
        thumb = study[1].get("thumbnail")
        if thumb:
            pixels = np.frombuffer(base64.b64decode(thumb), np.uint8)
            inputs["cxr"] = (pixels.reshape(1, live_row.THUMBNAIL, live_row.THUMBNAIL) / 255.0).astype(np.float32)
            j = live_row.MODALITIES.index("cxr")
            present[j], staleness[j] = True, age
        if study[1].get("report"):
            inputs["report"] = live_row.report_text_bag(study[1]["report"])
            j = live_row.MODALITIES.index("report")
            present[j], staleness[j] = True, age
    return {"inputs": inputs, "present": present, "staleness_h": staleness, "hour": base["hour"]}
