"""encoders.cxr (CNN + real PNG/JPEG loading) and encoders.text (report encoder)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from icuwatch.encoders import tokenizer
from icuwatch.encoders.cxr import CxrEncoder, to_tensor
from icuwatch.encoders.text import ReportEncoder


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
