"""Activation-based criteria computed from streamed feature maps (forward-hook friendly).

Each criterion folds batches into an accumulator of :mod:`autoprune.criteria.accumulators` (bounded memory, no
feature map stored) and turns it into per-channel scores:

* ``hrank``  : mean numerical rank of each H×W map (batched ``torch.linalg.matrix_rank``, float32, default tol).
* ``ezcrop`` : mean ratio of log-spectrum energy outside the centred low-frequency zone.
* ``tt``, ``snr``, ``fdr``, ``sd`` : one-vs-rest class-discrimination statistics of the pooled channel feature
  (shared :class:`~autoprune.criteria.accumulators.PooledClassStats`), aggregated over classes.
* ``di``     : discriminant information tr[(S̄ + ρI)⁻¹ S_B] of each channel's p×p pooled features
  (:class:`~autoprune.criteria.accumulators.PooledScatterStats`).

The built-in criteria register themselves by name when this module is imported. See docs/criteria.md for the
formulas and the choices made where the sources are unverified.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Hashable

import torch
from torch import Tensor

from .accumulators import EZCropAccumulator, PooledClassStats, PooledScatterStats, RankAccumulator
from .base import Accumulator, ActivationCriterion
from .registry import register_criterion

__all__ = [
    "HRankCriterion", "EZCropCriterion", "DiscriminationCriterion", "TTCriterion", "SNRCriterion",
    "FDRCriterion", "SDCriterion", "DICriterion",
]


def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")


@dataclass(frozen=True)
class HRankCriterion(ActivationCriterion):
    """HRank: mean over images of the numerical rank of each channel's H×W map (hook after ReLU).

    ``chunk_size`` (images per ``matrix_rank`` call, None = the whole batch) bounds the SVD workspace.
    """

    needs_maps: ClassVar[bool] = True

    chunk_size: int | None = None
    name: ClassVar[str] = "hrank"

    def __post_init__(self) -> None:
        _check_chunk(self.chunk_size)

    def accumulator_key(self) -> Hashable:
        return ("rank",)

    def init(self, channels: int | None = None, num_classes: int | None = None,
             device: torch.device | str | None = None) -> RankAccumulator:
        return RankAccumulator(channels, num_classes, device, self.chunk_size)

    def finalize(self, state: Accumulator) -> Tensor:
        return state.mean()


@dataclass(frozen=True)
class EZCropCriterion(ActivationCriterion):
    """EZCrop: mean over images of the share of log-spectrum energy outside the low-frequency zone.

    ``alpha`` in [0, 1] sets the zone half-width (methods.md §2); hook at the conv output for ResNet/DenseNet,
    after ReLU for VGG.
    """

    needs_maps: ClassVar[bool] = True

    alpha: float = 0.25
    chunk_size: int | None = None
    name: ClassVar[str] = "ezcrop"
    default_hook: ClassVar[str] = "conv"

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        _check_chunk(self.chunk_size)

    def accumulator_key(self) -> Hashable:
        return ("ezcrop", float(self.alpha))

    def init(self, channels: int | None = None, num_classes: int | None = None,
             device: torch.device | str | None = None) -> EZCropAccumulator:
        return EZCropAccumulator(channels, num_classes, device, self.chunk_size, float(self.alpha))

    def finalize(self, state: Accumulator) -> Tensor:
        return state.mean()


@dataclass(frozen=True)
class DiscriminationCriterion(ActivationCriterion):
    """One-vs-rest class-discrimination statistic of the pooled channel feature, aggregated over classes.

    ``pool``: "avg" | "max"; ``aggregate``: "mean" | "max" over classes with samples on both sides;
    ``eps`` guards every division (see docs/criteria.md); ``ddof``: variance degrees of freedom (1 = unbiased).
    """

    pool: str = "avg"
    aggregate: str = "mean"
    eps: float = 1e-8
    ddof: int = 1
    name: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
        if self.aggregate not in ("mean", "max"):
            raise ValueError(f"aggregate must be 'mean' or 'max', got {self.aggregate!r}")
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if int(self.ddof) not in (0, 1):
            raise ValueError(f"ddof must be 0 or 1, got {self.ddof}")

    def accumulator_key(self) -> Hashable:
        return ("pooled_class", self.pool)

    def init(self, channels: int | None = None, num_classes: int | None = None,
             device: torch.device | str | None = None) -> PooledClassStats:
        return PooledClassStats(channels, num_classes, device, pool=self.pool)

    def statistic(self, d: Tensor, vp: Tensor, vn: Tensor, np_: Tensor, nn_: Tensor) -> Tensor:
        """The per-class statistic ``[K, C]`` from mean difference, variances and counts."""
        raise NotImplementedError

    def finalize(self, state: Accumulator) -> Tensor:
        m = state.one_vs_rest(int(self.ddof))
        valid = m["valid"]
        if int(valid.sum()) == 0:
            raise ValueError(f"{self.name}: needs samples of at least two classes")
        per_class = self.statistic(m["mean_diff"], m["var_pos"], m["var_neg"], m["n_pos"], m["n_neg"])[valid]
        # 0/0 (a constant channel with eps=0) means "no separation": 0. x/0 with x > 0 stays +inf. A NaN of the
        # moments themselves (NaN features) stays NaN: scoring refuses it rather than ranking the channel last.
        moments_ok = (m["mean_diff"].isfinite() & m["var_pos"].isfinite() & m["var_neg"].isfinite())[valid]
        per_class = torch.where(torch.isnan(per_class) & moments_ok, torch.zeros_like(per_class), per_class)
        return per_class.mean(0) if self.aggregate == "mean" else per_class.amax(0)


@dataclass(frozen=True)
class TTCriterion(DiscriminationCriterion):
    """Welch t statistic |μ₊ − μ₋| / sqrt(σ₊²/N₊ + σ₋²/N₋ + eps)."""

    name: ClassVar[str] = "tt"

    def statistic(self, d: Tensor, vp: Tensor, vn: Tensor, np_: Tensor, nn_: Tensor) -> Tensor:
        return d.abs() / torch.sqrt(vp / np_ + vn / nn_ + self.eps)


@dataclass(frozen=True)
class SNRCriterion(DiscriminationCriterion):
    """Signal-to-noise ratio |μ₊ − μ₋| / (σ₊ + σ₋ + eps)."""

    name: ClassVar[str] = "snr"

    def statistic(self, d: Tensor, vp: Tensor, vn: Tensor, np_: Tensor, nn_: Tensor) -> Tensor:
        return d.abs() / (vp.sqrt() + vn.sqrt() + self.eps)


@dataclass(frozen=True)
class FDRCriterion(DiscriminationCriterion):
    """Fisher discriminant ratio (μ₊ − μ₋)² / (σ₊² + σ₋² + eps)."""

    name: ClassVar[str] = "fdr"

    def statistic(self, d: Tensor, vp: Tensor, vn: Tensor, np_: Tensor, nn_: Tensor) -> Tensor:
        return d * d / (vp + vn + self.eps)


@dataclass(frozen=True)
class SDCriterion(DiscriminationCriterion):
    """Symmetric divergence of two Gaussians, with variances v± = σ±² + eps:
    ½(v₊/v₋ + v₋/v₊) + ½(μ₊ − μ₋)²(1/v₊ + 1/v₋) − 1."""

    name: ClassVar[str] = "sd"

    def statistic(self, d: Tensor, vp: Tensor, vn: Tensor, np_: Tensor, nn_: Tensor) -> Tensor:
        vp, vn = vp + self.eps, vn + self.eps
        return 0.5 * (vp / vn + vn / vp) + 0.5 * d * d * (1.0 / vp + 1.0 / vn) - 1.0


@dataclass(frozen=True)
class DICriterion(ActivationCriterion):
    """Discriminant information DI = tr[(S̄ + ρI)⁻¹ S_B] per channel over its ``p×p`` pooled features.

    ``scatter="total"`` (default): S̄ = total scatter S_T (Kung's centre-adjusted scatter); ``"within"``: S̄ = S_W.
    Scatters are population covariances (divided by N); S_B = Σ_k (N_k/N)(μ_k − μ)(μ_k − μ)ᵀ.
    ``rho`` is absolute, or relative to tr(S̄)/d of each channel when ``relative_rho`` is True; ρ = 0 uses a
    pseudo-inverse.
    """

    p: int = 2
    rho: float = 1e-3
    scatter: str = "total"
    relative_rho: bool = False
    name: ClassVar[str] = "di"
    needs_labels: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if int(self.p) < 1:
            raise ValueError(f"p must be >= 1, got {self.p}")
        if not self.rho >= 0:
            raise ValueError(f"rho must be >= 0, got {self.rho}")
        if self.scatter not in ("total", "within"):
            raise ValueError(f"scatter must be 'total' or 'within', got {self.scatter!r}")

    def accumulator_key(self) -> Hashable:
        return ("pooled_scatter", int(self.p))

    def init(self, channels: int | None = None, num_classes: int | None = None,
             device: torch.device | str | None = None) -> PooledScatterStats:
        return PooledScatterStats(channels, num_classes, device, p=int(self.p))

    def finalize(self, state: Accumulator) -> Tensor:
        sc = state.scatter()
        sbar, sb = sc[self.scatter], sc["between"]
        d = sbar.shape[-1]
        eye = torch.eye(d, dtype=sbar.dtype, device=sbar.device)
        if self.rho == 0:
            return (torch.linalg.pinv(sbar, hermitian=True) @ sb).diagonal(dim1=-2, dim2=-1).sum(-1)
        rho = torch.full(sbar.shape[:1], float(self.rho), dtype=sbar.dtype, device=sbar.device)
        if self.relative_rho:
            rho = rho * sbar.diagonal(dim1=-2, dim2=-1).sum(-1).clamp(min=0) / d
            rho = torch.where(rho > 0, rho, torch.full_like(rho, torch.finfo(rho.dtype).tiny))
        a = sbar + rho[:, None, None] * eye
        return torch.linalg.solve(a, sb).diagonal(dim1=-2, dim2=-1).sum(-1)


for _cls in (HRankCriterion, EZCropCriterion, TTCriterion, SNRCriterion, FDRCriterion, SDCriterion, DICriterion):
    register_criterion(_cls.name, _cls, overwrite=True)
del _cls
