"""Per-group pruning ratios that meet a MAC (and/or parameter) budget.

Budget semantics: ``macs=0.5`` means **keep** 50% of the unpruned model's MACs (remove half); a float must lie in
(0, 1]. An ``int`` is an absolute number of MACs (or parameters) to keep. MACs are conv+linear multiply-accumulates
per sample of the physically pruned model (``ChannelGraph.macs``, equal to :func:`autoprune.count_macs`);
parameters are conv/linear/norm parameters (``ChannelGraph.macs(params=True)``, equal to
:func:`autoprune.count_params` for the usual CNNs).

A budget is *met* when the allocation's MACs (and parameters, if given) are <= the target; the allocation is
*within tolerance* when, in addition, the binding constraint is no more than ``tol`` (relative, default 1%) below
its target: ``target * (1 - tol) <= achieved <= target``.

Methods
-------
``"sensitivity"`` (methods.md §3, needs a :class:`~autoprune.allocation.sensitivity_table.SensitivityTable`):
    ``r_l(tau)`` = the largest grid ratio with damage per MAC saved ``s_l(r) <= tau`` (0 if none). MACs(tau) is a
    non-increasing step function of tau whose steps are the measured ``s`` values, so tau is bisected over the
    sorted distinct ``s`` values (exact): the smallest tau whose allocation meets the budget. The grid is coarse (a
    step can move a 64-channel group from 0 to 0.9 at once), so the result is refined: the groups that changed in
    the last step are interpolated channel by channel between the two neighbouring allocations (bisection on
    the interpolation parameter), then, if still short of the tolerance, a greedy step removes one channel at a
    time from the group with the lowest interpolated ``s`` that does not overshoot the tolerance band.
``"uniform"``: one ratio everywhere (``n = floor(r * channels)``), bisected exactly over the ratios at which some
    group's channel count changes; then the groups that change at the next step get their extra channel one at a
    time (smallest resulting ratio first) until the tolerance is met, so ratios differ from the uniform one by at
    most one channel per group. ``refine=False`` returns the pure uniform ratio.
``"global"``: one threshold on the channels' scores normalised by their group's mean, across all groups (the
    global ranking of Torch-Pruning's global pruning), bisected exactly to the budget, then landed one channel at a
    time, lowest normalised score first (:mod:`autoprune.allocation.global_threshold`). Needs no table.
``"srr"`` (methods.md §4, structural redundancy; constants **unverified**, see :func:`layer_redundancy`):
    repeatedly remove one channel from the group with the largest redundancy ``R``, recompute ``R`` for that group,
    until the budget is met.

Channel rounding (``round_to=k``, for hardware that prefers channel counts in multiples of 8 or 16): every pruned
group keeps a multiple of k channels, at least k (a group left whole keeps its own count; a group of at most k
channels is left whole). The method runs as above; its result is then moved to the nearest lattice counts and
landed with the method's own priority (more channels from the groups it would prune next until the budget is met,
then give-backs towards the tolerance band), k channels at a time. The budget is still met; the tolerance band may
be out of reach at that granularity (``info["within_tol"]`` says so). An infeasible rounded budget raises the same
error as above.

Within a group, channels are always removed in ascending score order (the table's scores, explicit ``scores``,
or ``criterion``), exactly as :meth:`ChannelGraph.plan` does, so ``graph.prune(allocation, scores=...)`` and
``graph.prune_channels(allocation.remove)`` give the model whose MACs were accounted for.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from ..graph import ChannelGraph
from ..criteria.scoring import score_groups
from .by_sensitivity import allocate_by_sensitivity
from .global_threshold import allocate_global
from .problem import BudgetProblem, resolve_target
from .result import Allocation
from .rounding import check_round_to
from .sensitivity_table import SensitivityTable
from .srr import allocate_srr
from .uniform import allocate_uniform

__all__ = ["ALLOCATORS", "METHODS", "allocate"]

#: method name -> allocator; every allocator is ``(prob, *, table, max_ratio, refine, options) -> Allocation``.
ALLOCATORS: dict[str, Callable[..., Allocation]] = {
    "sensitivity": allocate_by_sensitivity,
    "uniform": allocate_uniform,
    "global": allocate_global,
    "srr": allocate_srr,
}
METHODS = tuple(ALLOCATORS)


def allocate(
    sens_or_graph: Any,
    *,
    macs: float | int | None = None,
    params: float | int | None = None,
    method: str = "sensitivity",
    graph: Any = None,
    model: nn.Module | None = None,
    example_inputs: Any = None,
    tol: float = 0.01,
    scores: Mapping[str, torch.Tensor] | None = None,
    criterion: str = "l1",
    max_ratio: float = 0.9,
    refine: bool = True,
    srr_options: Mapping[str, Any] | None = None,
    round_to: int = 1,
) -> Allocation:
    """Per-group ratios meeting a budget: ``macs`` / ``params`` to KEEP (float fraction in (0, 1] or int count).

    ``sens_or_graph``: a :class:`~autoprune.SensitivityTable` (required for ``method="sensitivity"``;
    then pass ``graph=`` or ``model=`` + ``example_inputs=``), a :class:`~autoprune.graph.ChannelGraph`, or a model
    (with ``example_inputs``). Channel order within a group: ``scores`` if given, else the table's scores, else
    ``criterion`` (weight-based). ``max_ratio`` caps each group for uniform/SRR (always at most channels-1); the
    sensitivity method is capped by the largest ratio of its grid. ``tol``: the relative tolerance band below the
    target (see the module docstring). ``refine=False`` skips the final interpolation/greedy steps (pure tau
    threshold / pure uniform ratio). ``srr_options``: ``gamma`` (absolute distance threshold; default None = the
    ``gamma_quantile``, 0.05, quantile of all within-group filter distances of the model), ``ell`` (covering radius,
    default gamma), ``w_components`` (0.35), ``w_cover`` (0.65) -- all unverified constants. ``round_to=k``: every
    pruned group keeps a multiple of k channels (at least k; a group left whole keeps its count, and a group of at
    most k channels is left whole), the budget still met (see the module docstring).

    Raises ``ValueError`` for an infeasible budget, saying how much at most can be removed.
    """
    if method not in METHODS:
        raise ValueError(f"unknown allocation method {method!r}; choose one of {', '.join(METHODS)}")
    if macs is None and params is None:
        raise ValueError("give a budget: macs= and/or params= (fraction to keep in (0, 1], or an absolute int)")
    if not (0.0 <= tol < 1.0):
        raise ValueError(f"tol must be in [0, 1), got {tol}")
    if not (0.0 < max_ratio < 1.0):
        raise ValueError(f"max_ratio must be in (0, 1), got {max_ratio}")
    round_to = check_round_to(round_to)

    table = None
    if isinstance(sens_or_graph, SensitivityTable):
        table = sens_or_graph
    elif isinstance(sens_or_graph, ChannelGraph):
        graph = sens_or_graph
    elif isinstance(sens_or_graph, nn.Module):
        model = sens_or_graph
    else:
        raise TypeError("first argument must be a SensitivityTable, a ChannelGraph or a model, got "
                        f"{type(sens_or_graph).__name__}")
    if graph is None:
        if model is None:
            raise ValueError("pass graph= (a ChannelGraph) or model= and example_inputs= to account for MACs")
        if example_inputs is None:
            raise ValueError("pass example_inputs= (e.g. torch.zeros(1, 3, 32, 32)) together with model=")
        graph = ChannelGraph(model, example_inputs)
    if method == "sensitivity" and table is None:
        raise ValueError("method='sensitivity' needs a SensitivityTable (autoprune.sensitivity(...)) "
                         "as first argument")

    names = [g.name for g in graph.prunable_groups]
    if table is not None:
        extra = [g for g in table.groups if g not in set(names)]
        if extra:
            raise ValueError(f"the sensitivity table has groups this model lacks (another model?): {extra[:5]}")
    if scores is None and table is not None and table.scores:
        scores = {g: torch.tensor(v, dtype=torch.float64) for g, v in table.scores.items()}
    missing = [g for g in names if scores is None or g not in scores]
    if missing:
        computed = score_groups(graph, criterion, groups=missing)
        scores = {**(scores or {}), **computed}

    base = {"macs": graph.macs(), "params": graph.macs(params=True)}
    targets = {}
    t = resolve_target(macs, base["macs"], "macs")
    if t is not None:
        targets["macs"] = t
    t = resolve_target(params, base["params"], "params")
    if t is not None:
        targets["params"] = t
    prob = BudgetProblem(graph, names, scores, targets, tol, round_to, base=base)  # type: ignore[arg-type]
    return ALLOCATORS[method](prob, table=table, max_ratio=max_ratio, refine=refine, options=dict(srr_options or {}))
