"""The ``"global"`` allocation method: one importance threshold across every group.

Each group's channel scores are divided by their group's mean (scores of a 16-channel and a 64-channel layer differ
in scale; the mean is the normaliser Torch-Pruning's global pruning uses by default), every channel of the model is
ranked by that normalised score, and the lowest go first until the budget is met: the threshold ``t`` is bisected
exactly over the sorted distinct normalised scores (a group removes its channels scoring <= t, at most its cap), then
the channels of the threshold's step are landed one at a time, lowest normalised score first, inside the tolerance
band. Unlike the sensitivity method it needs no table (no forward pass beyond the criterion's), and, unlike a tool's
global pruning, it meets the MAC (and parameter) budget itself and prunes every group the engine can, the residual
stream included.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from .problem import BudgetProblem, bisect_sorted, check_feasible, finish
from .result import Allocation

__all__ = ["allocate_global", "normalised_scores"]


def normalised_scores(prob: BudgetProblem) -> dict[str, np.ndarray]:
    """Each group's scores in removal order (ascending), divided by the group's mean score (a group whose mean is
    not positive keeps its raw scores)."""
    out = {}
    for g in prob.names:
        s = prob.sorted_scores[g]
        mean = float(np.mean(s)) if len(s) else 0.0
        out[g] = s / mean if mean > 0 else s.copy()
    return out


def allocate_global(prob: BudgetProblem, *, table: Any, max_ratio: float, refine: bool,
                    options: Mapping[str, Any]) -> Allocation:
    """One normalised-score threshold for all groups, bisected to the budget, then landed in the band (module
    docstring). ``table`` and ``options`` are unused."""
    caps = {g: min(int(math.floor(max_ratio * c + 1e-9)), c - 1) for g, c in prob.C.items()}
    zero = {g: 0 for g in prob.names}
    if prob.meets(zero):
        return finish(prob, zero, "global", {"threshold": None})
    check_feasible(prob, caps, f"max_ratio={max_ratio:g}, at most channels-1")
    norm = normalised_scores(prob)

    def n_at(t: float) -> dict[str, int]:
        return {g: min(int(np.searchsorted(norm[g], t, side="right")), caps[g]) for g in prob.names}

    thresholds = np.unique(np.concatenate([norm[g][:caps[g]] for g in prob.names if caps[g] > 0]))
    states = [n_at(float(t)) for t in thresholds]
    i = bisect_sorted(prob, states)
    hi_state = states[i]
    info: dict[str, Any] = {"threshold": float(thresholds[i]), "thresholds": int(len(thresholds))}

    def priority(g: str, k: int) -> float:  # the normalised score of the k-th channel removed from g
        return float(norm[g][k - 1])

    cumulative = {g: np.concatenate([[0.0], np.cumsum(norm[g])]) for g in prob.names}

    def damage(m: Mapping[str, int]) -> float:  # normalised importance removed
        return float(sum(cumulative[g][m[g]] for g in prob.names))

    if not refine or prob.slack(prob.cost(hi_state)) <= prob.tol:
        return finish(prob, hi_state, "global", info, priority=priority, damage=damage)
    lo_state = states[i - 1] if i > 0 else zero
    best, how = prob.land_step(lo_state, hi_state, caps, priority, damage)
    info["refined_by"] = how
    return finish(prob, best, "global", info, priority=priority, damage=damage)
