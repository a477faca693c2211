"""Physical channel removal on a copy of the traced graph, then shape validation.

Surgery slices the parameters of the layers the analysis recorded and rewrites the call arguments that count channels:
sizes written as constants in ``view``/``reshape``/``expand`` (``x.view(-1, 512 * 7 * 7)``, timm's
``reshape(B, N, 3, heads, head_dim)``) become the kept sizes, ``F.pad`` widths, slices, split sizes, norm shapes and
attention's default scale (written in as the original value).

Validation re-runs the pruned graph on the example inputs and compares every node's output shape with the shape
the analysis predicts. Anything the analysis missed, or a rule we got wrong, shows up there as a
:class:`PruneError` naming the node and its source line, never as a silently wrong model.
"""
from __future__ import annotations

import copy
import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .analysis import TI, Analysis, source_line
from .op_rules import shape_args, size_source
from .rules import take

_MODULE_KINDS = ("conv", "linear", "bn", "prelu", "embedding", "filter", "attention_module")

__all__ = ["PruneError", "apply_pruning", "Keep", "expected_shape"]


class PruneError(RuntimeError):
    """Pruning produced a model whose shapes disagree with the analysis (the message names the op and line)."""


class Keep:
    """Element ids -> kept mask (vectorised over the analysis' resolved roots)."""

    def __init__(self, a: Analysis, removed_roots: set[int]) -> None:
        self.removed = np.zeros(len(a.elements.parent), dtype=bool)
        self.removed[np.fromiter(removed_roots, dtype=np.int64, count=len(removed_roots))] = True
        self.root_of = a.elements.root_of

    def __call__(self, elem: np.ndarray) -> np.ndarray:
        return ~self.removed[self.root_of[np.asarray(elem, dtype=np.int64)]]


def expected_shape(ti: TI, keep: Keep, where: str) -> tuple:
    """The shape of a tensor of layout ``ti`` once the channels ``keep`` rejects are gone (a PruneError naming
    ``where`` if they do not leave a rectangle)."""
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
        if s.kind in _MODULE_KINDS:
            m = a.gm.get_submodule(s.module)
            for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                if t.dim() > 0:
                    memo[id(t)] = t
    gm = copy.deepcopy(a.gm, memo)
    keep = Keep(a, removed_roots)
    nodes = {n.name: n for n in gm.graph.nodes}
    done: set[str] = set()
    for s in a.sites:
        if s.kind in _MODULE_KINDS:
            if s.module in done:
                continue  # a module called at several places is cut once (the analysis united its call sites)
            done.add(s.module)
            m = gm.get_submodule(s.module)
            new = s.rule.cut(m, s, keep)
            if isinstance(new, nn.Module):  # a rule may replace the module (nn.MultiheadAttention)
                gm.set_submodule(s.module, new)
                m = new
            _unshare(m, memo)
        elif s.kind == "param":
            m = gm.get_submodule(s.module) if s.module else gm
            t = getattr(m, s.data["attr"])
            k = keep(s.data["elem"])
            if not bool(np.all(k)):
                new = take(t.data, s.data["dim"], k).clone()
                if isinstance(t, nn.Parameter):
                    setattr(m, s.data["attr"], nn.Parameter(new, requires_grad=t.requires_grad))
                elif s.data["attr"] in m._buffers:
                    m._buffers[s.data["attr"]] = new
                else:
                    setattr(m, s.data["attr"], new)
        elif s.kind == "arg":  # a call argument that counts channels (layer_norm's shape, group_norm's groups)
            n = nodes[s.node]
            kept = int(keep(s.data["elem"]).sum())
            v = (kept,) if s.data["as"] == "shape" else kept // s.data["per"]
            if len(n.args) > s.data["arg"]:
                args = list(n.args)
                args[s.data["arg"]] = v
                n.args = tuple(args)
            else:
                n.kwargs = {**n.kwargs, s.data["kw"]: v}
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
        elif s.kind == "shape":  # sizes written as constants in a view/reshape/expand: the kept sizes
            n = nodes[s.node]
            want = expected_shape(s.data["out"], keep, f"node '{n.name}'")
            sizes = {d: want[d] for d in s.data["dims"]}
            shape = shape_args(n)
            for d in s.data.get("scaled", ()):  # computed sizes (B * C * n): scaled at run time where they
                will = _predicted(shape[d], a, keep)  # would not follow the pruning by themselves
                base = s.data["out"].shape[d] if will is None else will
                if want[d] != base:
                    with gm.graph.inserting_before(n):
                        grown = gm.graph.call_function(operator.mul, (shape[d], want[d]))
                        sizes[d] = gm.graph.call_function(operator.floordiv, (grown, base))
            _rewrite_shape(n, sizes)
        elif s.kind == "kwarg":  # a default that depended on a width (attention's scale): the original value
            n = nodes[s.node]
            if len(n.args) > s.data["pos"]:
                args = list(n.args)
                args[s.data["pos"]] = s.data["value"]
                n.args = tuple(args)
            else:
                n.kwargs = {**n.kwargs, s.data["kw"]: s.data["value"]}
    gm.graph.lint()
    gm.recompile()
    _validate(a, gm, keep, example_inputs)
    return gm


