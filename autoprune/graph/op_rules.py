"""Built-in channel rules of torch functions and tensor methods (``F.relu``, ``x.view``, ``torch.cat``, ``+``...).

Each rule is a function ``fn(p, node, x, value)`` over the :class:`~autoprune.graph.rules.RuleContext` ``p`` only,
wrapped as a :class:`Op` and registered with :func:`~autoprune.graph.rules.register_channel_rule` when this module
is imported. The helpers :func:`spatial`, :func:`move` and :func:`softmax` serve the layer rules too (pools,
``nn.Flatten``, ``nn.Softmax``).
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from .layout import TI
from .rules import ChannelRule, RuleContext, register_channel_rule

__all__ = ["Op", "same_layout", "binary", "spatial", "move", "softmax", "fibres", "shape_args", "size_source",
           "move_call"]

_SHAPE_METHODS = {"view", "reshape", "expand"}


class Op(ChannelRule):
    """A built-in rule of a function or tensor method: ``fn(p, node, x, value)`` gives the output's layout.
    ``needs_channels``: an input without a channel layout locks everything."""

    def __init__(self, fn: Callable[..., Any], needs_channels: bool = False) -> None:
        self.fn = fn
        self.needs_channels = needs_channels

    def analyse(self, p, node, module, x, value):
        if x is None and self.needs_channels:
            return p.lock_all(node, value, f"{p.where(node)}: no channel input")
        return self.fn(p, node, x, value)

    def __repr__(self) -> str:
        return f"Op({self.fn.__name__})"


def same_layout(p: RuleContext, n: fx.Node, x: TI | None, value: Any) -> Any:
    """Channel i in, channel i out. Several tensor arguments (``clamp(x, lo, hi)``) broadcast like a binary op."""
    if len(p.arg_layouts(n.args) + p.arg_layouts(n.kwargs)) > 1:
        return binary(p, n, value)
    if x is None or not isinstance(value, torch.Tensor) or tuple(value.shape) != x.shape:
        return p.lock_all(n, value, f"{p.where(n)}: unexpected shapes")
    return TI(x.shape, x.cdims, x.elem)


def binary_op(p: RuleContext, n: fx.Node, x: TI | None, value: Any) -> Any:
    return binary(p, n, value)


def cat_op(p: RuleContext, n: fx.Node, x: TI | None, value: Any) -> Any:
    return cat(p, n, value)


def stack_op(p: RuleContext, n: fx.Node, x: TI | None, value: Any) -> Any:
    """``torch.stack(parts, dim)``: a new dim of parts with one layout; their channels are tied."""
    seq = n.args[0] if n.args else n.kwargs["tensors"]
    dim = p.real(n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0))
    parts = [p.layout(a) if isinstance(a, fx.Node) else None for a in seq]
    if any(not isinstance(q, TI) for q in parts) or len({(q.shape, q.cdims) for q in parts}) != 1:
        return p.lock_all(n, value, f"{p.where(n)}: stacking tensors with different channel layouts")
    dim %= len(parts[0].shape) + 1
    for q in parts[1:]:
        p.union(parts[0].elem, q.elem)
    return TI(tuple(value.shape), tuple(d if d < dim else d + 1 for d in parts[0].cdims), parts[0].elem)


def move_op(p: RuleContext, n: fx.Node, x: TI | None, value: Any) -> Any:
    if x is None:
        return p.lock_all(n, value, f"{p.where(n)}: no channel input")
    t = n.target
    if n.op == "call_method":
        fn = lambda ids: getattr(ids, t)(*p.real(n.args[1:]), **p.real(n.kwargs))  # noqa: E731
    else:
        fn = lambda ids: t(ids, *p.real(n.args[1:]), **p.real(n.kwargs))  # noqa: E731
    out = move(p, n, value, fn, x)
    if isinstance(out, TI) and (t in _SHAPE_METHODS or t is torch.reshape):
        shape = shape_args(n)
        if shape is not None and len(shape) == len(out.shape):
            # sizes written in the model code (timm's reshape(B, N, 3, heads, head_dim)): surgery rewrites them;
            # sizes read off another tensor (B, N, C = x.shape ... reshape(B, N, C)) too, unless that tensor's dim
            # holds the same channels (decided once every channel set is known, in the analysis)
            const = [d for d, v in enumerate(shape) if isinstance(v, int) and v != -1 and d in out.cdims]
            sym = [(d, size_source(p, v)) for d, v in enumerate(shape) if isinstance(v, fx.Node) and d in out.cdims]
            if const or sym:
                p.add_site("shape", n, None, {"out": out, "dims": const, "sym": sym})
    return out


def size_source(p: RuleContext, v: fx.Node) -> tuple | None:
    """``(layout, dim)`` of the tensor whose size a shape argument reads (``x.shape[i]``, ``x.size(i)``,
    ``x.size()[i]``); None when it is computed otherwise."""
    if v.op == "call_method" and v.target == "size" and len(v.args) > 1:
        t, i = v.args[0], v.args[1]
    elif v.op == "call_function" and v.target is operator.getitem and isinstance(v.args[0], fx.Node):
        src, i = v.args[0], v.args[1]
        if src.op == "call_function" and src.target is getattr and src.args[1:] == ("shape",):
            t = src.args[0]
        elif src.op == "call_method" and src.target == "size" and len(src.args) == 1:
            t = src.args[0]
        else:
            return None
    else:
        return None
    ti = p.layout(t) if isinstance(t, fx.Node) else None
    return (ti, i % len(ti.shape)) if isinstance(ti, TI) and isinstance(i, int) else None


def reshape_as_op(p: RuleContext, n: fx.Node, x: TI | None, value: Any) -> Any:
    """``x.reshape_as(y)`` / ``x.view_as(y)``: the size comes from ``y`` at run time, so its channels are tied to the
    output's (both then lose the same ones and the sizes agree after pruning); a ``y`` without those channels locks."""
    if x is None:
        return p.lock_all(n, value, f"{p.where(n)}: no channel input")
    other = n.args[1] if len(n.args) > 1 else n.kwargs.get("other")
    out = move(p, n, value, lambda ids: ids.reshape(tuple(value.shape)), x)
    o = p.layout(other) if isinstance(other, fx.Node) else None
    if not isinstance(out, TI) or not out.cdims:
        return out
    if not isinstance(o, TI) or o.cdims != out.cdims or o.elem.shape != out.elem.shape:
        return p.lock_all(n, value, f"{p.where(n)}: the tensor whose shape it takes has other channels")
    p.union(out.elem, o.elem)
    return out


