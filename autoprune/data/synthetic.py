"""The procedural ``synthetic`` data set: learnable gratings, deterministic from a seed."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .cache import CACHE_VERSION, cache_key, cached

__all__ = ["load_synthetic", "make_synthetic"]


def _hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """Vectorised HSV -> RGB; inputs (N,), output (N, 3) in [0, 1]."""
    n = torch.tensor([5.0, 3.0, 1.0])
    k = (n[None, :] + h[:, None] * 6.0) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def make_synthetic(
    n_per_class: int, *, num_classes: int = 10, size: tuple[int, int] = (32, 32), seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Procedural, learnable images: uint8 ``(N, 3, H, W)`` and int64 labels, deterministic from ``seed``.

    Class ``c`` is a grating at orientation ``pi * c / num_classes`` inside a randomly placed disc, tinted
    with a hue near ``c / num_classes``. Hue jitter makes colour alone ambiguous between neighbouring
    classes, so a model has to see the orientation; random phase, frequency, position, background and
    pixel noise keep it from being a lookup table.
    """
    g = torch.Generator().manual_seed(int(seed))
    k = int(num_classes)
    n = n_per_class * k
    h, w = size
    y = torch.arange(k).repeat_interleave(n_per_class)
    y = y[torch.randperm(n, generator=g)]

    def u(lo: float, hi: float, shape: tuple[int, ...] = (n,)) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    theta = math.pi * y.float() / k + u(-0.15, 0.15) * math.pi / k
    freq = u(2.5, 4.5)  # cycles across the image
    phase = u(0.0, 2 * math.pi)
    hue = (y.float() + u(-0.8, 0.8)) / k % 1.0
    fg = _hsv_to_rgb(hue, u(0.6, 1.0), u(0.7, 1.0))  # (N, 3)
    bg = u(0.15, 0.85)[:, None] * (1 - 0.3 * torch.rand((n, 3), generator=g))  # greyish, slightly tinted
    cy, cx = u(0.35, 0.65) * h, u(0.35, 0.65) * w
    radius = u(0.3, 0.45) * min(h, w)

    yy = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xx = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    proj = torch.cos(theta).view(n, 1, 1) * xx + torch.sin(theta).view(n, 1, 1) * yy
    grating = 0.5 + 0.5 * torch.sin(2 * math.pi * freq.view(n, 1, 1) * proj / max(h, w) + phase.view(n, 1, 1))
    dist = torch.sqrt((yy - cy.view(n, 1, 1)) ** 2 + (xx - cx.view(n, 1, 1)) ** 2)
    mask = torch.sigmoid(radius.view(n, 1, 1) - dist)[:, None]  # soft-edged disc, (N, 1, H, W)
    inside = grating[:, None] * fg[:, :, None, None] + (1 - grating[:, None]) * 0.15
    img = (1 - mask) * bg[:, :, None, None] + mask * inside
    img = img + 0.06 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), y


def load_synthetic(cache: Path, image_size: tuple[int, int] | None, seed: int, opts: dict[str, Any]) -> dict[str, Any]:
    params = {
        "num_classes": int(opts.get("num_classes", 10)),
        "train_per_class": int(opts.get("train_per_class", 500)),
        "test_per_class": int(opts.get("test_per_class", 100)),
        "size": list(image_size or (32, 32)),
        "seed": int(seed),
    }
    key = cache_key({"v": CACHE_VERSION, **params})
    path = cache / "data" / f"synthetic-{key}.pt"

    def build() -> dict[str, Any]:
        size = tuple(params["size"])
        k = params["num_classes"]
        # Different seeds for the two splits so test images are never copies of training images.
        tx, ty = make_synthetic(params["train_per_class"], num_classes=k, size=size, seed=2 * params["seed"])
        vx, vy = make_synthetic(params["test_per_class"], num_classes=k, size=size, seed=2 * params["seed"] + 1)
        return {"train_x": tx, "train_y": ty, "test_x": vx, "test_y": vy, "classes": [f"class{i}" for i in range(k)]}

    arrays = cached(path, build)
    arrays["path"] = str(path)
    return arrays
