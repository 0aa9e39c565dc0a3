"""Raw waveform windows for every patient, held in the worker's memory (not in the changelog).

The last 10 s of ECG and PPG per patient would make every table update tens of kilobytes; only
the features derived from them (heart rate from ECG R-peaks, pulse rate from PPG) go into the
patient's table state. Respiration chunks count for staleness but are not analysed yet. After a
worker restart the windows refill within one window length.
"""

from __future__ import annotations

import numpy as np

from icuwatch.core import schemas
from icuwatch.signals.waveform_buffer import WaveformBuffer
from icuwatch.signals.waveform_features import ecg_heart_rate, ppg_pulse_rate

WINDOW_S = 10.0
MIN_WINDOW_S = 8.0
FEATURE_NAME = {"ecg": "ecg_hr", "ppg": "ppg_pr"}


class WaveformState:
    """Chunks are only buffered as they arrive; features are computed when a score needs them
    (:meth:`features_until`), on the window ending at the score's time, at most once per
    ``feature_every_s`` of event time per patient and signal. The library QRS detector (wfdb XQRS)
    costs ~20-40 ms per 10-s window on this CPU: computed on every 1-s chunk (or every minute) it
    was most of the worker's time at 1,000 beds, while only the value at scoring time is ever used."""

    def __init__(self, feature_every_s: float = 60.0) -> None:
        self.feature_every_s = feature_every_s
        self.buffers: dict[tuple[str, str], WaveformBuffer] = {}
        self.last_feature_t: dict[tuple[str, str], float] = {}

    def add(self, msg: schemas.AnyWaveform) -> tuple[bool, float]:
        """Buffer a chunk; returns (accepted, time of the chunk's last sample)."""
        t_last = msg.end_time()
        if msg.signal not in FEATURE_NAME:
            return True, t_last
        key = (msg.patient_id, msg.signal)
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = WaveformBuffer(window_s=WINDOW_S)
        return buf.add(msg.event_time, msg.fs, msg.values()), t_last

    def features_until(self, patient_id: str, t: float) -> list[tuple[float, dict[str, float | None]]]:
        """Per signal due for a new value, ``(time of the window's last sample, {feature: value})``
        from the contiguous window of samples taken at or before ``t`` (strictly causal)."""
        out = []
        for signal, name in FEATURE_NAME.items():
            key = (patient_id, signal)
            buf = self.buffers.get(key)
            if buf is None or buf.fs is None:
                continue
            t0, window = buf.contiguous()
            if not window.size:
                continue
            n = min(window.size, int(np.floor((t - t0) * buf.fs + 1e-6)) + 1)
            if n < MIN_WINDOW_S * buf.fs:
                continue
            t_end = t0 + (n - 1) / buf.fs
            if t_end - self.last_feature_t.get(key, -np.inf) < self.feature_every_s:
                continue
            self.last_feature_t[key] = t_end
            window = window[:n]
            value = ecg_heart_rate(window, buf.fs)[0] if signal == "ecg" else ppg_pulse_rate(window, buf.fs)
            out.append((t_end, {name: value}))
        return out

    def forget(self, patient_id: str) -> None:
        for key in [k for k in self.buffers if k[0] == patient_id]:
            del self.buffers[key]
            self.last_feature_t.pop(key, None)
