"""Bedside simulator: determinism, schema validity, ordering, and physiological plausibility."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import time
from collections import defaultdict

import numpy as np
import pytest
import wfdb.processing
from PIL import Image
from scipy.signal import find_peaks

from icuwatch.core import schemas, topics
from icuwatch.sources.simulator import (
    Simulation,
    image_format,
    load_image,
    load_image_b64,
    publish,
    to_b64,
    write_ground_truth,
)
from icuwatch.sources.simulator import cxr as cxr_images
from icuwatch.sources.simulator.labs import lab_messages

T0 = 1_700_000_000.0
ONSET_S = 1200.0


def news2(v: schemas.Vitals) -> int:
    rr, sp, t, b, h = v.rr, v.spo2, v.temp, v.sbp, v.hr
    score = 3 if rr <= 8 else 1 if rr <= 11 else 0 if rr <= 20 else 2 if rr <= 24 else 3
    score += 3 if sp <= 91 else 2 if sp <= 93 else 1 if sp <= 95 else 0
    score += 2 if v.o2_supplement else 0
    score += 3 if t <= 35 else 1 if t <= 36 else 0 if t <= 38 else 1 if t <= 39 else 2
    score += 3 if b <= 90 else 2 if b <= 100 else 1 if b <= 110 else 0 if b <= 219 else 3
    score += 3 if h <= 40 else 1 if h <= 50 else 0 if h <= 90 else 1 if h <= 110 else 2 if h <= 130 else 3
    return score + (0 if v.consciousness == "A" else 3)


def qsofa(v: schemas.Vitals) -> int:
    return int(v.rr >= 22) + int(v.sbp <= 100) + int(v.consciousness != "A")


@pytest.fixture(scope="module")
def sepsis_run():
    """One fast pneumonia sepsis (onset 20 min in) and one stable patient, 3 simulated hours."""
    sim = Simulation(
        2, seed=11, start_time=T0, duration_s=3 * 3600, deteriorating_fraction=0.5, onset_window_s=(ONSET_S, ONSET_S)
    )
    timed = list(sim.timed_messages())
    by = defaultdict(lambda: defaultdict(list))
    for _, topic, msg in timed:
        by[msg.patient_id][topic].append(msg)
    septic = next(g for g in sim.ground_truth() if g["condition"] == "sepsis")
    return sim, timed, by, septic


def _bytes(sim: Simulation) -> list[tuple[str, bytes, bytes]]:
    return [(topic, m.key(), m.to_bytes()) for topic, m in sim.messages()]


def test_same_seed_gives_byte_identical_messages():
    kw = dict(n_patients=2, start_time=T0, duration_s=900, onset_window_s=(60.0, 120.0))
    a = _bytes(Simulation(seed=5, **kw))
    assert a == _bytes(Simulation(seed=5, **kw))
    assert a != _bytes(Simulation(seed=6, **kw))


def test_turning_waveforms_off_leaves_other_streams_identical():
    kw = dict(n_patients=2, seed=3, start_time=T0, duration_s=600)
    full = [b for b in _bytes(Simulation(**kw)) if b[0] != topics.WAVEFORMS]
    assert full == _bytes(Simulation(waveforms=False, **kw))


def test_every_message_round_trips_through_the_schemas():
    sim = Simulation(2, seed=2, start_time=T0, duration_s=2400, onset_window_s=(60.0, 60.0))
    seen = set()
    for topic, msg in sim.messages():
        decoded = schemas.decode(topic, msg.to_bytes(), msg.key())
        assert decoded == msg
        seen.add(topic)
    assert seen == {topics.ADT, topics.VITALS, topics.WAVEFORMS, topics.LABS}


def test_long_run_sparse_messages_validate(sepsis_run):
    _, timed, _, _ = sepsis_run
    seen = set()
    for _, topic, msg in timed:
        if topic != topics.WAVEFORMS:
            assert schemas.decode(topic, msg.to_bytes(), msg.key()) == msg
            seen.add(topic)
    assert seen == {topics.ADT, topics.VITALS, topics.LABS, topics.CXR}


def test_publish_order_and_event_times(sepsis_run):
    sim, timed, by, _ = sepsis_run
    times = [t for t, _, _ in timed]
    assert times == sorted(times)
    for t, topic, msg in timed:
        if topic == topics.LABS:
            assert t == msg.result_time and 30 * 60 <= msg.result_time - msg.event_time <= 90 * 60
        elif topic == topics.CXR:
            assert t == msg.arrival_time and 10 * 60 <= msg.arrival_time - msg.event_time <= 40 * 60
        else:
            assert t == msg.event_time
        assert sim.start_time <= t <= sim.end_time
    for streams in by.values():
        adt = streams[topics.ADT]
        assert [a.event for a in adt] == ["admit", "discharge"]
        assert adt[0].event_time == sim.start_time and adt[1].event_time == sim.end_time


def test_vitals_at_1_hz_and_waveform_chunks_of_one_second(sepsis_run):
    sim, _, by, _ = sepsis_run
    expected = sim.start_time + np.arange(int(sim.duration_s))
    for streams in by.values():
        assert np.array_equal([v.event_time for v in streams[topics.VITALS]], expected)
        per_signal = defaultdict(list)
        for w in streams[topics.WAVEFORMS]:
            per_signal[w.signal].append(w)
        assert {s: len(ws) for s, ws in per_signal.items()} == {s: len(expected) for s in ("ecg", "ppg", "resp")}
        for signal, fs in (("ecg", 250), ("ppg", 125), ("resp", 25)):
            assert all(w.fs == fs and len(w.samples) == fs for w in per_signal[signal])


def _signal(streams, signal: str, t0: float, seconds: int) -> np.ndarray:
    chunks = [w.samples for w in streams[topics.WAVEFORMS] if w.signal == signal and t0 <= w.event_time < t0 + seconds]
    return np.concatenate(chunks)


@pytest.mark.parametrize("offset_s", [300, ONSET_S + 3600])
def test_ecg_beats_match_heart_rate_and_ppg_lags_r_peak(sepsis_run, offset_s):
    sim, _, by, septic = sepsis_run
    streams = by[septic["patient_id"]]
    t0 = sim.start_time + offset_s
    ecg = _signal(streams, "ecg", t0, 60)
    r = wfdb.processing.xqrs_detect(ecg, fs=250, verbose=False)
    detected_hr = 60.0 / (np.diff(r).mean() / 250)
    monitor_hr = np.mean([v.hr for v in streams[topics.VITALS] if t0 <= v.event_time < t0 + 60])
    assert abs(detected_hr - monitor_hr) < 3.0

    ppg = _signal(streams, "ppg", t0, 60)
    peaks, _ = find_peaks(ppg, distance=25, prominence=0.3)
    peak_t = peaks / 125
    lags = [peak_t[peak_t > rt][0] - rt for rt in r[:-3] / 250]
    assert 0.15 < np.median(lags) < 0.3


def test_ecg_is_continuous_across_chunk_boundaries(sepsis_run):
    _, _, by, septic = sepsis_run
    ecg = _signal(by[septic["patient_id"]], "ecg", T0 + 600, 30)
    jumps = np.abs(np.diff(ecg))
    boundary = jumps[249::250]
    assert boundary.max() <= jumps.max() and np.median(boundary) < 0.1


def test_sepsis_raises_lactate_and_early_warning_scores(sepsis_run):
    sim, _, by, septic = sepsis_run
    assert septic["sepsis_source"] == "pneumonia" and septic["onset_time"] == T0 + ONSET_S
    streams = by[septic["patient_id"]]
    onset = septic["onset_time"]
    vitals = streams[topics.VITALS]
    before = [v for v in vitals if onset - 600 <= v.event_time < onset]
    late = [v for v in vitals if onset + 3600 <= v.event_time < onset + 4200]

    def mean(vs, f):
        return float(np.mean([getattr(v, f) for v in vs]))

    assert mean(late, "hr") > mean(before, "hr") + 25
    assert mean(late, "rr") > mean(before, "rr") + 6
    assert mean(late, "sbp") < mean(before, "sbp") - 20
    assert mean(late, "spo2") < mean(before, "spo2")
    assert mean(late, "temp") > mean(before, "temp") + 1.0

    n2 = np.array([news2(v) for v in vitals])
    qs = np.array([qsofa(v) for v in vitals])
    t = np.array([v.event_time for v in vitals])
    assert n2[t < onset].max() <= 5
    window = (t >= onset) & (t <= onset + 90 * 60)
    assert (n2[window] >= 7).any() and (qs[window] >= 2).any()

    lactate = [(lab.event_time, lab.value) for lab in streams[topics.LABS] if lab.analyte == "lactate"]
    admission = [v for te, v in lactate if te == T0]
    after = [v for te, v in lactate if te > onset]
    assert admission and after and max(after) > admission[0] + 1.5


def test_stable_patients_stay_mostly_low_risk():
    sim = Simulation(8, seed=4, start_time=T0, duration_s=3600, deteriorating_fraction=0.0, waveforms=False, cxr=False)
    scores = [news2(m) for topic, m in sim.messages() if topic == topics.VITALS]
    assert len(scores) == 8 * 3600
    assert np.mean(np.array(scores) <= 4) > 0.97


def test_pneumonia_cxr_shows_opacities_after_onset(sepsis_run):
    _, _, by, septic = sepsis_run
    studies = by[septic["patient_id"]][topics.CXR]
    admission, later = studies[0], studies[-1]
    assert admission.event_time < septic["onset_time"] < later.event_time
    assert "Lungs clear" in admission.report and "No acute cardiopulmonary process" in admission.report
    assert "opacit" in later.report.lower()
    images = [base64.b64decode(s.image_b64) for s in (admission, later)]
    for png in images:
        with Image.open(io.BytesIO(png)) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "L", (224, 224))
    assert cxr_images.lung_field_mean(images[1]) > cxr_images.lung_field_mean(images[0]) + 3


def test_clear_film_has_dark_lungs_and_bright_mediastinum():
    png = cxr_images.render(0.0, "clear", "right", np.random.default_rng(0))
    img = np.asarray(Image.open(io.BytesIO(png)), dtype=float)
    lungs = cxr_images.lung_mask() > 0.9
    assert img[lungs].mean() < 70 and img[100:160, 104:120].mean() > 140


def test_lab_responses_for_hemorrhage_and_respiratory_failure():
    stable = Simulation(1, seed=9, start_time=T0, duration_s=12 * 3600, deteriorating_fraction=0.0).patients[0]
    for condition, analyte, sign in (
        ("hemorrhage", "hemoglobin", -1),
        ("respiratory_failure", "paco2", 1),
        ("respiratory_failure", "ph", -1),
    ):
        p = dataclasses.replace(stable, condition=condition, onset_s=600.0, ramp_s=3600.0, peak=1.0)
        labs = lab_messages(p, T0, 12 * 3600, np.random.default_rng(0))
        values = [lab.value for lab in labs if lab.analyte == analyte]
        assert sign * (values[-1] - values[0]) > 0, (condition, analyte, values)
        assert all(lab.unit == schemas.LAB_UNITS[lab.analyte] for lab in labs)


def test_ground_truth(tmp_path):
    sim = Simulation(6, seed=1, start_time=T0, duration_s=7200, deteriorating_fraction=0.5)
    truth = sim.ground_truth()
    assert [g["patient_id"] for g in truth] == [f"sim{i:04d}" for i in range(6)]
    assert sum(g["condition"] != "stable" for g in truth) == 3
    for g in truth:
        assert g["condition"] in ("sepsis", "hemorrhage", "respiratory_failure", "stable")
        assert g["kind"] == g["condition"]
        if g["condition"] == "stable":
            assert g["onset_time"] is None and g["sepsis_source"] is None
        else:
            assert T0 + 600 <= g["onset_time"] <= T0 + 3600
        assert (g["sepsis_source"] is not None) == (g["condition"] == "sepsis")
    assert json.loads(write_ground_truth(sim, tmp_path / "gt" / "truth.json").read_text()) == truth

    assert sum(g["deteriorates"] for g in Simulation(5, 1, T0, 600, deteriorating_fraction=0.01).ground_truth()) == 1
    assert not any(g["deteriorates"] for g in Simulation(5, 1, T0, 600, deteriorating_fraction=0.0).ground_truth())
    assert Simulation(0, 1, T0, 600).ground_truth() == []
    with pytest.raises(ValueError):
        Simulation(1, 1, T0, 600, patient_prefix="bad id/")
    with pytest.raises(ValueError):
        Simulation(1, 1, T0 * 1000, 600)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.flushed = False

    def send(self, topic, key=None, value=None):
        self.sent.append((topic, key, value))

    def flush(self):
        self.flushed = True


def test_publish_sends_everything_paced_by_event_time():
    sim = Simulation(2, seed=8, start_time=T0, duration_s=30, cxr=False)
    producer = FakeProducer()
    started = time.monotonic()
    counts = publish(sim, producer, speed=100.0)
    elapsed = time.monotonic() - started
    assert 0.25 < elapsed < 5.0
    assert producer.flushed and producer.sent == _bytes(sim)
    assert counts == {topics.ADT: 4, topics.VITALS: 60, topics.WAVEFORMS: 180}

    fast = FakeProducer()
    assert publish(sim, fast, speed=0, progress=True) == counts


def test_load_real_images(tmp_path):
    img = Image.fromarray((np.random.default_rng(0).random((600, 500)) * 255).astype(np.uint8))
    img.save(tmp_path / "a.png")
    img.save(tmp_path / "a.jpg", quality=90)
    (tmp_path / "a.txt").write_text("not an image")
    png = load_image(tmp_path / "a.png")
    assert png == (tmp_path / "a.png").read_bytes() and image_format(png) == "png"
    assert image_format(load_image(tmp_path / "a.jpg")) == "jpeg"
    small = load_image(tmp_path / "a.jpg", max_side=224)
    with Image.open(io.BytesIO(small)) as im:
        assert im.format == "JPEG" and max(im.size) == 224
    b64, fmt = load_image_b64(tmp_path / "a.png")
    assert fmt == "png" and base64.b64decode(b64) == png and to_b64(png) == b64
    schemas.Cxr(patient_id="real1", event_time=T0, study_id="s1", arrival_time=T0, image_b64=b64, image_format=fmt)
    with pytest.raises(ValueError):
        load_image(tmp_path / "a.txt")


def test_waveform_chunks_of_several_seconds_carry_the_same_samples():
    kw = dict(n_patients=2, seed=4, start_time=T0, duration_s=75, cxr=False)
    by_second = [m for topic, m in Simulation(**kw).messages() if topic == "icu.waveforms"]
    by_three = [m for topic, m in Simulation(**kw, waveform_chunk_s=3).messages() if topic == "icu.waveforms"]
    assert len(by_three) < len(by_second) / 2.5
    for signal in ("ecg", "ppg", "resp"):
        for pid in ("sim0000", "sim0001"):
            one = [x for m in by_second if m.signal == signal and m.patient_id == pid for x in m.samples]
            three = [x for m in by_three if m.signal == signal and m.patient_id == pid for x in m.samples]
            assert one == three
    starts = {(m.patient_id, m.signal): [] for m in by_three}
    for m in by_three:
        starts[(m.patient_id, m.signal)].append((m.event_time, len(m.samples) / m.fs))
    for chunks in starts.values():  # contiguous, no chunk longer than 3 s
        assert all(abs(t0 + d - t1) < 1e-6 for (t0, d), (t1, _) in zip(chunks, chunks[1:]))
        assert max(d for _, d in chunks) <= 3.0
    with pytest.raises(ValueError):
        Simulation(**kw, waveform_chunk_s=7)


def test_binary_waveform_payload_carries_the_same_chunks():
    kw = dict(n_patients=2, seed=3, start_time=T0, duration_s=120)
    v1, v2 = list(Simulation(**kw).messages()), list(Simulation(waveform_payload=2, **kw).messages())
    assert [(t, m.to_bytes()) for t, m in v1 if t != topics.WAVEFORMS] == [
        (t, m.to_bytes()) for t, m in v2 if t != topics.WAVEFORMS
    ]
    w1 = [m for t, m in v1 if t == topics.WAVEFORMS]
    w2 = [schemas.decode(t, m.to_bytes(), m.key()) for t, m in v2 if t == topics.WAVEFORMS]
    assert len(w1) == len(w2) and all(isinstance(m, schemas.WaveformV2) for m in w2)
    for a, b in zip(w1, w2):
        assert (a.patient_id, a.event_time, a.signal, a.fs, a.units) == (
            b.patient_id,
            b.event_time,
            b.signal,
            b.fs,
            b.units,
        )
        assert np.max(np.abs(a.values() - b.values())) <= b.scale / 2 + 1e-9
    assert sum(len(m.to_bytes()) for _, m in v2) < 0.6 * sum(len(m.to_bytes()) for _, m in v1)
    with pytest.raises(ValueError, match="waveform_payload"):
        Simulation(waveform_payload=3, **kw)


def test_monitor_phases_shift_each_beds_dense_stream_within_the_second():
    """``monitor_phases``: each bed sends at its own fraction of the second, the same readings; the
    default sends every bed on the whole second."""
    kw = dict(n_patients=20, seed=3, start_time=T0, duration_s=30)
    aligned, phased = Simulation(**kw), Simulation(monitor_phases=True, **kw)
    dense = (topics.VITALS, topics.WAVEFORMS)

    def offsets(sim):
        per_bed = defaultdict(set)
        for t, topic, m in sim.timed_messages():
            if topic in dense:
                assert t == m.event_time
                per_bed[m.patient_id].add(round((t - T0) % 1.0, 6))
        return per_bed

    assert all(o == {0.0} for o in offsets(aligned).values())
    phases = offsets(phased)
    assert all(len(o) == 1 for o in phases.values())  # one phase per bed, kept
    assert len({next(iter(o)) for o in phases.values()}) >= 15  # beds spread over the second
    shifted = [(m.patient_id, m.hr) for topic, m in phased.messages() if topic == topics.VITALS]
    assert sorted(shifted, key=lambda x: x[0]) == sorted(
        [(m.patient_id, m.hr) for topic, m in aligned.messages() if topic == topics.VITALS], key=lambda x: x[0]
    )
    sparse = [(topic, m.to_bytes()) for topic, m in phased.messages() if topic not in dense]
    assert sparse == [(topic, m.to_bytes()) for topic, m in aligned.messages() if topic not in dense]
    times = [t for t, _, _ in phased.timed_messages()]
    assert times == sorted(times)
