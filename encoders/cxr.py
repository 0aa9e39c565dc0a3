"""Chest X-ray encoder: a small CNN over 1x224x224 grayscale images, and loading of real studies.

:class:`CxrEncoder` maps float32 [B, 1, 224, 224] images in [0, 1] to [B, out_dim] features. It is
built to run on CPU: a stride-4 stem brings the image to 56x56, three stride-2 blocks to 7x7, then
the 7x7 map is average-pooled over the image's left and right halves separately and the two are
concatenated. Pooling the halves apart keeps laterality (right- vs left-sided opacities), which a
plain global average throws away, at no cost in parameters beyond the last linear layer.

:func:`load_cxr` / :func:`png_to_array` turn a real PNG or JPEG of any size and bit depth into the
uint8 [224, 224] array the cohort format stores (``fusion.cohorts.base``): grayscale, the longer side
resized to 224 keeping the aspect ratio, the shorter one padded with black, centred (nothing of the
study is cropped away).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

IMAGE_SIZE = 224


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CxrEncoder(nn.Module):
    """float32 [B, 1, 224, 224] in [0, 1] -> float32 [B, out_dim].

    ``widths``: channels of the stem and of the three stride-2 stages (56 -> 28 -> 14 -> 7 pixels).
    Defaults: about 125k parameters.
    """

    def __init__(self, out_dim: int = 128, widths: tuple[int, int, int, int] = (16, 32, 48, 96)):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.out_dim = out_dim
        self.stem = nn.Sequential(
            nn.Conv2d(1, w0, 7, stride=4, padding=3, bias=False),  # 224 -> 56
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.Sequential(
            _block(w0, w0, 1),
            _block(w0, w1, 2),  # 28
            _block(w1, w2, 2),  # 14
            _block(w2, w2, 1),
            _block(w2, w3, 2),  # 7
        )
        self.head = nn.Sequential(nn.Linear(2 * w3, out_dim), nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        h = self.stages(self.stem(x - 0.5))
        half = h.shape[-1] // 2
        # image left half = patient's right lung; the middle column (odd widths) goes to both
        left = h[..., : h.shape[-1] - half].mean(dim=(2, 3))
        right = h[..., half:].mean(dim=(2, 3))
        return self.head(torch.cat([left, right], dim=1))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, 224, 224] (or [224, 224]) -> float32 [B, 1, 224, 224] in [0, 1]; float input
    ([B, 224, 224] or [B, 1, 224, 224]) is taken as already in [0, 1]."""
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t.float().div_(255.0) if arr.dtype == np.uint8 else t.float()
    return t.unsqueeze(1) if t.dim() == 3 else t


def _to_float_gray(im: Image.Image) -> np.ndarray:
    """Grayscale intensities in [0, 1] from any PIL mode and bit depth."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            return np.clip((arr - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(arr)
        # High bit depth: scale by the significant bits in use (12-bit data stored in 16 bits is
        # common for radiographs), so a 12-bit study isn't squeezed into the darkest 1/16th.
        top = max(float(arr.max()), 255.0)
        bits = int(np.ceil(np.log2(top + 1)))
        return np.clip(arr, 0, None) / (2.0**bits - 1)
    if im.mode in ("LA", "RGBA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(bg, im)
    return np.asarray(im.convert("L"), dtype=np.float64) / 255.0


def png_to_array(data: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 [size, size] from PNG or JPEG bytes (any size, bit depth or colour mode).

    Grayscale; EXIF orientation applied; the longer side resized to ``size`` keeping the aspect
    ratio (Lanczos, in floating point so 16-bit detail survives until the final rounding) and the
    shorter side padded with black, centred. ValueError for anything but PNG/JPEG.
    """
    if not (data.startswith(b"\x89PNG\r\n\x1a\n") or data.startswith(b"\xff\xd8\xff")):
        raise ValueError("not a PNG or JPEG image")
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        im = ImageOps.exif_transpose(im) if im.mode not in ("I;16", "I;16B", "I;16L", "I", "F") else im
        gray = _to_float_gray(im)
    h, w = gray.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        f = Image.fromarray(gray.astype(np.float32))
        gray = np.asarray(f.resize((nw, nh), Image.Resampling.LANCZOS), dtype=np.float64)
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = np.clip(np.rint(gray * 255.0), 0, 255).astype(np.uint8)
    return out


def load_cxr(path: str | Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 [size, size] from a real PNG or JPEG file (see :func:`png_to_array`)."""
    return png_to_array(Path(path).read_bytes(), size)
