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
``WindowAttention`` (its relative-position bias table sliced with the heads), timm maxxvit's ``AttentionCl`` and
``Attention2d`` (MaxViT's block and grid attention, CoAtNet; their relative-position module's table or MLP rows
sliced with the heads), LeViT's ``Attention`` and ``AttentionDownsample`` (:class:`LevitAttention`) and
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
from .layer_rules import slice_dense
from .pruned_mha import PrunedMultiheadAttention
from .rules import ChannelRule, PerChannel, register_channel_rule, set_param, take

__all__ = ["PackedQKVAttention", "MaxxVitAttention", "LevitAttention", "MultiheadAttentionRule"]


@dataclass
class PackedQKVAttention(ChannelRule):
    """An attention module with a packed ``qkv`` layer (rows ``[3, heads, head_dim]``, or ``[heads, 3, head_dim]``
    where :meth:`packing` says so), an output ``proj`` layer reading ``[heads, head_dim]``, and the ``num_heads``
    (and, where it has them, ``head_dim``/``dim_head``/``attn_dim``) attributes its forward reads: timm's
    ``Attention``, Swin's ``WindowAttention``, MaxViT's and CoAtNet's ``AttentionCl``/``Attention2d``. Its input
    is tokens with channels last (``[B, ..., C]``, Linear layers) or, for 1x1 conv layers, a ``[B, C, H, W]`` map.
    ``per_head``: parameters indexed by head, ``(path, dim)`` (Swin's relative-position bias table, heads on dim 1;
    a path naming a Linear slices its output rows), sliced with the heads; ``masks``: call arguments that may hold a
    mask shared by every head (Swin's shifted-window mask).
    Locks: a gate Linear (``gated``), a norm over the whole attention width (``scale_norm``); a norm over the head
    width (``qk_norm``) locks the width group but not the heads (it is shared by every head)."""
    per_head: tuple = ()
    masks: tuple = ()

    def packing(self, m) -> str:
        """Order of the packed qkv rows: ``"3hd"`` or ``"h3d"``."""
        return "3hd"

    def head_params(self, m) -> tuple | None:
        """``(path, dim)`` of the parameters indexed by head; None: the module holds one this rule cannot slice."""
        return self.per_head

    def cut_heads(self, m, h: np.ndarray) -> None:
        """Slice what :meth:`head_params` names to the kept heads ``h``."""
        for holder, name, dim in _head_params(m, self.head_params(m)):
            if isinstance(getattr(holder, name), torch.nn.Linear):
                lin = getattr(holder, name)
                slice_dense(lin, h, np.ones(lin.in_features, dtype=bool))
            else:
                set_param(holder, name, take(getattr(holder, name).data, dim, h))

    def call_macs(self, m) -> tuple[int, int]:
        """MACs the module spends once per call, not per sample (a position-bias MLP): (fixed, per head)."""
        return 0, 0

    def analyse(self, p, node, m, x, value):
        name = str(node.target)
        what = f"{type(m).__name__} '{name}'"
        layers = (torch.nn.Linear, torch.nn.Conv2d)
        if not isinstance(getattr(m, "qkv", None), layers) or not isinstance(getattr(m, "proj", None), layers):
            return p.lock_all(node, value, f"{what}: no packed qkv layer (separate q, k, v projections have no rule)")
        conv = isinstance(m.qkv, torch.nn.Conv2d)
        cdim = 1 if conv else (value.dim() - 1 if isinstance(value, torch.Tensor) else -1)
        if x is None or not isinstance(value, torch.Tensor) or value.dim() < 3 or x.cdims != (cdim,) or \
                (conv and (value.dim() != 4 or m.qkv.kernel_size != (1, 1) or m.proj.kernel_size != (1, 1))):
            return p.lock_all(node, value, f"{what}: input is not tokens with channels last [B, ..., C] (Linear "
                                           "layers) or a [B, C, H, W] map (1x1 convs)")
        names = list(inspect.signature(m.forward).parameters)[1:]
        extra = dict(zip(names, p.real(tuple(node.args[1:]))))
        extra.update(p.real(dict(node.kwargs)))
        if any(v is not None and v is not False for k, v in extra.items() if k not in self.masks):
            return p.lock_all(node, value, f"{what}: called with a mask or is_causal (no rule for them)")
        if getattr(m, "gate", None) is not None or not isinstance(getattr(m, "norm", torch.nn.Identity()),
                                                                  torch.nn.Identity):
            return p.lock_all(node, value, f"{what}: gated attention or a norm over the attention width")
        H = int(m.num_heads)
        d = int(getattr(m, "head_dim", 0) or getattr(m, "dim_head", 0) or _rows(m.qkv) // (3 * H))
        if _rows(m.qkv) != 3 * H * d or _cols(m.proj) != H * d:
            return p.lock_all(node, value, f"{what}: qkv/proj sizes do not match num_heads x head_dim")
        heads, width = p.fresh((H,), 0).elem, p.fresh((d,), 0).elem
        if not all(isinstance(getattr(m, n, torch.nn.Identity()), torch.nn.Identity) for n in ("q_norm", "k_norm")):
            p.lock(width, f"{what}: q_norm/k_norm normalise over the head width (its heads stay prunable)")
        if H == 1:
            p.lock(heads, f"{what}: a single head")
        elif self.head_params(m) is None:
            p.lock(heads, f"{what}: its position bias module {type(getattr(m, 'rel_pos', None)).__name__} has no "
                          "per-head rule (its head width stays prunable)")
        out = p.fresh(tuple(value.shape), cdim)
        # the packed qkv rows seen as the heads, then as the width, for grouping and weight criteria
        shape, axes = _packed(self.packing(m), H, d)
        by_head, by_width = _along(heads, axes["h"], shape), _along(width, axes["d"], shape)
        qkv, proj = f"{name}.qkv", f"{name}.proj"
        tokens = int(value.numel() // value.shape[cdim])
        tap = value.dim() == 3  # activation criteria read [B, N, C] token outputs of the qkv layer
        p.add_site("rows", node, qkv, {"out": by_head, "label": f"{name}:heads", "contracted": True, "tap": tap})
        p.add_site("rows", node, qkv, {"out": by_width, "label": f"{name}:head_width", "contracted": True,
                                       "tap": tap})
        p.add_site("attention_module", node, name, {
            "in": x.elem, "out": out.elem, "heads": heads, "width": width, "tokens": tokens,
            "n": tokens // int(value.shape[0]), "qkv_bias": int(m.qkv.bias is not None),
            "proj_bias": int(m.proj.bias is not None), "head_params": _per_head_numel(m, self.head_params(m), H),
            "call_macs": self.call_macs(m)},
            rule=self)
        p.add_site("rows", node, proj, {"out": out.elem, "label": proj})
        return out

    def cut(self, m, site, keep):
        h, w = keep(site.data["heads"]), keep(site.data["width"])
        cin, cout = keep(site.data["in"]), keep(site.data["out"])
        H, d, d_new = len(h), len(w), int(w.sum())
        shape, axes = _packed(self.packing(m), H, d)
        rows = _along(h, axes["h"], shape) & _along(w, axes["d"], shape)
        part = _along(np.arange(3), axes["p"], shape)
        inner = np.logical_and.outer(h, w).reshape(-1)                       # [heads * head_dim]
        slice_dense(m.qkv, rows, cin)  # copies: scaling them below leaves the original model alone
        if d_new != d and getattr(m, "fused_attn", False):  # sdpa scales by 1/sqrt(width): keep 1/sqrt(original)
            q = torch.as_tensor(np.nonzero(part[rows] == 0)[0])
            with torch.no_grad():
                for t in (m.qkv.weight, m.qkv.bias):
                    if t is not None:
                        t.index_copy_(0, q, t.index_select(0, q) * math.sqrt(d_new / d))
        slice_dense(m.proj, cout, inner)
        m.num_heads = int(h.sum())
        for attr, v in (("head_dim", d_new), ("dim_head", d_new), ("attn_dim", int(inner.sum()))):
            if hasattr(m, attr):
                setattr(m, attr, v)
        if not h.all():
            self.cut_heads(m, h)

    @staticmethod
    def macs(site, keep, batch: int, params: bool = False) -> int:
        """MACs per sample (or parameters) of the module after removing what ``keep`` rejects: the qkv and output
        projections and the two attention matmuls (``2 * N * N * heads * head_dim``), as fvcore counts them."""
        h, w = int(keep(site.data["heads"]).sum()), int(keep(site.data["width"]).sum())
        cin, cout = int(keep(site.data["in"]).sum()), int(keep(site.data["out"]).sum())
        inner = h * w
        if params:
            qkv_b, proj_b = site.data.get("qkv_bias", 0), site.data.get("proj_bias", 0)
            return 3 * inner * cin + 3 * inner * qkv_b + inner * cout + cout * proj_b + h * site.data["head_params"]
        tokens = site.data["tokens"]
        n = site.data["n"]
        fixed, per_head = site.data.get("call_macs", (0, 0))
        return (tokens * (3 * inner * cin + inner * cout) + tokens * n * 2 * inner) // batch + fixed + per_head * h


def _packed(order: str, H: int, d: int) -> tuple[tuple, dict]:
    """Shape of the packed qkv rows and the axis of the part (q, k, v: ``"p"``), head and width in it."""
    axes = {"3hd": {"p": 0, "h": 1, "d": 2}, "h3d": {"h": 0, "p": 1, "d": 2}}[order]
    sizes = {"p": 3, "h": H, "d": d}
    return tuple(sizes[k] for k in sorted(axes, key=axes.get)), axes


def _along(vec: np.ndarray, axis: int, shape: tuple) -> np.ndarray:
    """``vec`` laid along ``axis`` of ``shape``, broadcast over the other axes and flattened."""
    return np.broadcast_to(vec.reshape([-1 if a == axis else 1 for a in range(len(shape))]), shape).reshape(-1)


def _head_params(m, paths) -> list:
    """(owner module, attribute, head dim) of each ``(path, dim)`` in ``paths``."""
    out = []
    for path, dim in paths or ():
        owner, _, name = path.rpartition(".")
        out.append((m.get_submodule(owner) if owner else m, name, dim))
    return out


def _per_head_numel(m, paths, heads: int) -> int:
    """Parameters per head of the per-head tensors (a Linear: its weight and bias rows)."""
    total = 0
    for holder, name, dim in _head_params(m, paths):
        t = getattr(holder, name)
        if isinstance(t, torch.nn.Linear):
            total += t.in_features + (t.bias is not None)
        elif isinstance(t, torch.nn.Parameter):
            total += t.numel() // heads
    return total


def _rows(m) -> int:
    return m.out_features if isinstance(m, torch.nn.Linear) else m.out_channels


def _cols(m) -> int:
    return m.in_features if isinstance(m, torch.nn.Linear) else m.in_channels


class MaxxVitAttention(PackedQKVAttention):
    """timm ``maxxvit``'s ``AttentionCl`` (MaxViT's block and grid attention, channels last) and ``Attention2d``
    (CoAtNet, 1x1 convs): rows packed per head when ``head_first``; the relative-position module's per-head
    parameters (:data:`_REL_POS`) and its ``num_heads``/``bias_shape`` follow the heads."""

    def packing(self, m) -> str:
        return "h3d" if m.head_first else "3hd"

    def head_params(self, m) -> tuple | None:
        if m.rel_pos is None:
            return ()
        known = _REL_POS.get(type(m.rel_pos).__name__)
        return None if known is None else tuple((f"rel_pos.{path}", dim) for path, dim in known[0])

    def call_macs(self, m) -> tuple[int, int]:
        mlp = getattr(m.rel_pos, "mlp", None)  # RelPosMlp: an MLP over the relative coordinates, once per call
        if mlp is None or type(m.rel_pos).__name__ not in _REL_POS:
            return 0, 0
        positions = m.rel_pos.rel_coords_log.numel() // mlp.fc1.in_features
        return positions * mlp.fc1.in_features * mlp.fc1.out_features, positions * mlp.fc2.in_features

    def cut_heads(self, m, h: np.ndarray) -> None:
        super().cut_heads(m, h)
        if m.rel_pos is not None:
            at = _REL_POS[type(m.rel_pos).__name__][1]
            shape = list(m.rel_pos.bias_shape)
            shape[at] = int(h.sum())
            m.rel_pos.bias_shape = tuple(shape)
            if hasattr(m.rel_pos, "num_heads"):
                m.rel_pos.num_heads = int(h.sum())


#: timm's relative-position modules: (per-head parameters ``(path, dim)``, the head entry of ``bias_shape``)
_REL_POS = {
    "RelPosBias": ((("relative_position_bias_table", 1),), -1),
    "RelPosBiasTf": ((("relative_position_bias_table", 0),), 0),
    "RelPosMlp": ((("mlp.fc2", 0),), -1),
}


@dataclass
class LevitAttention(ChannelRule):
    """timm LeViT's ``Attention`` and ``AttentionDownsample`` (token path, ``use_conv=False``): ``LinearNorm`` layers
    (a Linear then BatchNorm1d) whose rows are packed per head as ``[q | k | v]`` (``qkv``) or ``[k | v]`` (``kv``)
    and ``[q]`` (``q.ln``, on the subsampled tokens), q/k of width ``key_dim`` and v of width ``val_dim``, and a
    learned attention bias per head (``attention_biases``, sliced with the heads). Two groups: the heads, and the head
    width, whose units are the ``key_dim`` positions (in q and k of every kept head) and the ``val_dim`` positions (in
    v, and the output projection's columns); the scale stays ``key_dim ** -0.5`` of the original (an attribute)."""
    # (LinearNorm path, its per-head parts: k = a key-width part, v = a value part, whether it reads the output's
    # tokens: AttentionDownsample's q layer reads the subsampled tokens)
    layers: tuple = (("qkv", "kkv", False),)

    def analyse(self, p, node, m, x, value):
        name = str(node.target)
        what = f"{type(m).__name__} '{name}'"
        if m.use_conv or x is None or not isinstance(value, torch.Tensor) or value.dim() != 3 or x.cdims != (2,):
            return p.lock_all(node, value, f"{what}: only the token path ([B, N, C], use_conv=False) has a rule")
        H, kd, vd = int(m.num_heads), int(m.key_dim), int(m.val_dim)
        heads, kw, vw = p.fresh((H,), 0).elem, p.fresh((kd,), 0).elem, p.fresh((vd,), 0).elem
        if H == 1:
            p.lock(heads, f"{what}: a single head")
        out = p.fresh(tuple(value.shape), 2)
        xin = p.real(node.args[0])
        layers = []
        for path, parts, subsampled in self.layers:
            width = _widths(parts, kw, vw)
            lin = f"{name}.{path}.linear"
            for label, elem in ((f"{name}:heads", np.repeat(heads, len(width))),
                                (f"{name}:head_width", np.tile(width, H))):
                p.add_site("rows", node, lin, {"out": elem, "label": label, "contracted": True, "tap": False})
            tokens = value.shape[0] * value.shape[1] if subsampled else xin.shape[0] * xin.shape[1]
            layers.append((path, parts, int(tokens)))
        p.add_site("attention_module", node, name, {
            "in": x.elem, "out": out.elem, "heads": heads, "kw": kw, "vw": vw, "layers": layers,
            "tokens": int(value.shape[0] * value.shape[1]), "n": int(xin.shape[1]),
            "bias_numel": int(m.attention_biases.shape[1])}, rule=self)
        p.add_site("rows", node, f"{name}.proj.ln.linear", {"out": out.elem, "label": f"{name}.proj"})
        return out

    def cut(self, m, site, keep):
        h, kw, vw = keep(site.data["heads"]), keep(site.data["kw"]), keep(site.data["vw"])
        cin, cout = keep(site.data["in"]), keep(site.data["out"])
        for path, parts, _ in site.data["layers"]:
            _slice_linear_norm(m.get_submodule(path), np.logical_and.outer(h, _widths(parts, kw, vw)).reshape(-1), cin)
        _slice_linear_norm(m.proj.ln, cout, np.logical_and.outer(h, vw).reshape(-1))
        set_param(m, "attention_biases", take(m.attention_biases.data, 0, h))
        m.attention_bias_cache = {}
        m.num_heads, m.key_dim, m.val_dim = int(h.sum()), int(kw.sum()), int(vw.sum())
        m.key_attn_dim, m.val_attn_dim = m.num_heads * m.key_dim, m.num_heads * m.val_dim

    @staticmethod
    def macs(site, keep, batch: int, params: bool = False) -> int:
        """Its LinearNorm layers, the two attention matmuls (q k: ``key_dim``, attn v: ``val_dim``) and the output
        projection, per sample (or their parameters, BatchNorm's scale and shift and the attention biases)."""
        h, k, v = (int(keep(site.data[key]).sum()) for key in ("heads", "kw", "vw"))
        cin, cout = int(keep(site.data["in"]).sum()), int(keep(site.data["out"]).sum())
        total = 0
        for _, parts, tokens in site.data["layers"]:
            rows = h * sum(k if c == "k" else v for c in parts)
            total += rows * (cin + 2) if params else tokens * rows * cin
        if params:
            return total + h * v * cout + 2 * cout + h * site.data["bias_numel"]
        tokens = site.data["tokens"]
        return (total + tokens * site.data["n"] * h * (k + v) + tokens * h * v * cout) // batch


def _widths(parts: str, key: np.ndarray, value: np.ndarray) -> np.ndarray:
    """One head's rows of a LeViT layer: ``key`` for each ``"k"`` part, ``value`` for each ``"v"``, in order."""
    return np.concatenate([key if c == "k" else value for c in parts])


def _slice_linear_norm(m, out_k: np.ndarray, in_k: np.ndarray) -> None:
    """LeViT's LinearNorm (``linear`` then BatchNorm1d ``bn``): rows ``out_k`` and columns ``in_k``."""
    slice_dense(m.linear, out_k, in_k)
    PerChannel().keep_channels(m.bn, out_k)


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
    register_channel_rule("timm.models.maxxvit.AttentionCl", MaxxVitAttention())
    register_channel_rule("timm.models.maxxvit.Attention2d", MaxxVitAttention())
    register_channel_rule("timm.models.levit.Attention", LevitAttention())
    register_channel_rule("timm.models.levit.AttentionDownsample", LevitAttention(layers=(("kv", "kv", False),
                                                                                     ("q.ln", "k", True))))
    register_channel_rule(torch.nn.MultiheadAttention, MultiheadAttentionRule())


_register()
