"""Channel rules: an open table, looked up by module type (walking the MRO) or by function / tensor method.

A rule says two things about one kind of operation:

* ``analyse(p, node, module, x, value)``: how channels flow through it. ``p`` is the propagator (see
  :class:`RuleContext` for the part rules may use), ``x`` the channel layout (:class:`~autoprune.graph.layout.TI`)
  of the first tensor argument, ``value`` the real output. It returns the output's layout, and may tie channels
  together (``p.union``), lock them with a reason (``p.lock_all``) or record a site that surgery will cut.
* ``cut(module, site, keep)``: for module rules that own parameters, how to slice them once the kept channels
  are known (``keep(elem)`` gives a boolean mask over an element array recorded in ``site.data``).

Users extend the table with :func:`register_channel_rule`, in the manner of fvcore's ``set_op_handle`` and
Torch-Pruning's customised pruners. A module with a rule is kept as a leaf while tracing (its forward is not
inlined), so the rule fully describes it; a subclass that overrides ``forward`` does not inherit its parent's rule
(its forward may do something else) unless the rule sets ``inherit_forward``: it is traced through instead.
Modules from optional libraries (timm) are registered by qualified class name, so nothing is imported here.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .layout import TI, Site

__all__ = ["ChannelRule", "Elementwise", "PerChannel", "Dense", "Lock", "register_channel_rule",
           "lookup_module", "lookup_function", "lookup_method", "RuleContext"]


class RuleContext(Protocol):
    """What a rule may call on the propagator ``p``."""

    approximate: bool                                                        # approximate rules allowed?

    def fresh(self, shape: tuple, dim: int | None = 1) -> TI: ...            # new channel elements along ``dim``
    def union(self, a: np.ndarray, b: np.ndarray) -> None: ...              # tie elements (removed together)
    def lock(self, ids: np.ndarray, reason: str) -> None: ...               # elements that may never be removed
    def note(self, ids: np.ndarray, text: str) -> None: ...                 # an approximation, shown on groups
    def lock_all(self, node: fx.Node, value: Any, reason: str) -> Any: ...  # lock every input and the output
    def same_layout(self, node: fx.Node, x: TI | None, value: Any) -> Any: ...  # channel i in, channel i out
    def where(self, node: fx.Node) -> str: ...                              # "op at node 'n' in module" for reasons
    def add_site(self, kind: str, node: fx.Node, module: str | None, data: dict, rule: Any = None) -> Site: ...


# -- tensor slicing helpers shared with surgery ------------------------------------------------------------------

def idx(mask: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.nonzero(mask)[0], dtype=torch.long)


def take(t: torch.Tensor, dim: int, mask: np.ndarray) -> torch.Tensor:
    """Rows of ``t`` along ``dim`` where ``mask``; the tensor itself when nothing is cut (cloned later once)."""
    return t if bool(np.all(mask)) else t.index_select(dim, idx(mask))


def set_param(m: nn.Module, name: str, value: torch.Tensor | None) -> None:
    """Replace parameter or buffer ``name`` of ``m`` by ``value`` (a Parameter stays a Parameter)."""
    if value is None:
        return
    old = getattr(m, name)
    if isinstance(old, nn.Parameter):
        setattr(m, name, nn.Parameter(value.clone(), requires_grad=old.requires_grad))
    else:
        m._buffers[name] = value.clone()


# -- rule classes ------------------------------------------------------------------------------------------------

class ChannelRule:
    """Base class of channel rules (subclass it for layers the presets below do not describe)."""

    #: may a subclass of the registered module type that overrides ``forward`` use this rule?
    inherit_forward: bool = False

    def analyse(self, p: RuleContext, node: fx.Node, module: nn.Module | None, x: TI | None, value: Any) -> Any:
        raise NotImplementedError

    def cut(self, module: nn.Module, site: Site, keep: Callable[[np.ndarray], np.ndarray]) -> None:
        """Slice ``module``'s parameters to the kept channels (module rules that record a site)."""


class Elementwise(ChannelRule):
    """Output channel i depends only on input channel i, no parameters: activations, dropout, identity."""

    def analyse(self, p, node, module, x, value):
        return p.same_layout(node, x, value)


