"""The live student's row: one layout for a replayed PhysioNet stay and a simulated bedside patient.

The served student (``student_live`` in Triton) reads five modalities and answers two risks, sepsis
and deterioration. Offline the row comes from ``fusion.cohorts.live`` (PhysioNet 2019 stays and the
simulator's patients mapped into this layout); online from ``streams.live_row`` (the worker's patient
state). Both use the helpers here, so the two cannot drift apart in how an image or a report becomes
numbers. Numpy only: the worker imports it.

==========  ======================  ===================================================================
input       array (one row)         meaning
==========  ======================  ===================================================================
vitals      float32 [8, 14]         the PhysioNet cohort's hourly window (``core.physionet_row``)
waveforms   float32 [4]             newest ECG heart rate and PPG pulse rate, z-scored, then their
                                    measured flags (``WAVEFORM_CHANNELS``)
labs        float32 [81]            the PhysioNet cohort's 27 analytes (value z, measured ever, hours)
cxr         float32 [1, 32, 32]     the newest chest X-ray as a 32 x 32 thumbnail in [0, 1]
                                    (:func:`thumbnail` of the 224 x 224 study)
report      float32 [256]           that study's report as hashed word and bigram presence
                                    (:func:`report_bag` of ``core.tokenizer`` ids)
static      float32 [7]             the PhysioNet cohort's static channels
present     bool [5]                per modality (``MODALITIES``)
staleness_h float32 [5]             hours since each modality's newest data
==========  ======================  ===================================================================

An absent modality's input is zeros and its ``present`` flag False: masked, never imputed.

Why a thumbnail and a bag of words rather than the full image and the token sequence: the worker
keeps each patient's newest study in its state (changelog-backed, written on every checkpoint), and
the student's encoders are one dense layer per modality. A 32 x 32 thumbnail is 1 KB; the simulated
findings (lobar consolidation, effusion, oedema) are large-scale patterns that survive it. The report
is order-free at this size; bigrams keep negation and laterality ("no_acute", "left_lower").
"""

from __future__ import annotations

import numpy as np

from icuwatch.core.tokenizer import MAX_TOKENS, encode

MODALITIES: tuple[str, ...] = ("vitals", "waveforms", "labs", "cxr", "report")
HEADS: tuple[str, ...] = ("sepsis", "deterioration")
"""The student's outputs, in order (``PROBABILITY`` [B, 2] in Triton)."""
WAVEFORM_CHANNELS: tuple[str, ...] = ("ecg_hr", "ppg_pr")
THUMBNAIL = 32
IMAGE_SIZE = 224
REPORT_BUCKETS = 256
COHORT_VERSION = "live-cohort-v3"
WAVEFORM_NORM: dict[str, list[float]] = {"mean": [84.90691465985321] * 2, "std": [19.6478575629511] * 2}
"""The waveform channels' z-score (bpm), fixed by the layout like the PhysioNet channels' (fitted once on
PhysioNet's TRAIN stays), not fitted to whichever simulated population a build draws. A fitted one
moved with every population version (84.91 bpm at ``icu`` v2, 84.70 at v3); the served versions of a
Triton model share one normalisation, so an export with another removed the versions that
``icuwatch models rollback`` needs. These are the values ``student_live`` versions 1 and 2 were
trained with (the ``icu`` v2 population's ECG heart rate)."""

FEATURE_MODALITY_GROUPS: dict[str, tuple[str, ...]] = {
    "vitals": ("vitals",),
    "waveforms": ("waveforms",),
    "labs": ("labs",),
    "cxr": ("cxr", "report"),
}
"""The worker's explanation modalities (``core.features.MODALITIES``) as groups of the student's:
an X-ray's contribution is its image and its report together."""


def thumbnail(image: np.ndarray) -> np.ndarray:
    """uint8 [224, 224] study (``encoders.cxr.png_to_array``) -> uint8 [32, 32]: the mean of each
    7 x 7 block, rounded."""
    image = np.asarray(image)
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"expected a {IMAGE_SIZE}x{IMAGE_SIZE} image, got {image.shape}")
    k = IMAGE_SIZE // THUMBNAIL
    blocks = image.reshape(THUMBNAIL, k, THUMBNAIL, k).astype(np.float64).mean(axis=(1, 3))
    return np.clip(np.rint(blocks), 0, 255).astype(np.uint8)


