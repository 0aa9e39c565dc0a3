"""The PhysioNet-cohort row of a streamed patient: what the distilled student (``student_physionet``
in Triton) reads, built from the worker's patient state. Pure, no I/O.

:func:`cohort_row` gives, for the state at event time ``t``, the same layout as one row of
:func:`icuwatch.fusion.cohorts.physionet.stay_inputs` (see that module for the channels), with the
same normalisation (a model card's ``data.meta.norm``):

``vitals`` [8, 14]  the hours ending at ``t - 7 h .. t`` (``patient_state.hour_bucket``; an hour ends
                    at the first vital-sign time plus whole hours): per vital (``HOURLY_FIELDS``, the
                    cohort's order) the mean of the samples of the newest hour with one at or before
                    the step, z-scored (0 if none yet), then measured-in-this-hour flags.
``labs`` [81]       per analyte the newest result with event time <= ``t``: z-score, measured-ever
                    flag, log1p(hours since) / 5.
``static`` [7]      age / 100, sex (M 1), unit (MICU / SICU), unit known, hospital admission time
                    (``HospAdmTime`` / 1000: hours from the ADT ``hospital_admit_time`` to the ICU
                    admission, <= 0, clipped to [-1, 1]; 0 while either is unknown), hours since the
                    ADT admission / 100.
``present``, ``staleness_h``  [2]  vitals (any of the 7) and labs (any of the 27) at or before ``t``.

Where the stream cannot match the offline row exactly (``tests/streams/test_student_row.py`` checks the
rest equal, row by row, on real PhysioNet replays):

* **Hourly means vs hourly values.** PhysioNet gives one value per hour; a monitor sends one a
  second, and a bucket's value is the mean of its samples. On a replay (one message an hour, at
  the row's hour) the two are the same. A score at a time that is not a whole number of hours after
  the first vital sign (the worker's 5-minute cadence) reads the current, partial hour as step 7.
  A score recomputed in the past (a revision) reads whole buckets, so samples after ``t`` within the
  bucket of ``t`` count too.
* **Values the v1 schema rejects** (e.g. a temperature < 20 C) are dropped by the replay and so are
  never measured in the stream, while the cohort z-scores them (clipped). Labs have no ranges.
* **Hospital admission time** (``HospAdmTime``) comes from the optional ``hospital_admit_time`` of
  ``icu.adt`` (the latest one any ADT message gave) and the newest ADT admit; a feed that does not
  send it gets 0 (what the cohort gives a stay without ``HospAdmTime``; |difference| <= 1 always).
  The replay sends it (its hospital admission, ``base_time``), except for a stay with a positive
  ``HospAdmTime`` (ICU before hospital admission, which the schema rejects; none in set B). The
  hours are rounded to 1e-6 h like the ICU hours, which gives PhysioNet's (two-decimal) value back.
* **Units** other than MICU/SICU: the replay maps Unit1/Unit2 to MICU/SICU; any other unit name
  counts as known with both flags 0 (as Unit1 = Unit2 = 0 would).
* **ICU hours** come from the newest ADT admit (0 before one arrives); PhysioNet's ICULOS is the same
  number on a replay. Hours are rounded to 1e-6 h (3.6 ms), which makes replayed times, stored to the
  millisecond, give whole hours.
* Labs keep ``patient_state.HISTORY`` results per analyte: a score far in the past of the newest 8
  results of an analyte would see it as never measured (never the case at the patient's clock).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from icuwatch.core.physionet_row import (
    LAB_COLUMNS,
    LAB_HOURS_SCALE,
    LABS,
    MODALITIES,
    STATIC_CHANNELS,
    VITAL_COLUMNS,
    VITALS,
    T,
    normalised,
)
from icuwatch.streams import patient_state

ANALYTES: tuple[str, ...] = tuple(LAB_COLUMNS[c] for c in LABS)
"""``icu.labs`` analyte of each cohort lab channel, in order."""
FIELDS: tuple[str, ...] = tuple(VITAL_COLUMNS[c] for c in VITALS)
assert FIELDS == patient_state.HOURLY_FIELDS


def _hours(seconds: float) -> float:
    return max(round(seconds / 3600.0, 6), 0.0)


def _hourly_steps(state: patient_state.PatientState, t: float) -> tuple[np.ndarray, np.ndarray]:
    """([T, 7] forward-filled hourly means (NaN: none yet), [T, 7] measured-this-hour flags)."""
    ffill = np.full((T, len(FIELDS)), np.nan)
    measured = np.zeros((T, len(FIELDS)), dtype=bool)
    anchor = state.get("hourly_anchor")
    if anchor is None:
        return ffill, measured
    hourly = state.get("hourly", [])
    carry = state.get("hourly_carry", {})
    top = patient_state.hour_bucket(anchor, t)
    for i, field in enumerate(FIELDS):
        held = carry.get(field)
        last = (held[0], held[1]) if held is not None else None
        rows = iter(hourly)
        row = next(rows, None)
        for step in range(T):
            b = top - (T - 1 - step)
            while row is not None and row[0] <= b:
                n = row[1 + 2 * i]
                if n and (last is None or row[0] >= last[0]):
                    last = (row[0], row[2 + 2 * i] / n)
                if row[0] == b and n:
                    measured[step, i] = True
                row = next(rows, None)
            if last is not None and last[0] <= b:
                ffill[step, i] = last[1]
    return ffill, measured


def _newest_vital_time(state: patient_state.PatientState, t: float) -> float | None:
    times = [h[0] for f, h in state["vitals"].items() if f in FIELDS and h[0] <= t]
    times += [x for x in state["recent_vitals_t"] if x <= t]
    return max(times) if times else None


def cohort_row(state: patient_state.PatientState, t: float, norm: dict) -> dict:
    """One PhysioNet-cohort row of the patient at event time ``t``: ``{"inputs": {"vitals" [8, 14],
    "labs" [81], "static" [7]}, "present" [2] bool, "staleness_h" [2] float32, "hour"}`` (float32
    arrays, the layouts of row ``i`` of ``stay_inputs``); ``norm`` is a model card's
    ``data.meta.norm``."""
    ffill, measured = _hourly_steps(state, t)
    vitals = np.concatenate([normalised(ffill, norm, "vitals"), measured], axis=1).astype(np.float32)

    values = np.full(len(ANALYTES), np.nan)
    ever = np.zeros(len(ANALYTES), dtype=bool)
    since = np.zeros(len(ANALYTES))
    newest_lab = None
    for j, analyte in enumerate(ANALYTES):
        held = patient_state._at(state["labs"].get(analyte) or [], t)
        if held is None:
            continue
        values[j], ever[j], since[j] = float(held[1]), True, _hours(t - held[0])
        newest_lab = held[0] if newest_lab is None else max(newest_lab, held[0])
    labs = np.stack(
        [normalised(values, norm, "labs"), ever, np.where(ever, np.log1p(since) / LAB_HOURS_SCALE, 0.0)], axis=1
    )
    labs = labs.reshape(3 * len(ANALYTES)).astype(np.float32)

    adt = state.get("adt", {})
    age = adt.get("age")
    unit = adt.get("unit")
    admit_t = adt.get("admit_t")
    hour = _hours(t - admit_t) if admit_t is not None else 0.0
    hosp_t = adt.get("hospital_admit_t")
    hosp = 0.0
    if hosp_t is not None and admit_t is not None:
        hosp = float(np.clip(round((hosp_t - admit_t) / 3600.0, 6) / 1000.0, -1.0, 1.0))
    static = np.array(
        [
            0.0 if age is None else age / 100.0,
            1.0 if adt.get("sex") == "M" else 0.0,
            1.0 if unit == "MICU" else 0.0,
            1.0 if unit == "SICU" else 0.0,
            0.0 if unit is None else 1.0,
            hosp,
            hour / 100.0,
        ],
        dtype=np.float64,
    ).astype(np.float32)
    assert len(static) == len(STATIC_CHANNELS)

    present = np.zeros(len(MODALITIES), dtype=bool)
    staleness = np.zeros(len(MODALITIES))
    for j, newest in enumerate((_newest_vital_time(state, t), newest_lab)):
        if newest is not None:
            present[j], staleness[j] = True, _hours(t - newest)
    return {
        "inputs": {"vitals": vitals, "labs": labs, "static": static},
        "present": present,
        "staleness_h": staleness.astype(np.float32),
        "hour": np.float32(hour),
    }


def stack_rows(rows: list[dict]) -> dict[str, np.ndarray]:
    """Cohort rows (this module's or ``streams.live_row``'s) as one batch: every input, ``present``,
    ``staleness_h`` (the Triton inputs of an exported model, in lower case)."""
    batch = {k: np.stack([r["inputs"][k] for r in rows]).astype(np.float32) for k in rows[0]["inputs"]}
    batch["present"] = np.stack([r["present"] for r in rows]).astype(bool)
    batch["staleness_h"] = np.stack([r["staleness_h"] for r in rows]).astype(np.float32)
    return batch


def leave_one_out(
    batch: dict[str, np.ndarray],
    modalities: Sequence[str] = MODALITIES,
    groups: Sequence[Sequence[str]] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``batch`` (:func:`stack_rows`, ``n`` rows, its ``present`` columns in ``modalities`` order)
    followed by, per row and group of modalities (default: each modality alone) with one present, a
    copy of the row with the group absent as the cohort represents it (inputs zeroed, ``present``
    False, staleness 0), for leave-one-out contributions.

    Returns (the extended batch: the ``n`` rows first, then the copies in row order, groups in order;
    ``without``: int [n, len(groups)], the index in the extended batch of row ``i`` without group
    ``g``, -1 where no modality of ``g`` is in row ``i``)."""
    groups = [(m,) for m in modalities] if groups is None else [tuple(g) for g in groups]
    present = np.asarray(batch["present"], dtype=bool)
    n = len(present)
    cols = [[modalities.index(m) for m in g] for g in groups]
    has = np.stack([present[:, c].any(axis=1) for c in cols], axis=1) if groups else np.zeros((n, 0), bool)
    rows, which = np.nonzero(has)  # row-major: per row, its groups in order
    without = np.full(has.shape, -1, dtype=np.int64)
    without[rows, which] = n + np.arange(len(rows))
    out = {k: np.concatenate([v, v[rows]]) for k, v in batch.items()}
    for g, c in enumerate(cols):
        copies = n + np.flatnonzero(which == g)
        for j in c:
            out[modalities[j]][copies] = 0
            out["present"][copies, j] = False
            out["staleness_h"][copies, j] = 0
    return out, without
