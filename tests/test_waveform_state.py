import numpy as np

from icuwatch.streams import schemas
from icuwatch.streams.waveform_state import WaveformState

T = 1_764_000_000.0


def ecg_chunks(hr: float, seconds: int, fs: float = 250.0):
    t = np.arange(int(seconds * fs)) / fs
    beats = np.arange(0.3, seconds, 60.0 / hr)
    sig = sum(np.exp(-((t - b) ** 2) / (2 * 0.01**2)) for b in beats) * 1.2
    for s in range(seconds):
        chunk = sig[int(s * fs): int((s + 1) * fs)]
        yield schemas.Waveform(patient_id="p1", event_time=T + s, signal="ecg", fs=fs,
                               samples=[round(float(v), 4) for v in chunk])


def test_heart_rate_from_ecg_chunks_once_window_is_full():
    ws = WaveformState(feature_every_s=60.0)
    found = []
    for chunk in ecg_chunks(hr=96, seconds=12):
        accepted, feats, t_last = ws.add(chunk)
        assert accepted
        if feats:
            found.append((t_last, feats["ecg_hr"]))
    assert len(found) == 1
    t_last, hr = found[0]
    assert t_last >= T + 7.9
    assert abs(hr - 96) < 2


def test_duplicate_chunk_is_rejected():
    ws = WaveformState()
    chunk = next(ecg_chunks(hr=80, seconds=1))
    assert ws.add(chunk)[0]
    assert not ws.add(chunk)[0]
