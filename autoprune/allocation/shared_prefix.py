"""Measure many pruned variants of one traced model, computing what they share once (the sensitivity table's loop).

Each entry of a sensitivity table prunes one group, re-estimates BatchNorm on the same training batches and evaluates
on the same validation batches. The nodes of the traced graph that come before the first node the pruning changes
compute, on those batches, exactly what the unpruned model computes; only the rest differs. :class:`SharedPrefix`
keeps, for every BN batch and every evaluation batch, the values at such a point (its *frontier*: each earlier value a
later node reads), advances that point from group to group (groups sorted by where their pruning starts, so the
unpruned model is run once in all), and runs only a variant's own nodes. On ResNet-56 a block's inner width starts
halfway down the network on average, so the table costs about half as much.

What it gives is what :func:`~autoprune.train.recalibrate_bn` followed by :func:`~autoprune.train.evaluate` give on
the whole variant: BatchNorm layers that run before the variant's first changed node get the reference's re-estimated
statistics (the same batches through the same layers), the others are re-estimated from the frontier; the
evaluation computes the same top-1 count and summed cross-entropy. ``tests/test_sensitivity.py`` compares whole
tables. A variant this cannot handle exactly (a BatchNorm layer called both before and after its first changed node,
a node the prefix did not keep, a frontier over the memory cap) is measured the plain way; nothing is approximated.

Written here rather than taken from torch.fx: fx's :class:`~torch.fx.Interpreter` runs a whole graph; we use its
public ``run_node`` and ``env`` to start and stop at given nodes.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..train.common import autocast
from ..train.evaluation import EvalResult, batchnorms, bn_estimation

__all__ = ["SharedPrefix", "first_change"]

#: frontier values kept for all batches at once above this many bytes make the variant be measured the plain way
DEFAULT_MAX_BYTES = 4 << 30


# ------------------------------------------------------------------------------------------------ where variants differ
def _same(a: Any, b: Any) -> bool:
    """Structural equality of node arguments and module attributes (nodes by name, tensors by shape and value)."""
    if isinstance(a, fx.Node) or isinstance(b, fx.Node):
        return isinstance(a, fx.Node) and isinstance(b, fx.Node) and a.name == b.name
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a.detach(), b.detach().to(a.device))))
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return (type(a) is type(b) and len(a) == len(b)) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
                and all(_same(a[k], b[k]) for k in a))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 -- an attribute that cannot be compared counts as changed
        return False


_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _public_attrs(m: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"}


def _same_module(a: nn.Module, b: nn.Module) -> bool:
    """Same classes, attributes, parameters and buffers all the way down, BatchNorm running statistics aside (both
    sides re-estimate them)."""
    ma, mb = dict(a.named_modules()), dict(b.named_modules())
    if ma.keys() != mb.keys():
        return False
    for name, x in ma.items():
        y = mb[name]
        if type(x) is not type(y):
            return False
        if not _same(_public_attrs(x), _public_attrs(y)) or not _same(dict(x._parameters), dict(y._parameters)):
            return False
        skip = _BN_STATS if isinstance(x, nn.modules.batchnorm._BatchNorm) else ()
        if not _same({k: v for k, v in x._buffers.items() if k not in skip},
                     {k: v for k, v in y._buffers.items() if k not in skip}):
            return False
    return True


def _fetch(gm: nn.Module, target: str) -> Any:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def first_change(reference: fx.GraphModule, variant: fx.GraphModule) -> int:
    """Index of the first node of ``variant``'s graph that does not compute what ``reference``'s node of the same
    position computes (a changed module, attribute or argument, or a node the reference lacks). Every node before it
    is the reference's node, by name and position. BatchNorm running statistics are not compared (both are
    re-estimated)."""
    ref_nodes = list(reference.graph.nodes)
    for i, n in enumerate(variant.graph.nodes):
        if i >= len(ref_nodes):
            return i
        r = ref_nodes[i]
        if (n.name != r.name or n.op != r.op or n.target != r.target or not _same(n.args, r.args)
                or not _same(n.kwargs, r.kwargs)):
            return i
        if n.op == "call_module" and not _same_module(variant.get_submodule(n.target),
                                                      reference.get_submodule(r.target)):
            return i
        if n.op == "get_attr" and not _same(_fetch(variant, n.target), _fetch(reference, r.target)):
            return i
    return len(ref_nodes)


# ------------------------------------------------------------------------------------------------ running a stretch
class _Stretch(fx.Interpreter):
    """Runs the nodes ``[start, stop)`` of a GraphModule on an environment of earlier values (by node name)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.nodes = list(gm.graph.nodes)
        self.by_name = {n.name: n for n in self.nodes}

    def stretch(self, values: dict[str, Any], start: int, stop: int, inputs: Sequence[Any] = ()) -> dict[str, Any]:
        """``values`` plus the values of nodes ``start .. stop-1``; the output node's value under ``"__output__"``."""
        self.env = {self.by_name[k]: v for k, v in values.items()}
        self.args_iter = iter(inputs)
        out = dict(values)
        for n in self.nodes[start:stop]:
            v = self.run_node(n)
            if n.op == "output":
                out["__output__"] = v
            else:
                self.env[n] = v
                out[n.name] = v
        return out