def shape_args(n: fx.Node) -> list | None:
    """The shape a ``view``/``reshape``/``expand`` call gives, as a list (ints and nodes), whichever way it is
    written (``x.view(a, b)``, ``x.view((a, b))``, ``torch.reshape(x, shape)``, ``shape=``/``size=``)."""
    if n.op == "call_method":
        shape = list(n.args[1:])
    else:
        shape = list(n.args[1:2])
    for kw in ("shape", "size"):
        if kw in n.kwargs:
            shape = [n.kwargs[kw]]
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = list(shape[0])
    return shape or None


def move_call(p: RuleContext, n: fx.Node, x: TI | None, value: Any) -> Any:
    """A function that only moves data (timm's ``window_reverse``: views and permutes, its channel count read off
    its input): run it on the element ids. Validation after surgery re-runs it on the pruned tensor."""
    if x is None:
        return p.lock_all(n, value, f"{p.where(n)}: no channel input")
    return move(p, n, value, lambda ids: n.target(ids, *p.real(n.args[1:]), **p.real(n.kwargs)), x)


def getitem_op(p: RuleContext, n: fx.Node, x: TI | None, value: Any) -> Any:
    src = n.args[0]
    if isinstance(src, fx.Node) and isinstance(p.layout(src), list):
        return p.layout(src)[n.args[1]]
    if x is None:
        return p.lock_all(n, value, f"{p.where(n)}: indexing a value without channels")
    return getitem(p, n, x, value)


def softmax_op(p: RuleContext, n: fx.Node, x: TI | None, value: Any) -> Any:
    dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
    return softmax(p, n, x, p.real(dim), value)


