"""Allocation: per-group pruning ratios that meet a budget, and what they are computed from.

``result`` (:class:`Allocation`), ``rounding`` (``round_to``), ``problem`` (the budget problem every method searches),
one module per method (``by_sensitivity``, ``uniform``, ``srr``) dispatched by ``dispatch.ALLOCATORS``
(:func:`allocate`), the sensitivity table and its measurement (``sensitivity_table``, ``sensitivity_analysis``),
``budget`` (:func:`prune_to_budget`), ``repetitive`` (prune in steps) and ``compare`` (criteria compared).
"""
from __future__ import annotations

from .budget import BudgetResult, prune_to_budget
from .by_sensitivity import sensitivity_ratios
from .compare import CriteriaComparison, compare_criteria
from .dispatch import METHODS, allocate
from .result import Allocation
from .rounding import check_round_to, round_count, round_ratios
from .sensitivity_analysis import sensitivity
from .sensitivity_table import SensitivityTable
from .srr import group_features, layer_redundancy

__all__ = ["Allocation", "allocate", "sensitivity_ratios", "layer_redundancy", "group_features", "round_count",
           "round_ratios", "check_round_to", "METHODS", "SensitivityTable", "sensitivity", "prune_to_budget",
           "BudgetResult", "compare_criteria", "CriteriaComparison"]
