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
