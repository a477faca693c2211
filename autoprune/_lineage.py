"""A model's lineage: the plain data that rebuilds it without pickled code.

A model built by :func:`autoprune.get_model` knows its architecture (name and arguments); every pruning by
:meth:`autoprune.ChannelGraph.prune_channels` appends the channels it removed (group name -> indices) and the example
input shapes the engine traced. :func:`autoprune.save` writes exactly this plus the state_dict, and
:func:`autoprune.load` replays it. It is the model's identity, not a result: it is declared here, in one place, and
travels with the module through ``copy.deepcopy`` and ``.to()``. Every other result of autoprune is returned to the
caller, never stamped on a model.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import torch.nn as nn

__all__ = ["Lineage", "lineage_of", "set_lineage"]

_ATTR = "_autoprune_lineage"  # the one attribute autoprune sets on a model


@dataclass(frozen=True)
class Lineage:
    """How a model was made: ``arch`` ({"name", "kwargs"} of :func:`autoprune.get_model`, or None for a user's own
    class), the channels removed at each pruning step, and the input shapes the engine traced them with."""

    arch: Mapping[str, Any] | None = None
    steps: tuple[Mapping[str, Sequence[int]], ...] = ()
    input_shapes: tuple[tuple[int, ...], ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def pruned(self, removed: Mapping[str, Sequence[int]], input_shapes: Sequence[Sequence[int]]) -> "Lineage":
        """This lineage with one more pruning step."""
        return replace(self, steps=(*self.steps, {k: list(v) for k, v in removed.items()}),
                       input_shapes=tuple(tuple(int(d) for d in s) for s in input_shapes))

    def with_arch(self, arch: Mapping[str, Any] | None) -> "Lineage":
        return replace(self, arch=arch)


def lineage_of(model: nn.Module) -> Lineage:
    """The lineage of ``model`` (an empty one for a model autoprune did not build or prune)."""
    found = model.__dict__.get(_ATTR)
    return found if isinstance(found, Lineage) else Lineage()


def set_lineage(model: nn.Module, lineage: Lineage) -> nn.Module:
    """Record ``lineage`` on ``model`` (returned, for chaining)."""
    object.__setattr__(model, _ATTR, lineage)
    return model
