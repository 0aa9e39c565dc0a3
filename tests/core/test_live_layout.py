"""The live student's input helpers (``core.live_row``): what the cohort builder and the worker share."""

import numpy as np
import pytest

from icuwatch.core import live_row
from icuwatch.core.tokenizer import encode


def test_thumbnail_is_the_block_mean():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(224, 224), dtype=np.uint8)
    thumb = live_row.thumbnail(image)
    assert thumb.shape == (32, 32) and thumb.dtype == np.uint8
    assert thumb[3, 5] == round(image[21:28, 35:42].astype(float).mean())
    assert np.array_equal(live_row.thumbnails(np.stack([image, image]))[1], thumb)
    with pytest.raises(ValueError):
        live_row.thumbnail(image[:100])


def test_report_bag_marks_the_buckets_of_its_tokens_and_ignores_padding():
    text = "No acute cardiopulmonary process. Left lower lobe opacity."
    ids = encode([text])[0]
    bag = live_row.report_text_bag(text)
    assert bag.shape == (256,) and bag.dtype == np.float32
    assert set(np.flatnonzero(bag)) == {int(i) % 256 for i in ids if i > 0}
    assert not live_row.report_bag(np.zeros((2, 96), np.int32)).any()
    assert np.array_equal(live_row.report_bag(np.stack([ids, ids]))[0], bag)
    assert not np.array_equal(bag, live_row.report_text_bag("Right effusion, no pneumothorax."))


def test_waveform_input_z_scores_and_flags_what_was_measured():
    norm = {"waveforms": {"mean": [80.0, 80.0], "std": [10.0, 10.0]}, "z_clip": 3.0}
    out = live_row.waveform_input({"ecg_hr": 100.0, "ppg_pr": None}, norm)
    assert out.tolist() == [2.0, 0.0, 1.0, 0.0]
    assert live_row.waveform_input({"ecg_hr": 500.0, "ppg_pr": 60.0}, norm).tolist() == [3.0, -2.0, 1.0, 1.0]
    assert not live_row.waveform_input({"ecg_hr": float("nan")}, norm).any()


def test_the_uint8_wire_carries_the_thumbnail_and_the_report_bag_exactly():
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    thumb = (pixels / 255.0).astype(np.float32)  # as streams.live_row and the cohort give it
    wire = live_row.to_wire_uint8("cxr", thumb)
    assert wire.dtype == np.uint8 and np.array_equal(wire, pixels)
    assert np.array_equal(live_row.from_wire_uint8("cxr", wire), thumb)
    bag = live_row.report_text_bag("Right lower lobe opacity; no effusion.")
    assert np.array_equal(live_row.from_wire_uint8("report", live_row.to_wire_uint8("report", bag)), bag)


def test_the_python_backend_decodes_the_wire_as_the_row_builders_compute(monkeypatch):
    torch = pytest.importorskip("torch")
    import importlib.util
    import sys
    import types

    from icuwatch.serving import TEMPLATES

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("fusion_model_template", TEMPLATES / "fusion_model.py")
    template = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(template)
    assert template.wire_divisors("CXR:255,REPORT:1") == {"CXR": 255, "REPORT": 1}
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    decoded = template.from_wire(torch.from_numpy(pixels), 255).numpy()
    assert decoded.dtype == np.float32 and np.array_equal(decoded, (pixels / 255.0).astype(np.float32))
    for divisor in (3, 7, 10, 100, 254, 255):  # the float32 shortcut only where it is exact
        decoded = template.from_wire(torch.from_numpy(pixels), divisor).numpy()
        assert np.array_equal(decoded, (pixels / float(divisor)).astype(np.float32)), divisor
