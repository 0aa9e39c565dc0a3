import numpy as np
import pytest

from icuwatch.core import schemas
from icuwatch.streams.waveform_state import WaveformState

T = 1_764_000_000.0


def ecg_chunks(hr: float, seconds: int, fs: float = 250.0):
    t = np.arange(int(seconds * fs)) / fs
    beats = np.arange(0.3, seconds, 60.0 / hr)
    sig = sum(np.exp(-((t - b) ** 2) / (2 * 0.01**2)) for b in beats) * 1.2
    # a monitor's noise floor: a trace exactly 0 between beats reads as a flat line (lead off) to
    # the signal-quality guard (signals/waveform_features.window_quality)
    sig = sig + np.random.default_rng(int(hr * 1000) + seconds).normal(0.0, 0.01, sig.shape)
    for s in range(seconds):
        chunk = sig[int(s * fs) : int((s + 1) * fs)]
        yield schemas.Waveform(
            patient_id="p1", event_time=T + s, signal="ecg", fs=fs, samples=[round(float(v), 4) for v in chunk]
        )


def test_heart_rate_from_ecg_when_asked_once_window_is_full():
    ws = WaveformState(feature_every_s=60.0)
    found = []
    for chunk in ecg_chunks(hr=96, seconds=12):
        accepted, t_last = ws.add(chunk)
        assert accepted and abs(t_last - (chunk.event_time + 249 / 250)) < 1e-9
        for t_end, feats in ws.features_until("p1", t_last):
            found.append((t_end, feats["ecg_hr"]))
    assert len(found) == 1  # once the window holds 8 s, then not again within feature_every_s
    t_end, hr = found[0]
    assert T + 7.9 <= t_end <= T + 8.0
    assert abs(hr - 96) < 2


def test_features_use_only_samples_up_to_the_scoring_time():
    ws = WaveformState(feature_every_s=0.0)
    for chunk in ecg_chunks(hr=80, seconds=10):
        ws.add(chunk)
    assert ws.features_until("p1", T + 7.0) == []  # only 7 s of samples at or before T + 7
    ((t_end, feats),) = ws.features_until("p1", T + 9.5)
    assert t_end <= T + 9.5 and t_end > T + 9.49
    assert abs(feats["ecg_hr"] - 80) < 2
    assert ws.features_until("p2", T + 12) == []


def test_duplicate_chunk_is_rejected():
    ws = WaveformState()
    chunk = next(ecg_chunks(hr=80, seconds=1))
    assert ws.add(chunk)[0]
    assert not ws.add(chunk)[0]


def test_v2_chunks_give_the_v1_features():
    """The binary payload (int16 at each chunk's scale) changes no feature the worker derives."""
    v1, v2 = WaveformState(feature_every_s=0.0), WaveformState(feature_every_s=0.0)
    for chunk in ecg_chunks(hr=72, seconds=10):
        packed = schemas.WaveformV2.of(chunk.patient_id, chunk.event_time, chunk.signal, chunk.fs, chunk.samples)
        assert v1.add(chunk) == v2.add(schemas.decode("icu.waveforms", packed.to_bytes()))
    ((t1, f1),) = v1.features_until("p1", T + 9.9)
    ((t2, f2),) = v2.features_until("p1", T + 9.9)
    assert t1 == t2 and f1["ecg_hr"] == pytest.approx(f2["ecg_hr"], abs=0.05) and abs(f1["ecg_hr"] - 72) < 2
