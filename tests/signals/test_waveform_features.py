"""Tests for icuwatch.signals.waveform_buffer / waveform_features (synthetic and shared WFDB data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import signal as sps

from icuwatch.signals.waveform_features import (
    WaveformBuffer,
    WaveformFeatures,
    detect_r_peaks,
    ecg_heart_rate,
    features_from_buffers,
    ppg_pulse_rate,
    resp_rate,
    rr_plausible_fraction,
)

WFDB_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "wfdb"


# ---------------------------------------------------------------- synthetic signals


def _beat_times(hr: float, dur: float, rng, hrv: float = 0.01) -> np.ndarray:
    rr = 60.0 / hr
    n = int(dur / rr) + 2
    return 0.3 + np.cumsum(rr * (1 + hrv * rng.standard_normal(n))) - rr


def synthetic_ecg(hr: float, fs: float = 250.0, dur: float = 10.0, noise: float = 0.03, seed: int = 0):
    """Sum-of-Gaussians PQRST beats (mV) at ``hr`` bpm plus baseline wander and white noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(dur * fs)) / fs
    x = 0.2 * np.sin(2 * np.pi * 0.15 * t) + noise * rng.standard_normal(t.size)
    rr = 60.0 / hr
    waves = [(0.15, -0.18, 0.025), (-0.12, -0.03, 0.008), (1.0, 0.0, 0.01), (-0.25, 0.03, 0.01), (0.3, 0.5 * rr, 0.04)]
    beats = _beat_times(hr, dur, rng)
    for b in beats:
        for a, mu, sd in waves:
            x += a * np.exp(-0.5 * ((t - b - mu) / sd) ** 2)
    return x, beats[(beats >= 0) & (beats < dur)]


