"""Custom ``torch.autograd.Function`` calls kept as one node of a traced graph (see ``trace.py``).

The node's target is a plain function that calls ``Function.apply``, so the pruned model still runs the user's
backward. It is importable by name from this module (``apply__<module>__dot__<qualname>``, resolved on first use),
so a pruned model that calls one can be pickled with ``torch.save`` and loaded in another process.
"""
from __future__ import annotations

import importlib
from typing import Any

import torch.fx as fx

__all__ = ["caller"]

_PREFIX = "apply__"
_DOT = "__dot__"
_CALLERS: dict[type, Any] = {}


def caller(fn_cls: type) -> Any:
    """The function that calls ``fn_cls.apply`` (one per class); its ``_autoprune_function`` names the class."""
    if fn_cls not in _CALLERS:
        def call(*args: Any, **kwargs: Any) -> Any:
            # Traced again (fx re-traces a GraphModule when unpickling it): stay one node, never inline forward.
            proxies = [a for a in (*args, *kwargs.values()) if isinstance(a, fx.Proxy)]
            if proxies:
                return proxies[0].tracer.create_proxy("call_function", call, args, kwargs)
            return fn_cls.apply(*args, **kwargs)

        call.__name__ = call.__qualname__ = _PREFIX + f"{fn_cls.__module__}.{fn_cls.__qualname__}".replace(".", _DOT)
        call.__module__ = __name__
        call._autoprune_function = fn_cls  # type: ignore[attr-defined]
        _CALLERS[fn_cls] = call
    return _CALLERS[fn_cls]


def __getattr__(name: str) -> Any:
    """Resolve ``apply__...`` names (unpickling a pruned model) by importing the Function they call."""
    if not name.startswith(_PREFIX):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    path = name[len(_PREFIX):].replace(_DOT, ".").split(".")
    for i in range(len(path) - 1, 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(path[:i]))
        except ImportError:
            continue
        for part in path[i:]:
            obj = getattr(obj, part)
        return caller(obj)
    raise AttributeError(f"cannot import the autograd Function behind {name!r}")
