"""Replay WFDB records (single- or multi-segment) into ``icu.waveforms`` and ``icu.vitals``.

* Waveforms: the ECG lead (II preferred, else MLII, else the first ECG-like lead), ``PLETH``/``PPG``
  and ``RESP`` become ``icu.waveforms`` signals ``ecg``, ``ppg``, ``resp`` in chunks of ``chunk_s``
  (1 s) at the record's fs, in physical units, aligned to the start of each segment (the last chunk
  of a segment may be shorter). Event time = the chunk's first sample; publish time = its end (a
  monitor can only send a second of signal once it has it). A chunk with a NaN sample is dropped by
  default and counted (``nan_policy="interpolate"`` fills short NaN runs instead; an all-NaN chunk is
  always dropped). 8-bit MIMIC leads mark clipped R peaks as NaN, so "drop" can drop most ECG.
* Numerics: a record sampled at <= 2 Hz is read as numerics (``HR``, ``SpO2``, ``RESP``/``RR``,
  ``ABPSys``/``ABPDias``/``ABPMean`` or the NBP ones, ``Temp``...) and gives one ``icu.vitals`` message
  per sample that has a value in range (values outside the v1 ranges are dropped and counted).
* Multi-segment records are read segment by segment (the layout segment is skipped, ``~`` gap
  segments advance the clock, segments whose files are missing are counted and skipped), in blocks,
  so a long record is never loaded whole.
* Time: the record's base date and time when it has both and the whole record falls in the v1
  event-time range (MIMIC's shifted years such as 2137 do not); otherwise ``base_time`` (default
  2020-01-01T00:00Z). The ``time_source`` count says which.
* Patient id: ``--patient-id`` when given, else the record name, exactly (:func:`record_patient_id`);
  a record name the v1 id cannot hold (a space, ':', over 64 characters) is an operator error that
  says to pass ``--patient-id``, never rewritten (two records must not become one patient).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import wfdb
from pydantic import ValidationError

from icuwatch.core import schemas, topics
from icuwatch.core.errors import BadFile, OperatorError
from icuwatch.core.schemas import EARLIEST_EVENT_TIME, Message, Vitals, Waveform, WaveformV2
from icuwatch.sources.pacing import send_paced

DEFAULT_BASE_TIME = datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp()
NUMERICS_MAX_FS = 2.0
BLOCK_S = 300.0
LATEST_EVENT_TIME = 4.0e9

_ECG_NAMES = {
    "I",
    "II",
    "III",
    "AVR",
    "AVL",
    "AVF",
    "V",
    "V1",
    "V2",
    "V3",
    "V4",
    "V5",
    "V6",
    "MLI",
    "MLII",
    "MLIII",
    "ML2",
    "MCL1",
    "VX",
    "VY",
    "VZ",
    "D3",
    "E",
}
_PPG_NAMES = {"PLETH", "PPG", "PLETHR", "PLETHL", "SPO2WAVE"}
_RESP_NAMES = {"RESP", "RESPIRATION", "IMPEDANCE"}

_NUMERIC_NAMES = {
    "hr": ("HR", "HEARTRATE", "PULSE", "PR"),
    "spo2": ("SPO2", "SAO2PLETH", "SPO2R", "SPO2L"),
    "rr": ("RESP", "RR", "RESPRATE", "BR"),
    "sbp": ("ABPSYS", "ARTSYS", "APSYS", "NBPSYS", "NIBPSYS"),
    "dbp": ("ABPDIAS", "ARTDIAS", "APDIAS", "NBPDIAS", "NIBPDIAS"),
    "map": ("ABPMEAN", "ARTMEAN", "APMEAN", "NBPMEAN", "NIBPMEAN"),
    "temp": ("TEMP", "T", "TBLOOD", "TCORE"),
}
"""Vitals field -> numerics channel names (normalised: upper case, no spaces/%/_/-), first found wins."""


def _norm(name: str) -> str:
    return re.sub(r"[\s%_\-()]", "", name).upper()


def record_patient_id(record_path: str | Path, patient_id: str | None = None) -> str:
    """The patient id of a record's messages: ``patient_id`` when given, else the record's name,
    either exactly (:func:`schemas.check_patient_id`, never rewritten). One the v1 id cannot hold is
    an :class:`OperatorError` (:class:`BadFile` naming the record's ``.hea`` for its name) saying
    what is wrong and to pass ``--patient-id``."""
    if patient_id is not None:
        try:
            return schemas.check_patient_id(patient_id)
        except schemas.SchemaError as exc:
            raise OperatorError(f"--patient-id: {exc.reason}") from None
    name = _record_name(record_path)
    try:
        return schemas.check_patient_id(Path(name).name)
    except schemas.SchemaError as exc:
        raise BadFile(
            f"{name}.hea", f"the record name is not a usable patient id ({exc.reason}); pass --patient-id"
        ) from None


def pick_ecg(sig_names: list[str]) -> int | None:
    """Index of the ECG lead: II (or MLII) preferred, else the first ECG-like lead; None if none."""
    norm = [_norm(n) for n in sig_names]
    for want in ("II", "MLII", "ECGII", "LEADII"):
        if want in norm:
            return norm.index(want)
    for i, n in enumerate(norm):
        if n in _ECG_NAMES or n.startswith(("ECG", "EKG", "LEAD")):
            return i
    return None


def _pick(sig_names: list[str], names: set[str]) -> int | None:
    for i, n in enumerate(sig_names):
        if _norm(n) in names:
            return i
    return None


def waveform_channels(sig_names: list[str]) -> dict[str, int]:
    """signal ('ecg', 'ppg', 'resp') -> channel index, for the signals the record has."""
    out = {"ecg": pick_ecg(sig_names), "ppg": _pick(sig_names, _PPG_NAMES), "resp": _pick(sig_names, _RESP_NAMES)}
    return {k: v for k, v in out.items() if v is not None}


def numeric_channels(sig_names: list[str]) -> dict[str, int]:
    """Vitals field -> channel index in a numerics record."""
    norm = [_norm(n) for n in sig_names]
    out = {}
    for field, names in _NUMERIC_NAMES.items():
        for want in names:
            if want in norm:
                out[field] = norm.index(want)
                break
    return out


def _record_name(record_path: str | Path) -> str:
    s = str(record_path)
    return s[:-4] if s.endswith(".hea") else s


def read_header(record_path: str | Path) -> Any:
    """``wfdb.rdheader`` of a record (path without extension, or its ``.hea``): the OS error of a
    missing file, :class:`BadFile` naming the ``.hea`` when it is not a WFDB header."""
    name = _record_name(record_path)
    try:
        return wfdb.rdheader(name)
    except (ValueError, IndexError) as exc:  # wfdb's HeaderSyntaxError is a ValueError; a short file an IndexError
        raise BadFile(f"{name}.hea", f"not a WFDB header ({' '.join(str(exc).split())})") from None


def _start_time(header: Any, duration_s: float, base_time: float | None) -> tuple[float, str]:
    dt = getattr(header, "base_datetime", None)
    if dt is None and getattr(header, "base_date", None) is not None and getattr(header, "base_time", None) is not None:
        dt = datetime.combine(header.base_date, header.base_time)
    if dt is not None:
        t = dt.replace(tzinfo=timezone.utc).timestamp() if dt.tzinfo is None else dt.timestamp()
        if EARLIEST_EVENT_TIME <= t and t + duration_s < LATEST_EVENT_TIME:
            return t, "record"
    if base_time is not None:
        return float(base_time), "given"
    return DEFAULT_BASE_TIME, "default"


def segments(record_path: str | Path, stats: Counter | None = None) -> Iterator[tuple[int, str, int, float]]:
    """``(start_sample, segment_record_path, length, fs)`` of the readable segments of a record.

    A single-segment record is its own one segment. Layout segments are skipped; ``~`` gaps and
    missing segment files are counted in ``stats`` (``gap_segments``, ``missing_segments``).
    """
    stats = Counter() if stats is None else stats
    name = _record_name(record_path)
    header = read_header(name)
    if not getattr(header, "seg_name", None):
        yield 0, name, int(header.sig_len or 0), float(header.fs)
        return
    folder = Path(name).parent
    start = 0
    for seg, length in zip(header.seg_name, header.seg_len):
        length = int(length)
        if seg == "~":
            stats["gap_segments"] += 1
        elif length == 0 or seg.endswith("_layout"):
            pass
        elif not (folder / f"{seg}.hea").exists():
            stats["missing_segments"] += 1
        else:
            stats["segments_read"] += 1
            yield start, str(folder / seg), length, float(header.fs)
        start += length


def _decimals(gains: list[float]) -> int:
    g = max([abs(x) for x in gains if x] or [1000.0])
    return max(4, math.ceil(math.log10(g)) + 3)  # error < 1e-3 ADC step: the ADC values stay recoverable


def _fill_nan(x: np.ndarray) -> np.ndarray | None:
    bad = np.isnan(x)
    if bad.all():
        return None
    if bad.any():
        idx = np.arange(x.size)
        x = x.copy()
        x[bad] = np.interp(idx[bad], idx[~bad], x[~bad])
    return x


def _build_vitals(fields: dict[str, Any], stats: Counter) -> Vitals | None:
    while True:
        try:
            return Vitals(**fields)
        except ValidationError as exc:
            bad = {e["loc"][0] for e in exc.errors() if e.get("loc") and e["loc"][0] in fields}
            bad -= {"patient_id", "event_time"}
            if not bad:
                return None
            for name in bad:
                stats["skipped_out_of_range"] += 1
                del fields[name]


def record_messages(
    record_path: str | Path,
    base_time: float | None = None,
    chunk_s: float = 1.0,
    stats: Counter | None = None,
    patient_id: str | None = None,
    nan_policy: str = "drop",
    payload_version: int = 1,
) -> Iterator[tuple[float, str, Message | WaveformV2]]:
    """``(publish_time, topic, message)`` of a WFDB record, in publish-time order (see the module doc).

    ``stats`` (optional) collects per-signal chunk counts (``chunks.ecg``...), ``nan_chunks`` (and
    per signal), segment counts, ``skipped_out_of_range`` and ``time_source`` ('record', 'given' or
    'default': recorded as ``time_source.<which>`` = 1). ``payload_version`` 2 sends the chunks as
    binary :class:`~icuwatch.core.schemas.WaveformV2` (int16 at the chunk's own scale).
    """
    if nan_policy not in ("drop", "interpolate"):
        raise ValueError("nan_policy must be 'drop' or 'interpolate'")
    stats = Counter() if stats is None else stats
    name = _record_name(record_path)
    header = read_header(name)
    fs_rec = float(header.fs)
    duration = float(header.sig_len or 0) / fs_rec if fs_rec else 0.0
    t_start, source = _start_time(header, duration, base_time)
    stats[f"time_source.{source}"] = 1
    pid = record_patient_id(name, patient_id)

    for start, seg_path, length, fs in segments(name, stats):
        seg_header = read_header(seg_path)
        fs = float(seg_header.fs or fs)
        t_seg = t_start + start / fs
        names = list(seg_header.sig_name or [])
        units = list(seg_header.units or [""] * len(names))
        if fs <= NUMERICS_MAX_FS:
            chans = numeric_channels(names)
            if not chans:
                stats["segments_without_signals"] += 1
                continue
            block = max(1, int(BLOCK_S * fs))
            for b0 in range(0, length, block):
                rec = wfdb.rdrecord(
                    seg_path, sampfrom=b0, sampto=min(length, b0 + block), channels=sorted(set(chans.values()))
                )
                col = {c: j for j, c in enumerate(sorted(set(chans.values())))}
                x = rec.p_signal
                for i in range(x.shape[0]):
                    t = round(t_seg + (b0 + i) / fs, 3)
                    vals = {f: float(x[i, col[c]]) for f, c in chans.items() if math.isfinite(x[i, col[c]])}
                    if not vals:
                        continue
                    msg = _build_vitals(dict(patient_id=pid, event_time=t, **vals), stats)
                    if msg is not None:
                        stats[f"numerics.{topics.VITALS}"] += 1
                        yield t, topics.VITALS, msg
            continue

        chans = waveform_channels(names)
        if not chans:
            stats["segments_without_signals"] += 1
            continue
        if fs > 2000:
            stats["segments_fs_over_2000"] += 1
            continue
        wanted = sorted(set(chans.values()))
        col = {c: j for j, c in enumerate(wanted)}
        gains = list(seg_header.adc_gain or [])
        dec = {s: _decimals([gains[c]] if c < len(gains) else []) for s, c in chans.items()}
        n_chunk = max(1, int(round(fs * chunk_s)))
        block = n_chunk * max(1, int(BLOCK_S / chunk_s))
        for b0 in range(0, length, block):
            rec = wfdb.rdrecord(seg_path, sampfrom=b0, sampto=min(length, b0 + block), channels=wanted)
            x = rec.p_signal
            for c0 in range(0, x.shape[0], n_chunk):
                t = round(t_seg + (b0 + c0) / fs, 6)
                for signal, c in chans.items():
                    chunk = x[c0 : c0 + n_chunk, col[c]]
                    if np.isnan(chunk).any():
                        stats["nan_chunks"] += 1
                        stats[f"nan_chunks.{signal}"] += 1
                        if nan_policy == "drop":
                            continue
                        chunk = _fill_nan(chunk)
                        if chunk is None:
                            continue
                        stats["interpolated_chunks"] += 1
                    msg: Waveform | WaveformV2
                    if payload_version == 2:
                        msg = WaveformV2.of(pid, t, signal, fs, chunk, units[c] or "NU")
                    else:
                        msg = Waveform(
                            patient_id=pid,
                            event_time=t,
                            signal=signal,
                            fs=fs,
                            samples=np.round(chunk, dec[signal]).tolist(),
                            units=units[c] or "NU",
                        )
                    stats[f"chunks.{signal}"] += 1
                    yield round(t + chunk.size / fs, 6), topics.WAVEFORMS, msg


def replay_wfdb(
    record_path: str | Path,
    producer: Any,
    speed: float = 0.0,
    base_time: float | None = None,
    progress: bool = True,
    chunk_s: float = 1.0,
    patient_id: str | None = None,
    nan_policy: str = "drop",
    payload_version: int = 1,
) -> dict[str, Any]:
    """Send a WFDB record's messages, paced by publish time. Returns produced counts and stats."""
    stats: Counter = Counter()
    name = _record_name(record_path)
    pid = record_patient_id(name, patient_id)
    header = read_header(name)
    duration = float(header.sig_len or 0) / float(header.fs)
    t0, _ = _start_time(header, duration, base_time)
    produced = send_paced(
        record_messages(name, base_time, chunk_s, stats, pid, nan_policy, payload_version),
        producer,
        speed,
        start_time=t0,
        end_time=t0 + duration,
        progress=progress,
    )
    return {
        "produced": produced,
        "record": Path(name).name,
        "patient_id": pid,
        **dict(sorted(stats.items())),
    }
