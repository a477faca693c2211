"""Group scores from channel criteria.

How member scores combine (documented contract): a group's channel unit may appear in several layers (a residual
channel is produced by every block's last conv, read after every block's ReLU...). Its score is the **mean** of the
per-channel scores of every place where it appears at the criterion's hook point:

- weight criteria: the output channels of the group's producing conv/linear layers;
- activation criteria: the tensors at the hook point -- ``"conv"`` (outputs of the producing conv/linear layers),
  ``"bn"`` (outputs of the BatchNorm layers on the group) or ``"act"`` (outputs of activation functions or modules on
  the group, e.g. after the residual add + ReLU). Where a group has no tensor of the requested kind we fall back to
  ``"conv"``.

All activation criteria of a run are computed in ONE pass: taps are inserted into a copy of the traced graph right
after the chosen nodes and feed streaming accumulators; no feature map is stored.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..data.adapter import DataLike, as_bundle
from ..graph.analysis import TI
from ..graph.core import ChannelGraph, NonFiniteError, check_scores, set_group_scorer
from .accumulators import ActivationStats, compute_label_range
from .gradient import gradient_module_scores
from .registry import get_criterion

__all__ = ["score_groups", "score", "DEFAULT_HOOKS"]

#: Default hook point per activation criterion (methods.md: HRank after ReLU, EZCrop at the conv output for ResNets,
#: the class-discrimination metrics on post-ReLU pooled features).
DEFAULT_HOOKS = {"hrank": "act", "ezcrop": "conv", "tt": "act", "snr": "act", "fdr": "act", "sd": "act", "di": "act"}

_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Sigmoid,
                nn.Hardsigmoid, nn.Tanh)
_ACT_FUNCS = {F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.leaky_relu, F.elu, F.mish, torch.relu, torch.sigmoid,
              F.relu_, torch.relu_}
_ACT_METHODS = {"relu", "relu_", "sigmoid", "hardswish"}
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _node_kind(n: fx.Node, modules: dict) -> str:
    if n.op == "call_module":
        m = modules[n.target]
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            return "conv"
        if isinstance(m, _BN):
            return "bn"
        if isinstance(m, _ACT_MODULES):
            return "act"
    if n.op == "call_function" and n.target in _ACT_FUNCS:
        return "act"
    if n.op == "call_method" and n.target in _ACT_METHODS:
        return "act"
    return "other"


def _tap_points(graph, names: list[str], hook: str) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    """{group: [(node name, channel positions along dim 1, unit index)]} for tensors of the hook kind."""
    a = graph.analysis
    E = a.elements
    modules = dict(a.gm.named_modules())
    nodes = {n.name: n for n in a.gm.graph.nodes}
    wanted = {name: {int(r): i for i, r in enumerate(graph.group(name).roots)} for name in names}
    out: dict[str, dict[str, list]] = {name: {"conv": [], "bn": [], "act": []} for name in names}
    for nname, ti in a.info.items():
        if not isinstance(ti, TI) or not (ti.cdims == (1,) and len(ti.shape) >= 2 or _tokens(ti)):
            continue
        kind = _node_kind(nodes[nname], modules)
        if kind == "other":
            continue
        roots = E.roots(ti.elem)
        for name in names:
            pos = wanted[name]
            sel = np.array([int(r) in pos for r in roots], dtype=bool)
            if sel.any():
                chans = np.nonzero(sel)[0]
                units = np.array([pos[int(r)] for r in roots[sel]], dtype=np.int64)
                out[name][kind].append((nname, chans, units))
    taps = {(s.node, s.module): s.data.get("tap", True) for s in a.sites if s.kind == "rows"}
    for name in names:  # a module rule's layer (an attention's packed qkv): its output, read by a forward hook
        if not any(out[name].values()):
            out[name]["conv"] = [(MODULE_TAP + m.module, m.channels, m.index) for m in graph.group(name).members
                                 if m.kind == "rows" and m.module and taps.get((m.node, m.module))]
    return {name: (k[hook] or k["conv"]) for name, k in out.items()}


#: tap names of layers inside a module rule's leaf (read with a forward hook, not a graph node); their outputs are
#: token layers ``[B, N, C]``
MODULE_TAP = "module:"


def _tokens(ti: TI) -> bool:
    """A ``[B, N, C]`` tensor whose channels are its last dim (a transformer's widths)."""
    return len(ti.shape) == 3 and ti.cdims == (2,)


def _token_tap(graph, tap: str) -> bool:
    """Does tap point ``tap`` (a node, or a module rule's layer) read token widths ``[B, N, C]``?"""
    return tap.startswith(MODULE_TAP) or _tokens(graph.analysis.info[tap])


def _device(device: Any) -> torch.device:
    """``device``, or the GPU when there is one."""
    return torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")


def _check_taps(graph, crit: Any, c: str, plan: dict) -> None:
    """Refuse, naming the group, what the criterion cannot score: a group with no activation of the hook kind, or
    token widths for a criterion that needs 2-D maps."""
    for name, pts in plan.items():
        if not pts:
            raise ValueError(f"criterion {c!r}: group {name!r} has no activation it can read (its channels reach no "
                             "conv, linear, BatchNorm or activation output laid out [B, C, ...] or [B, N, C]); use a "
                             "weight criterion (l1, l2) for it")
        if getattr(crit, "needs_maps", False) and any(_token_tap(graph, n) for n, _, _ in pts):
            raise ValueError(f"criterion {c!r} needs a 2-D feature map per channel, but group {name!r} holds token "
                             "widths ([B, N, C]: an MLP or attention width); use a criterion that applies to tokens "
                             "(l1, l2, tt, snr, fdr, sd, di: docs/criteria.md)")


def _combine(n_units: int, parts: Iterable[tuple[np.ndarray, torch.Tensor]]) -> torch.Tensor:
    total = torch.zeros(n_units, dtype=torch.float64)
    count = torch.zeros(n_units, dtype=torch.float64)
    for units, s in parts:
        u = torch.as_tensor(units)
        total.index_add_(0, u, s.detach().to(torch.float64).cpu())
        count.index_add_(0, u, torch.ones(len(u), dtype=torch.float64))
    return total / count.clamp_min(1)


def _batches(data: Any, num_batches: int | None, batch_size: int, seed: int) -> Iterable:
    """``(x, y or None)`` training batches of ``data`` (any :data:`~autoprune.data.adapter.DataLike`, or a list of
    batches)."""
    it = as_bundle(data).train.batches(batch_size, shuffle=True, augment=True, seed=seed)
    for i, b in enumerate(it):
        if num_batches is not None and i >= num_batches:
            break
        yield b


def score_groups(graph, criterion: str, *, data: Any = None, groups: list[str] | None = None,
                 hook: str | None = None, num_batches: int | None = 5, batch_size: int = 128, seed: int = 0,
                 num_classes: int | None = None, device: str | torch.device | None = None,
                 **params: Any) -> dict[str, torch.Tensor]:
    """Score every channel unit of ``groups`` (default: the prunable ones) with ``criterion``.

    Raises :class:`~autoprune.graph.core.NonFiniteError` naming the groups whose scores hold NaN or -Inf (no order
    of their channels exists)."""

    names = groups if groups is not None else [g.name for g in graph.prunable_groups]
    if criterion == "random":
        params.setdefault("seed", seed)
    crit = get_criterion(criterion, **params)
    if crit.kind == "weight":
        modules = dict(graph.gm.named_modules())
        cache: dict[str, torch.Tensor] = {}
        out = {}
        for name in names:
            g = graph.group(name)
            parts = []
            for m in g.members:
                if m.module is None:
                    continue  # zero channels added by a pad carry no weights
                if m.module not in cache:
                    cache[m.module] = crit.score_weight(modules[m.module], name=m.module)
                parts.append((m.index, cache[m.module][torch.as_tensor(m.channels)]))
            out[name] = _combine(g.channels, parts)
        check_scores(out, f"criterion {criterion if isinstance(criterion, str) else crit.name or crit!r}")
        return out
    if data is None:
        raise ValueError(f"criterion {criterion!r} is {crit.kind}-based and needs data: a DataLoader, a Dataset of "
                         "(image, label), batches of (x, y) or a DataBundle from autoprune.load_data")
    if crit.kind == "gradient":
        return gradient_scores(graph, crit, names, data, num_batches, batch_size, seed, device)
    return activation_scores(graph, {criterion: crit}, names, data, hook, num_batches, batch_size, seed,
                              num_classes, device)[criterion]


def gradient_scores(graph, crit: Any, names: list[str], data: Any, num_batches: int | None, batch_size: int,
                    seed: int, device: Any) -> dict[str, torch.Tensor]:
    """Scores of a gradient criterion (``taylor``): the group's producing layers' rows, on a copy of the graph."""
    device = _device(device)
    gm = copy.deepcopy(graph.gm).to(device).eval()
    members = {name: [m for m in graph.group(name).members if m.module] for name in names}
    modules = sorted({m.module for ms in members.values() for m in ms})
    source = as_bundle(data).train.name
    rows = gradient_module_scores(gm, modules, crit, _batches(data, num_batches, batch_size, seed), device, source)
    out = {name: _combine(graph.group(name).channels,
                          [(m.index, rows[m.module][torch.as_tensor(m.channels)]) for m in ms])
           for name, ms in members.items()}
    check_scores(out, f"criterion {crit.name!r}")
    return out


_TAPS: dict[str, Any] = {}


def _tap(x: torch.Tensor, key: str) -> None:
    _TAPS[key](x)


def activation_scores(graph, crits: Mapping[str, Any], names: list[str], data: Any, hook: str | None,
                       num_batches: int | None, batch_size: int, seed: int, num_classes: int | None,
                       device: Any) -> dict[str, dict[str, torch.Tensor]]:

    device = _device(device)
    gm = copy.deepcopy(graph.gm).to(device).eval()
    plans = {c: _tap_points(graph, names, hook or getattr(crit, "default_hook", None) or DEFAULT_HOOKS.get(c, "act"))
             for c, crit in crits.items()}
    for c, crit in crits.items():
        _check_taps(graph, crit, c, plans[c])
    node_names = sorted({p[0] for plan in plans.values() for pts in plan.values() for p in pts})
    token_nodes = {n for n in node_names if _token_tap(graph, n)}
    states: dict[str, Any] = {}
    labels_box: dict[str, Any] = {}
    nodes = {n.name: n for n in gm.graph.nodes}
    hooks = []
    for nname in node_names:
        if nname.startswith(MODULE_TAP):
            hook = (lambda key: lambda mod, args, out: _tap(out, key))(nname)
            hooks.append(gm.get_submodule(nname[len(MODULE_TAP):]).register_forward_hook(hook))
            continue
        n = nodes[nname]
        with gm.graph.inserting_after(n):
            gm.graph.call_function(_tap, (n, nname))
    gm.recompile()

    data = as_bundle(data)
    if num_classes is None:
        # None: the class-aware accumulators take the class count from the labels (absent classes weigh nothing)
        num_classes = data.num_classes
    needs_labels = sorted(c for c, crit in crits.items() if getattr(crit, "needs_labels", False))


    def make_cb(nname: str):
        # One ActivationStats per tap: criteria sharing statistics (tt/snr/fdr/sd) update them once per batch.
        tokens = nname in token_nodes

        def cb(x: torch.Tensor) -> None:
            if tokens:  # [B, N, C] -> [B, C, N, 1]: each channel's map is its token sequence
                x = x.transpose(1, 2).unsqueeze(-1)
            st = states.get(nname)
            if st is None:
                st = states[nname] = ActivationStats(dict(crits), num_classes=num_classes or None, device=x.device)
            st.update(x.detach(), labels_box.get("y"), label_range=labels_box.get("range"))
        return cb

    for nname in node_names:
        _TAPS[nname] = make_cb(nname)
    try:
        with torch.no_grad():
            for i, (x, y) in enumerate(_batches(data, num_batches, batch_size, seed)):
                if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                    raise NonFiniteError(
                        f"{data.train.name}: training batch {i} holds NaN or Inf images, on which criteria "
                        f"{sorted(crits)} cannot score channels; check the data (its files and transforms: "
                        "torch.isfinite(x).all() on each batch)")
                if y is None and needs_labels:
                    raise ValueError(f"criteria {needs_labels} compare classes and need labels, but "
                                     f"{data.train.name} yields images alone; pass (images, labels) batches")
                labels_box["y"] = None if y is None else y.to(device)
                labels_box["range"] = compute_label_range(labels_box["y"])  # once per batch, for every tap
                gm(x.to(device))
    finally:
        for nname in node_names:
            _TAPS.pop(nname, None)
        for h in hooks:
            h.remove()
    finals = {nname: st.finalize() for nname, st in states.items()}
    result: dict[str, dict[str, torch.Tensor]] = {}
    for c, crit in crits.items():
        final = {nname: finals[nname][c] for nname in node_names if nname in finals}
        result[c] = {}
        for name in names:
            g = graph.group(name)
            parts = [(units, final[nname][torch.as_tensor(chans)]) for nname, chans, units in plans[c][name]]
            result[c][name] = _combine(g.channels, parts)
        check_scores(result[c], f"criterion {c!r}")
    return result


def score(model: nn.Module, data: DataLike | None = None, criterion: str = "l1", *, example_inputs: Any = None,
          **kwargs: Any) -> dict[str, torch.Tensor]:
    """Raw scores {group name: float64 tensor [channels]} of ``criterion`` on ``model`` (higher = more important).

    ``data`` (activation criteria only): a DataLoader, a Dataset of ``(image, label)``, a list of ``(x, y)``
    batches, a ``(train, val)`` pair (train is used) or a DataBundle. Criteria that compare classes (tt, snr, fdr,
    sd, di) take the class count from the labels; hrank and ezcrop need no labels. ``example_inputs`` defaults to
    a zero tensor shaped like one input of ``data``. Keyword arguments go to :func:`score_groups` and the criterion
    (e.g. ``alpha=0.25`` for ezcrop, ``hook="bn"``, ``num_batches=5``, ``num_classes``).

    A model whose weights hold NaN or Inf, and NaN scores, raise :class:`~autoprune.graph.core.NonFiniteError`.
    """

    if data is not None:
        data = as_bundle(data)
    if example_inputs is None:
        if data is None:
            raise ValueError("pass example_inputs= (a tensor shaped like one input batch) or data")
        example_inputs = torch.zeros((1, *data.input_shape))
    return score_groups(ChannelGraph(model, example_inputs), criterion, data=data, **kwargs)


# ChannelGraph.prune(ratio, criterion=...) scores through this slot; the engine itself knows nothing of criteria.
set_group_scorer(score_groups)