def synthetic_ppg(pr: float, fs: float = 125.0, dur: float = 10.0, noise: float = 0.02, seed: int = 0):
    """Systolic + diastolic Gaussian pulse per beat, with respiratory baseline and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(dur * fs)) / fs
    x = 0.3 * np.sin(2 * np.pi * 0.25 * t) + noise * rng.standard_normal(t.size)
    rr = 60.0 / pr
    for b in _beat_times(pr, dur, rng):
        x += np.exp(-0.5 * ((t - b - 0.12 * rr) / (0.08 * rr)) ** 2)
        x += 0.4 * np.exp(-0.5 * ((t - b - 0.45 * rr) / (0.1 * rr)) ** 2)
    return x


@pytest.mark.parametrize("hr", [45, 60, 90, 140, 180])
def test_ecg_heart_rate_synthetic(hr):
    x, beats = synthetic_ecg(hr, seed=hr)
    est, peaks = ecg_heart_rate(x, 250.0)
    assert est is not None and abs(est - hr) <= 2.0
    # every detected peak lies on a true beat (within 40 ms) and nearly every beat is found
    d = np.abs(peaks[:, None] / 250.0 - beats[None, :]).min(axis=1)
    assert np.all(d < 0.04)
    assert peaks.size >= beats.size - 2
    assert rr_plausible_fraction(peaks, 250.0) == 1.0


def test_ecg_heart_rate_125hz_and_inverted():
    x, _ = synthetic_ecg(75, fs=125.0, seed=3)
    assert abs(ecg_heart_rate(x, 125.0)[0] - 75) <= 2.0
    assert abs(ecg_heart_rate(-x, 125.0)[0] - 75) <= 2.0


def test_ecg_high_fs_goes_through_resampling():
    x, beats = synthetic_ecg(80, fs=1000.0, dur=12.0, seed=4)
    peaks = detect_r_peaks(x, 1000.0)
    d = np.abs(peaks[:, None] / 1000.0 - beats[None, :]).min(axis=1)
    assert np.all(d < 0.04) and peaks.size >= beats.size - 2


def test_ecg_none_when_too_short_or_flat():
    x, _ = synthetic_ecg(90, dur=3.0)
    assert ecg_heart_rate(x, 250.0)[0] is None
    assert ecg_heart_rate(np.zeros(2500), 250.0)[0] is None
    hr, peaks = ecg_heart_rate(0.01 * np.random.default_rng(1).standard_normal(2500), 250.0)
    assert hr is None or 30 <= hr <= 242


@pytest.mark.parametrize("pr", [50, 72, 110, 150, 200])
def test_ppg_pulse_rate_synthetic(pr):
    x = synthetic_ppg(pr, seed=pr)
    est = ppg_pulse_rate(x, 125.0)
    assert est is not None and abs(est - pr) <= 3.0


def test_ppg_none_when_too_short():
    assert ppg_pulse_rate(synthetic_ppg(80, dur=2.0), 125.0) is None
    assert ppg_pulse_rate(np.ones(1250), 125.0) is None


@pytest.mark.parametrize("br", [8, 15, 25])
def test_resp_rate_synthetic(br):
    fs, dur = 25.0, 60.0
    t = np.arange(int(fs * dur)) / fs
    x = np.sin(2 * np.pi * br / 60 * t) + 0.1 * np.random.default_rng(br).standard_normal(t.size)
    est = resp_rate(x, fs)
    assert est is not None and abs(est - br) <= 1.5
    assert resp_rate(x[: int(5 * fs)], fs) is None


# ---------------------------------------------------------------- buffer


def _chunks(x, fs, t0, chunk_s=1.0):
    n = int(fs * chunk_s)
    return [(t0 + i / fs, x[i : i + n]) for i in range(0, x.size, n)]


def test_buffer_in_order_keeps_last_window():
    fs, t0 = 250.0, 1.7e9
    x = np.arange(15 * 250, dtype=float)
    buf = WaveformBuffer(window_s=10.0)
    for t, c in _chunks(x, fs, t0):
        assert buf.add(t, fs, c)
    start, y = buf.contiguous()
    assert y.size == 2500 and np.array_equal(y, x[-2500:])
    assert start == pytest.approx(t0 + 5.0)
    assert len(buf) <= 11


def test_buffer_duplicates_and_out_of_order():
    fs, t0 = 125.0, 1.7e9
    x = np.arange(12 * 125, dtype=float)
    chunks = _chunks(x, fs, t0)
    order = np.random.default_rng(0).permutation(len(chunks))
    buf = WaveformBuffer(window_s=10.0)
    stored = [buf.add(*chunks[i][:1], fs, chunks[i][1]) for i in order]
    # redeliver everything: all duplicates
    assert not any(buf.add(t, fs, c) for t, c in chunks[-10:])
    start, y = buf.contiguous()
    assert np.array_equal(y, x[-1250:]) and start == pytest.approx(t0 + 2.0)
    # chunks that arrived after the window had moved past them were refused
    assert sum(stored) >= 10


def test_buffer_gap_not_bridged_then_filled():
    fs, t0 = 250.0, 1.7e9
    x = np.arange(10 * 250, dtype=float)
    chunks = _chunks(x, fs, t0)
    buf = WaveformBuffer(window_s=10.0)
    for i, (t, c) in enumerate(chunks):
        if i != 6:
            buf.add(t, fs, c)
    start, y = buf.contiguous()
    assert start == pytest.approx(t0 + 7.0) and np.array_equal(y, x[7 * 250 :])
    assert buf.duration_s() == pytest.approx(3.0)
    assert buf.add(*chunks[6][:1], fs, chunks[6][1])  # the late chunk fills the gap
    start, y = buf.contiguous()
    assert start == pytest.approx(t0) and np.array_equal(y, x)


def test_buffer_old_chunk_fs_change_and_empty():
    buf = WaveformBuffer(window_s=5.0)
    assert buf.contiguous()[1].size == 0 and buf.duration_s() == 0.0
    assert buf.add(100.0, 250.0, np.ones(250))
    assert not buf.add(90.0, 250.0, np.ones(250))  # already outside the window
    assert not buf.add(101.0, 250.0, [])
    assert buf.add(101.0, 500.0, np.ones(500))  # new device: buffer restarts
    assert len(buf) == 1 and buf.fs == 500.0


def test_features_from_buffers_streamed_synthetic():
    ecg, _ = synthetic_ecg(72, dur=12.0, seed=7)
    ppg = synthetic_ppg(72, dur=12.0, seed=7)
    b_ecg, b_ppg = WaveformBuffer(), WaveformBuffer()
    for t, c in _chunks(ecg, 250.0, 1.7e9):
        b_ecg.add(t, 250.0, c.tolist())
    for t, c in _chunks(ppg, 125.0, 1.7e9):
        b_ppg.add(t, 125.0, c.tolist())
    f = features_from_buffers(ecg=b_ecg, ppg=b_ppg)
    assert isinstance(f, WaveformFeatures)
    assert abs(f.ecg_hr - 72) <= 2 and abs(f.ppg_pr - 72) <= 3
    assert f.ecg_quality_ok and f.hr_pr_agree and f.ecg_s == pytest.approx(10.0)
    assert f.resp_rr is None and features_from_buffers().as_dict()["ecg_hr"] is None


# ---------------------------------------------------------------- shared WFDB records

wfdb = pytest.importorskip("wfdb")
needs_data = pytest.mark.skipif(not WFDB_DIR.is_dir(), reason=f"shared WFDB data not at {WFDB_DIR}")


def _consensus_reference(sig: np.ndarray, fs: float, min_leads: int) -> np.ndarray:
    """Beats found by gqrs (an independent detector) on at least ``min_leads`` leads."""
    allp = np.sort(np.concatenate([wfdb.processing.gqrs_detect(sig[:, i], fs=fs) for i in range(sig.shape[1])]))
    groups = np.split(allp, np.flatnonzero(np.diff(allp) > 0.05 * fs) + 1)
    return np.array([int(np.median(g)) for g in groups if g.size >= min_leads])


@needs_data
def test_ptb_s0010_leads_vs_multilead_gqrs_consensus():
    rec = wfdb.rdrecord(str(WFDB_DIR / "s0010_re"))
    assert rec.fs == 1000 and "ii" in rec.sig_name
    ref = _consensus_reference(sps.resample_poly(rec.p_signal, 1, 4, axis=0), 250.0, min_leads=8) * 4
    assert 45 <= ref.size <= 60  # ~82 bpm over 38.4 s
    for lead in ("i", "ii", "v1", "v5", "vy"):
        peaks = detect_r_peaks(rec.p_signal[:, rec.sig_name.index(lead)], rec.fs)
        cmp = wfdb.processing.compare_annotations(ref, peaks, int(0.15 * rec.fs))
        assert cmp.sensitivity >= 0.98 and cmp.positive_predictivity >= 0.98, (lead, cmp.tp, cmp.fp, cmp.fn)
        hr, _ = ecg_heart_rate(rec.p_signal[-10000:, rec.sig_name.index(lead)], rec.fs)
        assert abs(hr - 60 * rec.fs / np.median(np.diff(ref))) <= 2.0


@needs_data
def test_mimic_3000003_two_leads_agree():
    rec = wfdb.rdrecord(str(WFDB_DIR / "3000003_0003"))
    hrs = [ecg_heart_rate(rec.p_signal[:, i], rec.fs)[0] for i in range(rec.n_sig)]
    assert all(h is not None and 40 <= h <= 180 for h in hrs)
    assert abs(hrs[0] - hrs[1]) <= 2.0
    _, peaks = ecg_heart_rate(rec.p_signal[:, rec.sig_name.index("II")], rec.fs)
    assert rr_plausible_fraction(peaks, rec.fs) >= 0.9


@needs_data
def test_multisegment_ecg_vs_pleth_streamed():
    seg = WFDB_DIR / "multi-segment" / "p000878"
    # read through the multi-segment master header: layout + 3269321_0001 (PLETH) + 3269321_0002 (II, PLETH)
    rec = wfdb.rdrecord(str(seg / "p000878-2137-10-26-16-57"), sampfrom=3750, sampto=7500, m2s=True)
    fs = rec.fs
    ecg = rec.p_signal[2000:, rec.sig_name.index("II")]  # segment 3269321_0002
    ppg = rec.p_signal[2000:, rec.sig_name.index("PLETH")]
    hr, peaks = ecg_heart_rate(ecg, fs)
    pr = ppg_pulse_rate(ppg, fs)
    assert 40 <= hr <= 180 and abs(hr - pr) <= 3.0
    # the 8-bit II lead clips at most R peaks (NaN runs); XQRS adds 2 extra beats in 20 on this segment
    assert rr_plausible_fraction(peaks, fs) >= 0.8
    # stream it as shuffled, partly duplicated 1-s chunks (NaNs filled: the schema requires finite samples)
    idx = np.arange(ecg.size)
    buffers = {}
    rng = np.random.default_rng(0)
    for name, x in (("ecg", ecg), ("ppg", ppg)):
        ok = ~np.isnan(x)
        x = np.interp(idx, idx[ok], x[ok])
        chunks = _chunks(x, fs, 1.7e9)
        buffers[name] = WaveformBuffer(window_s=10.0)
        for i in list(rng.permutation(len(chunks))) + [0, 3, 5]:
            buffers[name].add(chunks[i][0], fs, chunks[i][1])
    f = features_from_buffers(**buffers)
    assert f.ecg_s == pytest.approx(10.0) and f.hr_pr_agree
    assert abs(f.ecg_hr - hr) <= 3.0 and abs(f.ppg_pr - pr) <= 3.0


def test_vectorised_local_peaks_equal_wfdb_own():
    """The XQRS speed-up (waveform_features.find_local_peaks, installed into wfdb.processing.qrs)
    gives exactly wfdb's peaks: random signals, integer-valued ones full of ties, plateaus, edges."""
    from icuwatch.signals import waveform_features as wf

    rng = np.random.default_rng(0)
    for trial in range(300):
        radius = int(rng.integers(1, 40))
        n = int(rng.integers(2 * radius + 2, 500))  # wfdb's own fails on signals shorter than the radius
        kind = trial % 3
        if kind == 0:
            sig = rng.normal(size=n)
        elif kind == 1:
            sig = rng.integers(0, 4, size=n).astype(float)  # many equal neighbours
        else:
            sig = np.repeat(rng.normal(size=n // 5 + 1), 5)[:n]  # plateaus
        expected = wf._wfdb_find_local_peaks(sig, radius)
        got = wf.find_local_peaks(sig, radius)
        assert got.tolist() == expected.tolist(), (trial, n, radius)
    import wfdb.processing.qrs as wqrs

    assert wqrs.find_local_peaks is wf.find_local_peaks
