"""Channel dependency analysis over an fx graph.

Model. Every channel of every tensor is an *element* id. A tensor's channel layout is ``TI(shape, cdims, elem)``:
``cdims`` are the tensor dims that carry channels and ``elem`` (numpy, shape ``[shape[d] for d in cdims]``) holds
the element id at each position. Ids may repeat: after ``flatten`` a channel owns a block of H*W features, after a
depthwise conv with multiplier k a channel owns k outputs. Producers (conv/linear outputs, zero channels added by
``F.pad``) create fresh ids; ops that tie channels together (elementwise ops, residual adds, BN, grouped convs,
reshapes that split the channel dim) union ids in a union-find. The union-find's classes are *channel sets*: the
smallest units that can be removed, and each is removed everywhere at once.

How each operation moves channels is a *channel rule*, looked up in an open table (``rules.py``) by module type
(along the MRO) or by function / tensor method; users add rules with
:func:`~autoprune.graph.rules.register_channel_rule`. The propagator below runs the graph, calls the rules and
offers them :class:`~autoprune.graph.rules.RuleContext`; the built-in rules live in ``op_rules.py`` (functions and
tensor methods), ``layer_rules.py`` (``torch.nn`` layers) and ``library_rules.py`` (timm, torchvision).

Never silently wrong: any op without a rule locks every element flowing into or out of it (with the reason), as do
the model's inputs and outputs, norms that mix channels (LayerNorm over channels, single-group GroupNorm),
reductions or softmax over channels, and shapes written as constants in the model code (with the source line).
A module called at several places gets one channel selection: the channels of every call site are united.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

# importing them fills the rule table with the built-in rules
from . import attention_modules, attention_rules, layer_rules, library_rules  # noqa: F401
from .layout import TI, Elements, Site
from .op_rules import same_layout
from .rules import lookup_function, lookup_method, lookup_module

__all__ = ["TI", "Elements", "Site", "Analysis", "analyse"]

_NONTENSOR_METHODS = {"size", "dim", "numel"}


@dataclass
class Analysis:
    gm: fx.GraphModule
    elements: Elements
    info: dict              # node name -> TI | list[TI] | None
    values: dict            # node name -> real output value (shapes for validation)
    sites: list             # list[Site]
    node_module: dict       # node name -> owning module path (for naming)
    approximate: bool = False

    def layout(self, arg: Any) -> Any:
        """The layout analysed for node ``arg`` (as :meth:`RuleContext.layout` gives it), None for anything else."""
        return self.info.get(arg.name) if isinstance(arg, fx.Node) else None


def _fname(target: Any) -> str:
    return getattr(target, "__name__", None) or str(target)


# ---------------------------------------------------------------------------------------------------------------


class _Propagator(fx.Interpreter):
    """Runs the graph on example inputs and computes every node's channel layout, calling each node's rule with
    itself as the rule's :class:`~autoprune.graph.rules.RuleContext`."""

    def __init__(self, gm: fx.GraphModule, approximate: bool = False) -> None:
        super().__init__(gm)
        self.E = Elements()
        self.approximate = approximate
        self.info: dict[str, Any] = {}
        self.values: dict[str, Any] = {}
        self.sites: list[Site] = []
        self.modules = dict(gm.named_modules())
        self.calls: dict[str, list[Site]] = {}       # module -> its sites so far (several call sites are united)
        self.attrs: dict[str, np.ndarray] = {}       # tensor attribute -> its elements (read at several places)
        self.const_shapes: list[tuple] = []         # (node, TI, dims given as constants) checked at the end
        self.node_module: dict[str, str] = {}

    # -- the rules' view of the propagator (documented in rules.RuleContext) --------------------------------------
    def fresh(self, shape: tuple, dim: int | None = 1) -> TI:
        if len(shape) == 0 or dim is None:
            return TI(tuple(shape), (), self.E.new(1).reshape(()))
        dim = dim % len(shape)
        return TI(tuple(shape), (dim,), self.E.new(shape[dim]))

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        self.E.union_arrays(a, b)

    def lock(self, ids: np.ndarray, reason: str) -> None:
        self.E.lock(ids, reason)

    def note(self, ids: np.ndarray, text: str) -> None:
        self.E.note(ids, text)

    def add_site(self, kind: str, node: fx.Node, module: str | None, data: dict, rule: Any = None) -> Site:
        site = Site(kind, node.name, module, data, rule)
        self.sites.append(site)
        return site

    def fresh_like(self, value: Any, reason: str | None) -> Any:
        if isinstance(value, torch.Tensor):
            ti = self.fresh(tuple(value.shape), 1 if value.dim() >= 2 else (0 if value.dim() == 1 else None))
            if reason:
                self.E.lock(ti.elem, reason)
            return ti
        if isinstance(value, (tuple, list)):
            return [self.fresh_like(v, reason) for v in value]
        return None

    def arg_layouts(self, args: Any) -> list:
        out = []
        if isinstance(args, fx.Node):
            i = self.info.get(args.name)
            if isinstance(i, TI):
                out.append(i)
            elif isinstance(i, list):
                out.extend(x for x in i if isinstance(x, TI))
        elif isinstance(args, (tuple, list)):
            for x in args:
                out.extend(self.arg_layouts(x))
        elif isinstance(args, dict):
            for x in args.values():
                out.extend(self.arg_layouts(x))
        return out

    def lock_all(self, node: fx.Node, value: Any, reason: str) -> Any:
        ins = self.arg_layouts(node.args) + self.arg_layouts(node.kwargs)
        for ti in ins:
            self.E.lock(ti.elem, reason)
        return self._locked_like(value, ins, reason)

    def _locked_like(self, value: Any, ins: list, reason: str) -> Any:
        """An output of a locked op: the (locked) layout of an input of the same shape where there is one, so
        channels stay on the dim they were on ([B, N, C] tokens out of nn.MultiheadAttention), fresh otherwise."""
        if isinstance(value, torch.Tensor):
            same = next((ti for ti in ins if ti.shape == tuple(value.shape)), None)
            return TI(same.shape, same.cdims, same.elem) if same is not None else self.fresh_like(value, reason)
        if isinstance(value, (tuple, list)):
            return [self._locked_like(v, ins, reason) for v in value]
        return None

    def where(self, node: fx.Node) -> str:
        mod = self.node_module.get(node.name)
        op = node.target if isinstance(node.target, str) else _fname(node.target)
        return f"{op} at node '{node.name}'" + (f" in {mod}" if mod else "")

    def same_layout(self, node: fx.Node, x: TI | None, value: Any) -> Any:
        return same_layout(self, node, x, value)

    def layout(self, arg: Any) -> Any:
        return self.info.get(arg.name) if isinstance(arg, fx.Node) else None

    def real(self, args: Any) -> Any:
        return fx.node.map_arg(args, lambda nd: self.env[nd])

    def check_constant_shape(self, node: fx.Node, out: TI, dims: list, shape: list) -> None:
        self.const_shapes.append((node, out, dims, shape))

    # -- driver ----------------------------------------------------------------------------------------------------
    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        stack = n.meta.get("nn_module_stack")
        if n.op == "call_module":
            self.node_module[n.name] = str(n.target)
        elif stack:
            self.node_module[n.name] = list(stack.values())[-1][0] if isinstance(list(stack.values())[-1], tuple) \
                else str(list(stack.keys())[-1])
        self.values[n.name] = _shapes(value)
        self.info[n.name] = self.rule(n, value)
        return value

    def rule(self, n: fx.Node, value: Any) -> Any:
        if n.op == "placeholder":
            ti = self.fresh_like(value, "model input")
            self.sites.append(Site("input", n.name, None))
            return ti
        if n.op == "get_attr":
            return self.attribute(n, value)
        if n.op == "output":
            for ti in self.arg_layouts(n.args):
                self.E.lock(ti.elem, "model output")
            return None
        if n.op == "call_module":
            return self.module_rule(n, self.modules[n.target], value)
        if n.op == "call_method" and n.target in _NONTENSOR_METHODS:
            return None
        if not isinstance(value, (torch.Tensor, tuple, list)) or (
                isinstance(value, (tuple, list)) and not any(isinstance(v, torch.Tensor) for v in value)):
            return None  # size arithmetic and other python values carry no channels
        return self.function_rule(n, value)

    def attribute(self, n: fx.Node, value: Any) -> Any:
        """A tensor attribute read in the forward code. One holding a single non-trivial dim (a per-channel
        scale, bias or statistic: ``[C]``, ``[C, 1, 1]``) carries channels that surgery can slice; the ops using it
        decide whether they tie it to a tensor's channels or lock it. Anything else is locked."""
        reason = f"tensor attribute '{n.target}' used directly in the forward code"
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return self.fresh_like(value, reason)
        big = [d for d in range(value.dim()) if value.shape[d] > 1]
        ti = self.fresh(tuple(value.shape), big[0] if big else 0)
        if len(big) != 1:
            self.E.lock(ti.elem, reason)
            return ti
        prev = self.attrs.get(str(n.target))
        if prev is not None:
            self.E.union_arrays(prev, ti.elem)
        else:
            self.attrs[str(n.target)] = ti.elem
            owner, _, attr = str(n.target).rpartition(".")
            self.sites.append(Site("param", n.name, owner, {"attr": attr, "dim": big[0], "elem": ti.elem}))
        return ti

    # -- modules -------------------------------------------------------------------------------------------------
    def module_rule(self, n: fx.Node, m: nn.Module, value: Any) -> Any:
        ins = self.arg_layouts(n.args[:1])
        x = ins[0] if ins else None
        name = str(n.target)
        rule = lookup_module(m)
        if rule is None:
            return self.lock_all(n, value, f"module '{name}' of type {type(m).__name__} has no channel rule "
                                           "(autoprune.register_channel_rule adds one)")
        before = len(self.sites)
        out = rule.analyse(self, n, m, x, value)
        for s in self.sites[before:]:
            if s.module == name:
                self.unite_call_sites(n, s, out)
        return out

    def unite_call_sites(self, n: fx.Node, site: Site, out: Any) -> None:
        """A module called at several places has one set of parameters, so one channel selection: unite the
        channels of every call site (a shared detection head over several feature maps, a BN on two branches)."""
        prev = [s for s in self.calls.setdefault(site.module, [])
                if s.kind == site.kind and s.data.get("label") == site.data.get("label")]
        self.calls[site.module].append(site)
        if not prev:
            return
        first = prev[0]
        for key in ("in", "out", "elem"):
            a, b = first.data.get(key), site.data.get(key)
            if a is None and b is None:
                continue
            if a is None or b is None or np.shape(a) != np.shape(b):
                reason = (f"module '{site.module}' is called at several places with different channel layouts "
                          f"(nodes '{first.node}' and '{n.name}')")
                for arr in (a, b):
                    if arr is not None:
                        self.E.lock(arr, reason)
                continue
            self.E.union_arrays(a, b)
        site.data["shared_with"] = first.node

    # -- functions and methods -----------------------------------------------------------------------------------
    def function_rule(self, n: fx.Node, value: Any) -> Any:
        t = n.target
        if n.op == "call_method":
            rule = lookup_method(t)
        else:
            rule = lookup_function(t)
        tensors = [a for a in n.args if isinstance(a, fx.Node) and isinstance(self.info.get(a.name), TI)]
        x = self.info[tensors[0].name] if tensors else None
        if rule is None:
            fn_cls = getattr(t, "_autoprune_function", None)
            what = (f"custom autograd Function {fn_cls.__module__}.{fn_cls.__qualname__} at node '{n.name}'"
                    if fn_cls is not None else self.where(n))
            return self.lock_all(n, value, f"{what} has no channel rule (autoprune.register_channel_rule adds one)")
        return rule.analyse(self, n, None, x, value)

    def check_constant_shapes(self) -> None:
        """Shapes written as constants (``x.view(-1, 256)``, timm's ``reshape(B, N, 3, heads, head_dim)``).

        Those the built-in view/reshape/expand rules recorded (``"shape"`` sites) are rewritten by surgery to the
        kept sizes; that is exact when every removable channel set is a slab of the layout (whole slices along one
        of its dims), so any removal leaves a rectangle: checked here, locked with the source line otherwise.
        Those a custom rule reported with :meth:`check_constant_shape` are not rewritten: the channels feeding them
        are locked unless every slice along those dims loses the same channel sets (channel shuffle's groups)."""
        find = np.vectorize(self.E.find, otypes=[np.int64])
        for s in self.sites:
            if s.kind != "shape":
                continue
            ti = s.data["out"]
            sym = s.data.pop("sym")
            s.data["dims"] = sorted(s.data["dims"] + [d for d, src in sym
                                                      if src is not None and not _same_sets(find, ti, d, *src)])
            # a size computed in the code (B * C * n, a channel dim merged with others): scaled by surgery, so the
            # other factors (the batch) stay whatever they are at run time
            s.data["scaled"] = [d for d, src in sym if src is None]
            if (s.data["dims"] or s.data["scaled"]) and not slab_layout(find(ti.elem)):
                n = next(m for m in self.module.graph.nodes if m.name == s.node)
                self.E.lock(ti.elem, f"constant shape at node '{n.name}'{source_line(n)}: pruning would leave a "
                                     "non-rectangular layout there, so the channels feeding it cannot be pruned")
        for n, ti, dims, shape in self.const_shapes:
            for d in dims:
                if len(set(_slice_sets(find, ti, d))) > 1:
                    shown = ", ".join(str(v) if isinstance(v, int) else v.name for v in shape)
                    self.E.lock(ti.elem, f"constant shape ({shown}) at node '{n.name}'{source_line(n)}: the channels "
                                         "feeding it cannot be pruned (compute the size from x.shape instead)")
                    break


