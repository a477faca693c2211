"""Channel dependency analysis over an fx graph.

Model. Every channel of every tensor is an *element* id. A tensor's channel layout is ``TI(shape, cdims, elem)``:
``cdims`` are the tensor dims that carry channels and ``elem`` (numpy, shape ``[shape[d] for d in cdims]``) holds
the element id at each position. Ids may repeat: after ``flatten`` a channel owns a block of H*W features, after a
depthwise conv with multiplier k a channel owns k outputs. Producers (conv/linear outputs, zero channels added by
``F.pad``) create fresh ids; ops that tie channels together (elementwise ops, residual adds, BN, grouped convs,
reshapes that split the channel dim) union ids in a union-find. The union-find's classes are *channel sets*: the
smallest units that can be removed, and each is removed everywhere at once.

Never silently wrong: any op without a rule here locks every element flowing into or out of it (with the reason),
as do the model's inputs and outputs, norms that mix channels (LayerNorm over channels, GroupNorm) and reductions or
softmax over channels.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["TI", "Elements", "Analysis", "analyse"]


@dataclass
class TI:
    """Channel layout of one tensor value."""
    shape: tuple
    cdims: tuple
    elem: np.ndarray

    def ids(self) -> torch.Tensor:
        """An int64 tensor of ``shape`` holding each position's element id (an expanded view, no copy)."""
        view = [1] * len(self.shape)
        for k, d in enumerate(self.cdims):
            view[d] = self.shape[d]
        return torch.as_tensor(self.elem, dtype=torch.int64).reshape(view).expand(self.shape)


class Elements:
    """Union-find over channel elements, with lock reasons and producer records."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.locks: list[tuple[np.ndarray, str]] = []

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                ra, rb = rb, ra
            self.parent[ra] = rb  # the smaller id (earlier in the graph) stays root: stable ordering

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        pairs = np.unique(np.stack([np.ravel(a), np.ravel(b)], 1), axis=0)
        for x, y in pairs:
            if x != y:
                self.union(int(x), int(y))

    def lock(self, ids: np.ndarray, reason: str) -> None:
        ids = np.unique(np.ravel(ids))
        if ids.size:
            self.locks.append((ids, reason))

    def freeze(self) -> None:
        """Resolve every element's root once; later look-ups are vectorised (no unions may follow)."""
        self.root_of = np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)

    def roots(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if getattr(self, "root_of", None) is not None and len(self.root_of) == len(self.parent):
            return self.root_of[ids]
        return np.array([self.find(int(i)) for i in np.ravel(ids)], dtype=np.int64).reshape(np.shape(ids))


@dataclass
class Site:
    """A place that reads (consumer) or writes (producer) channels, for surgery and scoring."""
    kind: str           # "conv", "linear", "bn", "prelu", "pad", "slice", "split", "input", "param", "unknown"
    node: str           # fx node name
    module: str | None  # qualified module name for module sites
    data: dict = field(default_factory=dict)


@dataclass
class Analysis:
    gm: fx.GraphModule
    elements: Elements
    info: dict              # node name -> TI | list[TI] | None
    values: dict            # node name -> real output value (shapes for validation)
    sites: list             # list[Site]
    node_module: dict       # node name -> owning module path (for naming)


# ---------------------------------------------------------------------------------------------------------------
# op tables

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU,
    nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.SELU, nn.CELU, nn.Hardtanh, nn.Tanhshrink, nn.Softsign,
)
_SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad2d,
    nn.ReflectionPad2d, nn.ReplicationPad2d,
)
_BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
               nn.InstanceNorm3d)
_CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

