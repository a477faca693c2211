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

__all__ = ["TraceError", "trace"]


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

    def __init__(self) -> None:
        self.notrace_modules, notrace_fns = _timm_notrace()
        super().__init__(autowrap_functions=notrace_fns)

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
        if lookup_module(m) is not None or isinstance(m, self.notrace_modules):
            return True
        return super().is_leaf_module(m, qualname)


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


def trace(model: nn.Module, n_inputs: int | None = None) -> fx.GraphModule:
    """Symbolically trace ``model`` into a GraphModule (which shares the model's submodules). With ``n_inputs`` (how
    many leading arguments the inputs fill), the optional arguments after them are traced as their defaults."""
    tracer = _Tracer()
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
