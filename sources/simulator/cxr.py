"""Synthetic chest X-rays (224x224 grayscale PNG) with severity-tied opacities, their reports, and
helpers to feed real PNG/JPEG studies instead.

The anatomy (dark lung fields, bright mediastinum, heart, spine, ribs, clavicles, diaphragm) is
drawn once and cached; a study only adds opacities inside the lung fields plus acquisition noise.
With ``findings`` (the ``icu`` population, ``cxr_findings``) a film also shows atelectasis, pleural
effusion, pulmonary edema and lines and tubes, and its report is worded from the study's seed.
Image convention is radiological: the patient's right lung is on the image's left.
"""

from __future__ import annotations

import base64
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from .cxr_findings import Findings, describe, opacity_change, opacity_sentence, paint

SIZE = 224


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


@lru_cache(maxsize=1)
def _anatomy() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base image in [0, 1], lung-field mask in [0, 1], right-lung half mask)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    d = np.abs(xx - 112)
    trunk = _ellipse(112, 132, 104, 134)
    img = np.where(trunk, 0.40, 0.04)

    right = _ellipse(70, 114, 38, 74) & (yy > 34)
    left = _ellipse(154, 116, 36, 72) & (yy > 36)
    dome_r = yy < 176 - 0.007 * (xx - 70) ** 2
    dome_l = yy < 182 - 0.007 * (xx - 154) ** 2
    heart = _ellipse(122, 156, 36, 30)
    lungs = (right & dome_r) | (left & dome_l & ~heart)
    img[lungs] = 0.12
    below = np.where(xx < 112, ~dome_r, ~dome_l) & (yy > 120)

    mediastinum = (d < 15 + 4 * np.clip((yy - 60) / 60, 0, 1)) & (yy > 10) & (yy < 180)
    img[mediastinum] = 0.64
    img[heart] = 0.66
    img[trunk & below & ~heart] = 0.60  # diaphragm, liver, spleen
    img[(d < 5) & (yy > 10) & (yy < 92)] = 0.30  # trachea
    img += 0.08 * (d < 8) * trunk  # spine

    ribs = np.zeros_like(img)
    lateral = np.maximum(d - 12, 0)
    for k in range(8):
        curve = 46 + 16 * k - 0.30 * lateral + 0.0075 * lateral**2
        ribs += np.exp(-0.5 * ((yy - curve) / 1.8) ** 2) * (d > 12) * (d < 96)
    clavicle = 40 - 0.10 * lateral
    ribs += 1.4 * np.exp(-0.5 * ((yy - clavicle) / 2.4) ** 2) * (d > 14) * (d < 78)
    chest_wall = gaussian_filter(((right | left) & (yy < 190)).astype(float), 6) > 0.05
    img += 0.13 * np.clip(ribs, 0, 1.4) * chest_wall

    img = gaussian_filter(img, 1.4)
    mask = gaussian_filter(lungs.astype(float), 2.0)
    right_half = (xx < 112).astype(float)
    return img, mask, right_half


def lung_mask() -> np.ndarray:
    """Soft lung-field mask (1 inside the lung fields), for callers measuring opacification."""
    return _anatomy()[1].copy()


def lung_field_mean(png: bytes) -> float:
    """Mean pixel intensity (0-255) inside the lung fields of a synthetic study."""
    img = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    mask = _anatomy()[1] > 0.9
    return float(img[mask].mean())


