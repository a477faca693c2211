"""Weight-based criteria: score the output channels (filters) of a conv / linear weight ``W[out, in/groups, *k]``.

* ``l1``     : sum |w| over each filter.
* ``l2``     : L2 norm of each filter.
* ``eigen``  : per k×k kernel slice ``K = W[o, i]`` a scalar (``variant="spectral"``: σ_max(K), default;
               ``"eigen"``: max |λ(K)| with complex magnitudes; ``"mean_abs"``: mean |K|), summed over ``i``.
               For 1×1 kernels (and Linear weights, treated as 1×1) every variant is |w|.
* ``random`` : the control; seeded ``torch.Generator`` uniform scores, deterministic per (seed, layer name).

The built-in weight criteria register themselves by name when this module is imported.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .base import WeightCriterion
from .registry import register_criterion

__all__ = ["L1Criterion", "L2Criterion", "EigenCriterion", "RandomCriterion"]


def _as_slices(weight: Tensor) -> Tensor:
    """``[out, in, kh, kw]`` view of a weight: Linear ``[o, i]`` -> 1×1, 1-D ``[o]`` -> 1×1, Conv1d ``[o, i, k]`` -> 1×k."""
    w = weight
    if w.dim() == 1:
        return w[:, None, None, None]
    if w.dim() == 2:
        return w[:, :, None, None]
    if w.dim() == 3:
        return w[:, :, None, :]
    if w.dim() == 4:
        return w
    raise ValueError(f"cannot score a weight of shape {tuple(w.shape)} (only 1-D to 4-D weights)")


@dataclass(frozen=True)
class L1Criterion(WeightCriterion):
    """Sum of absolute weights of each output filter."""

    name: ClassVar[str] = "l1"

    def score_tensor(self, weight: Tensor, name: str | None = None) -> Tensor:
        # |w| is exact in any precision, so only the sum needs float64 (no float64 copy of a 100M-weight layer).
        w = weight.detach().cpu()
        return w.reshape(w.shape[0], -1).abs().sum(1, dtype=torch.float64)


@dataclass(frozen=True)
class L2Criterion(WeightCriterion):
    """L2 norm of each output filter."""

    name: ClassVar[str] = "l2"

    def score_tensor(self, weight: Tensor, name: str | None = None) -> Tensor:
        w = weight.detach().to("cpu", torch.float64)
        return w.reshape(w.shape[0], -1).norm(dim=1)


@dataclass(frozen=True)
class EigenCriterion(WeightCriterion):
    """Eigenvalue-based kernel importance (Cugu & Akbas 2021), summed per filter.

    ``variant``: ``"spectral"`` σ_max of each k×k slice (default), ``"eigen"`` max |eigenvalue| (complex
    magnitudes; square kernels only), ``"mean_abs"`` mean |w| of the slice.
    """

    variant: str = "spectral"
    name: ClassVar[str] = "eigen"
    VARIANTS: ClassVar[tuple[str, ...]] = ("spectral", "eigen", "mean_abs")

    def __post_init__(self) -> None:
        if self.variant not in self.VARIANTS:
            raise ValueError(f"eigen variant must be one of {self.VARIANTS}, got {self.variant!r}")

    def score_tensor(self, weight: Tensor, name: str | None = None) -> Tensor:
        k = _as_slices(weight.detach().to("cpu", torch.float64))
        kh, kw = k.shape[-2:]
        if kh * kw == 1:
            per_slice = k[..., 0, 0].abs()
        elif self.variant == "spectral":
            per_slice = torch.linalg.matrix_norm(k, ord=2)
        elif self.variant == "eigen":
            if kh != kw:
                raise ValueError(f"variant='eigen' needs square kernels, got {kh}x{kw}")
            per_slice = torch.linalg.eigvals(k).abs().amax(-1)
        else:
            per_slice = k.abs().mean((-2, -1))
        return per_slice.sum(1)


@dataclass(frozen=True)
class RandomCriterion(WeightCriterion):
    """Random control: uniform [0, 1) scores from ``torch.Generator().manual_seed(...)``.

    Deterministic: the generator seed is ``seed`` when no layer ``name`` is given, otherwise it mixes ``seed`` with
    ``crc32(name)`` so that layers of equal width do not all prune the same indices.
    """

    seed: int = 0
    name: ClassVar[str] = "random"

    def layer_seed(self, name: str | None = None) -> int:
        """The generator seed used for layer ``name``."""
        if name is None:
            return int(self.seed)
        return (int(self.seed) * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2**63 - 1)

    def score_channels(self, num_channels: int, name: str | None = None) -> Tensor:
        """``num_channels`` random scores (float64) for layer ``name``."""
        g = torch.Generator().manual_seed(self.layer_seed(name))
        return torch.rand(int(num_channels), generator=g, dtype=torch.float64)

    def score_tensor(self, weight: Tensor, name: str | None = None) -> Tensor:
        return self.score_channels(weight.shape[0], name)


for _cls in (L1Criterion, L2Criterion, EigenCriterion, RandomCriterion):
    register_criterion(_cls.name, _cls, overwrite=True)
del _cls
