"""encoders.cxr (CNN + real PNG/JPEG loading) and encoders.text (report encoder)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from icuwatch.encoders import tokenizer
from icuwatch.encoders.cxr import CxrEncoder, load_cxr, png_to_array, to_tensor
from icuwatch.encoders.text import ReportEncoder
from icuwatch.sources.simulator import cxr as sim_cxr


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Timing-free but CPU-heavy: one thread, so parallel work on 2 cores stays predictable."""


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_cxr_encoder_shapes_and_size():
    torch.manual_seed(0)
    enc = CxrEncoder(out_dim=96)
    assert enc.out_dim == 96
    assert n_params(enc) < 200_000
    x = torch.rand(3, 1, 224, 224)
    out = enc(x)
    assert out.shape == (3, 96) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    enc.eval()
    with torch.no_grad():
        # batch-independent in eval mode, and [B, 224, 224] is accepted too
        assert torch.allclose(enc(x[:1]), enc(x)[:1], atol=1e-5)
        assert torch.allclose(enc(x[:, 0]), enc(x), atol=1e-6)
        # left/right halves are pooled apart: a mirrored image gives another vector
        assert not torch.allclose(enc(x), enc(torch.flip(x, dims=[-1])), atol=1e-4)


def test_to_tensor_scales_uint8():
    img = np.full((2, 224, 224), 255, dtype=np.uint8)
    t = to_tensor(img)
    assert t.shape == (2, 1, 224, 224) and t.dtype == torch.float32 and float(t.max()) == 1.0
    assert to_tensor(img[0]).shape == (1, 1, 224, 224)
    floats = np.random.default_rng(0).random((2, 1, 224, 224), dtype=np.float32)
    assert torch.equal(to_tensor(floats), torch.from_numpy(floats))  # floats: taken as [0, 1] already


def test_report_encoder_shapes_padding_and_size():
    torch.manual_seed(0)
    enc = ReportEncoder(out_dim=64).eval()
    assert enc.out_dim == 64
    assert n_params(enc) < 200_000
    ids = torch.from_numpy(tokenizer.encode(["Lungs clear.", "Moderate bilateral diffuse opacities."]).astype(np.int64))
    with torch.no_grad():
        out = enc(ids)
        assert out.shape == (2, 64) and out.dtype == torch.float32
        # masked mean: extra padding changes nothing; int32 ids are accepted
        padded = torch.cat([ids, torch.zeros(2, 40, dtype=torch.long)], dim=1)
        assert torch.allclose(enc(padded), out, atol=1e-6)
        assert torch.allclose(enc(ids.int()), out)
        assert not torch.allclose(out[0], out[1])
        empty = enc(torch.zeros(1, 8, dtype=torch.long))
        assert torch.isfinite(empty).all()


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
