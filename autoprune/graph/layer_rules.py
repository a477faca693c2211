"""Built-in channel rules of ``torch.nn`` layers (convs, linear, norms, activations, pools, pixel shuffles...),
registered with :func:`~autoprune.graph.rules.register_channel_rule` when this module is imported. They use only
the :class:`~autoprune.graph.rules.RuleContext` protocol; the layers of other libraries that reuse them (timm's) are
in :mod:`~autoprune.graph.library_rules`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .layout import TI
from .op_rules import Op, move, softmax, spatial
from .rules import (ChannelRule, Elementwise, Lock, PerChannel, idx, register_channel_rule, set_param,
                    tail_without_rule, take)

__all__ = ["slice_dense", "Conv", "Linear", "PReLU", "GroupNorm", "LayerNorm", "Embedding", "PixelShuffle",
           "PixelUnshuffle", "ModuleMove", "ModuleSoftmax", "POOLS"]


def _shape(value: Any) -> tuple | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


class Conv(ChannelRule):
    """nn.Conv1d/2d/3d and nn.ConvTranspose1d/2d/3d. Grouped and depthwise convs remove whole groups, inputs and
    outputs together, which keeps the per-group widths the kernels were trained with."""

    def analyse(self, p, node, m, x, value):
        name = str(node.target)
        transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
        if x is None or x.cdims != (1,):
            return _locked_site(p, node, name, m.in_channels, value, f"{type(m).__name__} '{name}' input channels "
                                "are not on dim 1", {"groups": m.groups, "transposed": transposed,
                                                     "in_dim": 0 if transposed else 1,
                                                     "in_shape": _shape(p.real(node.args[0]))}, self)
        data = {"in": x.elem, "groups": m.groups, "transposed": transposed, "in_dim": 0 if transposed else 1,
                "in_shape": x.shape}
        if m.groups == 1:
            out = p.fresh(tuple(value.shape), 1)
            p.add_site("conv", node, name, {**data, "out": out.elem}, rule=self)
            return out
        g = m.groups
        in_per, out_per = m.in_channels // g, m.out_channels // g
        gid = x.elem.reshape(g, in_per)
        if in_per > 1:
            p.union(np.repeat(gid[:, 0], in_per), gid.ravel())
        out_elem = np.repeat(gid[:, 0], out_per)
        p.add_site("conv", node, name, {**data, "out": out_elem}, rule=self)
        return TI(tuple(value.shape), (1,), out_elem)

    def cut(self, m, site, keep):
        in_keep, out_keep, groups = keep(site.data["in"]), keep(site.data["out"]), site.data["groups"]
        w = m.weight.data
        if site.data["transposed"]:  # weight [in, out / groups, *k]
            w = take(w, 0, in_keep)
            if groups == 1:
                w = take(w, 1, out_keep)
        else:  # weight [out, in / groups, *k]
            w = take(w, 0, out_keep)
            if groups == 1:
                w = take(w, 1, in_keep)
        if groups > 1:
            per = m.in_channels // groups
            m.groups = int(in_keep.reshape(groups, per)[:, 0].sum())
        m.in_channels = int(in_keep.sum())
        m.weight = nn.Parameter(w.clone(), requires_grad=m.weight.requires_grad)
        if m.bias is not None:
            set_param(m, "bias", take(m.bias.data, 0, out_keep))
        m.out_channels = int(out_keep.sum())


def _locked_site(p, node, name, n_in, value, reason, data, rule, dim=1, kind="conv"):
    """A conv/linear layer whose input layout the rule cannot follow: every channel in and out is locked, but the
    layer keeps a site (with locked elements) so the cost model still counts its MACs."""
    out = p.lock_all(node, value, reason)
    if not isinstance(value, torch.Tensor) or value.dim() < 2:
        return out
    locked_in, locked_out = p.fresh((n_in,), 0), p.fresh(tuple(value.shape), dim)
    p.lock(locked_in.elem, reason)
    p.lock(locked_out.elem, reason)
    p.add_site(kind, node, name, {**data, "in": locked_in.elem, "out": locked_out.elem}, rule=rule)
    return out


class Linear(ChannelRule):
    """nn.Linear: reads features on the last dim, writes fresh ones there."""

    def analyse(self, p, node, m, x, value):
        name = str(node.target)
        if x is None or x.cdims not in ((len(x.shape) - 1,), ()) or (x.cdims == () and x.shape[-1] != 1):
            return _locked_site(p, node, name, m.in_features, value, f"Linear '{name}' reads features that are not "
                                "on its last dim", {"in_dim": 1}, self, dim=-1, kind="linear")
        out = p.fresh(tuple(value.shape), -1)
        p.add_site("linear", node, name, {"in": x.elem.reshape(-1), "out": out.elem, "in_dim": 1}, rule=self)
        return out

    def cut(self, m, site, keep):
        slice_dense(m, keep(site.data["out"]), keep(site.data["in"]))


def slice_dense(m: nn.Linear | nn.Conv2d, out_k: np.ndarray, in_k: np.ndarray) -> None:
    """Keep the output rows ``out_k`` and input columns ``in_k`` (boolean masks) of an ``nn.Linear`` or an ungrouped
    conv (weights ``[out, in, ...]`` both): weight, bias and the feature or channel counts (the tensors are copies,
    never the original's)."""
    set_param(m, "weight", take(take(m.weight.data, 0, out_k), 1, in_k))
    if m.bias is not None:
        set_param(m, "bias", take(m.bias.data, 0, out_k))
    if isinstance(m, nn.Linear):
        m.in_features, m.out_features = int(in_k.sum()), int(out_k.sum())
    else:
        m.in_channels, m.out_channels = int(in_k.sum()), int(out_k.sum())


class PReLU(ChannelRule):
    def analyse(self, p, node, m, x, value):
        if m.num_parameters == 1:
            return p.same_layout(node, x, value)
        return PerChannel(("weight",), ("num_parameters",), kind="prelu").analyse(p, node, m, x, value)


@dataclass
class GroupNorm(ChannelRule):
    """nn.GroupNorm (and timm's GroupNorm/GroupNormAct): whole groups are removed (a group's channels are one
    unit), so the statistics of the groups that stay do not change. One group normalises over every channel:
    locked."""
    tail: tuple = ()

    def analyse(self, p, node, m, x, value):
        name = str(node.target)
        what = f"{type(m).__name__} '{name}'"
        if x is None or x.cdims != (1,) or not isinstance(value, torch.Tensor) or tuple(value.shape) != x.shape:
            return p.lock_all(node, value, f"{what} over a tensor whose channels are not on dim 1")
        reason = tail_without_rule(m, self.tail, what)
        if reason:
            return p.lock_all(node, value, reason)
        g = m.num_groups
        if g == 1:
            return p.lock_all(node, value, f"{what} has a single group: it normalises over every channel")
        per = x.shape[1] // g
        gid = x.elem.reshape(g, per)
        p.union(np.repeat(gid[:, :1], per, 1), gid)
        if getattr(m, "weight", None) is not None:
            p.add_site("bn", node, name, {"elem": x.elem, "per": per}, rule=self)
        return TI(x.shape, x.cdims, x.elem)

    def cut(self, m, site, keep):
        k = idx(keep(site.data["elem"]))
        for n in ("weight", "bias"):
            t = getattr(m, n, None)
            if isinstance(t, torch.Tensor):
                set_param(m, n, t.data.index_select(0, k))
        m.num_channels = len(k)
        m.num_groups = len(k) // site.data["per"]


@dataclass
class LayerNorm(ChannelRule):
    """nn.LayerNorm over trailing dims. Over the channel dim (ConvNeXt's channels-last LayerNorm, timm's
    LayerNorm2d with ``channels_first``), removing a channel changes every other channel a little: locked, unless
    the graph was built with ``approximate=True``, where the channel is dropped from the normalisation (weight and
    bias sliced) and the group carries a note saying so."""
    channels_first: bool = False
    tail: tuple = ()

    def analyse(self, p, node, m, x, value):
        name = str(node.target)
        what = f"{type(m).__name__} '{name}'"
        if x is None or not isinstance(value, torch.Tensor) or tuple(value.shape) != x.shape:
            return p.lock_all(node, value, f"{what}: unexpected shapes")
        reason = tail_without_rule(m, self.tail, what)
        if reason:
            return p.lock_all(node, value, reason)
        nd = len(x.shape)
        k = len(m.normalized_shape)
        normed = {1} if self.channels_first else set(range(nd - k, nd))
        if not (set(x.cdims) & normed):
            return TI(x.shape, x.cdims, x.elem)  # weight/bias have the normalised (non-channel) shape
        channel_dim = 1 if self.channels_first else nd - 1
        if k != 1 or x.cdims != (channel_dim,):
            return p.lock_all(node, value, f"{what} normalises over the channel dim (at node '{node.name}') together "
                                           "with other dims")
        if not p.approximate:
            return p.lock_all(node, value, f"{what} normalises over the channel dim (at node '{node.name}'), so "
                                           "removing a channel would change every other channel (build the graph "
                                           "with approximate=True to prune it anyway)")
        p.note(x.elem, f"approximate: {what} renormalises over the remaining channels")
        if getattr(m, "weight", None) is not None or getattr(m, "bias", None) is not None:
            p.add_site("bn", node, name, {"elem": x.elem}, rule=PerChannel(("weight", "bias"), ("normalized_shape",)))
        return TI(x.shape, x.cdims, x.elem)


class Embedding(ChannelRule):
    """nn.Embedding: writes fresh channels (the embedding dims) on the last dim, e.g. into a Conv1d stem after a
    transpose. Its weight rows are vocabulary entries, so weight criteria do not score it (member without module)."""

    def analyse(self, p, node, m, x, value):
        if not isinstance(value, torch.Tensor) or value.dim() < 1 or value.shape[-1] != m.embedding_dim:
            return p.lock_all(node, value, f"{p.where(node)}: unexpected shapes")
        out = p.fresh(tuple(value.shape), -1)
        p.add_site("embedding", node, str(node.target), {"out": out.elem}, rule=self)
        return out

    def cut(self, m, site, keep):
        k = keep(site.data["out"])
        set_param(m, "weight", take(m.weight.data, 1, k))
        m.embedding_dim = int(k.sum())


@dataclass
class PixelShuffle(ChannelRule):
    """nn.PixelShuffle(r): output channel c is made of input channels c*r²..(c+1)*r²-1 (one block, one unit)."""

    def analyse(self, p, node, m, x, value):
        r2 = m.upscale_factor ** 2
        if x is None or x.cdims != (1,):
            return p.lock_all(node, value, f"{p.where(node)}: channels are not on dim 1")
        blocks = x.elem.reshape(-1, r2)
        p.union(np.repeat(blocks[:, :1], r2, 1), blocks)
        return TI(tuple(value.shape), (1,), blocks[:, 0].copy())


@dataclass
class PixelUnshuffle(ChannelRule):
    """nn.PixelUnshuffle(r): input channel c becomes output channels c*r²..(c+1)*r²-1."""

    def analyse(self, p, node, m, x, value):
        if x is None or x.cdims != (1,):
            return p.lock_all(node, value, f"{p.where(node)}: channels are not on dim 1")
        return TI(tuple(value.shape), (1,), np.repeat(x.elem, m.downscale_factor ** 2))


class ModuleMove(ChannelRule):
    """A module that only moves data (nn.Flatten, nn.Unflatten): the op is replayed on element ids."""
    inherit_forward = False

    def analyse(self, p, node, m, x, value):
        if x is None:
            return p.lock_all(node, value, f"{p.where(node)}: no channel input")
        return move(p, node, value, lambda t: m(t), x)


class ModuleSoftmax(ChannelRule):
    """nn.Softmax: softmax over ``m.dim``."""

    def analyse(self, p, node, m, x, value):
        return softmax(p, node, x, m.dim, value)


# -- the table ---------------------------------------------------------------------------------------------------

#: pooling, resampling and padding layers: channel i in, channel i out, spatial size may change
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
         nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
         nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
         nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
         nn.ReflectionPad3d, nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d)


