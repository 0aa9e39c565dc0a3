"""Simulated multimodal cohort (fusion/cohorts/sim.py): contract, determinism, causality, labels,
fidelity to the simulator's generators, image/state coupling, natural missingness, caching."""

from __future__ import annotations

import numpy as np
import pytest

from icuwatch.fusion.cohorts import sim
from icuwatch.fusion.cohorts.base import SPLIT_CODES, Cohort
from icuwatch.sources.physionet import split_of
from icuwatch.sources.simulator import cxr as cxr_images
from icuwatch.sources.simulator.monitor_faults import MonitorFaults
from icuwatch.sources.simulator.patients import STREAM_VITALS, STREAM_WAVES, draw_patients
from icuwatch.sources.simulator.physiology import VitalsGenerator
from icuwatch.sources.simulator.simulation import BLOCK_S
from icuwatch.sources.simulator.waveforms import WaveformGenerator

N, HOURS, SEED = 20, 12, 2  # seed 2: this small cohort has X-rays of severity > 0.5


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return sim.build(N, HOURS, seed=SEED, progress=False)


@pytest.fixture(scope="module")
def short() -> Cohort:
    return sim.build(N, 8, seed=SEED, progress=False)


def _raw(c: Cohort, name: str) -> np.ndarray:
    """[N, T, C] de-normalised values of a windowed modality, 0 where not measured."""
    norm = c.meta["norm"][name]
    k = len(norm["mean"])
    x = c.inputs[name]
    return np.where(x[:, :, k:] == 1, x[:, :, :k] * np.asarray(norm["std"]) + np.asarray(norm["mean"]), 0.0)


def test_contract_shapes_and_validate(cohort):
    cohort.validate()
    n = N * HOURS
    assert len(cohort) == n and cohort.modalities == ("vitals", "waveforms", "labs", "cxr", "report")
    assert cohort.dims() == {
        "vitals": (8, 14),
        "waveforms": (8, 2 * len(sim.WAVEFORM_CHANNELS)),
        "labs": (3 * len(sim.LABS),),
        "cxr": (224, 224),
        "report": (96,),
        "static": (3,),
    }
    assert cohort.lookups["cxr"].dtype == np.uint8 and cohort.lookups["report"].dtype == np.int32
    assert cohort.inputs["cxr"].dtype == cohort.inputs["report"].dtype == np.int32
    s = len(cohort.lookups["cxr"])
    assert s == len(cohort.lookups["report"]) == len(cohort.meta["studies"]) == len(cohort.meta["reports"]) > N
    assert cohort.meta["lab_channels"] == list(sim.LABS) and len(sim.LABS) == 14
    assert cohort.meta["vital_channels"] == ["hr", "spo2", "temp", "sbp", "map", "dbp", "rr"]
    np.testing.assert_array_equal(cohort.hour, np.tile(np.arange(1, HOURS + 1), N))
    np.testing.assert_array_equal(cohort.group, np.repeat(np.arange(N), HOURS))
    np.testing.assert_array_equal(cohort.split, np.repeat([SPLIT_CODES[split_of(g)] for g in cohort.group_ids], HOURS))
    # static: age/100, gender (1 male), hours/100
    for i, p in enumerate(cohort.meta["patients"]):
        rows = cohort.group == i
        np.testing.assert_allclose(cohort.inputs["static"][rows, 0], p["age"] / 100, rtol=1e-6)
        assert (cohort.inputs["static"][rows, 1] == (p["sex"] == "M")).all()
    np.testing.assert_allclose(cohort.inputs["static"][:, 2], cohort.hour / 100, rtol=1e-6)
    # vitals: zero steps before admission, measured flags after it
    v = cohort.inputs["vitals"]
    first = cohort.hour == 1
    assert not v[first, :-1].any() and (v[first, -1, 7:] == 1).all()
    assert (v[cohort.hour >= 8][:, :, 7:] == 1).all()