def _nbytes(v: Any) -> int:
    if isinstance(v, torch.Tensor):
        return v.numel() * v.element_size()
    if isinstance(v, (tuple, list)):
        return sum(_nbytes(x) for x in v)
    if isinstance(v, dict):
        return sum(_nbytes(x) for x in v.values())
    return 0


def _within(items: Iterable[Any], max_bytes: int) -> list | None:
    """``items`` as a list, or None once their tensors pass ``max_bytes`` (reading stops there)."""
    out, total = [], 0
    for item in items:
        out.append(item)
        total += _nbytes(item)
        if total > max_bytes:
            return None
    return out


class SharedPrefix:
    """Measures variants of ``reference`` (the unpruned model as traced, its BatchNorm already re-estimated on the
    ``bn_inputs``) as ``recalibrate_bn(variant, <bn_inputs>); evaluate(variant, <eval_batches>)`` would, running only
    each variant's nodes from its first changed one. Variants must be handed in order of :meth:`start_of`
    (:meth:`order` sorts groups); one that starts earlier than the current frontier is measured the plain way."""

    def __init__(self, reference: fx.GraphModule, bn_inputs: Iterable[torch.Tensor] | None,
                 eval_batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *, device: torch.device, amp: bool,
                 max_bytes: int | None = None) -> None:
        self.device, self.amp = torch.device(device), bool(amp)
        self.max_bytes = DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes)
        self.ref = reference.to(self.device).eval()
        # ``bn_inputs`` None: variants keep their stored statistics (no re-estimation)
        self.reestimate = bn_inputs is not None
        self.failures = 0  # frontiers over the cap; after two the variants are all measured whole
        self.bn_x = _within((x.to(self.device) for x in bn_inputs or ()), self.max_bytes)
        self.ref_bn = copy.deepcopy(self.ref)  # advances the BN batches: BatchNorm normalising by batch statistics
        for m in batchnorms(self.ref_bn):
            m.train()
        self.batches = _within(((x.to(self.device), y.to(self.device)) for x, y in eval_batches), self.max_bytes)
        if self.bn_x is None or self.batches is None:  # the inputs alone exceed the cap
            self.failures, self.bn_x, self.batches = 2, [], []
        self.nodes = list(self.ref.graph.nodes)
        self.n_inputs = sum(1 for n in self.nodes if n.op == "placeholder")
        index = {n.name: i for i, n in enumerate(self.nodes)}
        self.last_use = {n.name: max((index[u.name] for u in n.users), default=-1) for n in self.nodes}
        self._run_ref, self._run_ref_bn = _Stretch(self.ref), _Stretch(self.ref_bn)
        self._reset()
        self.plain = 0  # variants measured the plain way

    def _reset(self) -> None:
        self.pos = 0
        self.bn_env: list[dict[str, Any]] = [{} for _ in self.bn_x]
        self.ev_env: list[dict[str, Any]] = [{} for _ in self.batches]

    # -- the frontier ----------------------------------------------------------------------------------------------
    def _advance(self, p: int) -> bool:
        """Move the frontier to node ``p`` (>= the current one); False (and the frontier dropped) when it would hold
        more than ``max_bytes``."""
        if self.failures >= 2:
            return False
        if p == self.pos:
            return True
        live = lambda env: {k: v for k, v in env.items() if self.last_use[k] >= p}  # noqa: E731
        total = 0
        bn_env, ev_env = [], []
        with torch.no_grad():  # batch by batch, stopping as soon as the kept values pass the cap
            for env, x in zip(self.bn_env, self.bn_x):
                bn_env.append(live(self._run_ref_bn.stretch(env, self.pos, p, (x,))))
                total += sum(_nbytes(v) for v in bn_env[-1].values())
                if total > self.max_bytes:
                    break
            for env, (x, _) in zip(self.ev_env, self.batches):
                if total > self.max_bytes:
                    break
                with autocast(self.device, self.amp):
                    ev_env.append(live(self._run_ref.stretch(env, self.pos, p, (x,))))
                total += sum(_nbytes(v) for v in ev_env[-1].values())
        if total > self.max_bytes:
            del bn_env, ev_env
            self._reset()
            self.failures += 1
            return False
        self.bn_env, self.ev_env, self.pos = bn_env, ev_env, p
        return True

    def start_of(self, variant: fx.GraphModule) -> int:
        """Where ``variant`` starts to differ (:func:`first_change`), never before the inputs."""
        return max(first_change(self.ref, variant), self.n_inputs)

    def order(self, names: Sequence[str], first_variant: Callable[[str], fx.GraphModule | None]) -> list[str]:
        """``names`` sorted (stably) by where ``first_variant(name)`` starts to differ (None: first)."""
        starts = {}
        for name in names:
            v = first_variant(name)
            starts[name] = self.n_inputs if v is None else self.start_of(v)
        return sorted(names, key=lambda n: starts[n])

    # -- one variant -----------------------------------------------------------------------------------------------
    def measure(self, variant: fx.GraphModule, plain: Callable[[nn.Module], EvalResult]) -> EvalResult:
        """``variant`` (on the device) measured as ``plain`` would measure it, from the frontier where possible."""
        p = self.start_of(variant)
        nodes = list(variant.graph.nodes)
        owners = self._bn_owners(variant, nodes) if self.reestimate else []
        if (p <= self.n_inputs or p < self.pos or p >= len(self.nodes)
                or (self.reestimate and not self._prefix_bn_ok(variant, owners, p)) or not self._advance(p)):
            self.plain += 1
            return plain(variant)
        prefix = {n.name for n in nodes[:p]}
        needed = {a.name for n in nodes[p:] for a in n.all_input_nodes if a.name in prefix}
        if not needed <= set(self.ev_env[0]):
            self.plain += 1
            return plain(variant)
        run = _Stretch(variant)
        end = len(nodes)
        with torch.no_grad():
            if self.reestimate:
                with bn_estimation(variant):
                    for env, x in zip(self.bn_env, self.bn_x):
                        run.stretch(env, p, end, (x,))
                self._copy_prefix_stats(variant, owners, p)
            variant.eval()
            correct, loss_sum, n = 0, torch.zeros((), dtype=torch.float64, device=self.device), 0
            for env, (_, y) in zip(self.ev_env, self.batches):
                with autocast(self.device, self.amp):
                    out = run.stretch(env, p, end)["__output__"]
                out = out.float()
                loss_sum += F.cross_entropy(out, y, reduction="sum").double()
                correct += int((out.argmax(1) == y).sum())
                n += len(y)
        return EvalResult(accuracy=correct / n, loss=float(loss_sum) / n, n=n)

    @staticmethod
    def _bn_owners(gm: fx.GraphModule, nodes: list[fx.Node]) -> list[tuple[int, set[str]]]:
        """(node index, qualified names of the BatchNorm layers that node's module call runs)."""
        out = []
        for i, n in enumerate(nodes):
            if n.op == "call_module":
                sub = gm.get_submodule(n.target)
                bns = set(batchnorms(sub))
                names = {f"{n.target}.{k}".rstrip(".") for k, m in sub.named_modules() if m in bns}
                if names:
                    out.append((i, names))
        return out

    def _prefix_bn_ok(self, variant: fx.GraphModule, owners: list[tuple[int, set[str]]], p: int) -> bool:
        """Every BatchNorm layer is run either before ``p`` only or from ``p`` on only, and none is reached other
        than through a module call (so its statistics can be taken from the reference or re-estimated).
        ``owners``: :meth:`_bn_owners` of ``variant``."""
        before, after = set(), set()
        for i, names in owners:
            (before if i < p else after).update(names)
        reached = before | after
        bns = set(batchnorms(variant))
        every = {k for k, m in variant.named_modules() if m in bns}
        return not (before & after) and every <= reached | self._unused_bn(variant, every)

    @staticmethod
    def _unused_bn(variant: fx.GraphModule, names: set[str]) -> set[str]:
        """BatchNorm layers no node reads at all (neither called nor read as attributes): reset either way."""
        read = {n.target for n in variant.graph.nodes if n.op == "get_attr"}
        return {k for k in names if not any(t == k or t.startswith(k + ".") for t in read)}

    def _copy_prefix_stats(self, variant: fx.GraphModule, owners: list[tuple[int, set[str]]], p: int) -> None:
        """The reference's re-estimated statistics into the BatchNorm layers run before ``p``."""
        for i, names in owners:
            if i >= p:
                continue
            for k in names:
                src, dst = self.ref.get_submodule(k), variant.get_submodule(k)
                for b in _BN_STATS:
                    getattr(dst, b).copy_(getattr(src, b))
