"""Device-side augmentation and normalisation of uint8 image batches, and the default statistics."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DEFAULT_MEAN", "DEFAULT_STD", "normalize", "random_crop_flip"]

# The shared CIFAR-10-JPEG checkpoints were trained with these statistics (see ../shared/models/README.md);
# using them for every data set keeps those checkpoints usable without a per-dataset table.
DEFAULT_MEAN = (0.485, 0.456, 0.406)
DEFAULT_STD = (0.229, 0.224, 0.225)


def random_crop_flip(
    x: Tensor,
    padding: int = 4,
    *,
    flip: bool = True,
    generator: torch.Generator | None = None,
    return_params: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random crop (same size, zero padding ``padding``) and random horizontal flip of a batch.

    ``x`` is ``(N, C, H, W)`` of any dtype on any device. The crop offsets are drawn on the CPU from
    ``generator`` (so results do not depend on the device) and applied with one advanced-indexing
    gather: no per-image Python loop. With ``return_params`` also returns ``(dy, dx, flipped)``:
    output ``i`` is ``pad(x)[i, :, dy:dy+H, dx:dx+W]``, mirrored along W where ``flipped[i]``.
    """
    n, c, h, w = x.shape
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flipped = (torch.rand(n, generator=generator) < 0.5) if flip else torch.zeros(n, dtype=torch.bool)
    dev = x.device
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = dy.to(dev)[:, None] + ar_h  # (N, H)
    # A flip is just a reversed column index, so it costs nothing extra in the gather.
    cols = dx.to(dev)[:, None] + torch.where(flipped.to(dev)[:, None], w - 1 - ar_w, ar_w)  # (N, W)
    out = padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    if return_params:
        return out, dy, dx, flipped
    return out


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 ``(N, C, H, W)`` in [0, 255] -> float32 ``(x / 255 - mean) / std``."""
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    # One multiply-subtract instead of divide/subtract/divide: (x/255 - m)/s == x*(1/(255 s)) - m/s.
    return torch.addcmul(-m / s, x.to(torch.float32), 1.0 / (255.0 * s))
