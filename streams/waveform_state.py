"""Raw waveform windows for every patient, held in the worker's memory (not in the changelog).

The last 10 s of ECG and PPG per patient would make every table update tens of kilobytes; only
the features derived from them (heart rate from ECG R-peaks, pulse rate from PPG) go into the
patient's table state. Respiration chunks count for staleness but are not analysed yet. After a worker restart the windows refill within one window length.
"""

from __future__ import annotations

from icuwatch.streams import schemas
from icuwatch.streams.waveform_buffer import WaveformBuffer
from icuwatch.streams.waveform_features import ecg_heart_rate, ppg_pulse_rate

WINDOW_S = 10.0
MIN_WINDOW_S = 8.0
FEATURE_NAME = {"ecg": "ecg_hr", "ppg": "ppg_pr"}


class WaveformState:
    """``feature_every_s`` is event time between feature computations per patient and signal: the
    library QRS detector (wfdb XQRS) costs ~15-25 ms per 10-s window on this CPU."""

    def __init__(self, feature_every_s: float = 60.0) -> None:
        self.feature_every_s = feature_every_s
        self.buffers: dict[tuple[str, str], WaveformBuffer] = {}
        self.last_feature_t: dict[tuple[str, str], float] = {}

    def add(self, msg: schemas.Waveform) -> tuple[bool, dict[str, float | None], float]:
        """Buffer a chunk; returns (accepted, features computed now, time of the chunk's last sample)."""
        key = (msg.patient_id, msg.signal)
        if msg.signal not in ("ecg", "ppg"):
            return True, {}, msg.event_time + (len(msg.samples) - 1) / msg.fs
        buf = self.buffers.get(key)
        if buf is None:
            buf = self.buffers[key] = WaveformBuffer(window_s=WINDOW_S)
        t_last = msg.event_time + (len(msg.samples) - 1) / msg.fs
        if not buf.add(msg.event_time, msg.fs, msg.samples):
            return False, {}, t_last
        if buf.newest_end is None or t_last + 1.0 / msg.fs < buf.newest_end - 1e-6:
            return True, {}, t_last  # a late chunk: the window's end did not move
        if t_last - self.last_feature_t.get(key, 0.0) < self.feature_every_s:
            return True, {}, t_last
        _, window = buf.contiguous()
        if len(window) < MIN_WINDOW_S * msg.fs:
            return True, {}, t_last
        self.last_feature_t[key] = t_last
        if msg.signal == "ecg":
            value, _ = ecg_heart_rate(window, msg.fs)
        else:
            value = ppg_pulse_rate(window, msg.fs)
        return True, {FEATURE_NAME[msg.signal]: value}, t_last

    def forget(self, patient_id: str) -> None:
        for key in [k for k in self.buffers if k[0] == patient_id]:
            del self.buffers[key]
            self.last_feature_t.pop(key, None)
