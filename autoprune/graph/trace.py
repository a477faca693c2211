"""Graph capture.

We capture with ``torch.fx`` symbolic tracing. Why fx rather than autograd-graph walking or a dispatch-level
recorder: pruning has to *rewrite* some operations, not only slice weights (the option-A shortcut's
``F.pad(..., planes // 4)``, channel slices ``x[:, a:b]``, ``chunk``/``split`` sizes), and fx gives an editable
graph whose call arguments we can change and recompile, while keeping module names (so state-dict keys stay
put). It needs no gradients, handles tuple outputs, and every torchvision classifier traces.

Leaves: a module with a channel rule (``rules.py``) is kept as one node, so the rule describes it whole (timm's
``BatchNormAct2d``, whose forward fx cannot follow, is per-channel statistics then an element-wise tail); so are
torch.nn's own modules and the modules and functions timm marks as not traceable. A custom
``torch.autograd.Function`` is kept as one call (not inlined), so the pruned model still runs the user's backward.

Limits: fx cannot follow Python control flow that depends on tensor *values* or symbolic shapes
(``if x.sum() > 0``, ``if x.shape[1] == 64``); such models fail to trace and we raise :class:`TraceError` naming the
user's line. Shape arguments written as constants (``x.view(-1, 512 * 7 * 7)``) trace fine but cannot adapt to
pruning; the analysis locks the channels feeding them (with the line), and shape validation after surgery (see
``surgery.py``) catches anything else, never silently accepted.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import linecache
import os
import sys
import traceback
from typing import Any, Iterator

import torch
import torch.fx as fx
import torch.nn as nn

# importing them fills the rule table with the built-in rules
from . import attention_modules, attention_rules, layer_rules, library_rules  # noqa: F401
from .functions import caller
from .rules import lookup_module
from .traced_forwards import lookup_traced_forward

__all__ = ["TraceError", "trace", "output_tensors"]


class TraceError(RuntimeError):
    """The model could not be captured as a graph; the message names the failing line of the model's code."""


def _timm_notrace() -> tuple[tuple, tuple]:
    """timm's own lists of modules and functions fx must not enter (only when timm is already imported)."""
    fx_mod = sys.modules.get("timm.layers._fx")
    if fx_mod is None:
        return (), ()
    try:
        return tuple(fx_mod.get_notrace_modules()), tuple(fx_mod.get_notrace_functions())
    except Exception:  # pragma: no cover - a timm version without these helpers
        return (), ()


_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_OWN_DIR = os.path.dirname(os.path.abspath(__file__))


class _Tracer(fx.Tracer):
    """fx tracer: leaves for modules with rules, wrapped timm notrace functions, and the user's source line on every
    node (``node.meta["stack_trace"]``, for lock reasons). fx's own ``record_stack_traces`` formats the whole stack
    for each node; walking frames to the first one outside torch and autoprune is several times cheaper."""

    def __init__(self, forwards: set[str] | None = None) -> None:
        self.notrace_modules, notrace_fns = _timm_notrace()
        super().__init__(autowrap_functions=notrace_fns)
        self.forwards = forwards or set()  # modules traced through their traced forward

    def create_proxy(self, *args: Any, **kwargs: Any) -> fx.Proxy:
        proxy = super().create_proxy(*args, **kwargs)
        node = proxy.node
        if not node.meta.get("stack_trace"):
            f = sys._getframe(1)
            while f is not None and (f.f_code.co_filename.startswith(_TORCH_DIR)
                                     or f.f_code.co_filename.startswith(_OWN_DIR)):
                f = f.f_back
            if f is not None:
                code = linecache.getline(f.f_code.co_filename, f.f_lineno).strip()
                node.meta["stack_trace"] = (f'  File "{f.f_code.co_filename}", line {f.f_lineno}, in '
                                            f"{f.f_code.co_name}\n    {code}\n")
        return proxy

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if lookup_module(m) is not None:
            return True
        if qualname in self.forwards:
            return False
        if isinstance(m, self.notrace_modules) or lookup_traced_forward(m) is not None:
            return True  # a block with a traced forward that does not hold here stays whole
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if self.forwards and self.path_of_module(m) in self.forwards:
            forward = functools.partial(lookup_traced_forward(m), m)
        return super().call_module(m, forward, args, kwargs)


