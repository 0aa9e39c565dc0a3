"""The ``icu`` population's monitor faults (sources/simulator/monitor_faults.py)."""

from __future__ import annotations

import hashlib

import numpy as np

from icuwatch.sources.simulator import monitor_faults as mf
from icuwatch.sources.simulator.patients import STREAM_VITALS, STREAM_WAVES, draw_patients
from icuwatch.sources.simulator.physiology import VitalsGenerator
from icuwatch.sources.simulator.simulation import Simulation
from icuwatch.sources.simulator.waveforms import WaveformGenerator

HOURS = 3000.0


def _generate(p, seconds: int, block_s: int = 30) -> tuple[dict[str, np.ndarray], WaveformGenerator]:
    vitals, waves = VitalsGenerator(p, p.rng(STREAM_VITALS)), WaveformGenerator(p, p.rng(STREAM_WAVES))
    out: dict[str, list[np.ndarray]] = {"ecg": [], "ppg": [], "resp": []}
    for k0 in range(0, seconds, block_s):
        v = vitals.block(np.arange(k0, min(k0 + block_s, seconds), dtype=float))
        for name, x in waves.block(k0, v["hr_true"], v["rr_true"], v["s"]).items():
            out[name].append(x.ravel())
    return {k: np.concatenate(v) for k, v in out.items()}, waves


def test_stylised_stream_unchanged():
    """The stylised population draws nothing new: its messages hash as they did before the faults."""
    sim = Simulation(4, seed=1, start_time=1_700_000_000.0, duration_s=900, cxr=False)
    assert all(WaveformGenerator(p, p.rng(STREAM_WAVES)).faults is None for p in sim.patients)
    h = hashlib.sha256()
    for topic, msg in sim.messages():
        h.update(topic.encode())
        h.update(msg.model_dump_json().encode())
    assert h.hexdigest() == "a0ce850e05a4a94e72303e5d2977f779a2b02ba1dad4e1b0dfd8af1e77d7cd44"


def test_episode_rates_and_durations():
    faults = [mf.MonitorFaults(seed, 0, 6) for seed in range(4)]
    t1 = HOURS * 3600.0
    for kind, fault in mf.FAULTS.items():
        if kind == "af":
            continue
        eps = [e for f in faults for e in f.episodes(kind, 0.0, t1)]
        busy_h = sum(e.end - e.start for e in eps) / 3600.0
        rate = len(eps) / (len(faults) * HOURS - busy_h)
        assert abs(rate / fault.rate_per_h - 1.0) < 0.1, kind
        d = np.array([e.end - e.start for e in eps])
        assert fault.bounds[0] <= d.min() and d.max() <= fault.bounds[1], kind
        if fault.duration[0] == "lognormal":
            assert abs(np.median(d) / fault.duration[1] - 1.0) < 0.15, kind
    prone = [mf.MonitorFaults(seed, i, 6) for seed in range(5) for i in range(200)]
    share = np.mean([f.af_prone for f in prone])
    assert abs(share - mf.AF_PRONE) < 0.03
    assert all(not f.episodes("af", 0.0, t1) for f in prone if not f.af_prone)
    af = [f for f in prone if f.af_prone][:10]
    n = sum(len(f.episodes("af", 0.0, t1)) for f in af)
    assert 0.7 < n / (len(af) * HOURS) / mf.FAULTS["af"].rate_per_h < 1.0  # hours in AF are not at risk


def test_each_fault_shows_in_the_samples():
    f = mf.MonitorFaults(3, 1, 6)
    t = np.arange(0.0, 20 * 3600.0, 1 / 250)
    clean = 0.3 * np.sin(2 * np.pi * 1.2 * t)
    ecg = f.apply("ecg", t, clean.copy())
    assert np.isfinite(ecg).all() and ecg.min() >= mf.RAILS["ecg"][0] and ecg.max() <= mf.RAILS["ecg"][1]
    lead_off = f.active("lead_off", t)
    assert lead_off.any() and (ecg[lead_off] == 0.0).all()
    wander = np.abs(ecg - clean)[~(lead_off | f.active("motion", t) | f.active("saturation", t))]
    assert 0.01 < np.median(wander) < 0.3
    motion = f.active("motion", t) & ~lead_off & ~f.active("saturation", t)
    assert np.percentile(np.abs(ecg - clean)[motion], 90) > 0.3
    ppg = f.apply("ppg", t[::2], clean[::2].copy())
    assert f.active("probe_off", t[::2]).any() and (ppg[f.active("probe_off", t[::2])] == 0.0).all()
    pinned = [
        np.isin(f.apply(s, t[::k], clean[::k].copy()), mf.RAILS[s]).sum()
        for s, k in (("ecg", 1), ("ppg", 2), ("resp", 10))
    ]
    assert sum(pinned) > 0