def render(
    severity: float, pattern: str, lobe: str, rng: np.random.Generator, *, findings: Findings | None = None
) -> bytes:
    """PNG bytes of one study. ``pattern``: 'clear', 'pneumonia' (focal, spreading to both lungs as
    severity grows) or 'diffuse' (bilateral, basal and perihilar: edema/ARDS). ``findings``: drawn
    over the opacity (None: the film is exactly what it was before findings existed)."""
    base, mask, right_half = _anatomy()
    img = base.copy()
    if pattern != "clear" and severity > 0.05:
        yy = np.arange(SIZE, dtype=float)[:, None]
        xx = np.arange(SIZE, dtype=float)[None, :]
        field = gaussian_filter(rng.standard_normal((SIZE, SIZE)), 7.0)
        field /= field.std()
        if pattern == "pneumonia":
            first = right_half if lobe == "right" else 1.0 - right_half
            spread = float(np.clip((severity - 0.45) * 1.6, 0.0, 1.0))
            zone = (first + spread * (1.0 - first)) * np.clip((yy - 60) / 70, 0.1, 1.0)
        else:
            zone = 0.55 + 0.45 * np.clip((yy - 60) / 90, 0, 1) + 0.25 * np.exp(-(((xx - 112) / 45) ** 2))
        patches = np.clip((field - (0.9 - 1.9 * severity)) / 0.7, 0.0, 1.0)
        opacity = gaussian_filter(patches * np.clip(zone, 0, 1) * mask, 1.5) * 0.9 * severity**0.3
        img += (0.58 - img) * opacity
    if findings is not None:
        img = paint(img, mask, findings, rng)
    img = img * rng.uniform(0.95, 1.05) + rng.normal(0.0, 0.015, img.shape)
    out = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def report(
    severity: float,
    pattern: str,
    lobe: str,
    prior_severity: float | None,
    *,
    findings: Findings | None = None,
    prior_findings: Findings | None = None,
    seed: int = 0,
) -> str:
    """A short radiology report consistent with what :func:`render` draws. Without ``findings`` the
    fixed template; with them (``prior_findings``: the previous film's, None for a first film) a
    report in wording drawn from ``seed`` (the study's image seed), ``cxr_findings.describe``."""
    if findings is not None:
        opacity = opacity_sentence(severity, pattern, lobe, seed)
        change = opacity_change(severity, prior_severity, seed) if opacity is not None else None
        return describe(opacity, change, findings, prior_findings, seed)
    head = "Portable AP chest radiograph. Heart size is normal. "
    if pattern == "clear" or severity < 0.15:
        return head + "Lungs clear. No pleural effusion or pneumothorax. Impression: No acute cardiopulmonary process."
    extent = "Mild" if severity < 0.4 else "Moderate" if severity < 0.7 else "Extensive"
    if pattern == "pneumonia":
        side = "right" if lobe == "right" else "left"
        if severity < 0.45:
            text = (
                f"{extent} patchy airspace opacity in the {side} lower lobe. "
                "Impression: Findings concerning for pneumonia."
            )
        else:
            text = (
                f"{extent} bilateral patchy airspace opacities, most confluent in the {side} lower lobe. "
                "Impression: Multifocal pneumonia."
            )
    else:
        text = (
            f"{extent} bilateral diffuse hazy and airspace opacities, basal and perihilar predominant. "
            "Impression: Pulmonary edema versus ARDS in the appropriate clinical setting."
        )
    if prior_severity is not None:
        if severity > prior_severity + 0.1:
            text += " Opacities have increased compared with the prior study."
        elif severity < prior_severity - 0.1:
            text += " Opacities have decreased compared with the prior study."
    return head + text


def load_image(path: str | Path, max_side: int | None = None) -> bytes:
    """Bytes of a real PNG or JPEG chest X-ray, ready for :class:`schemas.Cxr`.

    The file is checked to be a PNG/JPEG. With ``max_side``, larger images are downscaled to 8-bit
    grayscale in the same format (full-size studies are several MB, beyond Kafka's default 1 MB
    message limit once base64-encoded).
    """
    data = Path(path).read_bytes()
    fmt = image_format(data)
    if max_side is None:
        return data
    with Image.open(io.BytesIO(data)) as im:
        if max(im.size) <= max_side:
            return data
        im = im.convert("L") if im.mode not in ("I;16", "I") else im.point(lambda v: v / 256).convert("L")
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        im.save(out, format="PNG" if fmt == "png" else "JPEG", quality=90)
        return out.getvalue()


def image_format(data: bytes) -> str:
    """'png' or 'jpeg' from the file signature; ValueError for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    raise ValueError("not a PNG or JPEG image")


def to_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def load_image_b64(path: str | Path, max_side: int | None = None) -> tuple[str, str]:
    """(base64 text, format) of a real study, the two fields :class:`schemas.Cxr` needs."""
    data = load_image(path, max_side)
    return to_b64(data), image_format(data)
