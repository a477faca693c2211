"""Activation-based criteria computed from streamed feature maps (forward-hook friendly).

No feature map is ever stored: each criterion folds a batch into an :class:`~autoprune.criteria.base.Accumulator`
whose size does not depend on the number of images, on the device of the incoming tensors. All reductions are
deterministic (integer sums, float64 sums, one-hot matmuls instead of scatter-adds).

* ``hrank``  : mean numerical rank of each H×W map (batched ``torch.linalg.matrix_rank``, float32, default tol).
* ``ezcrop`` : mean ratio of log-spectrum energy outside the centred low-frequency zone.
* ``tt``, ``snr``, ``fdr``, ``sd`` : one-vs-rest class-discrimination statistics of the pooled channel feature
  (shared :class:`PooledClassStats`), aggregated over classes.
* ``di``     : discriminant information tr[(S̄ + ρI)⁻¹ S_B] of each channel's p×p pooled features
  (:class:`PooledScatterStats`).

See docs/criteria.md for the formulas and the choices made where the sources are unverified.
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Hashable, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Accumulator, ActivationCriterion, Criterion

__all__ = [
    "batched_rank", "ezcrop_zone", "ezcrop_ratio", "pool_features",
    "RankAccumulator", "EZCropAccumulator", "PooledClassStats", "PooledScatterStats",
    "HRankCriterion", "EZCropCriterion", "DiscriminationCriterion", "TTCriterion", "SNRCriterion",
    "FDRCriterion", "SDCriterion", "DICriterion", "ActivationStats", "run_accumulators",
]


# ----------------------------------------------------------------------------------------------------------------
# Batched kernels
# ----------------------------------------------------------------------------------------------------------------

def _as_float(t: Tensor) -> Tensor:
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
    maps = _as_float(maps)
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
    maps = _as_float(maps)
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


# ----------------------------------------------------------------------------------------------------------------
# Accumulators
# ----------------------------------------------------------------------------------------------------------------

class _MeanAccumulator(Accumulator):
    """Running per-channel sum of a per-map statistic; the score is the mean over images."""

    def __init__(self, channels: int | None = None, num_classes: int | None = None,
                 device: torch.device | str | None = None, chunk_size: int | None = None) -> None:
        super().__init__(channels, num_classes, device)
        self.chunk_size = chunk_size
        self.sum: Tensor | None = None

    def _per_map(self, fmap: Tensor) -> Tensor:
        raise NotImplementedError

    def update(self, fmap: Tensor, labels: Tensor | None = None) -> None:
        fmap, _ = self._prepare(fmap, labels)
        if self.sum is None:
            self.sum = torch.zeros(self.channels, dtype=torch.float64, device=self.device)
        n = fmap.shape[0]
        with torch.no_grad():
            for a, b in _chunks(n, self.chunk_size):
                self.sum += self._per_map(fmap[a:b]).sum(0, dtype=torch.float64)
        self.num_images += n

    def mean(self) -> Tensor:
        """Mean of the per-map statistic over all images seen (float64 ``[C]``)."""
        if self.sum is None or self.num_images == 0:
            raise RuntimeError("no feature map was accumulated")
        return self.sum / self.num_images


class RankAccumulator(_MeanAccumulator):
    """Sum over images of each channel's feature-map rank (:func:`batched_rank`)."""

    def _per_map(self, fmap: Tensor) -> Tensor:
        return batched_rank(fmap)


class EZCropAccumulator(_MeanAccumulator):
    """Sum over images of each channel's EZCrop ratio (:func:`ezcrop_ratio`)."""

    def __init__(self, channels: int | None = None, num_classes: int | None = None,
                 device: torch.device | str | None = None, chunk_size: int | None = None,
                 alpha: float = 0.25) -> None:
        super().__init__(channels, num_classes, device, chunk_size)
        self.alpha = alpha

    def _per_map(self, fmap: Tensor) -> Tensor:
        return ezcrop_ratio(fmap, self.alpha)


_LABEL_CACHE: list = [None, -1, 0, -1]  # weakref to the last labels tensor, its _version, min, max


