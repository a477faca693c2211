"""Built-in channel rules of the operations attention is written with: ``q @ k.transpose(-2, -1)``, ``attn @ v``
(``torch.matmul``, ``torch.bmm``), ``F.scaled_dot_product_attention`` and ``qkv.unbind(0)``.

What is exact. A matmul contracts its operands' last and second-to-last dims: channels there (q's and k's head
width) are one selection on both sides, and removing them leaves the other terms of the dot product unchanged, so
the pruned model equals the original with those channels zeroed. Channels on a batch dim (the heads of a
``[B, heads, N, head_dim]`` tensor) must be removed in every slice of that dim at once: a head-width unit spans
every head (which the reshape that splits ``qkv`` into heads already requires: it keeps ``head_dim`` one number).
So attention written with these ops prunes its head width, q/k and v together; whole heads need a rule of the
attention module itself (:mod:`~autoprune.graph.attention_modules`: a union-find partition of the traced tensors
cannot hold head units and width units at once).
``scaled_dot_product_attention`` scales by ``1/sqrt(q.shape[-1])`` unless told otherwise: surgery writes the
original scale into the call (``scale=``), so the pruned attention stays exact and fused.

The cost model counts a matmul as fvcore does (``numel(out) * K``) and the attention call as its two matmuls
(fvcore has no handle for it: :mod:`~autoprune.graph.flops` adds one).
"""
from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from .layout import TI
from .op_rules import Op, fibres
from .rules import RuleContext, register_channel_rule

__all__ = ["matmul", "attention", "unbind", "reduced"]


def _channels(ti: Any) -> bool:
    return isinstance(ti, TI) and bool(ti.cdims) and ti.elem.size > 1


def reduced(p: RuleContext, ti: TI, nd_batch: int) -> tuple[list[int], np.ndarray] | None:
    """The channel dims of ``ti`` among its last two (matrix) dims and their element ids, after tying the units of
    its batch dims (dims ``< nd_batch``: heads, samples) across every slice: ``([dims], elem)`` over those dims.
    None when every channel dim is a batch dim (nothing would remain to select)."""
    batch = {d for d in ti.cdims if d < nd_batch}
    if not batch:
        return list(ti.cdims), ti.elem
    elem = fibres(p, ti, batch)
    if elem is None:
        return None
    return [d for d in ti.cdims if d not in batch], elem


def _operand(p: RuleContext, n: fx.Node, arg: Any, what: str, value: Any):
    """(layout reduced to its matrix dims, matrix-dim channel list, rank) of one matmul operand; layout None when
    the operand carries no channels. Raises ``_Locked`` when its channels cannot be followed."""
    ti = p.layout(arg) if isinstance(arg, fx.Node) else None
    real = p.real(arg)
    nd = real.dim() if isinstance(real, torch.Tensor) else 0
    if not _channels(ti):
        return None, [], nd
    if nd < 2:
        raise _Locked(f"{p.where(n)}: {what} is a vector carrying channels")
    r = reduced(p, ti, nd - 2)
    if r is None:  # channels on its batch dims only (heads of a bias indexed by head: Swin): kept whole
        p.lock(ti.elem, f"{p.where(n)}: {what} carries channels only on its batch dims")
        return None, [], nd
    dims, elem = r
    return TI(ti.shape, tuple(dims), elem), dims, nd


class _Locked(Exception):
    pass


def matmul(p: RuleContext, n: fx.Node, x: TI | None, value: Any) -> Any:
    """``a @ b`` (``torch.matmul``, ``torch.bmm``, the tensor methods): contraction channels tied on both sides,
    the output carries ``a``'s row channels or ``b``'s column channels (not both: locked)."""
    args = list(n.args) + [n.kwargs[k] for k in ("input", "other", "mat2") if k in n.kwargs]
    if len(args) < 2 or not isinstance(value, torch.Tensor):
        return p.lock_all(n, value, f"{p.where(n)}: unexpected arguments")
    try:
        A, a_dims, na = _operand(p, n, args[0], "its left operand", value)
        B, b_dims, nb = _operand(p, n, args[1], "its right operand", value)
    except _Locked as e:
        return p.lock_all(n, value, str(e))
    k_a = A is not None and (na - 1) in a_dims
    k_b = B is not None and (nb - 2) in b_dims
    if k_a != k_b:
        return p.lock_all(n, value, f"{p.where(n)} contracts channels with a tensor that does not carry them")
    if (A is not None and len(a_dims) > 1) or (B is not None and len(b_dims) > 1):
        return p.lock_all(n, value, f"{p.where(n)}: an operand carries channels on both of its matrix dims")
    k_elem = None
    if k_a:
        if A.elem.shape != B.elem.shape:
            return p.lock_all(n, value, f"{p.where(n)}: contracted channels of different counts")
        p.union(A.elem, B.elem)
        k_elem = A.elem
    rows = A is not None and (na - 2) in a_dims
    cols = B is not None and (nb - 1) in b_dims
    if rows and cols:
        return p.lock_all(n, value, f"{p.where(n)}: its output would carry channels on both matrix dims")
    nd = value.dim()
    if rows:
        out = TI(tuple(value.shape), (nd - 2,), A.elem)
    elif cols:
        out = TI(tuple(value.shape), (nd - 1,), B.elem)
    else:
        out = p.fresh(tuple(value.shape), None)
    K = int(p.real(args[0]).shape[-1])
    p.add_site("matmul", n, None, {"out": out, "k": k_elem, "K": K})
    return out