def test_same_seed_same_cohort_other_seed_differs(cohort):
    again = sim.build(N, HOURS, seed=SEED, progress=False)
    for k in cohort.inputs:
        np.testing.assert_array_equal(again.inputs[k], cohort.inputs[k], err_msg=k)
    for k in cohort.lookups:
        np.testing.assert_array_equal(again.lookups[k], cohort.lookups[k], err_msg=k)
    for a, b in ((again.present, cohort.present), (again.staleness_h, cohort.staleness_h), (again.y, cohort.y)):
        np.testing.assert_array_equal(a, b)
    assert again.meta["reports"] == cohort.meta["reports"] and again.meta["studies"] == cohort.meta["studies"]
    other = sim.build(3, 2, seed=SEED + 1, progress=False)
    assert not np.array_equal(other.inputs["vitals"], cohort.inputs["vitals"][: 3 * 2])


def test_vitals_are_the_streamed_simulator_values():
    """stream_vitals == VitalsGenerator.block called block by block as Simulation._dense does."""
    p = draw_patients(3, 0, 36 * 3600.0, 1.0, (0.0, 600.0), "sim")[2]
    n_sec = 1500
    gen = VitalsGenerator(p, p.rng(STREAM_VITALS))
    first = 1 + (p.index * 7919) % BLOCK_S
    blocks = [
        gen.block(np.arange(k0, min(k0 + (first if k0 == 0 else BLOCK_S), n_sec), dtype=float))
        for k0 in [0, *range(first, n_sec, BLOCK_S)]
    ]
    mine = sim.stream_vitals(p, 1470, n_sec)
    for c in (*sim.VITALS, "hr_true", "rr_true"):
        np.testing.assert_array_equal(np.concatenate([b[c] for b in blocks])[:1470], mine[c], err_msg=c)
    assert mine["s"][-1] > 0  # the patient was deteriorating within the span: severity drives the values


def test_beat_times_match_the_waveform_generator():
    p = draw_patients(2, 1, 36 * 3600.0, 1.0, (0.0, 600.0), "sim")[0]
    hr = sim.stream_vitals(p, 3600, 36 * 3600)["hr_true"]
    ref = WaveformGenerator(p, p.rng(STREAM_WAVES))
    ref._extend_beats(0, 3600.0, hr)
    beats, rr = sim.beat_times(WaveformGenerator(p, p.rng(STREAM_WAVES)), hr, 3600.0, chunk=512)
    np.testing.assert_array_equal(beats, ref.beats)
    np.testing.assert_array_equal(rr, ref.beat_rr)
    assert len(beats) > 3600 * 50 / 60


def test_causality_cxr_points_at_arrived_studies_only(cohort):
    studies = cohort.meta["studies"]
    idx = cohort.inputs["cxr"]
    shown = np.flatnonzero(idx >= 0)
    assert len(shown) > 0.9 * len(cohort)
    for r in shown:
        st = studies[idx[r]]
        assert st["patient"] == cohort.group[r]
        assert st["time_h"] <= st["arrival_h"] <= cohort.hour[r]
        np.testing.assert_allclose(cohort.staleness_h[r, 3], cohort.hour[r] - st["time_h"], atol=1e-3)
        newer = [
            s
            for s in studies
            if s["patient"] == cohort.group[r] and s["arrival_h"] <= cohort.hour[r] and s["time_h"] > st["time_h"]
        ]
        assert not newer  # the newest arrived study
    for r in np.flatnonzero(idx < 0):  # nothing had arrived yet
        assert all(s["arrival_h"] > cohort.hour[r] for s in studies if s["patient"] == cohort.group[r])


