"""Batched kernels of the activation criteria: per-map statistics of whole ``[..., H, W]`` stacks at once.

* :func:`batched_rank`: numerical rank of each H×W map (HRank).
* :func:`ezcrop_zone`, :func:`ezcrop_ratio`: EZCrop's low-frequency zone and high-frequency energy ratio.
* :func:`pool_features`: per-channel pooled feature of a feature map (the class-discrimination criteria).

Pure functions of their inputs; the only state is a memo of constant matmul weights per map shape.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["as_float", "batched_rank", "ezcrop_zone", "ezcrop_ratio", "pool_features"]


def as_float(t: Tensor) -> Tensor:
    """float32 unless already float32/float64 (half precision and integer maps are promoted)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _chunks(n: int, size: int | None) -> list[tuple[int, int]]:
    if not size or size >= n:
        return [(0, n)]
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def batched_rank(maps: Tensor) -> Tensor:
    """Numerical rank of every H×W map of ``maps`` ``[..., H, W]`` (int64 ``[...]``).

    Uses ``torch.linalg.matrix_rank`` in float32 with its default tolerance (σ_max · max(H, W) · eps_float32), like
    HRank's reference code; float64 input stays float64. 1×1 maps have rank ``(map != 0)``.
    """
    maps = as_float(maps)
    h, w = maps.shape[-2:]
    if maps.numel() and not bool(torch.isfinite(maps).all()):  # no rank exists (and the SVD fails with a traceback)
        raise ValueError("hrank: the feature maps hold NaN or Inf (the model's weights or the data do, or the "
                         "activations overflow); no rank exists. Check the data (torch.isfinite(x).all()) and the "
                         "weights")
    if h * w == 1 or maps.numel() == 0:
        return (maps != 0).flatten(-2).sum(-1)
    return torch.linalg.matrix_rank(maps)


def ezcrop_zone(h: int, w: int, alpha: float = 0.25) -> tuple[int, int, int]:
    """Centre ``(cx, cy)`` and half-width ``s`` of EZCrop's low-frequency zone for an H×W map (methods.md §2).

    ``(cx, cy) = (H/2, W/2)`` when both are even, else ``((H−1)//2, (W−1)//2)``;
    ``s = min(ceil(α(H−cx−1)), ceil(α(W−cy−1)))``, and ``s = 0`` when ``cx == 1`` or ``cy == 1``.
    The zone is rows ``cx−s..cx+s`` × cols ``cy−s..cy+s`` of the fftshift-ed spectrum.
    """
    if h % 2 == 0 and w % 2 == 0:
        cx, cy = h // 2, w // 2
    else:
        cx, cy = (h - 1) // 2, (w - 1) // 2
    if cx == 1 or cy == 1:
        s = 0
    else:
        # round() guards against float noise such as 0.1*30 = 3.0000000000000004 before ceil.
        s = min(math.ceil(round(alpha * (h - cx - 1), 9)), math.ceil(round(alpha * (w - cy - 1), 9)))
    return cx, cy, max(int(s), 0)


def _cabs(z: Tensor) -> Tensor:
    """|z| of a complex tensor via hypot(re, im) (same result as ``z.abs()``, about twice as fast on CPU)."""
    r = torch.view_as_real(z)
    return torch.hypot(r[..., 0], r[..., 1])


_WEIGHTS_CACHE: dict[tuple, Tensor] = {}


def _rfft_zone_weights(h: int, w: int, s: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[H * (W//2+1), 2]`` weights turning an rfft2 log-magnitude into (total, zone) sums with one matmul.

    Every rfft column stands for itself and its mirror (weight 2), except column 0 and, for even W, column W/2.
    The zone is rows f = -s..s (mod H) × columns 0..s of the unshifted spectrum.
    """
    key = (h, w, s, dtype, str(device))
    wts = _WEIGHTS_CACHE.get(key)
    if wts is None:
        wc = w // 2 + 1
        col = torch.full((wc,), 2.0, dtype=torch.float64)
        col[0] = 1.0
        if w % 2 == 0:
            col[-1] = 1.0
        total = col.expand(h, wc)
        zone = torch.zeros(h, wc, dtype=torch.float64)
        rows = torch.arange(-s, s + 1) % h
        zone[rows, : s + 1] = col[: s + 1]
        wts = torch.stack([total.reshape(-1), zone.reshape(-1)], 1).to(device=device, dtype=dtype)
        _WEIGHTS_CACHE[key] = wts
    return wts


def ezcrop_ratio(maps: Tensor, alpha: float = 0.25) -> Tensor:
    """EZCrop's high-frequency ratio ``r = 1 − Σ_Z M / Σ_all M`` of each H×W map of ``maps`` ``[..., H, W]``.

    ``M = log(1 + |fftshift(fft2(X))|)``; ``r = 0`` for an all-zero map. Computed in float32 (float64 input stays
    float64). When the zone centre lies on the zero frequency (both sides even or both odd: always the case for
    square maps) the Hermitian symmetry of a real map's spectrum is used (``rfft2``, half the work); otherwise the
    full shifted spectrum is sliced.
    """
    maps = as_float(maps)
    h, w = maps.shape[-2:]
    cx, cy, s = ezcrop_zone(h, w, alpha)
    r0, r1 = max(cx - s, 0), min(cx + s, h - 1)
    c0, c1 = max(cy - s, 0), min(cy + s, w - 1)
    if cx == h // 2 and cy == w // 2 and r0 == cx - s and r1 == cx + s and c0 == cy - s and c1 == cy + s:
        # Centre on DC and zone not clipped: zone = frequencies |f_row| <= s, |f_col| <= s (a symmetric set), and
        # 2s < W, so the columns -s..-1 mirror 1..s.
        mag = torch.log1p_(_cabs(torch.fft.rfft2(maps)))           # [..., H, W//2 + 1]
        sums = mag.reshape(-1, mag.shape[-2] * mag.shape[-1]) @ _rfft_zone_weights(h, w, s, mag.dtype, mag.device)
        sums = sums.reshape(*mag.shape[:-2], 2)
        total, zone = sums[..., 0], sums[..., 1]
    else:
        spec = torch.fft.fftshift(torch.fft.fft2(maps), dim=(-2, -1))
        mag = torch.log1p_(_cabs(spec))
        total = mag.sum((-2, -1))
        zone = mag[..., r0: r1 + 1, c0: c1 + 1].sum((-2, -1))
    safe = torch.where(total > 0, total, torch.ones_like(total))
    # 0 for an all-zero map; a map holding NaN keeps NaN (a score of 0 would silently rank it least important)
    return torch.where(total > 0, 1.0 - zone / safe, torch.where(torch.isnan(total), total, torch.zeros_like(total)))


def pool_features(fmap: Tensor, pool: str = "avg") -> Tensor:
    """Per-channel feature ``[N, C]`` of ``fmap`` ``[N, C, H, W]`` (``[N, C]`` passes through).

    ``pool="avg"``: global average pool; ``"max"``: global max pool.
    """
    if fmap.dim() == 2:
        return fmap
    if pool == "avg":
        return fmap.mean((-2, -1))
    if pool == "max":
        return fmap.amax((-2, -1))
    raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
