"""Chest X-ray image decoding without the deep-learning stack (numpy and Pillow only), so the worker
can turn an arriving study into the live student's thumbnail (``core.live_row.thumbnail``).

:func:`load_cxr` / :func:`png_to_array` turn a real PNG or JPEG of any size and bit depth into the
uint8 [224, 224] array the cohort format stores (``fusion.cohorts.base``): grayscale, the longer side
resized to 224 keeping the aspect ratio, the shorter one padded with black, centred (nothing of the
study is cropped away). ``encoders.cxr`` re-exports them beside its CNN.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SIZE = 224


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
