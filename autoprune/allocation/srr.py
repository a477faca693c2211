"""The ``"srr"`` allocation method: structural redundancy (methods.md §4; constants **unverified**)."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from .problem import BudgetProblem, check_feasible, finish
from .result import Allocation

__all__ = ["allocate_srr", "group_features", "layer_redundancy"]


def group_features(graph: Any, name: str) -> np.ndarray:
    """One row per channel unit of group ``name``: the unit's filters in every producing conv/linear layer,
    flattened and concatenated (zeros where a unit has no filter in a layer, e.g. channels created by a padding
    shortcut), then L2-normalised (float64 ``[channels, D]``)."""
    g = graph.group(name)
    modules = dict(graph.gm.named_modules())
    blocks = []
    for m in g.members:
        if m.module is None:
            continue
        w = getattr(modules[m.module], "weight", None)
        if w is None:
            continue
        w = w.detach().to("cpu", torch.float64)
        rows = w[torch.as_tensor(m.channels, dtype=torch.long)].reshape(len(m.channels), -1)
        block = torch.zeros((g.channels, rows.shape[1]), dtype=torch.float64)
        block.index_add_(0, torch.as_tensor(m.index, dtype=torch.long), rows)
        blocks.append(block)
    if not blocks:
        return np.zeros((g.channels, 1))
    f = torch.cat(blocks, 1)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return f.numpy()


def _pairwise(f: np.ndarray) -> np.ndarray:
    sq = (f * f).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2)


def _components(adj: np.ndarray) -> int:
    n = len(adj)
    labels = np.arange(n)
    big = n
    while True:
        new = np.where(adj, labels[None, :], big).min(1)
        new = np.minimum(new, labels)
        if np.array_equal(new, labels):
            return int(len(np.unique(labels)))
        labels = new


def _greedy_cover(cover: np.ndarray) -> int:
    uncovered = np.ones(len(cover), dtype=bool)
    count = 0
    while uncovered.any():
        gains = (cover & uncovered[None, :]).sum(1)
        i = int(np.argmax(gains))
        uncovered &= ~cover[i]
        count += 1
    return count


def layer_redundancy(dist: np.ndarray, gamma: float, ell: float | None = None, *, w_components: float = 0.35,
                     w_cover: float = 0.65) -> float:
    """Structural redundancy ``R = N / (w_components * k + w_cover * N_c)`` of one layer (methods.md §4).

    ``dist``: pairwise distances of the layer's N L2-normalised filters. ``k``: connected components of the graph
    with an edge where distance <= ``gamma``; ``N_c``: greedy ``ell``-covering number (balls of radius ``ell``,
    default ``gamma``, centred on filters). The constants 0.35/0.65 come from a third-party reproduction of SRR
    (Wang et al., CVPR 2021) and are **unverified**; ``gamma``/``ell`` have no published default (see
    :func:`allocate`)."""
    n = len(dist)
    if n == 0:
        return 0.0
    ell = gamma if ell is None else ell
    k = _components(dist <= gamma)
    nc = _greedy_cover(dist <= ell)
    return n / (w_components * k + w_cover * nc)


def allocate_srr(prob: BudgetProblem, *, table: Any, max_ratio: float, refine: bool,
                 options: Mapping[str, Any]) -> Allocation:
    """Remove one channel at a time from the most redundant group (methods.md §4); ``options`` are the
    ``srr_options`` of :func:`~autoprune.allocation.allocate`. ``table`` and ``refine`` are unused."""
    opts = {"gamma": None, "gamma_quantile": 0.05, "ell": None, "w_components": 0.35, "w_cover": 0.65}
    unknown = set(options) - set(opts)
    if unknown:
        raise TypeError(f"unknown srr option(s) {sorted(unknown)}; accepted: {sorted(opts)}")
    opts.update(options)
    caps = {g: min(int(math.floor(max_ratio * c + 1e-9)), c - 1) for g, c in prob.C.items()}
    zero = {g: 0 for g in prob.names}
    if prob.meets(zero):
        return finish(prob, zero, "srr", {})
    check_feasible(prob, caps, f"max_ratio={max_ratio:g}, at most channels-1")

    dists = {g: _pairwise(group_features(prob.graph, g)) for g in prob.names}
    gamma = opts["gamma"]
    if gamma is None:
        pooled = np.concatenate([d[np.triu_indices(len(d), 1)] for d in dists.values() if len(d) > 1])
        gamma = float(np.quantile(pooled, opts["gamma_quantile"])) if len(pooled) else 0.0
    ell = gamma if opts["ell"] is None else float(opts["ell"])

    def redundancy(g: str, k: int) -> float:
        keep = prob.order[g][k:]
        d = dists[g][np.ix_(keep, keep)]
        return layer_redundancy(d, gamma, ell, w_components=opts["w_components"], w_cover=opts["w_cover"])

    n = dict(zero)
    R = {g: redundancy(g, 0) for g in prob.names}
    initial = dict(R)
    steps = 0
    while prob.slack(prob.cost(n)) < 0:
        cands = sorted((g for g in prob.names if n[g] < caps[g]), key=lambda g: (-R[g], -(prob.C[g] - n[g]), g))
        if not cands:
            break
        pick, pick_sl = None, None
        for g in cands:
            m = dict(n)
            m[g] += 1
            sl = prob.slack(prob.cost(m))
            if sl <= prob.tol:
                pick = g
                break
            if pick_sl is None or sl < pick_sl:
                pick, pick_sl = g, sl
        n[pick] += 1  # type: ignore[index]
        R[pick] = redundancy(pick, n[pick])  # type: ignore[index]
        steps += 1
    info = {"gamma": gamma, "ell": ell, "steps": steps, "initial_redundancy": initial, "final_redundancy": R}
    if prob.slack(prob.cost(n)) > prob.tol:
        # the last filter overshot the band: undo it and land with local repairs (most redundant groups first)
        last = dict(n)
        last[pick] -= 1  # type: ignore[index]
        n, how = prob.land(last, n, zero, caps, lambda g, k: -R[g],
                           lambda m: -sum(R[g] * m[g] for g in prob.names))
        info["refined_by"] = how
    return finish(prob, n, "srr", info, priority=lambda g, k: -R[g],
                   damage=lambda m: -sum(R[g] * m[g] for g in prob.names))