def _register() -> None:
    ew = Elementwise()
    for t in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
              nn.ELU, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
              nn.AlphaDropout, nn.SELU, nn.CELU, nn.Hardtanh, nn.Tanhshrink, nn.Softsign):
        register_channel_rule(t, ew)
    pools = Op(spatial, needs_channels=True)
    for t in POOLS:
        register_channel_rule(t, pools)
    bn = PerChannel()
    for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
              nn.InstanceNorm3d):
        register_channel_rule(t, bn)
    conv = Conv()
    for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
        register_channel_rule(t, conv)
    register_channel_rule(nn.Linear, Linear())
    register_channel_rule(nn.Embedding, Embedding())
    register_channel_rule(nn.PReLU, PReLU())
    register_channel_rule(nn.GroupNorm, GroupNorm())
    register_channel_rule(nn.LayerNorm, LayerNorm())
    register_channel_rule(nn.PixelShuffle, PixelShuffle())
    register_channel_rule(nn.PixelUnshuffle, PixelUnshuffle())
    register_channel_rule(nn.Flatten, ModuleMove())
    register_channel_rule(nn.Unflatten, ModuleMove())
    register_channel_rule(nn.Softmax, ModuleSoftmax())
    register_channel_rule(nn.LocalResponseNorm, Lock("LocalResponseNorm normalises across channels"))


_register()
