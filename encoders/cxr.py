"""Chest X-ray encoder: a small CNN over 1x224x224 grayscale images.

:class:`CxrEncoder` maps float32 [B, 1, 224, 224] images in [0, 1] to [B, out_dim] features. It is
built to run on CPU: a stride-4 stem brings the image to 56x56, three stride-2 blocks to 7x7, then
the 7x7 map is average-pooled over the image's left and right halves separately and the two are
concatenated. Pooling the halves apart keeps laterality (right- vs left-sided opacities), which a
plain global average throws away, at no cost in parameters beyond the last linear layer.

Real studies are decoded by ``signals.cxr_image`` (no torch there, so the worker can use it too).
"""

from __future__ import annotations

import numpy as np
import torch
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