_ELEMENTWISE_FUNCS: set = {
    F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.mish, F.softplus,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.hardtanh, F.selu, F.celu, F.tanhshrink, F.softsign,
    torch.relu, torch.sigmoid, torch.tanh, torch.clamp, torch.clip, torch.abs, torch.exp, torch.neg, torch.sqrt,
    torch.square, torch.nn.functional.sigmoid, torch.nn.functional.tanh, operator.neg, torch.relu_,
    F.relu_, torch.clone, torch.detach,
}
try:  # torchvision's stochastic depth scales whole samples (or is the identity in eval): channel-preserving
    from torchvision.ops import stochastic_depth as _stochastic_depth

    _ELEMENTWISE_FUNCS.add(_stochastic_depth)
except Exception:  # pragma: no cover - torchvision is a dependency, but the engine does not need it
    pass
_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "clip_", "abs", "exp",
    "neg", "sqrt", "square", "contiguous", "clone", "detach", "float", "half", "bfloat16", "double", "to", "type_as",
    "hardswish", "hardsigmoid", "requires_grad_",
}
_BINARY_FUNCS: set = {operator.add, operator.mul, operator.sub, operator.truediv, operator.iadd, operator.imul,
                      operator.isub, operator.itruediv, torch.add, torch.mul, torch.sub, torch.div, torch.maximum,
                      torch.minimum}
_BINARY_METHODS = {"add", "add_", "mul", "mul_", "sub", "sub_", "div", "div_", "maximum", "minimum"}
_SPATIAL_FUNCS: set = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                       F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
                       F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate}
_MOVE_FUNCS: set = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
                    operator.getitem}
_MOVE_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "squeeze", "unsqueeze", "__getitem__"}
_REDUCE_FUNCS: set = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_SPLIT_FUNCS: set = {torch.split, torch.chunk}
_SPLIT_METHODS = {"split", "chunk"}
_CAT_FUNCS: set = {torch.cat, torch.concat, torch.concatenate}
_NONTENSOR_METHODS = {"size", "dim", "numel"}


def _fname(target: Any) -> str:
    return getattr(target, "__name__", None) or str(target)


# ---------------------------------------------------------------------------------------------------------------


