"""Decoding real chest X-ray files (``signals.cxr_image``): any size, bit depth and colour mode to
the uint8 224 x 224 array the cohorts and the worker use."""

import io

import numpy as np
import pytest
from PIL import Image

from icuwatch.signals.cxr_image import load_cxr, png_to_array
from icuwatch.sources.simulator import cxr as sim_cxr


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_load_png_8bit_non_square_pads_keeping_aspect(tmp_path):
    arr = np.zeros((300, 150), dtype=np.uint8)  # portrait, 2:1
    arr[:, 75:] = 200  # right half bright
    path = tmp_path / "a.png"
    path.write_bytes(_png(arr))
    out = load_cxr(path)
    assert out.shape == (224, 224) and out.dtype == np.uint8
    # scaled to 224 x 112, centred: 56 black columns each side
    assert out[:, :50].max() == 0 and out[:, -50:].max() == 0
    assert abs(int(out[112, 56 + 80]) - 200) <= 2 and out[112, 56 + 20] <= 2


def test_load_png_16bit_full_and_12bit(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 400), (200, 1)).astype(np.uint16)  # landscape
    p16 = tmp_path / "r16.png"
    Image.fromarray(ramp).save(p16)
    with Image.open(p16) as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    out = load_cxr(p16)
    assert out.shape == (224, 224) and out.dtype == np.uint8
    assert out[:50].max() == 0 and out[-50:].max() == 0  # 224 x 112 content, padded top/bottom
    row = out[112].astype(int)
    assert row[2] < 8 and row[-3] > 245 and np.all(np.diff(row) >= -1)
    # 12-bit data stored in 16 bits is scaled by its 12 significant bits, not by 65535
    p12 = tmp_path / "r12.png"
    Image.fromarray((ramp // 16).astype(np.uint16)).save(p12)
    assert load_cxr(p12)[112, -3] > 245


def test_load_jpeg_rgb_and_gray_non_square(tmp_path):
    arr = np.zeros((250, 400, 3), dtype=np.uint8)
    arr[:, 200:] = (180, 180, 180)
    p = tmp_path / "x.jpg"
    Image.fromarray(arr).save(p, quality=95)
    out = load_cxr(p)
    assert out.shape == (224, 224) and out.dtype == np.uint8
    top = (224 - 140) // 2  # 400x250 -> 224x140
    assert out[: top - 4].max() <= 3 and out[top + 140 + 4 :].max() <= 3
    assert abs(int(out[112, 180]) - 180) <= 6 and out[112, 40] <= 6
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0]).save(buf, format="JPEG")
    assert png_to_array(buf.getvalue()).shape == (224, 224)


def test_png_to_array_simulated_study_is_lossless_and_rejects_other_bytes():
    png = sim_cxr.render(0.6, "diffuse", "right", np.random.default_rng(0))
    direct = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    assert np.array_equal(png_to_array(png), direct)  # already 224x224 8-bit: untouched
    with pytest.raises(ValueError):
        png_to_array(b"GIF89a....")
