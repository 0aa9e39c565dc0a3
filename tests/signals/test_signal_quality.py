"""The waveform features' signal-quality guard (signals/waveform_features.window_quality and the
interval check): flat, clipped and implausible windows give no rate rather than a wrong one."""

from __future__ import annotations

import numpy as np

from icuwatch.signals.waveform_features import ecg_heart_rate, ppg_pulse_rate, resp_rate, window_quality

FS_ECG, FS_PPG = 250.0, 125.0


def _ecg(beats: np.ndarray, dur: float = 10.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(dur * FS_ECG)) / FS_ECG
    x = 0.02 * rng.standard_normal(t.size)
    for b in beats:
        for a, mu, sd in ((0.15, -0.18, 0.025), (1.0, 0.0, 0.01), (-0.25, 0.03, 0.01), (0.3, 0.25, 0.04)):
            x += a * np.exp(-0.5 * ((t - b - mu) / sd) ** 2)
    return np.round(x, 4)


def _ppg(rate: float, dur: float = 10.0) -> np.ndarray:
    t = np.arange(int(dur * FS_PPG)) / FS_PPG
    x = 0.01 * np.random.default_rng(1).standard_normal(t.size)
    for b in np.arange(0.2, dur, 60.0 / rate):
        x += np.exp(-0.5 * ((t - b) / 0.075) ** 2) + 0.35 * np.exp(-0.5 * ((t - b - 0.28) / 0.09) ** 2)
    return np.round(x, 4)


def test_clean_and_atrial_fibrillation_windows_keep_their_rate():
    regular = np.arange(0.3, 10.0, 0.75)
    assert window_quality(_ecg(regular), FS_ECG) is None
    assert abs(ecg_heart_rate(_ecg(regular), FS_ECG)[0] - 80.0) < 2.0
    rng = np.random.default_rng(2)
    af = 0.3 + np.cumsum(0.6 * np.exp(0.2 * rng.standard_normal(20) - 0.02))  # R-R CV 0.2
    hr, _ = ecg_heart_rate(_ecg(af[af < 10.0]), FS_ECG)
    assert hr is not None and 80 < hr < 120
    assert abs(ppg_pulse_rate(_ppg(90.0), FS_PPG) - 90.0) < 3.0


def test_lead_off_flat_line_gives_no_rate():
    x = _ecg(np.arange(0.3, 10.0, 0.75))
    x[2 * 250 :] = 0.0  # 8 s of a lead-off trace
    assert window_quality(x, FS_ECG) == "flat"
    assert ecg_heart_rate(x, FS_ECG)[0] is None
    assert ecg_heart_rate(np.zeros(2500), FS_ECG)[0] is None
    short_off = _ecg(np.arange(0.3, 10.0, 0.75))
    short_off[7 * 250 :] = 0.0  # 3 s off: the 7 s left still give the rate
    assert abs(ecg_heart_rate(short_off, FS_ECG)[0] - 80.0) < 2.0
    p = _ppg(90.0)
    p[3 * 125 :] = 0.0
    assert window_quality(p, FS_PPG) in ("flat", "clipped")  # flat at the trace's floor reads as a rail
    assert ppg_pulse_rate(p, FS_PPG) is None
    r = np.sin(2 * np.pi * 0.25 * np.arange(750) / 25.0)
    r[200:] = 0.0
    assert resp_rate(r, 25.0) is None


def test_saturated_window_gives_no_rate():
    x = _ecg(np.arange(0.3, 10.0, 0.75))
    x[1000:1500] = 5.0  # 2 s pinned at the +5 mV rail
    assert window_quality(x, FS_ECG) == "clipped"
    assert ecg_heart_rate(x, FS_ECG)[0] is None
    p = _ppg(70.0)
    p[500:700] = p.min()
    assert window_quality(p, FS_PPG) == "clipped" and ppg_pulse_rate(p, FS_PPG) is None


def test_short_clipped_peaks_are_not_saturation():
    """Coarse real records clip R peaks for a few samples: that is not a pinned amplifier."""
    x = _ecg(np.arange(0.3, 10.0, 0.75))
    x = np.minimum(x, 0.6)
    assert window_quality(x, FS_ECG) is None
    assert abs(ecg_heart_rate(x, FS_ECG)[0] - 80.0) < 2.0


def test_implausible_beats_give_no_rate():
    """Artefact 'beats' at random intervals (most R-R intervals far from the median) are not a rhythm."""
    rng = np.random.default_rng(5)
    beats = np.cumsum(rng.choice([0.28, 0.3, 1.4, 1.8], size=30))
    x = _ecg(beats[beats < 10.0])
    assert ecg_heart_rate(x, FS_ECG)[0] is None