def test_causality_prefix_of_a_longer_cohort(cohort, short):
    """Rows of an 8-hour cohort equal the first 8 hours of the 12-hour one (raw values: the train
    normalisation differs with the number of hours)."""
    long_rows = np.flatnonzero(cohort.hour <= 8)
    assert len(long_rows) == len(short)
    np.testing.assert_allclose(_raw(short, "vitals"), _raw(cohort, "vitals")[long_rows], rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(short.inputs["vitals"][:, :, 7:], cohort.inputs["vitals"][long_rows, :, 7:])
    k = len(sim.WAVEFORM_CHANNELS)
    unclipped = (np.abs(short.inputs["waveforms"][:, :, :k]) < sim.Z_CLIP) & (
        np.abs(cohort.inputs["waveforms"][long_rows, :, :k]) < sim.Z_CLIP
    )
    assert unclipped[short.present[:, 1]].mean() > 0.9
    np.testing.assert_allclose(
        _raw(short, "waveforms")[unclipped], _raw(cohort, "waveforms")[long_rows][unclipped], rtol=1e-4, atol=1e-3
    )
    np.testing.assert_array_equal(short.present, cohort.present[long_rows])
    np.testing.assert_allclose(short.staleness_h, cohort.staleness_h[long_rows], atol=1e-4)
    lab_layout = np.arange(3 * len(sim.LABS)) % 3
    np.testing.assert_array_equal(
        short.inputs["labs"][:, lab_layout > 0], cohort.inputs["labs"][long_rows][:, lab_layout > 0]
    )
    for name in ("cxr", "report"):
        a, b = short.inputs[name], cohort.inputs[name][long_rows]
        np.testing.assert_array_equal(a >= 0, b >= 0)
        ok = a >= 0
        np.testing.assert_array_equal(short.lookups[name][a[ok]], cohort.lookups[name][b[ok]])
    np.testing.assert_array_equal(short.y, cohort.y[long_rows])


def test_labels_follow_the_onset_rule(cohort):
    specs = draw_patients(
        N,
        SEED,
        36 * 3600.0,
        sim.DETERIORATING_FRACTION["stylised"],
        (sim.ONSET_WINDOW_H[0] * 3600, sim.ONSET_WINDOW_H[1] * 3600),
        "sim",
    )
    mixed = 0
    for i, p in enumerate(specs):
        y, hour = cohort.y[cohort.group == i], cohort.hour[cohort.group == i]
        if p.onset_s is None:
            assert not y.any()
        else:
            np.testing.assert_array_equal(y, hour >= p.onset_s / 3600 - 6)
            mixed += bool(y.any() and not y.all())
    assert mixed >= 1  # some patient turns positive within the stay
    assert 0 < cohort.y.mean() < 0.6


def test_images_are_tied_to_severity(cohort):
    mask = cxr_images.lung_mask() > 0.9
    sev = np.array([s["severity"] for s in cohort.meta["studies"]])
    clear = np.array([s["pattern"] == "clear" or s["severity"] == 0 for s in cohort.meta["studies"]])
    lung = cohort.lookups["cxr"][:, mask].mean(axis=1)
    assert (sev > 0.5).sum() >= 1 and clear.sum() >= 5
    assert lung[sev > 0.5].mean() > lung[clear].mean() + 5
    # reports describe the same state as the image
    for k, text in enumerate(cohort.meta["reports"]):
        if text is not None and sev[k] > 0.5:
            assert "opacities" in text
        if text is not None and clear[k]:
            assert "Lungs clear" in text


def test_some_patients_lack_waveforms(cohort):
    per_patient = cohort.present[:, 1].reshape(N, HOURS)
    assert (per_patient.all(axis=1) | ~per_patient.any(axis=1)).all()  # monitored for the whole stay or never
    none = ~per_patient.any(axis=1)
    assert 0 < none.sum() < N
    assert not cohort.inputs["waveforms"][~cohort.present[:, 1]].any()
    assert [p["waveforms_monitored"] for p in cohort.meta["patients"]] == list(~none)
    wf = _raw(cohort, "waveforms")[cohort.present[:, 1], -1]
    ecg_hr, hr = wf[:, 0], _raw(cohort, "vitals")[cohort.present[:, 1], -1, 0]
    np.testing.assert_allclose(ecg_hr, hr, atol=2.0)  # ECG rate from beat timing tracks the monitor HR


def test_some_studies_lack_a_report(cohort):
    has = np.array([s["has_report"] for s in cohort.meta["studies"]])
    assert 0 < (~has).sum() < len(has)
    assert all((r is None) == (not h) for r, h in zip(cohort.meta["reports"], has))
    assert not cohort.lookups["report"][~has].any() and (cohort.lookups["report"][has, 0] > 0).all()
    cxr, rep = cohort.inputs["cxr"], cohort.inputs["report"]
    assert ((cxr >= 0) & (rep < 0)).any()  # image without report
    np.testing.assert_array_equal(rep[rep >= 0], cxr[rep >= 0])  # a report is the shown study's
    assert (rep[cxr >= 0] >= 0).tolist() == has[cxr[cxr >= 0]].tolist()


def test_labs_are_sparse_and_train_normalised(cohort):
    labs = cohort.inputs["labs"].reshape(len(cohort), len(sim.LABS), 3)
    lactate = labs[:, sim.LABS.index("lactate")]
    assert (lactate[:, 1] == 1).mean() > 0.5
    since = np.expm1(lactate[lactate[:, 1] == 1, 2] * 5)
    assert since.max() > 2  # values age between draws
    # staleness: hours since the newest collection over all analytes
    rows = cohort.present[:, 2]
    ages = np.where(labs[:, :, 1] == 1, np.expm1(labs[:, :, 2] * 5), np.inf)
    np.testing.assert_allclose(cohort.staleness_h[rows, 2], ages[rows].min(axis=1), atol=1e-3)
    assert not labs[~rows].any()
    # train rows: the newest vitals step is each train hour exactly once, so it is ~N(0, 1)
    train_last = cohort.inputs["vitals"][cohort.rows("train"), -1, :7]
    np.testing.assert_allclose(train_last.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(train_last.std(axis=0), 1, atol=1e-3)
    assert cohort.meta["norm"]["computed_on"] == "train"


def test_load_or_build_caches(tmp_path):
    a = sim.load_or_build(4, 3, seed=5, cache_dir=tmp_path)
    path = tmp_path / "sim-cohort-v1-n4-h3-s5.npz"
    assert path.is_file()
    b = sim.load_or_build(4, 3, seed=5, cache_dir=tmp_path)
    np.testing.assert_array_equal(a.inputs["vitals"], b.inputs["vitals"])
    np.testing.assert_array_equal(a.lookups["cxr"], b.lookups["cxr"])
    assert b.meta["reports"] == a.meta["reports"] and b.meta["built_at"] == a.meta["built_at"]


def test_beat_times_match_the_waveform_generator_in_atrial_fibrillation():
    patients = draw_patients(60, 3, 36 * 3600.0, 0.1, (4 * 3600.0, 30 * 3600.0), "sim", population="icu")
    p, episode = next(
        (p, e)
        for p in patients
        for e in MonitorFaults.for_patient(p).episodes("af", 0.0, 24 * 3600.0)
        if e.end < 24 * 3600.0
    )
    until = episode.end + 600.0
    hr = sim.stream_vitals(p, int(until) + 1, 36 * 3600)["hr_true"]
    ref = WaveformGenerator(p, p.rng(STREAM_WAVES))
    ref._extend_beats(0, until, hr)
    beats, rr = sim.beat_times(WaveformGenerator(p, p.rng(STREAM_WAVES)), hr, until, chunk=512)
    np.testing.assert_array_equal(beats, ref.beats)
    np.testing.assert_array_equal(rr, ref.beat_rr)
    at, intervals = beats[:-1], rr[1:]  # each R-R interval is drawn at the beat before it

    def successive_cv(keep: np.ndarray) -> float:
        return float(np.std(np.diff(intervals[keep])) / np.mean(intervals[keep]))

    in_af = (at >= episode.start) & (at < episode.end)
    assert successive_cv(in_af) > 3 * successive_cv(at < episode.start)  # AF: an irregular rhythm
