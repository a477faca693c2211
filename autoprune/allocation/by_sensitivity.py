"""The ``"sensitivity"`` allocation method: threshold the measured damage per MAC saved (methods.md §3)."""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import numpy as np

from .problem import BudgetProblem, bisect_sorted, check_feasible, finish
from .result import Allocation

__all__ = ["allocate_by_sensitivity", "sensitivity_ratios", "FlatSensitivityWarning"]

#: the share of the MACs a budget must remove within the table's resolution for the table to be called flat
FLAT_TABLE_REMOVAL = 0.2


class FlatSensitivityWarning(UserWarning):
    """The sensitivity table measured no accuracy drop for a removal the budget needs: it cannot rank those
    entries against each other."""


def allocate_by_sensitivity(prob: BudgetProblem, *, table: Any, max_ratio: float, refine: bool,
                            options: Mapping[str, Any]) -> Allocation:
    """Threshold the damage per MAC saved of ``table`` (bisected over its values), then refine (module docstring of
    :mod:`autoprune.allocation`). ``max_ratio`` and ``options`` are unused: the grid's largest ratio caps a group."""
    curves: dict[str, list[tuple[float, float, int]]] = {}
    table_groups = set(table.groups)
    for g in prob.names:
        if g not in table_groups:
            curves[g] = []
            continue
        ch = table.group_channels.get(g)
        if ch is not None and ch != prob.C[g]:
            raise ValueError(f"the sensitivity table was measured on another model: group {g!r} has {ch} channels "
                             f"there and {prob.C[g]} here")
        curves[g] = [(r.ratio, float(r.damage_per_mac), int(r.channels_removed)) for r in table.curve(g)]
    caps = {g: max([k for _, _, k in curves[g]], default=0) for g in prob.names}
    zero = {g: 0 for g in prob.names}
    if prob.meets(zero):
        return finish(prob, zero, "sensitivity", {"tau": None})

    def s_hat(g: str, k: int) -> float:  # interpolated damage per MAC saved with k channels removed
        pts = curves[g]
        if not pts:
            return math.inf
        return float(np.interp(k / prob.C[g], [p[0] for p in pts], [p[1] for p in pts]))

    # cumulative damage of a state: sum over groups of the interpolated damage (s * MACs saved), 0 at ratio 0
    dmg_curves = {g: ([0.0] + [r.ratio for r in table.curve(g)], [0.0] + [r.damage_per_mac * r.macs_saved
                                                                         for r in table.curve(g)])
                  for g in prob.names if curves[g]}

    def damage(m: Mapping[str, int]) -> float:
        return float(sum(np.interp(m[g] / prob.C[g], *dmg_curves[g]) for g in dmg_curves))

    check_feasible(prob, caps, f"the largest measured ratio, {max(table.ratios):g}")

    def n_at(tau: float) -> dict[str, int]:
        return {g: max([k for _, s, k in curves[g] if s <= tau], default=0) for g in prob.names}

    taus = sorted({s for g in prob.names for _, s, _ in curves[g]})
    states = [n_at(t) for t in taus]
    i = bisect_sorted(prob, states)
    tau = taus[i]
    hi_state = states[i]
    lo_state = states[i - 1] if i > 0 else zero
    info: dict[str, Any] = {"tau": tau, "tau_index": i, "taus": len(taus)}
    _warn_if_flat(prob, table, tau, hi_state, info)
    if not refine or prob.slack(prob.cost(hi_state)) <= prob.tol:
        return finish(prob, hi_state, "sensitivity", info, priority=s_hat, damage=damage)

    # 1) interpolate the groups that changed between the neighbouring thresholds
    changed = [g for g in prob.names if hi_state[g] != lo_state[g]]

    def interp(t: float) -> dict[str, int]:
        m = dict(lo_state)
        for g in changed:
            m[g] = lo_state[g] + int(math.floor(t * (hi_state[g] - lo_state[g]) + 1e-9))
        return m

    t_lo, t_hi = 0.0, 1.0
    for _ in range(40):
        if interp(t_lo) == interp(t_hi):
            break
        mid = 0.5 * (t_lo + t_hi)
        if prob.meets(interp(mid)):
            t_hi = mid
        else:
            t_lo = mid
    best = interp(t_hi)
    info["interpolated"] = t_hi
    if prob.slack(prob.cost(best)) <= prob.tol:
        return finish(prob, best, "sensitivity", info, priority=s_hat, damage=damage)

    # 2) one channel at a time by lowest interpolated damage per MAC (greedy, then local repairs)
    best, how = prob.land(interp(t_lo), best, zero, caps, s_hat, damage)
    info["refined_by"] = how
    return finish(prob, best, "sensitivity", info, priority=s_hat, damage=damage)


def _warn_if_flat(prob: BudgetProblem, table: Any, tau: float, state: Mapping[str, int], info: dict) -> None:
    """Warn when the budget removes at least :data:`FLAT_TABLE_REMOVAL` of the MACs drawing only on entries whose
    measured damage is within the table's resolution (one validation image for accuracy; zero for the loss)."""
    removed = 1.0 - prob.cost(state)["macs"] / max(prob.base["macs"], 1)
    resolution = 1.0 / table.eval_n if table.metric == "accuracy" and table.eval_n else 0.0
    worst = max((r.damage_per_mac * r.macs_saved for g in prob.names if g in table.groups for r in table.curve(g)
                 if r.damage_per_mac <= tau), default=0.0)
    if removed >= FLAT_TABLE_REMOVAL and worst <= resolution + 1e-12:
        info["flat_table"] = True
        warnings.warn(
            f"the sensitivity table shows no accuracy drop beyond its resolution for the {removed:.0%} of the MACs "
            f"this budget removes (each entry it draws on lost at most {worst:.4g}, one validation image or less): "
            "the table cannot rank those entries against each other. Rank them by the loss instead "
            "(sensitivity metric='loss': the same table, no new measurement) or measure it on more validation "
            "images (sensitivity eval_batches); an undertrained model may also lose nothing measurable.",
            FlatSensitivityWarning, stacklevel=4)


def sensitivity_ratios(table: Any, tau: float) -> dict[str, float]:
    """``r_l(tau)`` for every group of ``table``: the largest grid ratio whose damage per MAC saved is <= ``tau``
    (0.0 if none). Non-decreasing in ``tau`` for every group, so the pruned model's MACs are non-increasing."""
    out = {}
    for g in table.groups:
        out[g] = max([r.ratio for r in table.curve(g) if r.damage_per_mac <= tau], default=0.0)
    return out