def layer_norm_fn(p: RuleContext, n: fx.Node, x: TI | None, value: Any) -> Any:
    if x is None:
        return p.lock_all(n, value, f"{p.where(n)}: no channel input")
    shape = p.real(n.args[1] if len(n.args) > 1 else n.kwargs["normalized_shape"])
    params = [p.layout(a) for a in list(n.args[2:4]) + [n.kwargs.get("weight"), n.kwargs.get("bias")]
              if isinstance(a, fx.Node)]
    params = [ti for ti in params if isinstance(ti, TI)]
    nd, k = len(x.shape), len(shape)
    if not any(d >= nd - k for d in x.cdims):
        for ti in params:  # weight/bias of the normalised, non-channel dims: never cut
            p.lock(ti.elem, f"{p.where(n)}: layer_norm weight over non-channel dims")
        return TI(tuple(value.shape), x.cdims, x.elem)
    if k != 1 or x.cdims != (nd - 1,) or any(ti.elem.shape != x.elem.shape for ti in params):
        return p.lock_all(n, value, f"{p.where(n)}: layer_norm over the channel dim together with others")
    if not p.approximate:
        return p.lock_all(n, value, f"{p.where(n)}: layer_norm over the channel dim, so removing a channel "
                                    "would change every other channel (build the graph with approximate=True "
                                    "to prune it anyway)")
    for ti in params:
        p.union(x.elem, ti.elem)
    p.note(x.elem, f"approximate: {p.where(n)} renormalises over the remaining channels")
    p.add_site("arg", n, None, {"elem": x.elem, "arg": 1, "kw": "normalized_shape", "as": "shape"})
    return TI(tuple(value.shape), x.cdims, x.elem)


