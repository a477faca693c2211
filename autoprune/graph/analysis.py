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
:func:`~autoprune.graph.rules.register_channel_rule`.

Never silently wrong: any op without a rule locks every element flowing into or out of it (with the reason), as do
the model's inputs and outputs, norms that mix channels (LayerNorm over channels, single-group GroupNorm),
reductions or softmax over channels, and shapes written as constants in the model code (with the source line).
A module called at several places gets one channel selection: the channels of every call site are united.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .layout import TI, Elements, Site
from .rules import lookup_function, lookup_method, lookup_module

__all__ = ["TI", "Elements", "Site", "Analysis", "analyse"]

_NONTENSOR_METHODS = {"size", "dim", "numel"}
_SHAPE_METHODS = {"view", "reshape"}


@dataclass
class Analysis:
    gm: fx.GraphModule
    elements: Elements
    info: dict              # node name -> TI | list[TI] | None
    values: dict            # node name -> real output value (shapes for validation)
    sites: list             # list[Site]
    node_module: dict       # node name -> owning module path (for naming)
    approximate: bool = False


def _fname(target: Any) -> str:
    return getattr(target, "__name__", None) or str(target)


# ---------------------------------------------------------------------------------------------------------------


class _Propagator(fx.Interpreter):
    """Runs the graph on example inputs and computes every node's channel layout."""

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

    # -- helpers (the part documented for rules in rules.RuleContext) ---------------------------------------------
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

    def arg_infos(self, a: Any) -> list:
        """All TIs (flattened) referenced by an argument structure."""
        out = []
        if isinstance(a, fx.Node):
            i = self.info.get(a.name)
            if isinstance(i, TI):
                out.append(i)
            elif isinstance(i, list):
                out.extend(x for x in i if isinstance(x, TI))
        elif isinstance(a, (tuple, list)):
            for x in a:
                out.extend(self.arg_infos(x))
        elif isinstance(a, dict):
            for x in a.values():
                out.extend(self.arg_infos(x))
        return out

    def lock_all(self, node: fx.Node, value: Any, reason: str) -> Any:
        ins = self.arg_infos(node.args) + self.arg_infos(node.kwargs)
        for ti in ins:
            self.E.lock(ti.elem, reason)
        if ins and isinstance(value, torch.Tensor) and tuple(value.shape) == ins[0].shape:
            return TI(ins[0].shape, ins[0].cdims, ins[0].elem)  # same layout, all locked
        return self.fresh_like(value, reason)

    def where(self, node: fx.Node) -> str:
        mod = self.node_module.get(node.name)
        op = node.target if isinstance(node.target, str) else _fname(node.target)
        return f"{op} at node '{node.name}'" + (f" in {mod}" if mod else "")

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
            for ti in self.arg_infos(n.args):
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
        ins = self.arg_infos(n.args[:1])
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
        prev = [s for s in self.calls.setdefault(site.module, []) if s.kind == site.kind]
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

    # built-in function rules (see rules._builtins) -----------------------------------------------------------------
    def same_layout(self, n: fx.Node, x: TI | None, value: Any) -> Any:
        """Channel i in, channel i out. Several tensor arguments (``clamp(x, lo, hi)``) broadcast like a binary op."""
        if len(self.arg_infos(n.args) + self.arg_infos(n.kwargs)) > 1:
            return self.binary(n, value)
        if x is None or not isinstance(value, torch.Tensor) or tuple(value.shape) != x.shape:
            return self.lock_all(n, value, f"{self.where(n)}: unexpected shapes")
        return TI(x.shape, x.cdims, x.elem)

    def binary_op(self, n: fx.Node, x: TI | None, value: Any) -> Any:
        return self.binary(n, value)

    def cat_op(self, n: fx.Node, x: TI | None, value: Any) -> Any:
        return self.cat(n, value)

    def stack_op(self, n: fx.Node, x: TI | None, value: Any) -> Any:
        """``torch.stack(parts, dim)``: a new dim of parts with one layout; their channels are tied."""
        seq = n.args[0] if n.args else n.kwargs["tensors"]
        dim = self.real(n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0))
        parts = [self.info.get(a.name) if isinstance(a, fx.Node) else None for a in seq]
        if any(not isinstance(p, TI) for p in parts) or len({(p.shape, p.cdims) for p in parts}) != 1:
            return self.lock_all(n, value, f"{self.where(n)}: stacking tensors with different channel layouts")
        dim %= len(parts[0].shape) + 1
        for p in parts[1:]:
            self.E.union_arrays(parts[0].elem, p.elem)
        return TI(tuple(value.shape), tuple(d if d < dim else d + 1 for d in parts[0].cdims), parts[0].elem)

    def move_op(self, n: fx.Node, x: TI | None, value: Any) -> Any:
        if x is None:
            return self.lock_all(n, value, f"{self.where(n)}: no channel input")
        t = n.target
        if n.op == "call_method":
            fn = lambda ids: getattr(ids, t)(*self.real(n.args[1:]), **self.real(n.kwargs))  # noqa: E731
        else:
            fn = lambda ids: t(ids, *self.real(n.args[1:]), **self.real(n.kwargs))  # noqa: E731
        out = self.move(n, value, fn, x)
        if isinstance(out, TI) and (t in _SHAPE_METHODS or t is torch.reshape):
            shape = list(n.args[1:]) if n.op == "call_method" else list(n.args[1:2])
            if "shape" in n.kwargs:
                shape = [n.kwargs["shape"]]
            if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
                shape = list(shape[0])
            if len(shape) == len(out.shape):
                const = [d for d, v in enumerate(shape) if isinstance(v, int) and v != -1 and d in out.cdims]
                if const:
                    self.const_shapes.append((n, out, const, shape))
        return out

    def getitem_op(self, n: fx.Node, x: TI | None, value: Any) -> Any:
        src = n.args[0]
        if isinstance(src, fx.Node) and isinstance(self.info.get(src.name), list):
            return self.info[src.name][n.args[1]]
        if x is None:
            return self.lock_all(n, value, f"{self.where(n)}: indexing a value without channels")
        return self.getitem(n, x, value)

    def softmax_op(self, n: fx.Node, x: TI | None, value: Any) -> Any:
        dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
        return self.softmax(n, x, self.real(dim), value)

    def layer_norm_fn(self, n: fx.Node, x: TI | None, value: Any) -> Any:
        if x is None:
            return self.lock_all(n, value, f"{self.where(n)}: no channel input")
        shape = self.real(n.args[1] if len(n.args) > 1 else n.kwargs["normalized_shape"])
        params = [self.info.get(a.name) for a in list(n.args[2:4]) + [n.kwargs.get("weight"), n.kwargs.get("bias")]
                  if isinstance(a, fx.Node)]
        params = [ti for ti in params if isinstance(ti, TI)]
        nd, k = len(x.shape), len(shape)
        if not any(d >= nd - k for d in x.cdims):
            for ti in params:  # weight/bias of the normalised, non-channel dims: never cut
                self.E.lock(ti.elem, f"{self.where(n)}: layer_norm weight over non-channel dims")
            return TI(tuple(value.shape), x.cdims, x.elem)
        if k != 1 or x.cdims != (nd - 1,) or any(ti.elem.shape != x.elem.shape for ti in params):
            return self.lock_all(n, value, f"{self.where(n)}: layer_norm over the channel dim together with others")
        if not self.approximate:
            return self.lock_all(n, value, f"{self.where(n)}: layer_norm over the channel dim, so removing a channel "
                                           "would change every other channel (build the graph with approximate=True "
                                           "to prune it anyway)")
        for ti in params:
            self.E.union_arrays(x.elem, ti.elem)
        self.note(x.elem, f"approximate: {self.where(n)} renormalises over the remaining channels")
        self.add_site("arg", n, None, {"elem": x.elem, "arg": 1, "kw": "normalized_shape", "as": "shape"})
        return TI(tuple(value.shape), x.cdims, x.elem)

    def batch_norm_fn(self, n: fx.Node, x: TI | None, value: Any) -> Any:
        """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)`` (timm and user norm subclasses that
        re-implement forward): per-channel, its statistics and affine tensors are tied to the channels of x."""
        if x is None or x.cdims != (1,) or not isinstance(value, torch.Tensor) or tuple(value.shape) != x.shape:
            return self.lock_all(n, value, f"{self.where(n)}: batch_norm over a tensor whose channels are not on "
                                           "dim 1")
        args = list(n.args[1:5]) + [n.kwargs.get(k) for k in ("running_mean", "running_var", "weight", "bias")]
        params = [self.info.get(a.name) for a in args if isinstance(a, fx.Node)]
        if any(not isinstance(ti, TI) or ti.elem.shape != x.elem.shape for ti in params):
            return self.lock_all(n, value, f"{self.where(n)}: batch_norm statistics without one entry per channel")
        for ti in params:
            self.E.union_arrays(x.elem, ti.elem)
        return TI(x.shape, x.cdims, x.elem)

    def group_norm_fn(self, n: fx.Node, x: TI | None, value: Any) -> Any:
        """``F.group_norm(x, num_groups, weight, bias)``: whole groups are removed; ``num_groups`` is rewritten."""
        if x is None or x.cdims != (1,) or not isinstance(value, torch.Tensor) or tuple(value.shape) != x.shape:
            return self.lock_all(n, value, f"{self.where(n)}: group_norm over a tensor whose channels are not on "
                                           "dim 1")
        g = self.real(n.args[1] if len(n.args) > 1 else n.kwargs["num_groups"])
        params = [self.info.get(a.name) for a in list(n.args[2:4]) + [n.kwargs.get("weight"), n.kwargs.get("bias")]
                  if isinstance(a, fx.Node)]
        if g == 1 or any(not isinstance(ti, TI) or ti.elem.shape != x.elem.shape for ti in params):
            return self.lock_all(n, value, f"{self.where(n)}: group_norm with a single group normalises over every "
                                           "channel")
        per = x.shape[1] // g
        gid = x.elem.reshape(g, per)
        self.E.union_arrays(np.repeat(gid[:, :1], per, 1), gid)
        for ti in params:
            self.E.union_arrays(x.elem, ti.elem)
        self.add_site("arg", n, None, {"elem": x.elem, "arg": 1, "kw": "num_groups", "as": "groups", "per": per})
        return TI(x.shape, x.cdims, x.elem)

    def check_constant_shapes(self) -> None:
        """Lock the channels feeding a shape written as a constant (``x.view(-1, 256)``) whose size pruning could
        change: analysis time, with the source line, so no search proposes a cut that cannot be built. A constant
        stays valid only if every slice along its dim loses the same channel sets (channel shuffle's groups)."""
        for n, ti, dims, shape in self.const_shapes:
            for d in dims:
                k = ti.cdims.index(d)
                arr = np.moveaxis(ti.elem, k, 0).reshape(ti.elem.shape[k], -1)
                roots = np.vectorize(self.E.find, otypes=[np.int64])(arr) if arr.size else arr
                sets = {frozenset(r.tolist()) for r in roots}
                if len(sets) > 1:
                    shown = ", ".join(str(v) if isinstance(v, int) else v.name for v in shape)
                    self.E.lock(ti.elem, f"constant shape ({shown}) at node '{n.name}'{source_line(n)}: the channels "
                                         "feeding it cannot be pruned (compute the size from x.shape instead)")
                    break

    def real(self, a: Any) -> Any:
        return fx.node.map_arg(a, lambda nd: self.env[nd])

    def binary(self, n: fx.Node, value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return None
        out_shape = tuple(value.shape)
        nd = len(out_shape)
        full, single = [], []
        for a in list(n.args) + list(n.kwargs.values()):
            if not (isinstance(a, fx.Node) and isinstance(self.info.get(a.name), TI)):
                continue  # python scalars
            ti = self.info[a.name]
            off = nd - len(ti.shape)
            cd = tuple(d + off for d in ti.cdims)
            if cd and all(ti.shape[d - off] == out_shape[d] for d in cd) and ti.elem.size > 1:
                full.append((ti, cd))
            elif ti.elem.size == 1:
                single.append(ti)
            else:
                return self.lock_all(n, value, f"{self.where(n)}: broadcasting over part of the channels")
        if full:
            # Operands may carry channels on nested sets of dims ([B, 2, C, H, W] attention over a stack of
            # [B, C, H, W] branches: SKNet): broadcast each to the widest layout and tie position by position.
            full.sort(key=lambda tc: -len(tc[1]))
            cd = full[0][1]
            if any(not set(c) <= set(cd) for _, c in full):
                return self.lock_all(n, value, f"{self.where(n)} combines tensors whose channels lie on "
                                               "different dims")
            target = [out_shape[d] for d in cd]
            base = full[0][0].elem
            for ti, c in full[1:]:
                view = [ti.elem.shape[c.index(d)] if d in c else 1 for d in cd]
                self.E.union_arrays(base, np.broadcast_to(ti.elem.reshape(view), target))
            for ti in single:  # one value applied to every channel: that value itself can never be removed
                self.E.lock(ti.elem, f"{self.where(n)} broadcasts a single-channel tensor over channels")
            return TI(out_shape, cd, base)
        if not single:
            return self.fresh_like(value, None)
        chans = [ti for ti in single if len(ti.shape) > 0]
        for ti in single:
            if len(ti.shape) == 0:
                self.E.lock(ti.elem, f"{self.where(n)} applies a 0-d tensor")
        base = (chans or single)[0]
        for ti in chans[1:]:
            self.E.union_arrays(base.elem, ti.elem)
        off = nd - len(base.shape)
        return TI(out_shape, tuple(d + off for d in base.cdims), base.elem)

    def spatial(self, n: fx.Node, x: TI, value: torch.Tensor) -> TI:
        if x.cdims not in ((1,), ()) or not isinstance(value, torch.Tensor) or value.shape[1] != x.shape[1]:
            return self.lock_all(n, value, f"{self.where(n)}: pooling/resampling over the channel dim")
        return TI(tuple(value.shape), x.cdims, x.elem)

    def fibres(self, x: TI, dims: set) -> np.ndarray | None:
        """Over a layout with several channel dims (a conv output viewed as [branch, C]), an op across some of them
        (softmax or sum over the branches: SKNet, ResNeSt) is exact if whole fibres along those dims go together:
        tie them, and return the layout without those dims (None if no channel dim would remain)."""
        axes = sorted(x.cdims.index(d) for d in dims if d in x.cdims)
        if len(axes) >= len(x.cdims):
            return None
        first = x.elem
        for k in reversed(axes):
            first = np.take(first, [0], axis=k)
        self.E.union_arrays(np.broadcast_to(first, x.elem.shape), x.elem)
        return first.reshape([s for k, s in enumerate(x.elem.shape) if k not in axes])

    def softmax(self, n: fx.Node, x: TI | None, dim: Any, value: Any) -> Any:
        if x is None or dim is None:
            return self.lock_all(n, value, f"{self.where(n)}: softmax over the channel dim")
        if (dim % len(x.shape)) in x.cdims and self.fibres(x, {dim % len(x.shape)}) is None:
            return self.lock_all(n, value, f"{self.where(n)}: softmax over the channel dim")
        return TI(tuple(value.shape), x.cdims, x.elem)

    def reduce(self, n: fx.Node, x: TI, value: Any) -> Any:
        args = self.real(n.args[1:])
        kwargs = self.real(n.kwargs)
        dim = kwargs.get("dim", args[0] if args else None)
        keep = kwargs.get("keepdim", args[1] if len(args) > 1 else False)
        nd = len(x.shape)
        if dim is None:
            return self.lock_all(n, value, f"{self.where(n)}: reduction over all dims including channels")
        dims = {d % nd for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
        elem = x.elem
        if dims & set(x.cdims):
            elem = self.fibres(x, dims)
            if elem is None:
                return self.lock_all(n, value, f"{self.where(n)}: reduction over the channel dim")
        new_cd = tuple(d if keep else d - sum(1 for r in dims if r < d) for d in x.cdims if d not in dims)
        return TI(tuple(value.shape), new_cd, elem)

    def move(self, n: fx.Node, value: Any, fn: Callable, x: TI) -> Any:
        """Data movement (view, flatten, permute, getitem...): run the op on the element-id tensor itself."""
        ids = x.ids()
        try:
            out = fn(ids)
        except RuntimeError:
            out = fn(ids.contiguous())
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(value.shape):
            return self.lock_all(n, value, f"{self.where(n)}: could not follow channels through this op")
        ti = _extract(out)
        if ti is None:
            return self.lock_all(n, value, f"{self.where(n)} mixes channels with other dims")
        if len(ti.cdims) > len(x.cdims) and ti.elem.ndim > 1:
            # A reshape that splits the channel dim (channel shuffle's view(b, g, c/g, h, w)): every slice along the
            # outer dims must lose the same positions, or the reshape would no longer be valid after pruning.
            flat = ti.elem.reshape(-1, ti.elem.shape[-1])
            self.E.union_arrays(np.broadcast_to(flat[:1], flat.shape), flat)
        return ti

    def getitem(self, n: fx.Node, x: TI, value: Any) -> Any:
        idx = self.real(n.args[1])
        idx_t = idx if isinstance(idx, tuple) else (idx,)
        if any(i is Ellipsis or i is None or isinstance(i, torch.Tensor) for i in idx_t):
            return self.lock_all(n, value, f"{self.where(n)}: advanced indexing")
        for d, i in enumerate(idx_t):
            if d in x.cdims:
                if isinstance(i, slice) and i.step in (None, 1) and len(x.cdims) == 1:
                    if i.start in (None, 0) and (i.stop is None or i.stop >= x.shape[d]):
                        continue
                    ti = self.move(n, value, lambda t: t[idx], x)
                    self.sites.append(Site("slice", n.name, None, {"dim": d, "in": x.elem, "axis": x.cdims.index(d),
                                                                    "start": i.start, "stop": i.stop}))
                    return ti
                return self.lock_all(n, value, f"{self.where(n)}: strided or integer indexing of the channel dim")
        return self.move(n, value, lambda t: t[idx], x)

    def pad(self, n: fx.Node, x: TI, value: torch.Tensor) -> TI:
        p = list(self.real(n.args[1] if len(n.args) > 1 else n.kwargs["pad"]))
        mode = self.real(n.args[2]) if len(n.args) > 2 else n.kwargs.get("mode", "constant")
        nd = len(x.shape)
        touched = {nd - 1 - i // 2 for i in range(len(p)) if p[i] != 0}
        ch = touched & set(x.cdims)
        if not ch:
            return TI(tuple(value.shape), x.cdims, x.elem)
        if mode != "constant" or len(x.cdims) != 1 or any(v < 0 for v in p):
            return self.lock_all(n, value, f"{self.where(n)}: non-constant or cropping pad of the channel dim")
        d = x.cdims[0]
        i = 2 * (nd - 1 - d)
        before, after = self.E.new(p[i]), self.E.new(p[i + 1])
        self.sites.append(Site("pad", n.name, None, {"index": i, "before": before, "after": after, "dim": d}))
        return TI(tuple(value.shape), (d,), np.concatenate([before, x.elem, after]))

    def cat(self, n: fx.Node, value: torch.Tensor) -> Any:
        seq = n.args[0] if n.args else n.kwargs["tensors"]
        dim = self.real(n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0))
        parts = [self.info.get(a.name) if isinstance(a, fx.Node) else None for a in seq]
        if any(not isinstance(p, TI) for p in parts):
            return self.lock_all(n, value, f"{self.where(n)}: concatenation of non-tensors")
        nd = len(parts[0].shape)
        dim %= nd
        if all(p.cdims == (dim,) for p in parts):
            return TI(tuple(value.shape), (dim,), np.concatenate([p.elem for p in parts]))
        cds = {p.cdims for p in parts}
        if len(cds) == 1 and dim not in parts[0].cdims and len({p.elem.shape for p in parts}) == 1:
            for p in parts[1:]:
                self.E.union_arrays(parts[0].elem, p.elem)
            return TI(tuple(value.shape), parts[0].cdims, parts[0].elem)
        return self.lock_all(n, value, f"{self.where(n)}: concatenation mixing channel layouts")

    def split(self, n: fx.Node, x: TI, value: Any) -> Any:
        args = self.real(n.args[1:])
        kwargs = self.real(n.kwargs)
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0) % len(x.shape)
        parts = list(value)
        if dim not in x.cdims:
            return [TI(tuple(v.shape), x.cdims, x.elem) for v in parts]
        if len(x.cdims) != 1:
            return self.lock_all(n, value, f"{self.where(n)}: split of a multi-dim channel layout")
        sizes = [v.shape[dim] for v in parts]
        bounds = np.cumsum([0] + sizes)
        out = [TI(tuple(v.shape), (dim,), x.elem[bounds[k]:bounds[k + 1]]) for k, v in enumerate(parts)]
        self.sites.append(Site("split", n.name, None, {"dim": dim, "parts": [o.elem for o in out]}))
        return out


def _extract(t: torch.Tensor) -> TI | None:
    """Recover (cdims, elem) from an element-id tensor; None when ids are not a product layout."""
    shape = tuple(t.shape)
    cd = tuple(d for d in range(t.dim()) if shape[d] > 1 and not bool((t == t.narrow(d, 0, 1)).all()))
    index = tuple(slice(None) if d in cd else 0 for d in range(t.dim()))
    elem = t[index]
    view = [shape[d] if d in cd else 1 for d in range(t.dim())]
    if not bool((elem.reshape(view).expand(shape) == t).all()):
        return None
    return TI(shape, cd, elem.contiguous().numpy().astype(np.int64))


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