def attention(p: RuleContext, n: fx.Node, x: TI | None, value: Any) -> Any:
    """``F.scaled_dot_product_attention(q, k, v, ...)``: q's and k's head width is one selection, v's head width is
    the output's; heads are batch dims (a unit spans every head). The original scale is written into the call."""
    names = ("query", "key", "value")
    qkv = [n.args[i] if len(n.args) > i else n.kwargs.get(names[i]) for i in range(3)]
    if not isinstance(value, torch.Tensor) or any(a is None for a in qkv):
        return p.lock_all(n, value, f"{p.where(n)}: unexpected arguments")
    if p.real(n.kwargs.get("enable_gqa", n.args[7] if len(n.args) > 7 else False)):
        return p.lock_all(n, value, f"{p.where(n)}: grouped-query attention (enable_gqa) has no channel rule")
    try:
        ops = [_operand(p, n, a, w, value) for a, w in zip(qkv, names)]
    except _Locked as e:
        return p.lock_all(n, value, str(e))
    (Q, q_dims, nq), (K, k_dims, nk), (V, v_dims, nv) = ops
    others = [a for i, a in enumerate(n.args) if i >= 3] + [a for k, a in n.kwargs.items() if k not in names]
    for ti in p.arg_layouts(others):  # a mask or bias: read whole, so never cut
        p.lock(ti.elem, f"{p.where(n)}: its attention mask or bias")
    if any(T is not None and d != [nd - 1] for T, d, nd in ops):
        return p.lock_all(n, value, f"{p.where(n)}: channels on the token dim of its query, key or value")
    if (Q is None) != (K is None):
        return p.lock_all(n, value, f"{p.where(n)} contracts channels of its query with a key that does not carry "
                                    "them (or the reverse)")
    q, k, v = (p.real(a) for a in qkv)
    if Q is not None:
        if Q.elem.shape != K.elem.shape:
            return p.lock_all(n, value, f"{p.where(n)}: query and key widths differ")
        p.union(Q.elem, K.elem)
        scale = p.real(n.kwargs.get("scale", n.args[6] if len(n.args) > 6 else None))
        if scale is None:  # the default 1/sqrt(width) would change with the width: keep the original
            p.add_site("kwarg", n, None, {"kw": "scale", "value": float(q.shape[-1]) ** -0.5, "pos": 6})
    nd = value.dim()
    out = TI(tuple(value.shape), (nd - 1,), V.elem) if V is not None else p.fresh(tuple(value.shape), None)
    p.add_site("attention", n, None, {"q": None if Q is None else Q.elem, "v": None if V is None else V.elem,
                                      "E": int(q.shape[-1]), "Ev": int(v.shape[-1]),
                                      "rows": int(np.prod(q.shape[:-1])), "S": int(k.shape[-2])})
    return out


def unbind(p: RuleContext, n: fx.Node, x: TI, value: Any) -> Any:
    """``qkv.unbind(0)``: over a non-channel dim each part keeps the layout; over one of several channel dims (the
    3 of ``[3, B, heads, N, head_dim]``) every part must lose the same units, so they are tied across the parts."""
    dim = p.real(n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)) % len(x.shape)
    parts = list(value)
    shift = lambda cd: tuple(d if d < dim else d - 1 for d in cd if d != dim)  # noqa: E731
    if dim not in x.cdims:
        return [TI(tuple(v.shape), shift(x.cdims), x.elem) for v in parts]
    if len(x.cdims) == 1:
        return p.lock_all(n, value, f"{p.where(n)}: unbinding the channel dim (each part is one channel)")
    fibres(p, x, {dim})
    k = x.cdims.index(dim)
    return [TI(tuple(v.shape), shift(x.cdims), np.take(x.elem, i, axis=k)) for i, v in enumerate(parts)]


# -- cost ----------------------------------------------------------------------------------------------------------

def site_macs(kind: str, data: dict, keep: Any, kept_numel: Any, batch: int) -> int:
    """MACs per sample of a ``matmul`` or ``attention`` site, given ``keep(elem) -> mask`` and ``kept_numel(TI)``."""
    if kind == "matmul":
        k = int(keep(data["k"]).sum()) if data["k"] is not None else data["K"]
        return kept_numel(data["out"]) * k // batch
    e = int(keep(data["q"]).sum()) if data["q"] is not None else data["E"]
    ev = int(keep(data["v"]).sum()) if data["v"] is not None else data["Ev"]
    return data["rows"] * data["S"] * (e + ev) // batch


# -- the table -----------------------------------------------------------------------------------------------------

def _register() -> None:
    mm = Op(matmul)
    for t in (operator.matmul, torch.matmul, torch.bmm):
        register_channel_rule(t, mm)
    for name in ("matmul", "bmm", "__matmul__"):
        register_channel_rule("Tensor." + name, mm)
    register_channel_rule(F.scaled_dot_product_attention, Op(attention))
    ub = Op(unbind, needs_channels=True)
    register_channel_rule(torch.unbind, ub)
    register_channel_rule("Tensor.unbind", ub)


_register()
