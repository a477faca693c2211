"""Streaming accumulators of the activation criteria: bounded-memory statistics folded in batch by batch.

No feature map is ever stored: each accumulator folds a batch into running sums whose size does not depend on the
number of images, on the device of the incoming tensors. All reductions are deterministic (integer sums, float64
sums, one-hot matmuls instead of scatter-adds).

* :class:`RankAccumulator`, :class:`EZCropAccumulator`: per-channel mean of a per-map statistic (hrank, ezcrop).
* :class:`PooledClassStats`: per-class moments of the pooled channel feature (tt, snr, fdr, sd).
* :class:`PooledScatterStats`: per-class sums and second moments of ``p×p`` pooled features (di).
* :class:`ActivationStats`, :func:`run_accumulators`: several criteria of one hook point fed from one pass, sharing
  accumulators.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, Hashable, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Accumulator, ActivationCriterion, Criterion
from .kernels import as_float, batched_rank, ezcrop_ratio, pool_features
from .registry import get_criterion

__all__ = [
    "RankAccumulator", "EZCropAccumulator", "PooledClassStats", "PooledScatterStats",
    "ActivationStats", "run_accumulators", "CriteriaSpec", "compute_label_range",
]


def _chunks(n: int, size: int | None) -> list[tuple[int, int]]:
    if not size or size >= n:
        return [(0, n)]
    return [(i, min(i + size, n)) for i in range(0, n, size)]


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


def compute_label_range(labels: Tensor | None) -> tuple[int, int] | None:
    """``(min, max)`` of a 1-D integer label tensor (``(0, -1)`` when empty), or None for anything else (no labels,
    or labels the accumulators will reject with a precise message).

    One synchronisation with the labels' device: the consumer of a batch calls it once and passes the result to
    every hook point's :meth:`ActivationStats.update` (``label_range=``), instead of each accumulator computing it.
    """
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point \
            or labels.dtype == torch.bool or labels.is_complex():
        return None
    if labels.numel() == 0:
        return 0, -1
    lo, hi = (int(v) for v in torch.stack([labels.min(), labels.max()]).tolist())
    return lo, hi


class _ClassAccumulator(Accumulator):
    """Shared plumbing for per-class statistics: class count growth and one-hot encoding."""

    needs_labels: ClassVar[bool] = True

    _grow: bool = False

    def update(self, fmap: Tensor, labels: Tensor | None = None, *,
               label_range: tuple[int, int] | None = None) -> None:
        """Fold one batch in; ``label_range``: the labels' ``(min, max)`` when the caller already knows it
        (:func:`compute_label_range`, once per batch for every hook point), else it is computed here."""
        raise NotImplementedError

    def _one_hot(self, labels: Tensor, label_range: tuple[int, int] | None = None) -> Tensor:
        """One-hot float64 ``[N, K]``; checks the label range, and grows K when it is inferred from the labels."""
        lo, hi = label_range if label_range is not None else compute_label_range(labels)
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

    def update(self, fmap: Tensor, labels: Tensor | None = None, *,
               label_range: tuple[int, int] | None = None) -> None:
        fmap, labels = self._prepare(fmap, labels)
        n = fmap.shape[0]
        if n == 0:
            return
        with torch.no_grad():
            f = pool_features(as_float(fmap), self.pool).to(torch.float64)
            if self.shift is None:
                self.shift = f.mean(0)
            f = f - self.shift
            onehot = self._one_hot(labels, label_range)  # may (re)size the class dimension
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

    def update(self, fmap: Tensor, labels: Tensor | None = None, *,
               label_range: tuple[int, int] | None = None) -> None:
        fmap, labels = self._prepare(fmap, labels)
        n = fmap.shape[0]
        if n == 0:
            return
        with torch.no_grad():
            x = self.features(as_float(fmap)).to(torch.float64)
            if self.shift is None:
                self.shift = x.mean(0)
            elif self.shift.shape != x.shape[1:]:
                raise ValueError(f"feature size changed from {tuple(self.shift.shape)} to {tuple(x.shape[1:])}")
            x = x - self.shift
            onehot = self._one_hot(labels, label_range)
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
# One pass, shared statistics
# ----------------------------------------------------------------------------------------------------------------

CriteriaSpec = Union[str, Criterion, Sequence[Union[str, Criterion]], Mapping[str, Union[str, Criterion]]]


def _resolve(criteria: CriteriaSpec) -> dict[str, ActivationCriterion]:
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


@functools.lru_cache(maxsize=256)
def _takes_label_range(update: Callable) -> bool:
    """Whether an accumulator's ``update`` function accepts ``label_range=`` (the built-in class accumulators do)."""
    try:
        return "label_range" in inspect.signature(update).parameters
    except (TypeError, ValueError):
        return False


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

    def update(self, fmap: Tensor, labels: Tensor | None = None, *,
               label_range: tuple[int, int] | None = None) -> None:
        """Fold one batch into every (shared) accumulator once.

        ``label_range``: the labels' ``(min, max)`` from :func:`compute_label_range`, when the caller feeds the same
        labels to several hook points (computed here, once for all accumulators, when not given).
        """
        if self.needs_labels and labels is None:
            names = [k for k, c in self.criteria.items() if c.needs_labels]
            raise ValueError(f"criteria {names} need class labels (got labels=None)")
        takes = [_takes_label_range(getattr(a.update, "__func__", a.update)) for a in self.accumulators.values()]
        if label_range is None and any(takes):
            label_range = compute_label_range(labels)
        with torch.no_grad():
            for acc, take in zip(self.accumulators.values(), takes):
                if take:
                    acc.update(fmap, labels, label_range=label_range)
                else:  # an accumulator with the plain update(fmap, labels) computes what it needs itself
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
