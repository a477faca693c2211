"""Channel rules of attention modules: whole heads and the head width, as two groups of one module.

Attention traced op by op (:mod:`~autoprune.graph.attention_rules`) prunes the head width only: a union-find
partition of q/k/v's channels cannot hold head units and width units at once (a position ``(head h, width j)``
belongs to both). A rule of the module itself can: it keeps the module whole (a leaf of the graph), creates one
element per head and one per position of the head width, and removes the q, k, v rows ``(part, h, j)`` and the
output projection's columns ``(h, j)`` whose head *or* width is removed. Its ``forward`` still runs: surgery
updates ``num_heads``, ``head_dim`` and ``attn_dim``, and keeps the attention's scale: the fused call scales by
``1/sqrt(head_dim)``, so when the width shrinks the q rows are multiplied by ``sqrt(kept / original)`` (the manual
path's ``self.scale`` stays the original).

Weight criteria score both groups through the packed ``qkv`` Linear (a head unit averages the scores of its
``3 * head_dim`` rows, a width unit those of its ``3 * heads`` rows); the module is a leaf, so activation criteria
have no tensor of these groups to read, and refuse them.

Built in: timm's ``Attention`` (``timm.layers.attention``: ViT, DeiT, DeiT-3, and every model built on it), Swin's
``WindowAttention`` (its relative-position bias table sliced with the heads) and
``torch.nn.MultiheadAttention`` (torchvision's ViT), which pruned becomes a
:class:`~autoprune.graph.pruned_mha.PrunedMultiheadAttention`.
"""
from __future__ import annotations

import inspect
import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.fx as fx

from .layout import TI
from .layer_rules import slice_linear
from .pruned_mha import PrunedMultiheadAttention
from .rules import ChannelRule, register_channel_rule, set_param, take

__all__ = ["PackedQKVAttention", "MultiheadAttentionRule"]


