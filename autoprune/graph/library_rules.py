"""Built-in channel rules of other libraries' layers: timm's (registered by qualified class name, so timm is never
imported: it is optional) and torchvision's (a dependency). They reuse the ``torch.nn`` rules of
:mod:`~autoprune.graph.layer_rules` and use only the :class:`~autoprune.graph.rules.RuleContext` protocol.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torchvision.ops import stochastic_depth

from .layout import TI
from .layer_rules import Conv, GroupNorm, LayerNorm, Linear, PReLU
from .op_rules import Op, move_call, same_layout, spatial
from .rules import ChannelRule, Elementwise, PerChannel, register_channel_rule, set_param, take

__all__ = ["FixedFilter"]


@dataclass
class FixedFilter(ChannelRule):
    """A fixed depthwise filter applied per channel (timm's ``BlurPool2d``: ``F.conv2d(x, filt, groups=C)`` with a
    constant ``[C or 1, 1, k, k]`` buffer): channel i in, channel i out, spatial size may change. When the buffer
    holds one row per channel (``channels`` set), surgery slices it. The cost model counts its MACs as fvcore does
    (``C * k * k`` per output position)."""
    filt: str = "filt"
    count: str = "channels"

    def analyse(self, p, node, m, x, value):
        out = spatial(p, node, x, value) if x is not None else p.lock_all(node, value, "no channel input")
        if isinstance(out, TI) and x is not None and x.cdims == (1,):
            w = getattr(m, self.filt)
            p.add_site("filter", node, str(node.target), {"elem": x.elem, "k": int(np.prod(w.shape[2:]))}, rule=self)
        return out

    def cut(self, m, site, keep):
        w = getattr(m, self.filt)
        k = keep(site.data["elem"])
        if w.shape[0] == len(k) and w.shape[0] > 1:
            set_param(m, self.filt, take(w.data, 0, k))
            if getattr(m, self.count, None) is not None:
                setattr(m, self.count, int(k.sum()))


# -- the table ---------------------------------------------------------------------------------------------------

def _register() -> None:
    # timm (by name). Norm+act layers are per-channel affine + statistics, then act and drop.
    tl = "timm.layers."
    for n in ("norm_act.BatchNormAct2d", "norm_act.SyncBatchNormAct", "norm_act.FrozenBatchNormAct2d"):
        register_channel_rule(tl + n, PerChannel(tail=("act", "drop")))
    register_channel_rule("torchvision.ops.misc.FrozenBatchNorm2d", PerChannel(counts=()))
    register_channel_rule(tl + "norm_act.GroupNormAct", GroupNorm(tail=("act", "drop")))
    register_channel_rule(tl + "norm_act.GroupNorm1Act", GroupNorm(tail=("act", "drop")))
    register_channel_rule(tl + "norm.GroupNorm", GroupNorm())
    register_channel_rule(tl + "norm.GroupNorm1", GroupNorm())
    register_channel_rule(tl + "norm.LayerNorm", LayerNorm())
    register_channel_rule(tl + "norm.LayerNorm2d", LayerNorm(channels_first=True))
    register_channel_rule(tl + "norm_act.LayerNormAct", LayerNorm(tail=("act", "drop")))
    register_channel_rule(tl + "norm_act.LayerNormAct2d", LayerNorm(channels_first=True, tail=("act", "drop")))
    register_channel_rule(tl + "conv2d_same.Conv2dSame", Conv())
    register_channel_rule(tl + "linear.Linear", Linear())  # F.linear, with a dtype cast under torchscript only
    register_channel_rule(tl + "blur_pool.BlurPool2d", FixedFilter())
    pools = Op(spatial, needs_channels=True)
    register_channel_rule(tl + "pool2d_same.MaxPool2dSame", pools)
    register_channel_rule(tl + "pool2d_same.AvgPool2dSame", pools)
    ew = Elementwise()
    for n in ("GELUTanh", "Swish", "Mish", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "HardMish", "GELU",
              "QuickGELU", "PReLU"):
        register_channel_rule(tl + "activations." + n, ew if n != "PReLU" else PReLU())
    for n in ("SwishMe", "MishMe", "HardSigmoidMe", "HardSwishMe", "HardMishMe"):
        register_channel_rule(tl + "activations_me." + n, ew)
    # timm's window/grid un-partitioning (notrace functions: one call each), pure data movement
    moves = Op(move_call)
    for n in ("swin_transformer.window_reverse", "swin_transformer_v2.window_reverse", "davit.window_reverse",
              "gcvit.window_reverse", "swin_transformer_v2_cr.window_reverse", "maxxvit.window_reverse",
              "maxxvit.grid_reverse", "maxxvit.window_reverse_nchw", "maxxvit.grid_reverse_nchw"):
        register_channel_rule("timm.models." + n, moves)
    # torchvision's stochastic depth scales whole samples (or is the identity in eval): channel-preserving
    register_channel_rule(stochastic_depth, Op(same_layout))


_register()