def _slice_sets(find: Any, ti: TI, d: int) -> list[frozenset]:
    """The channel sets (union-find roots) of each slice of layout ``ti`` along its channel dim ``d``."""
    arr = np.moveaxis(ti.elem, ti.cdims.index(d), 0).reshape(ti.shape[d], -1)
    return [frozenset(r.tolist()) for r in (find(arr) if arr.size else arr)]


def _same_sets(find: Any, a: TI, da: int, b: TI, db: int) -> bool:
    """Do dim ``da`` of layout ``a`` and dim ``db`` of ``b`` hold the same channel sets, position by position (so a
    size read off ``b`` follows pruning at ``a``)?"""
    return (a.shape[da] == b.shape[db] and da in a.cdims and db in b.cdims
            and _slice_sets(find, a, da) == _slice_sets(find, b, db))


def slab_layout(roots: np.ndarray) -> bool:
    """Is every channel set (equal ids in ``roots``) whole slices along at most one axis? Then removing any of
    them keeps a rectangular layout, whose sizes surgery can write into a constant shape."""
    if roots.ndim <= 1:
        return True
    for r in np.unique(roots):
        m = roots == r
        proj = [m.any(axis=tuple(j for j in range(m.ndim) if j != k)) for k in range(m.ndim)]
        if sum(not bool(pk.all()) for pk in proj) > 1:
            return False
        outer = proj[0]
        for pk in proj[1:]:
            outer = np.multiply.outer(outer, pk)
        if not np.array_equal(outer, m):
            return False
    return True


def _shapes(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)):
        return [_shapes(v) for v in value]
    return None


def source_line(n: fx.Node) -> str:
    """`` [file:line: code]`` of the model code that created node ``n`` (empty when unknown)."""
    st = n.meta.get("stack_trace")
    if not st:
        return ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*([^\n]*)', st)
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    user = [f for f in frames if not os.path.abspath(f[0]).startswith(torch_dir)]
    if not user:
        return ""
    file, line, code = user[-1]
    return f" [{file}:{line}: {code.strip()}]"


def analyse(gm: fx.GraphModule, example_inputs: tuple, approximate: bool = False) -> Analysis:
    """Propagate channel layouts through ``gm`` run on ``example_inputs`` (in eval mode, without gradients).
    ``approximate=True`` allows the approximate rules (channel LayerNorm), each noted on the groups it touches."""
    p = _Propagator(gm, approximate)
    with torch.no_grad():
        p.run(*example_inputs)
    p.check_constant_shapes()
    p.E.freeze()
    return Analysis(gm, p.E, p.info, p.values, p.sites, p.node_module, approximate)
