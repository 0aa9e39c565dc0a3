"""The live student's row of a streamed patient (``streams/live_row.py``): every modality from the
worker's state, absent ones zero with their flag off, and the X-ray and report turned into numbers
by the same helpers the offline cohort uses."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from icuwatch.core import live_row as layout
from icuwatch.core import schemas
from icuwatch.streams import live_row, patient_state
from icuwatch.streams.student_row import leave_one_out, stack_rows

T0 = 1_700_000_000.0
NORM = {
    "vitals": {"mean": [80.0, 97.0, 37.0, 120.0, 80.0, 60.0, 18.0], "std": [15.0, 3.0, 0.8, 20.0, 15.0, 12.0, 5.0]},
    "labs": {"mean": [1.0] * 27, "std": [1.0] * 27},
    "waveforms": {"mean": [85.0, 85.0], "std": [15.0, 15.0]},
    "z_clip": 10.0,
}
REPORT = "Right lower lobe consolidation. No pneumothorax."


def _png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(224, 224), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _study(study_id: str, after_s: float, image: bytes, arrival_after_s: float | None = None) -> schemas.Cxr:
    return schemas.Cxr(
        patient_id="p1",
        event_time=T0 + after_s,
        arrival_time=T0 + (after_s if arrival_after_s is None else arrival_after_s),
        study_id=study_id,
        image_b64=base64.b64encode(image).decode(),
        report=REPORT,
    )


def _state_with_vitals(minutes: int = 90):
    state = patient_state.new_state()
    patient_state.apply(state, schemas.Adt(patient_id="p1", event_time=T0, event="admit", unit="MICU", age=70, sex="F"))
    for m in range(minutes):
        patient_state.apply(state, schemas.Vitals(patient_id="p1", event_time=T0 + 60 * m, hr=90, spo2=95, sbp=110))
    return state


def test_a_patient_with_vitals_only_has_the_other_modalities_absent_and_zero():
    state = _state_with_vitals()
    row = live_row.row(state, T0 + 3600, NORM)
    assert row["present"].tolist() == [True, False, False, False, False]
    for name in ("waveforms", "labs", "cxr", "report"):
        assert not row["inputs"][name].any(), name
    assert row["inputs"]["vitals"].shape == (8, 14) and row["inputs"]["static"].shape == (7,)
    assert row["inputs"]["cxr"].shape == (1, 32, 32) and row["inputs"]["report"].shape == (256,)
    json.dumps(state)


def test_waveforms_xray_and_report_reach_the_row_causally():
    state = _state_with_vitals()
    patient_state.apply_waveform_features(state, T0 + 1800, {"ecg_hr": 115.0, "ppg_pr": 112.0})
    png = _png()
    assert patient_state.apply(state, _study("s1", 2400, png, arrival_after_s=2500))
    json.dumps(state)  # the Faust table stores it as JSON

    before = live_row.row(state, T0 + 2300, NORM)  # after the waveform value, before the X-ray
    assert before["present"].tolist() == [True, True, False, False, False]
    assert np.allclose(before["inputs"]["waveforms"], [2.0, 1.8, 1.0, 1.0])
    assert before["staleness_h"][1] == np.float32(round(500 / 3600, 6))

    after = live_row.row(state, T0 + 3600, NORM)
    assert after["present"].tolist() == [True, True, False, True, True]
    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    expected = layout.thumbnail(image).astype(np.float32)[None] / 255.0
    assert np.allclose(after["inputs"]["cxr"], expected, atol=1e-7)
    assert np.array_equal(after["inputs"]["report"], layout.report_text_bag(REPORT))
    assert after["staleness_h"][3] == after["staleness_h"][4] == np.float32(round(1200 / 3600, 6))


def test_an_undecodable_image_keeps_the_report_and_drops_only_the_image():
    state = _state_with_vitals()
    assert patient_state.apply(state, _study("s2", 600, b"\x89PNG\r\n\x1a\n" + b"broken" * 10))
    row = live_row.row(state, T0 + 3600, NORM)
    assert row["present"].tolist()[3:] == [False, True] and not row["inputs"]["cxr"].any()


def test_leave_one_out_takes_an_xray_out_with_its_report():
    state = _state_with_vitals()
    patient_state.apply(state, _study("s3", 60, _png(1)))
    batch = stack_rows([live_row.row(state, T0 + 3600, NORM), live_row.row(_state_with_vitals(), T0 + 3600, NORM)])
    groups = [g for g in layout.FEATURE_MODALITY_GROUPS.values()]
    extended, without = leave_one_out(batch, layout.MODALITIES, groups)
    assert without.tolist() == [[2, -1, -1, 3], [4, -1, -1, -1]]
    xray_out = extended["present"][3]
    assert xray_out.tolist() == [True, False, False, False, False]
    assert not extended["cxr"][3].any() and not extended["report"][3].any()
    assert extended["cxr"][0].any() and extended["report"][0].any()