def _label_range(labels: Tensor) -> tuple[int, int]:
    """(min, max) of ``labels``; cached for the last tensor seen, so that the hooks of one forward pass, which all
    receive the same labels tensor, synchronise with the device once per batch instead of once per hook."""
    ref, version, lo, hi = _LABEL_CACHE
    if ref is not None and ref() is labels and version == labels._version:
        return lo, hi
    if labels.numel() == 0:
        lo, hi = 0, -1
    else:
        lo, hi = (int(v) for v in torch.stack([labels.min(), labels.max()]).tolist())
    _LABEL_CACHE[:] = [weakref.ref(labels), labels._version, lo, hi]
    return lo, hi


class _ClassAccumulator(Accumulator):
    """Shared plumbing for per-class statistics: class count growth and one-hot encoding."""

    needs_labels: ClassVar[bool] = True

    _grow: bool = False

    def _one_hot(self, labels: Tensor) -> Tensor:
        """One-hot float64 ``[N, K]``; checks the label range, and grows K when it is inferred from the labels."""
        lo, hi = _label_range(labels)
        if lo < 0:
            raise ValueError(f"labels must be >= 0, got {lo}")
        if self.num_classes is None or (self._grow and hi >= self.num_classes):
            self._resize(max(hi + 1, self.num_classes or 0, 1))
        elif hi >= self.num_classes:
            raise ValueError(f"label {hi} out of range for num_classes={self.num_classes}")
        return F.one_hot(labels, self.num_classes).to(torch.float64)

    def _resize(self, k: int) -> None:
        """Set the number of classes to ``k``, zero-padding the per-class tensors already allocated."""
        raise NotImplementedError

    @staticmethod
    def _pad_classes(t: Tensor | None, k: int) -> Tensor | None:
        if t is None or t.shape[0] >= k:
            return t
        pad = torch.zeros((k - t.shape[0],) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
        return torch.cat([t, pad])


class PooledClassStats(_ClassAccumulator):
    """Per-class count, sum and sum of squares of each channel's pooled feature (float64).

    Sums are taken of ``feature − shift`` with ``shift`` the first batch's per-channel mean, which keeps the
    variance ``(Q − S²/n)`` accurate when a channel's mean is large compared with its spread. If
    ``num_classes`` is None it is inferred from the labels and grows as larger labels appear.
    """

    def __init__(self, channels: int | None = None, num_classes: int | None = None,
                 device: torch.device | str | None = None, pool: str = "avg") -> None:
        super().__init__(channels, num_classes or None, device)  # 0 / None: infer from the labels
        pool_features(torch.zeros(1, 1, 1, 1), pool)  # validate
        self.pool = pool
        self._grow = self.num_classes is None
        self.count: Tensor | None = None   # [K]
        self.sum: Tensor | None = None     # [K, C]
        self.sumsq: Tensor | None = None   # [K, C]
        self.shift: Tensor | None = None   # [C]

    def _resize(self, k: int) -> None:
        self.num_classes = k
        self.count = self._pad_classes(self.count, k)
        self.sum = self._pad_classes(self.sum, k)
        self.sumsq = self._pad_classes(self.sumsq, k)

    def update(self, fmap: Tensor, labels: Tensor | None = None) -> None:
        fmap, labels = self._prepare(fmap, labels)
        n = fmap.shape[0]
        if n == 0:
            return
        with torch.no_grad():
            f = pool_features(_as_float(fmap), self.pool).to(torch.float64)
            if self.shift is None:
                self.shift = f.mean(0)
            f = f - self.shift
            onehot = self._one_hot(labels)  # may (re)size the class dimension
            if self.count is None:
                k, c = self.num_classes, self.channels
                self.count = torch.zeros(k, dtype=torch.float64, device=self.device)
                self.sum = torch.zeros(k, c, dtype=torch.float64, device=self.device)
                self.sumsq = torch.zeros(k, c, dtype=torch.float64, device=self.device)
            self.count += onehot.sum(0)
            self.sum += onehot.T @ f
            self.sumsq += onehot.T @ (f * f)
        self.num_images += n

    def one_vs_rest(self, ddof: int = 1) -> dict[str, Tensor]:
        """One-vs-rest moments per class ``[K, C]``: ``n_pos, n_neg, mean_diff, var_pos, var_neg`` and ``valid`` [K].

        Variances use ``ddof`` (1 = unbiased sample variance) and are 0 when a side has ``n <= ddof`` samples.
        ``valid`` marks classes with at least one sample on each side.
        """
        if self.count is None:
            raise RuntimeError("no feature map was accumulated")
        n_pos = self.count[:, None]
        n_all = self.count.sum()
        n_neg = n_all - n_pos
        s_pos, q_pos = self.sum, self.sumsq
        s_neg, q_neg = self.sum.sum(0) - s_pos, self.sumsq.sum(0) - q_pos

        def mean_var(s: Tensor, q: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
            n_safe = n.clamp(min=1)
            mean = s / n_safe
            var = ((q - s * s / n_safe) / (n - ddof).clamp(min=1)).clamp(min=0)
            var = torch.where(n > ddof, var, torch.zeros_like(var))
            return mean, var

        mu_p, var_p = mean_var(s_pos, q_pos, n_pos)
        mu_n, var_n = mean_var(s_neg, q_neg, n_neg)
        valid = (self.count > 0) & (n_all - self.count > 0)
        return {"n_pos": n_pos.expand_as(mu_p), "n_neg": n_neg.expand_as(mu_p), "mean_diff": mu_p - mu_n,
                "var_pos": var_p, "var_neg": var_n, "valid": valid}


class PooledScatterStats(_ClassAccumulator):
    """Per-class sums and per-channel second moments of each channel's ``p×p`` adaptive-avg-pooled features.

    For every channel the feature vector has ``d = p²`` entries (``d = 1`` for ``[N, C]`` inputs). Stored:
    ``count [K]``, ``sum [K, C, d]`` and ``m2 [C, d, d] = Σ (x − shift)(x − shift)ᵀ`` (float64).
    """

    def __init__(self, channels: int | None = None, num_classes: int | None = None,
                 device: torch.device | str | None = None, p: int = 2) -> None:
        super().__init__(channels, num_classes or None, device)  # 0 / None: infer from the labels
        if int(p) < 1:
            raise ValueError(f"p must be >= 1, got {p}")
        self.p = int(p)
        self._grow = self.num_classes is None
        self.count: Tensor | None = None
        self.sum: Tensor | None = None
        self.m2: Tensor | None = None
        self.shift: Tensor | None = None

    def _resize(self, k: int) -> None:
        self.num_classes = k
        self.count = self._pad_classes(self.count, k)
        self.sum = self._pad_classes(self.sum, k)

    def features(self, fmap: Tensor) -> Tensor:
        """``[N, C, d]`` features: ``adaptive_avg_pool2d(fmap, p)`` flattened (the raw value for 1×1 inputs)."""
        if fmap.shape[-2:] == (1, 1):
            return fmap.flatten(2)
        return F.adaptive_avg_pool2d(fmap, self.p).flatten(2)

    def update(self, fmap: Tensor, labels: Tensor | None = None) -> None:
        fmap, labels = self._prepare(fmap, labels)
        n = fmap.shape[0]
        if n == 0:
            return
        with torch.no_grad():
            x = self.features(_as_float(fmap)).to(torch.float64)
            if self.shift is None:
                self.shift = x.mean(0)
            elif self.shift.shape != x.shape[1:]:
                raise ValueError(f"feature size changed from {tuple(self.shift.shape)} to {tuple(x.shape[1:])}")
            x = x - self.shift
            onehot = self._one_hot(labels)
            k, c, d = self.num_classes, self.channels, x.shape[-1]
            if self.count is None:
                self.count = torch.zeros(k, dtype=torch.float64, device=self.device)
                self.sum = torch.zeros(k, c, d, dtype=torch.float64, device=self.device)
                self.m2 = torch.zeros(c, d, d, dtype=torch.float64, device=self.device)
            self.count += onehot.sum(0)
            self.sum += torch.einsum("nk,ncd->kcd", onehot, x)
            self.m2 += torch.einsum("nci,ncj->cij", x, x)
        self.num_images += n

    def scatter(self) -> dict[str, Tensor]:
        """Per-channel ``[C, d, d]`` scatter matrices (population, divided by N): ``total``, ``between``, ``within``."""
        if self.count is None:
            raise RuntimeError("no feature map was accumulated")
        n = self.count.sum()
        mu = self.sum.sum(0) / n                                      # [C, d]
        total = self.m2 / n - mu[:, :, None] * mu[:, None, :]
        nk = self.count.clamp(min=1)[:, None, None]
        diff = self.sum / nk - mu[None]                               # [K, C, d]
        w = (self.count / n)[:, None, None, None]
        between = (w * diff[..., :, None] * diff[..., None, :]).sum(0)
        total = 0.5 * (total + total.transpose(-1, -2))
        within = total - between
        return {"total": total, "between": between, "within": within}


# ----------------------------------------------------------------------------------------------------------------
# Criteria
# ----------------------------------------------------------------------------------------------------------------

def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size}")


@dataclass(frozen=True)
class HRankCriterion(ActivationCriterion):
    """HRank: mean over images of the numerical rank of each channel's H×W map (hook after ReLU).

    ``chunk_size`` (images per ``matrix_rank`` call, None = the whole batch) bounds the SVD workspace.
    """

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


# ----------------------------------------------------------------------------------------------------------------
# One pass, shared statistics
# ----------------------------------------------------------------------------------------------------------------

CriteriaSpec = Union[str, Criterion, Sequence[Union[str, Criterion]], Mapping[str, Union[str, Criterion]]]


def _resolve(criteria: CriteriaSpec) -> dict[str, ActivationCriterion]:
    from .registry import get_criterion

    if isinstance(criteria, (str, Criterion)):
        criteria = [criteria]
    if isinstance(criteria, Mapping):
        items = [(str(k), v) for k, v in criteria.items()]
    else:
        items = []
        for c in criteria:
            crit = get_criterion(c) if isinstance(c, str) else c
            items.append((getattr(crit, "name", "") or type(crit).__name__, crit))
    out: dict[str, ActivationCriterion] = {}
    for key, c in items:
        crit = get_criterion(c) if isinstance(c, str) else c
        if getattr(crit, "kind", None) != "activation":
            raise ValueError(f"{key!r} is not an activation criterion (kind={getattr(crit, 'kind', None)!r}); "
                             "score weight criteria with score_weight()")
        if key in out:
            raise ValueError(f"criterion name {key!r} given twice; pass a mapping {{label: criterion}} to use "
                             "one criterion with several parameter sets")
        out[key] = crit
    if not out:
        raise ValueError("no criteria given")
    return out


class ActivationStats:
    """All activation criteria of one hook point, fed from one pass, sharing statistics.

    Criteria with equal :meth:`~ActivationCriterion.accumulator_key` share one accumulator: e.g. ``tt``, ``snr``,
    ``fdr`` and ``sd`` with the same pooling use one :class:`PooledClassStats`, updated once per batch.

    ``criteria``: names, criterion objects, a list of them, or a mapping ``{label: criterion}``; the labels (or the
    criteria's names) key the result of :meth:`finalize`.
    """

    def __init__(self, criteria: CriteriaSpec, *, channels: int | None = None, num_classes: int | None = None,
                 device: torch.device | str | None = None) -> None:
        self.criteria = _resolve(criteria)
        self.accumulators: dict[Hashable, Accumulator] = {}
        self._key_of: dict[str, Hashable] = {}
        for label, crit in self.criteria.items():
            key = crit.accumulator_key()
            if key not in self.accumulators:
                self.accumulators[key] = crit.init(channels=channels, num_classes=num_classes, device=device)
            self._key_of[label] = key
        self.needs_labels = any(a.needs_labels for a in self.accumulators.values())

    @property
    def num_images(self) -> int:
        """Number of images accumulated so far."""
        return next(iter(self.accumulators.values())).num_images

    def update(self, fmap: Tensor, labels: Tensor | None = None) -> None:
        """Fold one batch into every (shared) accumulator once."""
        if self.needs_labels and labels is None:
            names = [k for k, c in self.criteria.items() if c.needs_labels]
            raise ValueError(f"criteria {names} need class labels (got labels=None)")
        with torch.no_grad():
            for acc in self.accumulators.values():
                acc.update(fmap, labels)

    def finalize(self) -> dict[str, Tensor]:
        """Scores per criterion label: float64 ``[C]`` tensors (higher = more important)."""
        return {label: crit.finalize(self.accumulators[self._key_of[label]])
                for label, crit in self.criteria.items()}


def run_accumulators(criteria: CriteriaSpec, fmap: Tensor, labels: Tensor | None = None, *,
                     num_classes: int | None = None) -> dict[str, Tensor]:
    """Score one feature map ``fmap`` (all images at once) with several activation criteria, sharing statistics.

    Equivalent to an :class:`ActivationStats` updated with ``fmap`` and finalized.
    """
    stats = ActivationStats(criteria, num_classes=num_classes)
    stats.update(fmap, labels)
    return stats.finalize()