@dataclass
class PackedQKVAttention(ChannelRule):
    """An attention module with a packed ``qkv`` Linear (rows ``[3, heads, head_dim]``), an output ``proj`` Linear
    reading ``[heads, head_dim]``, and the ``num_heads`` (and, where it has them, ``head_dim``/``attn_dim``)
    attributes its forward reads (timm's ``Attention``, Swin's ``WindowAttention``). ``per_head``: its parameters
    indexed by head, ``(name, dim)`` (Swin's relative-position bias table, heads on dim 1), sliced with the heads;
    ``masks``: call arguments that may hold a mask shared by every head (Swin's shifted-window mask).
    Locks: a gate Linear (``gated``), a norm over the whole attention width (``scale_norm``); a norm over the head
    width (``qk_norm``) locks the width group but not the heads (it is shared by every head)."""
    per_head: tuple = ()
    masks: tuple = ()

    def analyse(self, p, node, m, x, value):
        name = str(node.target)
        what = f"{type(m).__name__} '{name}'"
        if x is None or not isinstance(value, torch.Tensor) or value.dim() != 3 or x.cdims != (2,):
            return p.lock_all(node, value, f"{what}: input is not [B, N, C] tokens with channels last")
        names = list(inspect.signature(m.forward).parameters)[1:]
        extra = dict(zip(names, p.real(tuple(node.args[1:]))))
        extra.update(p.real(dict(node.kwargs)))
        if any(v is not None and v is not False for k, v in extra.items() if k not in self.masks):
            return p.lock_all(node, value, f"{what}: called with a mask or is_causal (no rule for them)")
        if getattr(m, "gate", None) is not None or not isinstance(getattr(m, "norm", torch.nn.Identity()),
                                                                  torch.nn.Identity):
            return p.lock_all(node, value, f"{what}: gated attention or a norm over the attention width")
        H = int(m.num_heads)
        d = int(getattr(m, "head_dim", 0) or m.qkv.out_features // (3 * H))
        if m.qkv.out_features != 3 * H * d or m.proj.in_features != H * d:
            return p.lock_all(node, value, f"{what}: qkv/proj sizes do not match num_heads x head_dim")
        heads, width = p.fresh((H,), 0).elem, p.fresh((d,), 0).elem
        if not all(isinstance(getattr(m, n, torch.nn.Identity()), torch.nn.Identity) for n in ("q_norm", "k_norm")):
            p.lock(width, f"{what}: q_norm/k_norm normalise over the head width (its heads stay prunable)")
        if H == 1:
            p.lock(heads, f"{what}: a single head")
        out = p.fresh(tuple(value.shape), 2)
        # the packed qkv rows seen as the heads, then as the width, for grouping and weight criteria
        rows = (3, H, d)
        by_head = np.broadcast_to(heads[None, :, None], rows).reshape(-1)
        by_width = np.broadcast_to(width[None, None, :], rows).reshape(-1)
        qkv, proj = f"{name}.qkv", f"{name}.proj"
        p.add_site("rows", node, qkv, {"out": by_head, "label": f"{name}:heads", "contracted": True})
        p.add_site("rows", node, qkv, {"out": by_width, "label": f"{name}:head_width", "contracted": True})
        p.add_site("attention_module", node, name, {
            "in": x.elem, "out": out.elem, "heads": heads, "width": width, "tokens": int(np.prod(value.shape[:-1])),
            "n": int(value.shape[1]), "qkv_bias": int(m.qkv.bias is not None),
            "proj_bias": int(m.proj.bias is not None)}, rule=self)
        p.add_site("rows", node, proj, {"out": out.elem, "label": proj})
        return out

    def cut(self, m, site, keep):
        h, w = keep(site.data["heads"]), keep(site.data["width"])
        cin, cout = keep(site.data["in"]), keep(site.data["out"])
        inner = np.logical_and.outer(h, w).reshape(-1)                       # [heads * head_dim]
        rows = np.tile(inner, 3)                                             # [3 * heads * head_dim]
        d, d_new = len(w), int(w.sum())
        slice_linear(m.qkv, rows, cin)  # copies: scaling them below leaves the original model alone
        if d_new != d and getattr(m, "fused_attn", False):  # sdpa scales by 1/sqrt(width): keep 1/sqrt(original)
            q = int(inner.sum())
            with torch.no_grad():
                for t in (m.qkv.weight, m.qkv.bias):
                    if t is not None:
                        t[:q] *= math.sqrt(d_new / d)
        slice_linear(m.proj, cout, inner)
        m.num_heads = int(h.sum())
        for attr, v in (("head_dim", d_new), ("attn_dim", int(inner.sum()))):
            if hasattr(m, attr):
                setattr(m, attr, v)
        for name, dim in self.per_head:
            set_param(m, name, take(getattr(m, name).data, dim, h))

    @staticmethod
    def macs(site, keep, batch: int, params: bool = False) -> int:
        """MACs per sample (or parameters) of the module after removing what ``keep`` rejects: the qkv and output
        projections and the two attention matmuls (``2 * N * N * heads * head_dim``), as fvcore counts them."""
        h, w = int(keep(site.data["heads"]).sum()), int(keep(site.data["width"]).sum())
        cin, cout = int(keep(site.data["in"]).sum()), int(keep(site.data["out"]).sum())
        inner = h * w
        if params:
            qkv_b, proj_b = site.data.get("qkv_bias", 0), site.data.get("proj_bias", 0)
            return 3 * inner * cin + 3 * inner * qkv_b + inner * cout + cout * proj_b
        tokens = site.data["tokens"]
        n = site.data["n"]
        return (tokens * (3 * inner * cin + inner * cout) + tokens * n * 2 * inner) // batch


class MultiheadAttentionRule(ChannelRule):
    """``nn.MultiheadAttention``: heads and head width as two groups, as :class:`PackedQKVAttention`, with
    ``batch_first`` either way, ``kdim``/``vdim`` (cross-attention), masks and ``need_weights``. Pruned, it becomes a
    :class:`~autoprune.graph.pruned_mha.PrunedMultiheadAttention` (its inner width no longer equals its inputs').
    Locks: unbatched inputs, ``add_bias_kv``/``add_zero_attn``; the heads (not the width) when the averaged attention
    weights are used or the mask is per head ``[B * heads, L, S]``."""

    def analyse(self, p, node, m, x, value):
        name = str(node.target)
        what = f"MultiheadAttention '{name}'"
        names = ("query", "key", "value")
        args = [node.args[i] if len(node.args) > i else node.kwargs.get(names[i]) for i in range(3)]
        lays = [p.layout(a) if isinstance(a, fx.Node) else None for a in args]
        if any(not isinstance(t, TI) or len(t.shape) != 3 or t.cdims != (2,) for t in lays):
            return p.lock_all(node, value, f"{what}: query, key and value must be batched [., ., C] with channels last")
        if m.bias_k is not None or m.add_zero_attn:
            return p.lock_all(node, value, f"{what}: add_bias_kv / add_zero_attn have no rule")
        H, d = int(m.num_heads), int(m.head_dim)
        heads, width = p.fresh((H,), 0).elem, p.fresh((d,), 0).elem
        if H == 1:
            p.lock(heads, f"{what}: a single head")
        mask = p.real(node.kwargs.get("attn_mask", node.args[5] if len(node.args) > 5 else None))
        if isinstance(mask, torch.Tensor) and mask.dim() == 3:
            p.lock(heads, f"{what}: a per-head attention mask [B * heads, L, S]")
        if any(u.target is not operator.getitem or u.args[1] == 1 and u.users for u in node.users):
            p.lock(heads, f"{what}: its attention weights (an average over the heads) are used")
        out = p.fresh(tuple(value[0].shape), 2)
        rows = (3, H, d)
        by_head = np.broadcast_to(heads[None, :, None], rows).reshape(-1)
        by_width = np.broadcast_to(width[None, None, :], rows).reshape(-1)
        for label, elem in ((f"{name}:heads", by_head), (f"{name}:head_width", by_width)):
            p.add_site("rows", node, name, {"out": elem, "label": label, "contracted": True, "tap": False})
        q, k, v = (p.real(a) for a in args)
        seq = 1 if m.batch_first else 0
        p.add_site("attention_module", node, name, {
            "in": lays[0].elem, "k_in": lays[1].elem, "v_in": lays[2].elem, "out": out.elem, "heads": heads,
            "width": width, "tokens": int(q.shape[0] * q.shape[1]), "n": int(k.shape[seq]),
            "kv_tokens": int(k.shape[0] * k.shape[1]), "qkv_bias": int(m.in_proj_bias is not None),
            "proj_bias": int(m.out_proj.bias is not None)}, rule=self)
        p.add_site("rows", node, f"{name}.out_proj", {"out": out.elem, "label": f"{name}.out_proj"})
        weights = p.fresh_like(value[1], f"{what}: attention weights") if value[1] is not None else None
        return [out, weights]

    def cut(self, m, site, keep):
        masks = [keep(site.data[k]) for k in ("heads", "width", "in", "k_in", "v_in", "out")]
        if all(bool(mk.all()) for mk in masks):
            return None
        return PrunedMultiheadAttention.from_pruned(m, *masks)

    @staticmethod
    def macs(site, keep, batch: int, params: bool = False) -> int:
        """The q, k, v and output projections and the two attention matmuls, per sample (or the parameters)."""
        inner = int(keep(site.data["heads"]).sum()) * int(keep(site.data["width"]).sum())
        cq, ck, cv, cout = (int(keep(site.data[k]).sum()) for k in ("in", "k_in", "v_in", "out"))
        if params:
            return inner * (cq + ck + cv) + 3 * inner * site.data["qkv_bias"] + inner * cout + \
                cout * site.data["proj_bias"]
        tq, tkv, s = site.data["tokens"], site.data["kv_tokens"], site.data["n"]
        return (tq * inner * (cq + cout) + tkv * inner * (ck + cv) + tq * s * 2 * inner) // batch


def _register() -> None:
    register_channel_rule("timm.layers.attention.Attention", PackedQKVAttention())
    register_channel_rule("timm.models.swin_transformer.WindowAttention",
                          PackedQKVAttention(per_head=(("relative_position_bias_table", 1),), masks=("mask",)))
    register_channel_rule(torch.nn.MultiheadAttention, MultiheadAttentionRule())


_register()
