"""Criterion registry: look criteria up by name with parameters, and let users add their own.

This module holds the table only and imports no criterion: the built-in criteria register themselves when their
modules (:mod:`~autoprune.criteria.weight`, :mod:`~autoprune.criteria.activation`,
:mod:`~autoprune.criteria.gradient`) are imported, which importing
:mod:`autoprune.criteria` does.

>>> crit = get_criterion("ezcrop", alpha=0.25)
>>> crit.kind
'activation'
"""
from __future__ import annotations

import difflib
from typing import Any, Callable

from .base import Criterion

__all__ = ["register_criterion", "unregister_criterion", "get_criterion", "available_criteria"]

CriterionFactory = Callable[..., Criterion]

_REGISTRY: dict[str, CriterionFactory] = {}


def _norm(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"criterion name must be a non-empty string, got {name!r}")
    return name.strip().lower()


def register_criterion(name: str, factory: CriterionFactory, *, overwrite: bool = False) -> CriterionFactory:
    """Register ``factory`` (a criterion class or any callable ``(**params) -> criterion``) under ``name``.

    Names are case-insensitive. Registering an existing name raises ``ValueError`` unless ``overwrite=True``.
    Returns ``factory`` (so it can be used as a decorator through ``functools.partial``).
    """
    key = _norm(name)
    if not callable(factory):
        raise TypeError(f"factory for {name!r} must be callable, got {type(factory).__name__}")
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"criterion {key!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[key] = factory
    return factory


def unregister_criterion(name: str) -> None:
    """Remove a registered criterion (``KeyError`` if absent)."""
    key = _norm(name)
    if key not in _REGISTRY:
        raise KeyError(f"criterion {key!r} is not registered")
    del _REGISTRY[key]


def available_criteria() -> list[str]:
    """Sorted names of all registered criteria."""
    return sorted(_REGISTRY)


def get_criterion(name: str | Criterion, **params: Any) -> Criterion:
    """Build the criterion registered as ``name`` with ``params`` (a criterion object is returned unchanged).

    Raises ``ValueError`` for an unknown name (listing the available names, with a "did you mean" hint) or for
    parameters the criterion does not accept.
    """
    if isinstance(name, Criterion):
        if params:
            raise ValueError("parameters cannot be applied to an already-built criterion object")
        return name
    key = _norm(name)
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown criterion {name!r}.{hint} Available: {', '.join(available_criteria())}")
    try:
        crit = _REGISTRY[key](**params)
    except TypeError as e:
        raise ValueError(f"bad parameters for criterion {key!r}: {e}") from e
    if getattr(crit, "kind", None) not in ("weight", "activation", "gradient"):
        raise TypeError(f"factory for {key!r} returned {type(crit).__name__}, which has no kind "
                        "'weight', 'activation' or 'gradient'")
    return crit
