"""Channel rules: the public rule API and the open table, looked up by module type (walking the MRO) or by function
/ tensor method.

A rule says two things about one kind of operation:

* ``analyse(p, node, module, x, value)``: how channels flow through it. ``p`` is the propagator, seen through
  :class:`RuleContext` (the whole of what rules may use, built-in ones included), ``x`` the channel layout
  (:class:`~autoprune.graph.layout.TI`) of the first tensor argument, ``value`` the real output. It returns the
  output's layout, and may tie channels together (``p.union``), lock them with a reason (``p.lock_all``) or record a
  site that surgery will cut.
* ``cut(module, site, keep)``: for module rules that own parameters, how to slice them once the kept channels
  are known (``keep(elem)`` gives a boolean mask over an element array recorded in ``site.data``).

Users extend the table with :func:`register_channel_rule`, in the manner of fvcore's ``set_op_handle`` and
Torch-Pruning's customised pruners. A module with a rule is kept as a leaf while tracing (its forward is not
inlined), so the rule fully describes it; a subclass that overrides ``forward`` does not inherit its parent's rule
(its forward may do something else) unless the rule sets ``inherit_forward``: it is traced through instead.

The built-in entries register themselves through :func:`register_channel_rule` when their modules are imported
(the propagator and the tracer import them): :mod:`~autoprune.graph.op_rules` (torch functions and tensor
methods), :mod:`~autoprune.graph.layer_rules` (``torch.nn`` layers) and :mod:`~autoprune.graph.library_rules`
(timm layers, registered by qualified class name so timm is never imported, and torchvision's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from .layout import TI, Site

__all__ = ["ChannelRule", "Elementwise", "PerChannel", "Dense", "Lock", "register_channel_rule",
           "lookup_module", "lookup_function", "lookup_method", "RuleContext", "tail_without_rule",
           "idx", "take", "set_param"]


class RuleContext(Protocol):
    """What a rule may call on the propagator ``p`` (the built-in rules use nothing else)."""

    approximate: bool                                                        # approximate rules allowed?

    def fresh(self, shape: tuple, dim: int | None = 1) -> TI:
        """A layout of ``shape`` with new channel elements along ``dim`` (none: one element for the whole tensor)."""

    def fresh_like(self, value: Any, reason: str | None) -> Any:
        """New elements for every tensor in ``value`` (channels on dim 1, dim 0 for a 1-d tensor), locked with
        ``reason`` unless it is None; a list for a tuple or list of values, None for anything else."""

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Tie elements ``a[i]`` and ``b[i]`` (removed together)."""

    def lock(self, ids: np.ndarray, reason: str) -> None:
        """Elements that may never be removed, and why."""

    def note(self, ids: np.ndarray, text: str) -> None:
        """An approximation, shown on the groups holding ``ids``."""

    def lock_all(self, node: fx.Node, value: Any, reason: str) -> Any:
        """Lock every channel flowing into ``node`` and out of it; returns the output's (locked) layout."""

    def same_layout(self, node: fx.Node, x: TI | None, value: Any) -> Any:
        """Channel i in, channel i out (several tensor arguments broadcast like a binary op)."""

    def where(self, node: fx.Node) -> str:
        """``"op at node 'n' in module"``, to start a lock reason."""

    def add_site(self, kind: str, node: fx.Node, module: str | None, data: dict, rule: Any = None) -> Site:
        """Record a place that surgery cuts, the cost model counts, or criteria score (see :class:`Site`)."""

    def layout(self, arg: Any) -> Any:
        """The layout computed for an earlier node ``arg``: a :class:`TI`, a list (a tuple output), or None (no
        channels, or ``arg`` is not a node)."""

    def arg_layouts(self, args: Any) -> list:
        """Every :class:`TI` an argument structure (nodes in nested tuples, lists and dicts) refers to, flattened."""

    def real(self, args: Any) -> Any:
        """The argument structure with each node replaced by its real value (dims, sizes, tensors)."""

    def check_constant_shape(self, node: fx.Node, out: TI, dims: list, shape: list) -> None:
        """``shape`` (written in the model code, e.g. ``x.view(-1, 256)``) gives the channel dims ``dims`` of
        ``out`` as constants: at the end of the analysis, lock the channels feeding it (with the source line) unless
        every slice along those dims loses the same channel sets."""


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

    def cut(self, module: nn.Module, site: Site, keep: Callable[[np.ndarray], np.ndarray]) -> nn.Module | None:
        """Slice ``module``'s parameters to the kept channels (module rules that record a site); or return a new
        module that replaces it (a layer that cannot hold the pruned shapes: ``nn.MultiheadAttention``)."""


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


def tail_without_rule(module: nn.Module, tail: tuple, what: str) -> str | None:
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
        reason = tail_without_rule(module, self.tail, what)
        if reason:
            return p.lock_all(node, value, reason)
        owned = [n for n in self.params if isinstance(getattr(module, n, None), torch.Tensor)]
        if any(getattr(module, n).dim() == 0 or getattr(module, n).shape[0] != x.shape[d] for n in owned):
            return p.lock_all(node, value, f"{what}: parameters do not hold one entry per channel")
        if owned:
            p.add_site(self.kind, node, name, {"elem": x.elem}, rule=self)
        return TI(x.shape, x.cdims, x.elem)

    def cut(self, module, site, keep):
        self.keep_channels(module, keep(site.data["elem"]))

    def keep_channels(self, module: nn.Module, kept: np.ndarray) -> None:
        """Keep the channels ``kept`` (a boolean mask) of every tensor in ``params`` and every count in ``counts``."""
        k = idx(kept)
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
    rule too), a qualified class or function name ``"package.module.Name"`` (registers without importing the
    package; a function so named is one that stays a single call in the graph, e.g. timm's notrace functions), a
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
        rule = _FUNCTIONS.get(target)
    except TypeError:  # unhashable target
        return None
    if rule is None and callable(target) and hasattr(target, "__qualname__"):  # a function registered by name
        rule = _MODULES.get(f"{getattr(target, '__module__', '')}.{target.__qualname__}")
    return rule


def lookup_method(name: str) -> ChannelRule | None:
    return _METHODS.get(name)
