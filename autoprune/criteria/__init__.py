"""Channel-importance criteria: per-channel scores, **higher = more important = kept**.

Weight criteria (``kind == "weight"``): ``l1``, ``l2``, ``eigen``, ``random`` —
``get_criterion("l1").score_weight(conv)`` returns float64 ``[out_channels]``.

Activation criteria (``kind == "activation"``, streaming, bounded memory): ``hrank``, ``ezcrop``, ``tt``, ``snr``,
``fdr``, ``sd``, ``di`` — ``state = crit.init(channels=C, num_classes=K, device=dev)``,
``crit.update(state, fmap, labels)`` per batch, ``crit.finalize(state)``. Several criteria of one hook point share
their statistics through :class:`ActivationStats`; :class:`ActivationRecorder` / :func:`collect_activation_scores`
feed them from forward hooks.

Gradient criteria (``kind == "gradient"``): ``taylor`` (first-order Taylor importance of a filter), from the
weights and the loss's gradients on labelled mini-batches. See docs/criteria.md.
"""
from __future__ import annotations

from .accumulators import (ActivationStats, EZCropAccumulator, PooledClassStats, PooledScatterStats,
                           RankAccumulator, run_accumulators)
from .activation import (DICriterion, DiscriminationCriterion, EZCropCriterion, FDRCriterion, HRankCriterion,
                         SDCriterion, SNRCriterion, TTCriterion)
from .base import Accumulator, ActivationCriterion, Criterion, WeightCriterion, filter_weight
from .gradient import GradientCriterion, TaylorCriterion
from .hooks import ActivationRecorder, collect_activation_scores
from .kernels import batched_rank, ezcrop_ratio, ezcrop_zone, pool_features
from .registry import available_criteria, get_criterion, register_criterion, unregister_criterion
from .scoring import DEFAULT_HOOKS, score, score_groups
from .weight import EigenCriterion, L1Criterion, L2Criterion, RandomCriterion

__all__ = [
    "Criterion", "WeightCriterion", "ActivationCriterion", "Accumulator",
    "get_criterion", "register_criterion", "unregister_criterion", "available_criteria",
    "L1Criterion", "L2Criterion", "EigenCriterion", "RandomCriterion", "filter_weight",
    "HRankCriterion", "EZCropCriterion", "DiscriminationCriterion", "TTCriterion", "SNRCriterion",
    "FDRCriterion", "SDCriterion", "DICriterion", "GradientCriterion", "TaylorCriterion",
    "RankAccumulator", "EZCropAccumulator", "PooledClassStats", "PooledScatterStats",
    "ActivationStats", "run_accumulators", "ActivationRecorder", "collect_activation_scores",
    "batched_rank", "ezcrop_zone", "ezcrop_ratio", "pool_features",
    "score", "score_groups", "DEFAULT_HOOKS",
]