@contextlib.contextmanager
def _leaf_autograd_functions() -> Iterator[None]:
    """While tracing, ``Function.apply`` on proxies records one call node instead of running ``forward``."""
    original = torch.autograd.Function.__dict__["apply"]

    def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
        proxies = [a for a in (*args, *kwargs.values()) if isinstance(a, fx.Proxy)]
        if proxies:
            return proxies[0].tracer.create_proxy("call_function", caller(cls), args, kwargs)
        return original.__get__(None, cls)(*args, **kwargs)

    torch.autograd.Function.apply = classmethod(apply)  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        torch.autograd.Function.apply = original  # type: ignore[method-assign]


def _user_frame(exc: BaseException) -> str:
    torch_dir = os.path.dirname(os.path.dirname(os.path.abspath(fx.__file__)))
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith(torch_dir) and "autoprune" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} ({(f.line or '').strip()})"


def _optional_args(model: nn.Module, n_inputs: int | None) -> dict[str, Any]:
    """Arguments of ``forward`` after its first ``n_inputs`` (those the example inputs fill) that default to None or
    a constant (timm's ``mask=None``, ``attn_mask=None``, ``is_causal=False``): traced as those constants, so
    ``if mask is not None`` takes the branch the model runs by default instead of failing on a proxy."""
    if n_inputs is None:
        return {}
    try:
        params = list(inspect.signature(model.forward).parameters.values())[n_inputs:]
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty
            and (p.default is None or isinstance(p.default, (bool, int, float, str)))}


def trace(model: nn.Module, n_inputs: int | None = None, example_inputs: tuple | None = None) -> fx.GraphModule:
    """Symbolically trace ``model`` into a GraphModule (which shares the model's submodules). With ``n_inputs`` (how
    many leading arguments the inputs fill), the optional arguments after them are traced as their defaults.

    A module with a traced forward (:mod:`~autoprune.graph.traced_forwards`) is traced through it where, run on
    what the module receives from ``example_inputs``, it reproduces the module's output; otherwise (or without
    example inputs) the module stays whole."""
    allowed = _forwards_that_hold(model, example_inputs) if example_inputs is not None else set()
    tracer = _Tracer(allowed)
    try:
        with _leaf_autograd_functions():
            graph = tracer.trace(model, concrete_args=_optional_args(model, n_inputs) or None)
    except Exception as exc:  # fx raises several types (TraceError, TypeError, AttributeError...)
        raise TraceError(
            f"could not trace {type(model).__name__} with torch.fx{_user_frame(exc)}: {exc}. "
            "autoprune needs a forward() without control flow on tensor values or shapes; move such logic "
            "into a leaf module or make it static."
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _forwards_that_hold(model: nn.Module, example_inputs: tuple) -> set[str]:
    """Names of the modules with a traced forward that, run eagerly on what the module receives from
    ``example_inputs`` at each of its calls, gives its output (to float tolerance): the ones the tracer may trace
    through (one forward stands in for every call of a module)."""
    mods = {name: m for name, m in model.named_modules()
            if lookup_module(m) is None and lookup_traced_forward(m) is not None}
    if not mods:
        return set()
    seen: dict[str, list[tuple]] = {}

    def keep(name: str) -> Any:
        def hook(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            seen.setdefault(name, []).append((args, kwargs, out))
        return hook

    handles = [m.register_forward_hook(keep(name), with_kwargs=True) for name, m in mods.items()]
    try:
        with torch.no_grad():
            model(*example_inputs)
            return {name for name, calls in seen.items() if all(_reproduces(mods[name], *c) for c in calls)}
    except Exception:  # the model itself fails on the inputs: the analysis reports that
        return set()
    finally:
        for h in handles:
            h.remove()


def _reproduces(m: nn.Module, args: tuple, kwargs: dict, out: Any) -> bool:
    """Does ``m``'s traced forward, run on ``args``/``kwargs``, give ``out`` (to float tolerance)?"""
    try:
        want, have = output_tensors(out), output_tensors(lookup_traced_forward(m)(m, *args, **kwargs))
    except Exception:  # e.g. a map that is not a multiple of the patch
        return False
    return len(want) == len(have) and all(
        a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5 * (float(a.abs().max()) + 1))
        for a, b in zip(want, have))


def output_tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a model's (or module's) output, flattened through tuples, lists and dicts in order; TypeError
    for anything else (an output no check can compare)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in output_tensors(o)]
    if isinstance(out, dict):
        return [t for k in out for t in output_tensors(out[k])]
    raise TypeError(f"cannot compare a model output of type {type(out).__name__} (tensors, tuples, lists, dicts)")
