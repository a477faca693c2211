"""Physical channel removal on a copy of the traced graph, then shape validation.

Validation re-runs the pruned graph on the example inputs and compares every node's output shape with the shape
the analysis predicts. A constant shape argument in the model's code (``x.view(-1, 512 * 7 * 7)``) or any rule we
got wrong shows up there as a :class:`PruneError` naming the node and its source line, never as a silently wrong
model.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .analysis import TI, Analysis

__all__ = ["PruneError", "apply_pruning"]


class PruneError(RuntimeError):
    """Pruning produced a model whose shapes disagree with the analysis (the message names the op and line)."""


class _Keep:
    """Element ids -> kept mask (vectorised over the analysis' resolved roots)."""

    def __init__(self, a: Analysis, removed_roots: set[int]) -> None:
        self.removed = np.zeros(len(a.elements.parent), dtype=bool)
        self.removed[np.fromiter(removed_roots, dtype=np.int64, count=len(removed_roots))] = True
        self.root_of = a.elements.root_of

    def __call__(self, elem: np.ndarray) -> np.ndarray:
        return ~self.removed[self.root_of[np.asarray(elem, dtype=np.int64)]]


def _idx(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.nonzero(mask)[0], dtype=torch.long)


def _take(t: torch.Tensor, dim: int, mask: np.ndarray) -> torch.Tensor:
    """Rows of ``t`` along ``dim`` where ``mask``; the tensor itself when nothing is cut (cloned later once)."""
    return t if bool(np.all(mask)) else t.index_select(dim, _idx(mask))


def _set_param(m: nn.Module, name: str, value: torch.Tensor | None) -> None:
    if value is None:
        return
    old = getattr(m, name)
    if isinstance(old, nn.Parameter):
        setattr(m, name, nn.Parameter(value.clone(), requires_grad=old.requires_grad))
    else:
        m._buffers[name] = value.clone()


def _expected_shape(ti: TI, keep: _Keep, where: str) -> tuple:
    shape = list(ti.shape)
    if not ti.cdims:
        return tuple(shape)
    mask = keep(ti.elem)
    counts = []
    for k in range(mask.ndim):
        other = tuple(j for j in range(mask.ndim) if j != k)
        counts.append(mask.any(axis=other) if other else mask)
    outer = counts[0]
    for c in counts[1:]:
        outer = np.multiply.outer(outer, c)
    if mask.ndim > 1 and not np.array_equal(outer, mask):
        raise PruneError(f"internal: channels kept at {where} do not form a rectangular layout")
    for k, d in enumerate(ti.cdims):
        shape[d] = int(counts[k].sum())
    return tuple(shape)


def apply_pruning(a: Analysis, removed_roots: set[int], example_inputs: tuple) -> fx.GraphModule:
    """Return a pruned deep copy of ``a.gm`` without the channel sets in ``removed_roots``."""
    # Tensors of layers we cut are replaced by sliced copies below, so the deep copy need not duplicate them first
    # (on VGG's 100M-weight classifier this halves pruning time). The original's tensors are never modified.
    memo: dict[int, Any] = {}
    for s in a.sites:
        if s.kind in ("conv", "linear", "bn", "prelu"):
            m = a.gm.get_submodule(s.module)
            for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                if t.dim() > 0:
                    memo[id(t)] = t
    gm = copy.deepcopy(a.gm, memo)
    keep = _Keep(a, removed_roots)
    nodes = {n.name: n for n in gm.graph.nodes}
    done: set[str] = set()
    for s in a.sites:
        if s.kind in ("conv", "linear", "bn", "prelu"):
            if s.module in done:
                continue  # a module called at several places is cut once (the analysis tied its channels)
            done.add(s.module)
            m = gm.get_submodule(s.module)
            if s.kind == "conv":
                _cut_conv(m, keep(s.data["in"]), keep(s.data["out"]), s.data["groups"])
            elif s.kind == "linear":
                out_k, in_k = keep(s.data["out"]), keep(s.data["in"])
                w = _take(_take(m.weight.data, 0, out_k), 1, in_k)
                m.weight = nn.Parameter(w.clone(), requires_grad=m.weight.requires_grad)
                if m.bias is not None:
                    _set_param(m, "bias", _take(m.bias.data, 0, out_k))
                m.in_features, m.out_features = int(in_k.sum()), int(out_k.sum())
            elif s.kind == "bn":
                k = _idx(keep(s.data["elem"]))
                for name in ("weight", "bias", "running_mean", "running_var"):
                    t = getattr(m, name, None)
                    if t is not None:
                        _set_param(m, name, t.data[k])
                m.num_features = len(k)
            else:
                k = _idx(keep(s.data["elem"]))
                _set_param(m, "weight", m.weight.data[k])
                m.num_parameters = len(k)
        elif s.kind == "pad":
            n = nodes[s.node]
            p = list(n.args[1] if len(n.args) > 1 else n.kwargs["pad"])
            p[s.data["index"]] = int(keep(s.data["before"]).sum())
            p[s.data["index"] + 1] = int(keep(s.data["after"]).sum())
            if len(n.args) > 1:
                n.args = (n.args[0], tuple(p)) + tuple(n.args[2:])
            else:
                n.kwargs = {**n.kwargs, "pad": tuple(p)}
        elif s.kind == "slice":
            n = nodes[s.node]
            kin = keep(s.data["in"])
            idx = n.args[1]
            as_tuple = isinstance(idx, tuple)
            items = list(idx) if as_tuple else [idx]
            sl = items[s.data["dim"]]
            start = int(kin[: sl.start].sum()) if sl.start is not None else None
            stop = int(kin[: sl.stop].sum()) if sl.stop is not None else None
            items[s.data["dim"]] = slice(start, stop, sl.step)
            n.args = (n.args[0], tuple(items) if as_tuple else items[0])
        elif s.kind == "split":
            n = nodes[s.node]
            sizes = [int(keep(p).sum()) for p in s.data["parts"]]
            if any(v == 0 for v in sizes):
                raise PruneError(f"pruning would empty a part of the split at node '{n.name}'")
            n.op, n.target = "call_function", torch.split
            n.args, n.kwargs = (n.args[0], sizes), {"dim": s.data["dim"]}
    gm.graph.lint()
    gm.recompile()
    _validate(a, gm, keep, example_inputs)
    return gm


def _cut_conv(m: nn.Module, in_keep: np.ndarray, out_keep: np.ndarray, groups: int) -> None:
    w = _take(m.weight.data, 0, out_keep)
    if groups == 1:
        w = _take(w, 1, in_keep)
        m.in_channels = int(in_keep.sum())
    else:
        per = m.in_channels // groups
        g_keep = in_keep.reshape(groups, per)[:, 0]
        m.groups = int(g_keep.sum())
        m.in_channels = m.groups * per
    m.weight = nn.Parameter(w.clone(), requires_grad=m.weight.requires_grad)
    if m.bias is not None:
        _set_param(m, "bias", _take(m.bias.data, 0, out_keep))
    m.out_channels = int(out_keep.sum())


class _ShapeCheck(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, a: Analysis, keep: _Keep) -> None:
        super().__init__(gm)
        self.a, self.keep = a, keep

    def run_node(self, n: fx.Node) -> Any:
        where = f"node '{n.name}' ({n.format_node()})"
        try:
            value = super().run_node(n)
        except Exception as exc:
            raise PruneError(f"the pruned model fails at {where}{_line(n)}: {exc}") from exc
        info = self.a.info.get(n.name)
        items = [(info, value)] if isinstance(info, TI) else (
            list(zip(info, value)) if isinstance(info, list) and isinstance(value, (tuple, list)) else [])
        for ti, v in items:
            if isinstance(ti, TI) and isinstance(v, torch.Tensor):
                want = _expected_shape(ti, self.keep, where)
                if tuple(v.shape) != want:
                    raise PruneError(
                        f"after pruning, {where}{_line(n)} gives shape {tuple(v.shape)} but {want} was expected; "
                        "a shape written as a constant in the model code cannot follow pruning (compute it "
                        "from x.shape), or this op needs a rule: lock the groups through it instead")
        return value


def _line(n: fx.Node) -> str:
    st = n.meta.get("stack_trace")
    if not st:
        return ""
    last = [l.strip() for l in st.strip().splitlines() if l.strip()]
    return f" [{last[-2]}: {last[-1]}]" if len(last) >= 2 else ""


def _validate(a: Analysis, gm: fx.GraphModule, keep: _Keep, example_inputs: tuple) -> None:
    was = gm.training
    gm.eval()
    with torch.no_grad():
        _ShapeCheck(gm, a, keep).run(*example_inputs)
    gm.train(was)