def thumbnails(images: np.ndarray) -> np.ndarray:
    """uint8 [S, 224, 224] -> uint8 [S, 32, 32] (:func:`thumbnail` of each)."""
    images = np.asarray(images)
    if len(images) == 0:
        return np.zeros((0, THUMBNAIL, THUMBNAIL), np.uint8)
    k = IMAGE_SIZE // THUMBNAIL
    blocks = images.reshape(len(images), THUMBNAIL, k, THUMBNAIL, k).astype(np.float64).mean(axis=(2, 4))
    return np.clip(np.rint(blocks), 0, 255).astype(np.uint8)


def report_bag(token_ids: np.ndarray) -> np.ndarray:
    """int [..., L] token ids (0 = padding) -> float32 [..., 256]: 1 where some token id falls in the
    bucket ``id % 256``."""
    ids = np.asarray(token_ids)
    out = np.zeros((*ids.shape[:-1], REPORT_BUCKETS), np.float32)
    flat_ids = ids.reshape(-1, ids.shape[-1])
    flat_out = out.reshape(-1, REPORT_BUCKETS)
    rows, cols = np.nonzero(flat_ids > 0)
    flat_out[rows, flat_ids[rows, cols] % REPORT_BUCKETS] = 1.0
    return out


def report_text_bag(text: str) -> np.ndarray:
    """float32 [256] of one report's text (``core.tokenizer.encode``, then :func:`report_bag`)."""
    return report_bag(encode([text], MAX_TOKENS))[0]


WIRE_UINT8_DIVISORS: dict[str, int] = {"cxr": 255, "report": 1}
"""Inputs sent to Triton as UINT8, and what divides them back into the model's float input: the
thumbnail's pixels are 8-bit (:func:`thumbnail`) and the report bag is 0/1 (:func:`report_bag`), so
the bytes are exact and a 1,000-row request is ~1.9 MB instead of ~6 MB (issue 19: the payload was
two thirds of a served student's time)."""


def to_wire_uint8(key: str, x: np.ndarray) -> np.ndarray:
    """The float input ``key`` (one of :data:`WIRE_UINT8_DIVISORS`) as the UINT8 Triton is sent:
    ``x * divisor``, rounded (exact for a thumbnail in k/255 steps and a 0/1 bag)."""
    divisor = WIRE_UINT8_DIVISORS[key]
    return np.ascontiguousarray((np.asarray(x, np.float32) * np.float32(divisor) + np.float32(0.5)).astype(np.uint8))


def from_wire_uint8(key: str, x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_wire_uint8`."""
    return from_wire(x, WIRE_UINT8_DIVISORS[key])


def from_wire(x: np.ndarray, divisor: int) -> np.ndarray:
    """A UINT8 input as float32 equal to what the row builders give (k / 255 computed in float64,
    then rounded to float32, as ``streams.live_row`` does)."""
    return x.astype(np.float32) if divisor == 1 else (x / float(divisor)).astype(np.float32)


def wire_divisors(text: str) -> dict[str, int]:
    """``{"CXR": 255, "REPORT": 1}`` from a config's ``wire_uint8`` parameter (``CXR:255,REPORT:1``)."""
    return {name: int(d) for name, _, d in (part.partition(":") for part in text.split(",") if part)}


def waveform_input(values: dict[str, float | None], norm: dict) -> np.ndarray:
    """float32 [4] from the newest ``{"ecg_hr": bpm, "ppg_pr": bpm}`` (None or missing: not measured):
    z-scores with ``norm["waveforms"]`` (one mean/std per channel, clipped), then measured flags."""
    stats = norm["waveforms"]
    clip = float(norm.get("z_clip", 10.0))
    out = np.zeros(2 * len(WAVEFORM_CHANNELS), np.float32)
    for i, name in enumerate(WAVEFORM_CHANNELS):
        value = values.get(name)
        if value is None or not np.isfinite(value):
            continue
        z = (float(value) - float(stats["mean"][i])) / float(stats["std"][i])
        out[i] = np.clip(z, -clip, clip)
        out[len(WAVEFORM_CHANNELS) + i] = 1.0
    return out