class _Propagator(fx.Interpreter):
    """Runs the graph on example inputs and computes every node's channel layout."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.E = Elements()
        self.info: dict[str, Any] = {}
        self.values: dict[str, Any] = {}
        self.sites: list[Site] = []
        self.modules = dict(gm.named_modules())
        self.module_out: dict[str, np.ndarray] = {}   # module called twice: keep its channels consistent
        self.node_module: dict[str, str] = {}

    # -- helpers -------------------------------------------------------------------------------------------------
    def fresh(self, shape: tuple, dim: int | None = 1) -> TI:
        if len(shape) == 0 or dim is None:
            return TI(tuple(shape), (), self.E.new(1).reshape(()))
        dim = dim % len(shape)
        return TI(tuple(shape), (dim,), self.E.new(shape[dim]))

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
            reason = f"tensor attribute '{n.target}' used directly in the forward code"
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                big = [d for d in range(value.dim()) if value.shape[d] > 1]
                ti = self.fresh(tuple(value.shape), big[0] if big else 0)
                self.E.lock(ti.elem, reason)
                return ti
            return self.fresh_like(value, reason)
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

    # -- modules -------------------------------------------------------------------------------------------------
    def module_rule(self, n: fx.Node, m: nn.Module, value: Any) -> Any:
        ins = self.arg_infos(n.args[:1])
        x = ins[0] if ins else None
        name = str(n.target)
        if isinstance(m, _CONV_MODULES) and x is not None:
            return self.conv_rule(n, m, name, x, value)
        if isinstance(m, nn.Linear) and x is not None:
            if x.cdims not in ((len(x.shape) - 1,), ()) or (x.cdims == () and x.shape[-1] != 1):
                return self.lock_all(n, value, f"Linear '{name}' reads features that are not on its last dim")
            out = self.fresh(tuple(value.shape), -1)
            self.shared_module(name, out)
            self.sites.append(Site("linear", n.name, name, {"in": x.elem.reshape(-1), "out": out.elem}))
            return out
        if isinstance(m, _BN_MODULES) and x is not None:
            if x.cdims != (1,):
                return self.lock_all(n, value, f"{type(m).__name__} '{name}' over a tensor whose channels are "
                                               "not on dim 1")
            if getattr(m, "weight", None) is not None or getattr(m, "running_mean", None) is not None:
                self.sites.append(Site("bn", n.name, name, {"elem": x.elem}))
            return TI(tuple(value.shape), x.cdims, x.elem)
        if isinstance(m, nn.PReLU) and x is not None:
            if m.num_parameters > 1:
                if x.cdims != (1,):
                    return self.lock_all(n, value, f"PReLU '{name}' over channels not on dim 1")
                self.sites.append(Site("prelu", n.name, name, {"elem": x.elem}))
            return TI(tuple(value.shape), x.cdims, x.elem)
        if isinstance(m, _ELEMENTWISE_MODULES) and x is not None:
            return TI(tuple(value.shape), x.cdims, x.elem)
        if isinstance(m, _SPATIAL_MODULES) and x is not None:
            return self.spatial(n, x, value)
        if isinstance(m, nn.Flatten) and x is not None:
            return self.move(n, value, lambda t: m(t), x)
        if isinstance(m, nn.LayerNorm) and x is not None:
            return self.layer_norm(n, x, len(m.normalized_shape), value, f"LayerNorm '{name}'")
        if isinstance(m, (nn.GroupNorm, nn.LocalResponseNorm)):
            return self.lock_all(n, value, f"{type(m).__name__} '{name}' normalises across channels")
        if isinstance(m, nn.Softmax) and x is not None:
            return self.softmax(n, x, m.dim, value)
        return self.lock_all(n, value, f"module '{name}' of type {type(m).__name__} has no channel rule")

    def shared_module(self, name: str, out: TI) -> None:
        prev = self.module_out.get(name)
        if prev is None:
            self.module_out[name] = out.elem
        else:
            self.E.union_arrays(prev, out.elem)

    def conv_rule(self, n: fx.Node, m: nn.Conv2d, name: str, x: TI, value: torch.Tensor) -> TI:
        if x.cdims != (1,):
            return self.lock_all(n, value, f"{type(m).__name__} '{name}' input channels are not on dim 1")
        g, cin, cout = m.groups, m.in_channels, m.out_channels
        if g == 1:
            out = self.fresh(tuple(value.shape), 1)
            self.shared_module(name, out)
            self.sites.append(Site("conv", n.name, name, {"in": x.elem, "out": out.elem, "groups": 1}))
            return out
        # Grouped/depthwise conv: a group's inputs and outputs are removed together (whole groups), which keeps the
        # per-group widths the kernels were trained with.
        in_per, out_per = cin // g, cout // g
        gid = x.elem.reshape(g, in_per)
        if in_per > 1:
            self.E.union_arrays(np.repeat(gid[:, 0], in_per), gid.ravel())
        out_elem = np.repeat(gid[:, 0], out_per)
        self.sites.append(Site("conv", n.name, name, {"in": x.elem, "out": out_elem, "groups": g}))
        out = TI(tuple(value.shape), (1,), out_elem)
        self.shared_module(name, out)
        return out

    # -- functions and methods -----------------------------------------------------------------------------------
    def function_rule(self, n: fx.Node, value: Any) -> Any:
        t = n.target
        is_m = n.op == "call_method"
        tensors = [a for a in n.args if isinstance(a, fx.Node) and isinstance(self.info.get(a.name), TI)]
        x = self.info[tensors[0].name] if tensors else None

        if (not is_m and t in _ELEMENTWISE_FUNCS) or (is_m and t in _ELEMENTWISE_METHODS):
            if x is None or not isinstance(value, torch.Tensor) or tuple(value.shape) != x.shape:
                return self.lock_all(n, value, f"{self.where(n)}: unexpected shapes")
            return TI(x.shape, x.cdims, x.elem)
        if (not is_m and t in _BINARY_FUNCS) or (is_m and t in _BINARY_METHODS):
            return self.binary(n, value)
        if not is_m and t in _SPATIAL_FUNCS and x is not None:
            return self.spatial(n, x, value)
        if not is_m and t is F.pad and x is not None:
            return self.pad(n, x, value)
        if (not is_m and t in _CAT_FUNCS):
            return self.cat(n, value)
        if ((not is_m and t in _SPLIT_FUNCS) or (is_m and t in _SPLIT_METHODS)) and x is not None:
            return self.split(n, x, value)
        if ((not is_m and t in _MOVE_FUNCS) or (is_m and t in _MOVE_METHODS)) and x is not None:
            if t is operator.getitem or t == "__getitem__":
                return self.getitem(n, x, value)
            fn = (lambda ids: getattr(ids, t)(*self.real(n.args[1:]), **self.real(n.kwargs))) if is_m else \
                (lambda ids: t(ids, *self.real(n.args[1:]), **self.real(n.kwargs)))
            return self.move(n, value, fn, x)
        if t is operator.getitem and isinstance(n.args[0], fx.Node) and isinstance(self.info.get(n.args[0].name),
                                                                                   list):
            return self.info[n.args[0].name][n.args[1]]
        if ((not is_m and t in _REDUCE_FUNCS) or (is_m and t in _REDUCE_METHODS)) and x is not None:
            return self.reduce(n, x, value)
        if not is_m and t is F.layer_norm and x is not None:
            shape = n.args[1] if len(n.args) > 1 else n.kwargs["normalized_shape"]
            return self.layer_norm(n, x, len(self.real(shape)), value, "F.layer_norm")
        if (not is_m and t in (F.softmax, torch.softmax, F.log_softmax)) or (is_m and t in ("softmax",)):
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
            return self.softmax(n, x, self.real(dim), value)
        if not is_m and t is F.batch_norm and x is not None and x.cdims == (1,):
            return self.lock_all(n, value, f"{self.where(n)}: functional batch_norm with tensors from attributes "
                                           "(use nn.BatchNorm modules)")
        return self.lock_all(n, value, f"{self.where(n)} has no channel rule")

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
            cd, base = full[0][1], full[0][0].elem
            if any(c != cd or ti.elem.shape != base.shape for ti, c in full):
                return self.lock_all(n, value, f"{self.where(n)} combines tensors whose channels lie on "
                                               "different dims")
            for ti, _ in full[1:]:
                self.E.union_arrays(base, ti.elem)
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

    def layer_norm(self, n: fx.Node, x: TI, k: int, value: torch.Tensor, what: str) -> TI:
        nd = len(x.shape)
        if any(d >= nd - k for d in x.cdims):
            return self.lock_all(n, value, f"{what} normalises over the channel dim (at node '{n.name}'), so "
                                           "removing a channel would change every other channel")
        # weight/bias have the normalised (non-channel) shape: untouched by pruning
        return TI(tuple(value.shape), x.cdims, x.elem)

    def softmax(self, n: fx.Node, x: TI | None, dim: Any, value: Any) -> Any:
        if x is None or dim is None or (dim % len(x.shape)) in x.cdims:
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
        if dims & set(x.cdims):
            return self.lock_all(n, value, f"{self.where(n)}: reduction over the channel dim")
        new_cd = tuple(d if keep else d - sum(1 for r in dims if r < d) for d in x.cdims)
        return TI(tuple(value.shape), new_cd, x.elem)

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


def analyse(gm: fx.GraphModule, example_inputs: tuple) -> Analysis:
    """Propagate channel layouts through ``gm`` run on ``example_inputs`` (in eval mode, without gradients)."""
    p = _Propagator(gm)
    with torch.no_grad():
        p.run(*example_inputs)
    p.E.freeze()
    return Analysis(gm, p.E, p.info, p.values, p.sites, p.node_module)
