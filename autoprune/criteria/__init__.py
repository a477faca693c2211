"""Channel-importance criteria: per-channel scores, **higher = more important = kept**.

Weight criteria (``kind == "weight"``): ``l1``, ``l2``, ``eigen``, ``random`` —
``get_criterion("l1").score_weight(conv)`` returns float64 ``[out_channels]``.

Activation criteria (``kind == "activation"``, streaming, bounded memory): ``hrank``, ``ezcrop``, ``tt``, ``snr``,
``fdr``, ``sd``, ``di`` — ``state = crit.init(channels=C, num_classes=K, device=dev)``,
``crit.update(state, fmap, labels)`` per batch, ``crit.finalize(state)``. Several criteria of one hook point share
their statistics through :class:`ActivationStats`; :class:`ActivationRecorder` / :func:`collect_activation_scores`
feed them from forward hooks. See docs/criteria.md.
"""
from __future__ import annotations

from .activation import (ActivationStats, DICriterion, DiscriminationCriterion, EZCropAccumulator,
                         EZCropCriterion, FDRCriterion, HRankCriterion, PooledClassStats, PooledScatterStats,
                         RankAccumulator, SDCriterion, SNRCriterion, TTCriterion, batched_rank, ezcrop_ratio,
                         ezcrop_zone, pool_features, run_accumulators)
from .base import Accumulator, ActivationCriterion, Criterion, WeightCriterion
from .hooks import ActivationRecorder, collect_activation_scores
from .registry import available_criteria, get_criterion, register_criterion, unregister_criterion
from .weight import EigenCriterion, L1Criterion, L2Criterion, RandomCriterion, filter_weight

__all__ = [
    "Criterion", "WeightCriterion", "ActivationCriterion", "Accumulator",
    "get_criterion", "register_criterion", "unregister_criterion", "available_criteria",
    "L1Criterion", "L2Criterion", "EigenCriterion", "RandomCriterion", "filter_weight",
    "HRankCriterion", "EZCropCriterion", "DiscriminationCriterion", "TTCriterion", "SNRCriterion",
    "FDRCriterion", "SDCriterion", "DICriterion",
    "RankAccumulator", "EZCropAccumulator", "PooledClassStats", "PooledScatterStats",
    "ActivationStats", "run_accumulators", "ActivationRecorder", "collect_activation_scores",
    "batched_rank", "ezcrop_zone", "ezcrop_ratio", "pool_features",
]
