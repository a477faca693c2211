"""The analysis' data model: channel layouts of tensors (:class:`TI`), the union-find over channel elements
(:class:`Elements`) and the places that read or write channels (:class:`Site`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["TI", "Elements", "Site"]


@dataclass
class TI:
    """Channel layout of one tensor value: ``cdims`` are the dims that carry channels and ``elem`` (numpy, shape
    ``[shape[d] for d in cdims]``) holds the element id at each position."""
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
    """Union-find over channel elements, with lock reasons and notes (approximations the user asked for)."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.locks: list[tuple[np.ndarray, str]] = []
        self.notes: list[tuple[np.ndarray, str]] = []
        self.root_of: np.ndarray | None = None

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

    def note(self, ids: np.ndarray, text: str) -> None:
        ids = np.unique(np.ravel(ids))
        if ids.size:
            self.notes.append((ids, text))

    def freeze(self) -> None:
        """Resolve every element's root once; later look-ups are vectorised (no unions may follow)."""
        self.root_of = np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)

    def roots(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if self.root_of is not None and len(self.root_of) == len(self.parent):
            return self.root_of[ids]
        return np.array([self.find(int(i)) for i in np.ravel(ids)], dtype=np.int64).reshape(np.shape(ids))


@dataclass
class Site:
    """A place that reads (consumer) or writes (producer) channels, for surgery, scoring and the cost model.

    ``kind``: "conv", "linear" (producers), "bn" (per-channel parameters), "prelu", "pad", "slice", "split",
    "param" (a tensor attribute read in the forward code), "arg" (a call argument that counts channels), "shape"
    (sizes written as constants in a view/reshape/expand), "kwarg" (a keyword surgery writes in: attention's scale),
    "matmul" and "attention" (activation products the cost model counts), "rows" (a module rule's view of a layer's
    output rows, for grouping and weight criteria), "attention_module" (an attention module cut by its rule), "input".
    ``rule``: the :class:`~autoprune.graph.rules.ChannelRule` that cuts a module site's parameters.
    """
    kind: str
    node: str
    module: str | None
    data: dict = field(default_factory=dict)
    rule: Any = None