def test_atrial_fibrillation_in_the_generator():
    p = draw_patients(11, 4, 7200.0, 0.0, (600.0, 3600.0), "sim", "icu")[10]
    (episode,) = mf.MonitorFaults.for_patient(p).episodes("af", 0.0, 1500.0)
    x, _ = _generate(p, 1500)
    assert all(np.isfinite(v).all() for v in x.values())
    hr = VitalsGenerator(p, p.rng(STREAM_VITALS)).block(np.arange(1500.0))["hr_true"]
    gen = WaveformGenerator(p, p.rng(STREAM_WAVES))
    gen._extend_beats(0, 1500.0, hr)  # the recursion block() runs, without its trimming
    beats, p_wave = np.asarray(gen.beats), np.asarray(gen.beat_p)
    ibi = np.diff(beats)
    inside = (beats[:-1] > episode.start) & (beats[1:] < episode.end)
    outside = beats[1:] < episode.start
    cv = lambda d: np.std(np.diff(d)) / np.mean(d)  # noqa: E731 - successive differences: HR trends cancel
    assert inside.sum() > 100 and 0.15 < cv(ibi[inside]) / np.sqrt(2) < 0.3
    assert outside.sum() > 100 and cv(ibi[outside]) / np.sqrt(2) < 0.05
    assert (p_wave[1:][inside] == 0.0).all()


def test_deterministic_and_block_size_independent():
    t = np.arange(0.0, 4 * 3600.0, 1 / 125)
    x = np.sin(2 * np.pi * t)
    whole = mf.MonitorFaults(9, 2, 6).apply("ppg", t, x.copy())
    for size in (125 * 7, 125 * 30, 125 * 61):
        f = mf.MonitorFaults(9, 2, 6)
        parts = [f.apply("ppg", t[i : i + size], x[i : i + size].copy()) for i in range(0, t.size, size)]
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    sec = np.arange(0.0, 48 * 3600.0)
    vitals = {"hr": np.full(sec.size, 80.0), "spo2": np.full(sec.size, 96.0), "rr": np.full(sec.size, 16.0)}
    ref = {k: v.copy() for k, v in vitals.items()}
    mf.MonitorFaults(9, 2, 6).apply_vitals(sec, ref)
    f = mf.MonitorFaults(9, 2, 6)
    for i in range(0, sec.size, 45):
        part = {k: v[i : i + 45] for k, v in vitals.items()}
        f.apply_vitals(sec[i : i + 45], part)
    for k in vitals:
        np.testing.assert_array_equal(vitals[k], ref[k])
    hours = sec.size / 3600.0
    assert abs((ref["hr"] == 160.0).sum() / hours / mf.SPIKES["hr_double"] - 1.0) < 0.5
    assert abs((ref["hr"] == 40.0).sum() / hours / mf.SPIKES["hr_half"] - 1.0) < 0.7
    dropped = (ref["spo2"] <= 96.0 - mf.SPO2_DROP[0] + 0.5).sum()
    assert abs(dropped / hours / mf.SPIKES["spo2_drop"] - 1.0) < 0.5
    assert np.isnan(ref["spo2"]).any() and np.isnan(ref["rr"]).any()


def test_icu_generator_deterministic_and_finite():
    p = draw_patients(3, 2, 3600.0, 0.5, (600.0, 3600.0), "sim", "icu")[1]
    a, _ = _generate(p, 600)
    b, _ = _generate(p, 600)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        assert np.isfinite(a[name]).all()
        lo, hi = mf.RAILS[name]
        assert a[name].min() >= lo and a[name].max() <= hi
