"""Bedside simulator: synthetic ICU patients streaming vitals, waveforms, labs, X-rays and ADT.

Not for clinical use: physiology is plausible, not validated.
"""

from .cxr import image_format, load_image, load_image_b64, to_b64
from .producer import publish, write_ground_truth
from .simulation import Simulation

__all__ = [
    "Simulation",
    "image_format",
    "load_image",
    "load_image_b64",
    "publish",
    "to_b64",
    "write_ground_truth",
]
