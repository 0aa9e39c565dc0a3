"""``icuwatch waveform-beats RECORD OUT_DIR``: the worker's R-peak detector on a WFDB record.

The ECG lead is chosen as the replay chooses it (II preferred). R peaks come from
:func:`icuwatch.signals.waveform_features.detect_r_peaks` (the worker's XQRS path) and are written as
``OUT_DIR/<record>.qrs`` (``wfdb.wrann``, symbol ``N``). Multi-segment records are detected segment
by segment (readable segments with an ECG lead) and the indices are placed on the whole record's
sample axis. When a reference annotation (``<record>.atr``, else ``<record>.qrs`` unless that is the
file being written) lies next to the record, its beat annotations are compared with
``wfdb.processing.compare_annotations`` (150 ms window) and sensitivity / positive predictivity are
reported; without one the result says so and nothing is scored.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import wfdb
from wfdb import processing as wproc

from icuwatch.signals.waveform_features import detect_r_peaks
from icuwatch.sources.wfdb_records import _record_name, pick_ecg, segments

WINDOW_S = 0.150
BEAT_SYMBOLS = set("NLRBAaJSVrFejnE/fQ?")
"""WFDB beat annotation codes (non-beat annotations such as rhythm changes are ignored)."""


def detect_record_beats(record_path: str | Path) -> dict[str, Any]:
    """R peaks of the record's ECG lead: ``{"samples", "fs", "lead", "segments"}``."""
    name = _record_name(record_path)
    stats: Counter = Counter()
    peaks: list[np.ndarray] = []
    fs = None
    leads = []
    for start, seg_path, _length, _seg_fs in segments(name, stats):
        header = wfdb.rdheader(seg_path)
        idx = pick_ecg(list(header.sig_name or []))
        if idx is None:
            continue
        rec = wfdb.rdrecord(seg_path, channels=[idx])
        fs = float(rec.fs)
        leads.append(rec.sig_name[0])
        p = detect_r_peaks(rec.p_signal[:, 0], fs)
        peaks.append(p.astype(np.int64) + start)
    samples = np.unique(np.concatenate(peaks)) if peaks else np.empty(0, dtype=np.int64)
    if fs is None:
        fs = float(wfdb.rdheader(name).fs)
    return {"samples": samples, "fs": fs, "lead": sorted(set(leads)), "segments": dict(stats)}


def _reference(name: str, out_file: Path) -> Path | None:
    for ext in ("atr", "qrs"):
        p = Path(f"{name}.{ext}")
        if p.exists() and p.resolve() != out_file.resolve():
            return p
    return None


def waveform_beats(record_path: str | Path, out_dir: str | Path, window_s: float = WINDOW_S) -> dict[str, Any]:
    """Detect, write ``OUT_DIR/<record>.qrs``, score against a reference if there is one."""
    name = _record_name(record_path)
    record = Path(name).name
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_file = out_dir / f"{record}.qrs"
    ref_path = _reference(name, out_file)  # looked up before writing: our own output is never the reference
    found = detect_record_beats(name)
    samples, fs = found["samples"], found["fs"]
    if samples.size:
        wfdb.wrann(record, "qrs", samples, symbol=["N"] * samples.size, write_dir=str(out_dir), fs=fs)
    result: dict[str, Any] = {
        "record": record,
        "lead": found["lead"],
        "fs": fs,
        "beats": int(samples.size),
        "annotation": str(out_file) if samples.size else None,
    }
    if found["segments"]:
        result["segments"] = found["segments"]
    if ref_path is None:
        result.update(
            reference=None, scored=False, note="no reference annotation (.atr/.qrs) next to the record: not scored"
        )
        return result
    ref = wfdb.rdann(name, ref_path.suffix[1:])
    ref_samples = np.array([s for s, sym in zip(ref.sample, ref.symbol) if sym in BEAT_SYMBOLS], dtype=np.int64)
    result["reference"] = str(ref_path)
    result["reference_beats"] = int(ref_samples.size)
    if ref_samples.size == 0:
        result.update(scored=False, note="reference annotation has no beat labels: not scored")
        return result
    result.update(scored=True, window_ms=round(window_s * 1000))
    if samples.size == 0:  # compare_annotations fails on an empty test set
        result.update(tp=0, fp=0, fn=int(ref_samples.size), sensitivity=0.0, positive_predictivity=None)
        return result
    window = max(1, int(round(window_s * fs)))
    cmp = wproc.compare_annotations(ref_samples, samples, window)
    result.update(
        tp=int(cmp.tp),
        fp=int(cmp.fp),
        fn=int(cmp.fn),
        sensitivity=float(cmp.sensitivity),
        positive_predictivity=float(cmp.positive_predictivity),
    )
    return result