_ARITHMETIC = (operator.mul, operator.floordiv, operator.add, operator.sub)


def _predicted(v: Any, a: Analysis, keep: Keep) -> int | None:
    """The value a size computed in the model code (``B * C * nh``) takes in the pruned graph on the example inputs:
    its sizes read off tensors (``x.shape[i]``) become those tensors' kept sizes; None when it is computed otherwise."""
    if isinstance(v, int):
        return v
    if not isinstance(v, fx.Node):
        return None
    src = size_source(a, v)
    if src is not None:
        return expected_shape(src[0], keep, f"node '{v.name}'")[src[1]]
    if v.op == "call_function" and v.target in _ARITHMETIC:
        args = [_predicted(x, a, keep) for x in v.args]
        return None if any(x is None for x in args) else int(v.target(*args))
    return None


def _rewrite_shape(n: fx.Node, sizes: dict) -> None:
    """Write ``sizes`` ({dim: size}) into the shape argument of a view/reshape/expand node, in the form it has."""
    def fix(shape: Any) -> tuple:
        return tuple(sizes.get(d, v) for d, v in enumerate(shape))

    for kw in ("shape", "size"):
        if kw in n.kwargs:
            n.kwargs = {**n.kwargs, kw: fix(n.kwargs[kw])}
            return
    rest = list(n.args[1:])  # after the tensor (x.view(...) and torch.reshape(x, ...) alike)
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        n.args = (n.args[0], fix(rest[0]))
    else:
        n.args = (n.args[0], *fix(rest))


def _unshare(m: nn.Module, memo: dict) -> None:
    """Tensors a rule left uncut are still the analysed model's own (the deep copy skipped them): copy them, so
    training the pruned model never touches the graph's model."""
    for name, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
        if id(t) in memo and memo[id(t)] is t:
            if isinstance(t, nn.Parameter):
                setattr(m, name, nn.Parameter(t.data.clone(), requires_grad=t.requires_grad))
            else:
                m._buffers[name] = t.clone()


class _ShapeCheck(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, a: Analysis, keep: Keep) -> None:
        super().__init__(gm)
        self.a, self.keep = a, keep

    def run_node(self, n: fx.Node) -> Any:
        where = f"node '{n.name}' ({n.format_node()})"
        try:
            value = super().run_node(n)
        except Exception as exc:
            raise PruneError(f"the pruned model fails at {where}{source_line(n)}: {exc}") from exc
        info = self.a.info.get(n.name)
        items = [(info, value)] if isinstance(info, TI) else (
            list(zip(info, value)) if isinstance(info, list) and isinstance(value, (tuple, list)) else [])
        for ti, v in items:
            if isinstance(ti, TI) and isinstance(v, torch.Tensor):
                want = expected_shape(ti, self.keep, where)
                if tuple(v.shape) != want:
                    raise PruneError(
                        f"after pruning, {where}{source_line(n)} gives shape {tuple(v.shape)} but {want} was expected; "
                        "a shape written as a constant in the model code cannot follow pruning (compute it "
                        "from x.shape), or this op needs a rule: lock the groups through it instead")
        return value


def _validate(a: Analysis, gm: fx.GraphModule, keep: Keep, example_inputs: tuple) -> None:
    was = gm.training
    gm.eval()
    with torch.no_grad():
        _ShapeCheck(gm, a, keep).run(*example_inputs)
    gm.train(was)