def batch_norm_fn(p: RuleContext, n: fx.Node, x: TI | None, value: Any) -> Any:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)`` (timm and user norm subclasses that
    re-implement forward): per-channel, its statistics and affine tensors are tied to the channels of x."""
    if x is None or x.cdims != (1,) or not isinstance(value, torch.Tensor) or tuple(value.shape) != x.shape:
        return p.lock_all(n, value, f"{p.where(n)}: batch_norm over a tensor whose channels are not on "
                                    "dim 1")
    args = list(n.args[1:5]) + [n.kwargs.get(k) for k in ("running_mean", "running_var", "weight", "bias")]
    params = [p.layout(a) for a in args if isinstance(a, fx.Node)]
    if any(not isinstance(ti, TI) or ti.elem.shape != x.elem.shape for ti in params):
        return p.lock_all(n, value, f"{p.where(n)}: batch_norm statistics without one entry per channel")
    for ti in params:
        p.union(x.elem, ti.elem)
    return TI(x.shape, x.cdims, x.elem)


def group_norm_fn(p: RuleContext, n: fx.Node, x: TI | None, value: Any) -> Any:
    """``F.group_norm(x, num_groups, weight, bias)``: whole groups are removed; ``num_groups`` is rewritten."""
    if x is None or x.cdims != (1,) or not isinstance(value, torch.Tensor) or tuple(value.shape) != x.shape:
        return p.lock_all(n, value, f"{p.where(n)}: group_norm over a tensor whose channels are not on "
                                    "dim 1")
    g = p.real(n.args[1] if len(n.args) > 1 else n.kwargs["num_groups"])
    params = [p.layout(a) for a in list(n.args[2:4]) + [n.kwargs.get("weight"), n.kwargs.get("bias")]
              if isinstance(a, fx.Node)]
    if g == 1 or any(not isinstance(ti, TI) or ti.elem.shape != x.elem.shape for ti in params):
        return p.lock_all(n, value, f"{p.where(n)}: group_norm with a single group normalises over every "
                                    "channel")
    per = x.shape[1] // g
    gid = x.elem.reshape(g, per)
    p.union(np.repeat(gid[:, :1], per, 1), gid)
    for ti in params:
        p.union(x.elem, ti.elem)
    p.add_site("arg", n, None, {"elem": x.elem, "arg": 1, "kw": "num_groups", "as": "groups", "per": per})
    return TI(x.shape, x.cdims, x.elem)


def binary(p: RuleContext, n: fx.Node, value: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        return None
    out_shape = tuple(value.shape)
    nd = len(out_shape)
    full, single = [], []
    for a in list(n.args) + list(n.kwargs.values()):
        if not (isinstance(a, fx.Node) and isinstance(p.layout(a), TI)):
            continue  # python scalars
        ti = p.layout(a)
        off = nd - len(ti.shape)
        cd = tuple(d + off for d in ti.cdims)
        if cd and all(ti.shape[d - off] == out_shape[d] for d in cd) and ti.elem.size > 1:
            full.append((ti, cd))
        elif ti.elem.size == 1:
            single.append(ti)
        else:
            return p.lock_all(n, value, f"{p.where(n)}: broadcasting over part of the channels")
    if full:
        # Operands may carry channels on nested sets of dims ([B, 2, C, H, W] attention over a stack of
        # [B, C, H, W] branches: SKNet): broadcast each to the widest layout and tie position by position.
        full.sort(key=lambda tc: -len(tc[1]))
        cd = full[0][1]
        if any(not set(c) <= set(cd) for _, c in full):
            return p.lock_all(n, value, f"{p.where(n)} combines tensors whose channels lie on "
                                        "different dims")
        target = [out_shape[d] for d in cd]
        base = full[0][0].elem
        for ti, c in full[1:]:
            view = [ti.elem.shape[c.index(d)] if d in c else 1 for d in cd]
            p.union(base, np.broadcast_to(ti.elem.reshape(view), target))
        for ti in single:  # one value applied to every channel: that value itself can never be removed
            p.lock(ti.elem, f"{p.where(n)} broadcasts a single-channel tensor over channels")
        return TI(out_shape, cd, base)
    if not single:
        return p.fresh_like(value, None)
    chans = [ti for ti in single if len(ti.shape) > 0]
    for ti in single:
        if len(ti.shape) == 0:
            p.lock(ti.elem, f"{p.where(n)} applies a 0-d tensor")
    base = (chans or single)[0]
    for ti in chans[1:]:
        p.union(base.elem, ti.elem)
    off = nd - len(base.shape)
    return TI(out_shape, tuple(d + off for d in base.cdims), base.elem)


def spatial(p: RuleContext, n: fx.Node, x: TI, value: torch.Tensor) -> TI:
    if x.cdims not in ((1,), ()) or not isinstance(value, torch.Tensor) or value.shape[1] != x.shape[1]:
        return p.lock_all(n, value, f"{p.where(n)}: pooling/resampling over the channel dim")
    return TI(tuple(value.shape), x.cdims, x.elem)


def fibres(p: RuleContext, x: TI, dims: set) -> np.ndarray | None:
    """Over a layout with several channel dims (a conv output viewed as [branch, C]), an op across some of them
    (softmax or sum over the branches: SKNet, ResNeSt) is exact if whole fibres along those dims go together:
    tie them, and return the layout without those dims (None if no channel dim would remain)."""
    axes = sorted(x.cdims.index(d) for d in dims if d in x.cdims)
    if len(axes) >= len(x.cdims):
        return None
    first = x.elem
    for k in reversed(axes):
        first = np.take(first, [0], axis=k)
    p.union(np.broadcast_to(first, x.elem.shape), x.elem)
    return first.reshape([s for k, s in enumerate(x.elem.shape) if k not in axes])


def softmax(p: RuleContext, n: fx.Node, x: TI | None, dim: Any, value: Any) -> Any:
    if x is None or dim is None:
        return p.lock_all(n, value, f"{p.where(n)}: softmax over the channel dim")
    if (dim % len(x.shape)) in x.cdims and fibres(p, x, {dim % len(x.shape)}) is None:
        return p.lock_all(n, value, f"{p.where(n)}: softmax over the channel dim")
    return TI(tuple(value.shape), x.cdims, x.elem)


def reduce(p: RuleContext, n: fx.Node, x: TI, value: Any) -> Any:
    args = p.real(n.args[1:])
    kwargs = p.real(n.kwargs)
    dim = kwargs.get("dim", args[0] if args else None)
    keep = kwargs.get("keepdim", args[1] if len(args) > 1 else False)
    nd = len(x.shape)
    if dim is None:
        return p.lock_all(n, value, f"{p.where(n)}: reduction over all dims including channels")
    dims = {d % nd for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
    elem = x.elem
    if dims & set(x.cdims):
        elem = fibres(p, x, dims)
        if elem is None:
            return p.lock_all(n, value, f"{p.where(n)}: reduction over the channel dim")
    new_cd = tuple(d if keep else d - sum(1 for r in dims if r < d) for d in x.cdims if d not in dims)
    return TI(tuple(value.shape), new_cd, elem)


def move(p: RuleContext, n: fx.Node, value: Any, fn: Callable, x: TI) -> Any:
    """Data movement (view, flatten, permute, getitem...): run the op on the element-id tensor itself."""
    ids = x.ids()
    try:
        out = fn(ids)
    except RuntimeError:
        out = fn(ids.contiguous())
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(value.shape):
        return p.lock_all(n, value, f"{p.where(n)}: could not follow channels through this op")
    ti = _extract(out)
    if ti is None:
        return p.lock_all(n, value, f"{p.where(n)} mixes channels with other dims")
    if len(ti.cdims) > len(x.cdims) and ti.elem.ndim > 1:
        # A reshape that splits the channel dim (channel shuffle's view(b, g, c/g, h, w)): every slice along the
        # outer dims must lose the same positions, or the reshape would no longer be valid after pruning.
        flat = ti.elem.reshape(-1, ti.elem.shape[-1])
        p.union(np.broadcast_to(flat[:1], flat.shape), flat)
    return ti


def getitem(p: RuleContext, n: fx.Node, x: TI, value: Any) -> Any:
    idx = p.real(n.args[1])
    idx_t = idx if isinstance(idx, tuple) else (idx,)
    if any(i is Ellipsis or i is None or isinstance(i, torch.Tensor) for i in idx_t):
        return p.lock_all(n, value, f"{p.where(n)}: advanced indexing")
    for d, i in enumerate(idx_t):
        if d in x.cdims and isinstance(i, int) and len(x.cdims) > 1:
            # one slice of a dim of several ([3, heads, head_dim] of a qkv tensor, qkv[0]): every slice must lose
            # the same channels for the slice taken to be the same one after pruning, so they are tied
            fibres(p, x, {d})
            continue
        if d in x.cdims:
            if isinstance(i, slice) and i.step in (None, 1) and len(x.cdims) == 1:
                if i.start in (None, 0) and (i.stop is None or i.stop >= x.shape[d]):
                    continue
                ti = move(p, n, value, lambda t: t[idx], x)
                p.add_site("slice", n, None, {"dim": d, "in": x.elem, "axis": x.cdims.index(d), "start": i.start,
                                              "stop": i.stop})
                return ti
            return p.lock_all(n, value, f"{p.where(n)}: strided or integer indexing of the channel dim")
    return move(p, n, value, lambda t: t[idx], x)


def pad(p: RuleContext, n: fx.Node, x: TI, value: torch.Tensor) -> TI:
    widths = list(p.real(n.args[1] if len(n.args) > 1 else n.kwargs["pad"]))
    mode = p.real(n.args[2]) if len(n.args) > 2 else n.kwargs.get("mode", "constant")
    nd = len(x.shape)
    touched = {nd - 1 - i // 2 for i in range(len(widths)) if widths[i] != 0}
    ch = touched & set(x.cdims)
    if not ch:
        return TI(tuple(value.shape), x.cdims, x.elem)
    if mode != "constant" or len(x.cdims) != 1 or any(v < 0 for v in widths):
        return p.lock_all(n, value, f"{p.where(n)}: non-constant or cropping pad of the channel dim")
    d = x.cdims[0]
    i = 2 * (nd - 1 - d)
    before, after = p.fresh((widths[i],), 0).elem, p.fresh((widths[i + 1],), 0).elem  # the zero channels added
    p.add_site("pad", n, None, {"index": i, "before": before, "after": after, "dim": d})
    return TI(tuple(value.shape), (d,), np.concatenate([before, x.elem, after]))


def cat(p: RuleContext, n: fx.Node, value: torch.Tensor) -> Any:
    seq = n.args[0] if n.args else n.kwargs["tensors"]
    dim = p.real(n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0))
    parts = [p.layout(a) if isinstance(a, fx.Node) else None for a in seq]
    if any(not isinstance(q, TI) for q in parts):
        return p.lock_all(n, value, f"{p.where(n)}: concatenation of non-tensors")
    nd = len(parts[0].shape)
    dim %= nd
    if all(q.cdims == (dim,) for q in parts):
        return TI(tuple(value.shape), (dim,), np.concatenate([q.elem for q in parts]))
    cds = {q.cdims for q in parts}
    if len(cds) == 1 and dim not in parts[0].cdims and len({q.elem.shape for q in parts}) == 1:
        for q in parts[1:]:
            p.union(parts[0].elem, q.elem)
        return TI(tuple(value.shape), parts[0].cdims, parts[0].elem)
    return p.lock_all(n, value, f"{p.where(n)}: concatenation mixing channel layouts")


def split(p: RuleContext, n: fx.Node, x: TI, value: Any) -> Any:
    args = p.real(n.args[1:])
    kwargs = p.real(n.kwargs)
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0) % len(x.shape)
    parts = list(value)
    if dim not in x.cdims:
        return [TI(tuple(v.shape), x.cdims, x.elem) for v in parts]
    if len(x.cdims) != 1:
        # a split along one of several channel dims ([3 * heads, head_dim] of a qkv tensor chunked into q, k, v):
        # the fibres along that dim are tied, so no part's size can change and every part loses the same channels
        if fibres(p, x, {dim}) is None:
            return p.lock_all(n, value, f"{p.where(n)}: split of a multi-dim channel layout")
        k = x.cdims.index(dim)
        chunks = np.split(x.elem, np.cumsum([v.shape[dim] for v in parts])[:-1], axis=k)
        return [TI(tuple(v.shape), x.cdims, c) for v, c in zip(parts, chunks)]
    sizes = [v.shape[dim] for v in parts]
    bounds = np.cumsum([0] + sizes)
    out = [TI(tuple(v.shape), (dim,), x.elem[bounds[k]:bounds[k + 1]]) for k, v in enumerate(parts)]
    p.add_site("split", n, None, {"dim": dim, "parts": [o.elem for o in out]})
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


# -- the table ---------------------------------------------------------------------------------------------------

def _register() -> None:
    fns: dict[Callable, set] = {
        same_layout: {F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.mish,
                      F.softplus, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.hardtanh, F.selu, F.celu,
                      F.tanhshrink, F.softsign, torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.clip,
                      torch.abs, torch.exp, torch.neg, torch.sqrt, torch.rsqrt, torch.square, F.sigmoid, F.tanh,
                      operator.neg, torch.relu_, F.relu_, torch.clone, torch.detach, torch.erf, torch.log},
        binary_op: {operator.add, operator.mul, operator.sub, operator.truediv, operator.iadd, operator.imul,
                    operator.isub, operator.itruediv, torch.add, torch.mul, torch.sub, torch.div, torch.maximum,
                    torch.minimum, torch.addcmul, operator.pow, torch.pow},
        spatial: {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                  F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
                  F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate},
        move_op: {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze},
        getitem_op: {operator.getitem},
        reduce: {torch.mean, torch.sum, torch.amax, torch.amin},
        split: {torch.split, torch.chunk},
        stack_op: {torch.stack},
        cat_op: {torch.cat, torch.concat, torch.concatenate},
        pad: {F.pad},
        softmax_op: {F.softmax, torch.softmax, F.log_softmax},
        layer_norm_fn: {F.layer_norm},
        batch_norm_fn: {F.batch_norm},
        group_norm_fn: {F.group_norm},
    }
    for fn, targets in fns.items():
        r = Op(fn, needs_channels=fn in _NEED_CHANNELS)
        for t in targets:
            register_channel_rule(t, r)
    methods: dict[Callable, set] = {
        same_layout: {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip",
                      "clip_", "abs", "exp", "neg", "sqrt", "rsqrt", "square", "contiguous", "clone", "detach",
                      "float", "half", "bfloat16", "double", "to", "type_as", "hardswish", "hardsigmoid",
                      "requires_grad_", "erf", "log"},
        binary_op: {"add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_", "maximum", "minimum", "addcmul",
                    "pow"},
        move_op: {"view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "expand",
                  "expand_as"},
        getitem_op: {"__getitem__"},
        reshape_as_op: {"reshape_as", "view_as"},
        reduce: {"mean", "sum", "amax", "amin"},
        split: {"split", "chunk"},
        softmax_op: {"softmax"},
    }
    for fn, names in methods.items():
        r = Op(fn, needs_channels=fn in _NEED_CHANNELS)
        for n in names:
            register_channel_rule("Tensor." + n, r)


#: rules that lock everything when their first tensor argument has no channel layout
_NEED_CHANNELS = {spatial, reduce, split, pad}

_register()