class Lock(ChannelRule):
    """Every channel flowing in or out is locked, with ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def analyse(self, p, node, module, x, value):
        return p.lock_all(node, value, f"{p.where(node)}: {self.reason}")


def _tail_without_rule(module: nn.Module, tail: tuple, what: str) -> str | None:
    """Why a norm's element-wise tail (``act``, ``drop``...) blocks pruning: its first submodule without an
    element-wise rule; None when every one has one."""
    for t in tail:
        sub = getattr(module, t, None)
        if sub is not None and not isinstance(lookup_module(sub), Elementwise):
            return (f"{what} applies '{t}' ({type(sub).__name__}), which has no element-wise rule (register one with "
                    "register_channel_rule)")
    return None


@dataclass
class PerChannel(ChannelRule):
    """A per-channel layer (norms with statistics, per-channel scales): channels on ``dim`` of the input, every
    tensor in ``params`` holds one entry per channel along its dim 0, the integer (or 1-tuple) attributes in
    ``counts`` hold the number of channels. ``tail`` names submodules applied after it (timm's ``BatchNormAct2d``
    has ``act`` and ``drop``): each must have an element-wise rule, or the channels are locked."""
    params: tuple = ("weight", "bias", "running_mean", "running_var")
    counts: tuple = ("num_features",)
    dim: int = 1
    tail: tuple = ()
    kind: str = "bn"

    def analyse(self, p, node, module, x, value):
        name = str(node.target)
        what = f"{type(module).__name__} '{name}'"
        if x is None or not isinstance(value, torch.Tensor) or tuple(value.shape) != x.shape:
            return p.lock_all(node, value, f"{what}: unexpected shapes")
        d = self.dim % len(x.shape)
        if x.cdims != (d,):
            return p.lock_all(node, value, f"{what} over a tensor whose channels are not on dim {self.dim}")
        reason = _tail_without_rule(module, self.tail, what)
        if reason:
            return p.lock_all(node, value, reason)
        owned = [n for n in self.params if isinstance(getattr(module, n, None), torch.Tensor)]
        if any(getattr(module, n).dim() == 0 or getattr(module, n).shape[0] != x.shape[d] for n in owned):
            return p.lock_all(node, value, f"{what}: parameters do not hold one entry per channel")
        if owned:
            p.add_site(self.kind, node, name, {"elem": x.elem}, rule=self)
        return TI(x.shape, x.cdims, x.elem)

    def cut(self, module, site, keep):
        k = idx(keep(site.data["elem"]))
        for n in self.params:
            t = getattr(module, n, None)
            if isinstance(t, torch.Tensor):
                set_param(module, n, t.data.index_select(0, k))
        for c in self.counts:
            if hasattr(module, c):
                old = getattr(module, c)
                setattr(module, c, (len(k),) if isinstance(old, tuple) else len(k))


@dataclass
class Dense(ChannelRule):
    """A dense layer (conv- or linear-like, no groups) reading channels on dim 1 of its input and writing fresh
    channels on dim 1 of its output. ``weight`` holds output channels on ``out_dim`` and input channels on
    ``in_dim``; ``bias`` one entry per output channel; ``in_count``/``out_count`` name the attributes to update.
    The cost model counts ``out * in * (other weight dims) * (output positions)`` MACs, as fvcore does for conv
    and linear layers."""
    weight: str = "weight"
    bias: str | None = "bias"
    out_dim: int = 0
    in_dim: int = 1
    in_count: str | None = "in_channels"
    out_count: str | None = "out_channels"

    def analyse(self, p, node, module, x, value):
        name = str(node.target)
        if x is None or x.cdims != (1,) or not isinstance(value, torch.Tensor) or value.dim() < 2:
            return p.lock_all(node, value, f"{type(module).__name__} '{name}' input channels are not on dim 1")
        out = p.fresh(tuple(value.shape), 1)
        p.add_site("conv", node, name, {"in": x.elem, "out": out.elem, "groups": 1, "in_dim": self.in_dim,
                                        "transposed": False, "in_shape": x.shape}, rule=self)
        return out

    def cut(self, module, site, keep):
        out_k, in_k = keep(site.data["out"]), keep(site.data["in"])
        w = getattr(module, self.weight)
        set_param(module, self.weight, take(take(w.data, self.out_dim, out_k), self.in_dim, in_k))
        b = getattr(module, self.bias, None) if self.bias else None
        if isinstance(b, torch.Tensor):
            set_param(module, self.bias, take(b.data, 0, out_k))
        if self.in_count:
            setattr(module, self.in_count, int(in_k.sum()))
        if self.out_count:
            setattr(module, self.out_count, int(out_k.sum()))


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
                                                     "in_shape": p.values.get(node.args[0].name)}, self)
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
        out_k, in_k = keep(site.data["out"]), keep(site.data["in"])
        m.weight = nn.Parameter(take(take(m.weight.data, 0, out_k), 1, in_k).clone(),
                                requires_grad=m.weight.requires_grad)
        if m.bias is not None:
            set_param(m, "bias", take(m.bias.data, 0, out_k))
        m.in_features, m.out_features = int(in_k.sum()), int(out_k.sum())


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
        reason = _tail_without_rule(m, self.tail, what)
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
        reason = _tail_without_rule(m, self.tail, what)
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
class FixedFilter(ChannelRule):
    """A fixed depthwise filter applied per channel (timm's ``BlurPool2d``: ``F.conv2d(x, filt, groups=C)`` with a
    constant ``[C or 1, 1, k, k]`` buffer): channel i in, channel i out, spatial size may change. When the buffer
    holds one row per channel (``channels`` set), surgery slices it. The cost model counts its MACs as fvcore does
    (``C * k * k`` per output position)."""
    filt: str = "filt"
    count: str = "channels"

    def analyse(self, p, node, m, x, value):
        out = p.spatial(node, x, value) if x is not None else p.lock_all(node, value, "no channel input")
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


class _Method(ChannelRule):
    """A built-in rule implemented by a propagator method (``p.<name>(node, x, value)``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def analyse(self, p, node, module, x, value):
        if x is None and self.name in ("spatial", "reduce", "split", "pad"):
            return p.lock_all(node, value, f"{p.where(node)}: no channel input")
        return getattr(p, self.name)(node, x, value)


class _ModuleMove(ChannelRule):
    """A module that only moves data (nn.Flatten, nn.Unflatten): the op is replayed on element ids."""
    inherit_forward = False

    def analyse(self, p, node, m, x, value):
        if x is None:
            return p.lock_all(node, value, f"{p.where(node)}: no channel input")
        return p.move(node, value, lambda t: m(t), x)


class _ModuleSoftmax(ChannelRule):
    def analyse(self, p, node, m, x, value):
        return p.softmax(node, x, m.dim, value)


# -- the table ---------------------------------------------------------------------------------------------------

_MODULES: dict[Any, ChannelRule] = {}    # type or "module.QualName" -> rule
_FUNCTIONS: dict[Any, ChannelRule] = {}  # callable or autograd.Function subclass -> rule
_METHODS: dict[str, ChannelRule] = {}    # tensor method name -> rule

_PRESETS: dict[str, Callable[[], ChannelRule]] = {
    "elementwise": Elementwise,
    "per_channel": PerChannel,
    "dense": Dense,
}


def register_channel_rule(target: Any, rule: ChannelRule | str) -> ChannelRule:
    """Register how channels flow through ``target``; returns the rule.

    ``target``: an ``nn.Module`` subclass (looked up along the MRO: subclasses that keep its ``forward`` use the
    rule too), a qualified class name ``"package.module.Class"`` (registers without importing the package), a
    ``torch.autograd.Function`` subclass (its ``apply`` becomes one node of the graph), a function
    (``torch.nn.functional.xxx`` or your own wrapped one), or ``"Tensor.<method>"``.

    ``rule``: a :class:`ChannelRule`, or one of the presets ``"elementwise"`` (no parameters, channel i -> channel
    i), ``"per_channel"`` (:class:`PerChannel` with BatchNorm-like parameter names), ``"dense"`` (:class:`Dense`,
    a conv-like layer with ``weight [out, in, ...]``, ``bias``, ``in_channels``/``out_channels``).
    A later registration for the same target replaces the earlier one.
    """
    if isinstance(rule, str):
        if rule not in _PRESETS:
            raise ValueError(f"unknown rule preset {rule!r}; choose one of {sorted(_PRESETS)} or pass a ChannelRule")
        rule = _PRESETS[rule]()
    if not isinstance(rule, ChannelRule):
        raise TypeError(f"rule must be a ChannelRule or a preset name, got {type(rule).__name__}")
    if isinstance(target, type) and issubclass(target, nn.Module):
        _MODULES[target] = rule
    elif isinstance(target, type) and issubclass(target, torch.autograd.Function):
        _FUNCTIONS[target] = rule
    elif isinstance(target, str) and target.startswith("Tensor."):
        _METHODS[target[len("Tensor."):]] = rule
    elif isinstance(target, str) and "." in target:
        _MODULES[target] = rule
    elif callable(target) and not isinstance(target, type):
        _FUNCTIONS[target] = rule
    else:
        raise TypeError(f"cannot register a channel rule for {target!r}: pass an nn.Module subclass, a qualified "
                        "class name, an autograd.Function subclass, a function or 'Tensor.<method>'")
    return rule


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def lookup_module(m: nn.Module) -> ChannelRule | None:
    """The rule of ``m``'s class or its nearest registered base class; None if that base's ``forward`` was
    overridden (the subclass is traced through) or nothing matches."""
    cls = type(m)
    for base in cls.__mro__:
        rule = _MODULES.get(base) or _MODULES.get(_qualname(base))
        if rule is not None:
            if base is cls or rule.inherit_forward or getattr(cls, "forward", None) is getattr(base, "forward", None):
                return rule
            return None
    return None


def lookup_function(target: Any) -> ChannelRule | None:
    fn_cls = getattr(target, "_autoprune_function", None)
    if fn_cls is not None:
        for base in fn_cls.__mro__:
            if base in _FUNCTIONS:
                return _FUNCTIONS[base]
        return None
    try:
        return _FUNCTIONS.get(target)
    except TypeError:  # unhashable target
        return None


def lookup_method(name: str) -> ChannelRule | None:
    return _METHODS.get(name)


# -- built-in entries ------------------------------------------------------------------------------------------

def _builtins() -> None:
    ew = Elementwise()
    for t in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
              nn.ELU, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
              nn.AlphaDropout, nn.SELU, nn.CELU, nn.Hardtanh, nn.Tanhshrink, nn.Softsign):
        _MODULES[t] = ew
    spatial = _Method("spatial")
    for t in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
              nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
              nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
              nn.UpsamplingBilinear2d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
              nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
              nn.ReplicationPad2d, nn.ReplicationPad3d):
        _MODULES[t] = spatial
    bn = PerChannel()
    for t in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm1d, nn.InstanceNorm2d,
              nn.InstanceNorm3d):
        _MODULES[t] = bn
    conv = Conv()
    for t in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
        _MODULES[t] = conv
    _MODULES[nn.Linear] = Linear()
    _MODULES[nn.Embedding] = Embedding()
    _MODULES[nn.PReLU] = PReLU()
    _MODULES[nn.GroupNorm] = GroupNorm()
    _MODULES[nn.LayerNorm] = LayerNorm()
    _MODULES[nn.PixelShuffle] = PixelShuffle()
    _MODULES[nn.PixelUnshuffle] = PixelUnshuffle()
    _MODULES[nn.Flatten] = _ModuleMove()
    _MODULES[nn.Unflatten] = _ModuleMove()
    _MODULES[nn.Softmax] = _ModuleSoftmax()
    _MODULES[nn.LocalResponseNorm] = Lock("LocalResponseNorm normalises across channels")

    # timm (by name: timm is optional). Norm+act layers are per-channel affine + statistics, then act and drop.
    tl = "timm.layers."
    for n in ("norm_act.BatchNormAct2d", "norm_act.SyncBatchNormAct", "norm_act.FrozenBatchNormAct2d"):
        _MODULES[tl + n] = PerChannel(tail=("act", "drop"))
    _MODULES["torchvision.ops.misc.FrozenBatchNorm2d"] = PerChannel(counts=())
    _MODULES[tl + "norm_act.GroupNormAct"] = GroupNorm(tail=("act", "drop"))
    _MODULES[tl + "norm_act.GroupNorm1Act"] = GroupNorm(tail=("act", "drop"))
    _MODULES[tl + "norm.GroupNorm"] = GroupNorm()
    _MODULES[tl + "norm.GroupNorm1"] = GroupNorm()
    _MODULES[tl + "norm.LayerNorm"] = LayerNorm()
    _MODULES[tl + "norm.LayerNorm2d"] = LayerNorm(channels_first=True)
    _MODULES[tl + "norm_act.LayerNormAct"] = LayerNorm(tail=("act", "drop"))
    _MODULES[tl + "norm_act.LayerNormAct2d"] = LayerNorm(channels_first=True, tail=("act", "drop"))
    _MODULES[tl + "conv2d_same.Conv2dSame"] = conv
    _MODULES[tl + "linear.Linear"] = _MODULES[nn.Linear]  # F.linear, with a dtype cast under torchscript only
    _MODULES[tl + "blur_pool.BlurPool2d"] = FixedFilter()
    _MODULES[tl + "pool2d_same.MaxPool2dSame"] = spatial
    _MODULES[tl + "pool2d_same.AvgPool2dSame"] = spatial
    for n in ("GELUTanh", "Swish", "Mish", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "HardMish", "GELU",
              "QuickGELU", "PReLU"):
        _MODULES[tl + "activations." + n] = ew if n != "PReLU" else PReLU()
    for n in ("SwishMe", "MishMe", "HardSigmoidMe", "HardSwishMe", "HardMishMe"):
        _MODULES[tl + "activations_me." + n] = ew

    fns: dict[str, set] = {
        "same_layout": {F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.mish,
                        F.softplus, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.hardtanh, F.selu, F.celu,
                        F.tanhshrink, F.softsign, torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.clip,
                        torch.abs, torch.exp, torch.neg, torch.sqrt, torch.rsqrt, torch.square, F.sigmoid, F.tanh,
                        operator.neg, torch.relu_, F.relu_, torch.clone, torch.detach, torch.erf, torch.log},
        "binary_op": {operator.add, operator.mul, operator.sub, operator.truediv, operator.iadd, operator.imul,
                   operator.isub, operator.itruediv, torch.add, torch.mul, torch.sub, torch.div, torch.maximum,
                   torch.minimum, torch.addcmul},
        "spatial": {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
                    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate},
        "move_op": {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze},
        "getitem_op": {operator.getitem},
        "reduce": {torch.mean, torch.sum, torch.amax, torch.amin},
        "split": {torch.split, torch.chunk},
        "stack_op": {torch.stack},
        "cat_op": {torch.cat, torch.concat, torch.concatenate},
        "pad": {F.pad},
        "softmax_op": {F.softmax, torch.softmax, F.log_softmax},
        "layer_norm_fn": {F.layer_norm},
        "batch_norm_fn": {F.batch_norm},
        "group_norm_fn": {F.group_norm},
    }
    try:  # torchvision's stochastic depth scales whole samples (or is the identity in eval): channel-preserving
        from torchvision.ops import stochastic_depth

        fns["same_layout"].add(stochastic_depth)
    except Exception:  # pragma: no cover - torchvision is a dependency, but the engine does not need it
        pass
    for method, targets in fns.items():
        r = _Method(method)
        for t in targets:
            _FUNCTIONS[t] = r
    methods = {
        "same_layout": {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip",
                        "clip_", "abs", "exp", "neg", "sqrt", "rsqrt", "square", "contiguous", "clone", "detach",
                        "float", "half", "bfloat16", "double", "to", "type_as", "hardswish", "hardsigmoid",
                        "requires_grad_", "erf", "log"},
        "binary_op": {"add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_", "maximum", "minimum", "addcmul"},
        "move_op": {"view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze"},
        "getitem_op": {"__getitem__"},
        "reduce": {"mean", "sum", "amax", "amin"},
        "split": {"split", "chunk"},
        "softmax_op": {"softmax"},
    }
    for method, names in methods.items():
        r = _Method(method)
        for n in names:
            _METHODS[n] = r


_builtins()
