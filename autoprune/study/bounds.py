"""Config checks that need the model: ratio bounds per channel group, and the patterns and budgets checked against
the model's channel graph (:func:`check_against_graph`). The schema itself (:mod:`autoprune.config`) needs no model.
"""
from __future__ import annotations

import difflib
import fnmatch
from typing import Any

import torch

from ..config import ConfigError, SearchConfig

__all__ = ["group_bounds", "check_against_graph"]


def group_bounds(cfg: SearchConfig, names: list[str]) -> dict[str, tuple[float, float]]:
    """[low, high] ratio bounds per prunable group: ``ratios.default``, overridden by matching ``ratios.groups``
    patterns in file order (later patterns win)."""
    out = {n: tuple(cfg.ratios.default) for n in names}
    for pat, b in cfg.ratios.groups.items():
        for n in names:
            if fnmatch.fnmatchcase(n, pat):
                out[n] = (b[0], b[1])
    return out  # type: ignore[return-value]


def check_against_graph(cfg: SearchConfig, graph: Any) -> None:
    """Checks that need the model: patterns match prunable groups, and the budgets are reachable.

    Raises :class:`ConfigError`.
    """
    prunable = [g.name for g in graph.prunable_groups]
    if not prunable:
        raise ConfigError(f"model {cfg.model.name!r} has no prunable channel group; see `autoprune groups`")
    locked = {g.name: g.reason for g in graph.groups if not g.prunable}
    for pat in cfg.ratios.groups:
        hits = [n for n in prunable if fnmatch.fnmatchcase(n, pat)]
        if hits:
            continue
        locked_hits = [n for n in locked if fnmatch.fnmatchcase(n, pat)]
        if locked_hits:
            raise ConfigError(f"ratios.groups[{pat!r}]: pattern matches only locked groups "
                              f"({', '.join(locked_hits[:5])}: {locked[locked_hits[0]]}); they are never pruned")
        close = difflib.get_close_matches(pat, prunable, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        shown = ", ".join(prunable[:12]) + (" ..." if len(prunable) > 12 else "")
        raise ConfigError(f"ratios.groups[{pat!r}]: pattern matches no prunable group{hint} (groups: {shown}; "
                          "list them with `autoprune groups MODEL`)")
    c = cfg.constraints
    if c.max_macs is None and c.max_params is None:
        return
    bounds = group_bounds(cfg, prunable)
    zeros = {n: torch.zeros(graph.group(n).channels) for n in prunable}
    most = graph.plan({n: b[1] for n, b in bounds.items()}, zeros)
    for key, params in (("max_macs", False), ("max_params", True)):
        limit = getattr(c, key)
        if limit is None:
            continue
        base = graph.macs(params=params)
        least = graph.macs(most, params=params) / base
        if least > limit + 1e-12:
            what = "parameters" if params else "MACs"
            raise ConfigError(f"constraints.{key}={limit} cannot be met: pruning every group to its upper bound "
                              f"still keeps {least:.1%} of the {what}; raise the upper bounds (ratios.default, "
                              f"ratios.groups) or relax the budget")
