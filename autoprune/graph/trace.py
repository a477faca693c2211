"""Graph capture.

We capture with ``torch.fx`` symbolic tracing. Why fx rather than autograd-graph walking or a dispatch-level
recorder: pruning has to *rewrite* some operations, not only slice weights (the option-A shortcut's
``F.pad(..., planes // 4)``, channel slices ``x[:, a:b]``, ``chunk``/``split`` sizes), and fx gives an editable
graph whose call arguments we can change and recompile, while keeping module names (so state-dict keys stay
put). It needs no gradients, handles tuple outputs, and every torchvision classifier traces.

Limits: fx cannot follow Python control flow that depends on tensor *values* or symbolic shapes
(``if x.sum() > 0``, ``if x.shape[1] == 64``); such models fail to trace and we raise :class:`TraceError` naming the
user's line. Shape arguments written as constants (``x.view(-1, 512 * 7 * 7)``) trace fine but cannot adapt to
pruning; they are caught after surgery by shape validation (see ``surgery.py``), never silently accepted.
"""
from __future__ import annotations

import os
import traceback

import torch.fx as fx
import torch.nn as nn

__all__ = ["TraceError", "trace"]


class TraceError(RuntimeError):
    """The model could not be captured as a graph; the message names the failing line of the model's code."""


class _Tracer(fx.Tracer):
    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True


def _user_frame(exc: BaseException) -> str:
    torch_dir = os.path.dirname(os.path.dirname(os.path.abspath(fx.__file__)))
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not os.path.abspath(f.filename).startswith(torch_dir) and "autoprune" not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {f.filename}:{f.lineno} ({(f.line or '').strip()})"


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` into a GraphModule (which shares the model's submodules)."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises several types (TraceError, TypeError, AttributeError...)
        raise TraceError(
            f"could not trace {type(model).__name__} with torch.fx{_user_frame(exc)}: {exc}. "
            "autoprune needs a forward() without control flow on tensor values or shapes; move such logic "
            "into a leaf module or make it static."
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)
