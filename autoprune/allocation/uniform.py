"""The ``"uniform"`` allocation method: one ratio everywhere, refined by single channels."""
from __future__ import annotations

import math
from typing import Any, Mapping

from .problem import BudgetProblem, bisect_sorted, check_feasible, finish
from .result import Allocation

__all__ = ["allocate_uniform"]


def allocate_uniform(prob: BudgetProblem, *, table: Any, max_ratio: float, refine: bool,
                     options: Mapping[str, Any]) -> Allocation:
    """One ratio everywhere, bisected exactly, then one extra channel per group towards the band (module docstring
    of :mod:`autoprune.allocation`). ``table`` and ``options`` are unused."""
    caps = {g: min(int(math.floor(max_ratio * c + 1e-9)), c - 1) for g, c in prob.C.items()}
    zero = {g: 0 for g in prob.names}
    if prob.meets(zero):
        return finish(prob, zero, "uniform", {"uniform_ratio": 0.0})
    check_feasible(prob, caps, f"max_ratio={max_ratio:g}, at most channels-1")

    def n_at(r: float) -> dict[str, int]:
        return {g: min(int(math.floor(r * prob.C[g] + 1e-9)), caps[g]) for g in prob.names}

    bps = sorted({k / prob.C[g] for g in prob.names for k in range(1, caps[g] + 1)})
    states = [n_at(r) for r in bps]
    i = bisect_sorted(prob, states)
    hi_state = states[i]
    info: dict[str, Any] = {"uniform_ratio": bps[i]}

    def near_uniform(g: str, k: int) -> float:
        return k / prob.C[g]

    def spread(m: Mapping[str, int]) -> float:  # distance from the uniform ratio
        return float(sum((m[g] / prob.C[g] - bps[i]) ** 2 for g in prob.names))

    if not refine or prob.slack(prob.cost(hi_state)) <= prob.tol:
        return finish(prob, hi_state, "uniform", info, priority=near_uniform, damage=spread)
    lo_state = states[i - 1] if i > 0 else zero

    best, how = prob.land_step(lo_state, hi_state, caps, near_uniform, spread)
    info["uniform_ratio_below"] = bps[i - 1] if i > 0 else 0.0
    info["refined_by"] = how
    return finish(prob, best, "uniform", info, priority=near_uniform, damage=spread)
