"""Channel groups: channel sets (union-find classes) gathered by the layers that produce them."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .analysis import Analysis

__all__ = ["ChannelGroup", "Member", "build_groups"]


@dataclass
class Member:
    """Where a group's channels live in one producing layer: output channel ``channels[i]`` belongs to the
    group's channel ``index[i]`` (several outputs may share one group channel, e.g. depthwise multipliers)."""
    module: str | None   # conv/linear module name (None for a pad that creates zero channels, or an embedding)
    node: str            # fx node whose output holds the channels
    kind: str            # "conv", "linear", "embedding", "pad" or "rows" (output rows of a layer inside a module rule)
    channels: np.ndarray
    index: np.ndarray


@dataclass
class ChannelGroup:
    """Channels that must be removed together.

    ``channels`` counts the removable units (a unit may span several tensor channels, e.g. a residual channel in
    every block it passes through, or a whole group of a grouped conv). ``prunable`` is False when any unit touches
    something the engine will not change (model inputs/outputs, an op without a channel rule...), and ``reason``
    says what.
    """
    name: str
    channels: int
    prunable: bool
    reason: str | None
    modules: list[str]
    members: list[Member] = field(default_factory=list, repr=False)
    roots: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    #: approximations the user opted into (``ChannelGraph(..., approximate=True)``) that pruning this group makes
    approximate: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        state = "prunable" if self.prunable else f"locked: {self.reason}"
        approx = f", {len(self.approximate)} approximation(s)" if self.approximate else ""
        return f"ChannelGroup({self.name!r}, channels={self.channels}, {state}{approx})"


def build_groups(a: Analysis) -> list[ChannelGroup]:
    E = a.elements
    lock_reason: dict[int, str] = {}
    for ids, reason in a.elements.locks:
        for r in E.roots(ids):
            lock_reason.setdefault(int(r), reason)
    notes: dict[int, list[str]] = {}
    for ids, text in a.elements.notes:
        for r in set(E.roots(ids).tolist()):
            if text not in notes.setdefault(int(r), []):
                notes[int(r)].append(text)

    # producers, in graph order: (label, site, element array)
    producers = []
    for s in a.sites:
        if s.kind in ("conv", "linear", "embedding"):
            producers.append((s.module, s, s.data["out"]))
        elif s.kind == "rows":  # a module rule's view of a layer's output rows (an attention's heads, its width)
            producers.append((s.data.get("label", s.module), s, s.data["out"]))
        elif s.kind == "pad":
            label = f"{a.node_module.get(s.node) or s.node}:pad"
            producers.append((label, s, np.concatenate([s.data["before"], s.data["after"]])))

    root_labels: dict[int, list[str]] = {}
    root_order: list[int] = []
    for label, _, elem in producers:
        for r in E.roots(elem):
            r = int(r)
            if r not in root_labels:
                root_labels[r] = []
                root_order.append(r)
            if label not in root_labels[r]:
                root_labels[r].append(label)

    # touched modules per root (producers, consumers, norms)
    touched: dict[int, set] = {}
    for s in a.sites:
        if not s.module:  # pads, slices, splits, attributes of the root module
            continue
        arrays = [s.data[k] for k in ("in", "out", "elem") if k in s.data]
        for arr in arrays:
            for r in set(E.roots(arr).ravel().tolist()):
                touched.setdefault(int(r), set()).add(s.module)

    keyed: dict[tuple, list[int]] = {}
    for r in root_order:
        key = (tuple(sorted(root_labels[r])), lock_reason.get(r))
        keyed.setdefault(key, []).append(r)

    groups: list[ChannelGroup] = []
    used: dict[str, int] = {}
    first_label = {}
    for label, _, _ in producers:
        first_label.setdefault(label, len(first_label))
    for (labels, reason), roots in sorted(keyed.items(), key=lambda kv: min(first_label[l] for l in kv[0][0])):
        base = min(labels, key=lambda l: first_label[l])
        used[base] = used.get(base, 0) + 1
        name = base if used[base] == 1 else f"{base}#{used[base]}"
        root_arr = np.array(roots, dtype=np.int64)
        pos = {r: i for i, r in enumerate(roots)}
        members = []
        for label, s, elem in producers:
            if label not in labels:
                continue
            rr = E.roots(elem)
            sel = np.array([int(r) in pos for r in rr], dtype=bool)
            if sel.any():  # an embedding's weight rows are vocabulary entries: no filter to score
                members.append(Member(None if s.kind == "embedding" else s.module, s.node, s.kind, np.nonzero(sel)[0],
                                      np.array([pos[int(r)] for r in rr[sel]], dtype=np.int64)))
        mods = sorted(set().union(*(touched.get(r, set()) for r in roots)))
        approx = list(dict.fromkeys(t for r in roots for t in notes.get(r, [])))
        groups.append(ChannelGroup(name, len(roots), reason is None, reason, mods, members, root_arr, approx))
    return groups
