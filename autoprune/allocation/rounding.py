"""Channel rounding (``round_to=k``): remaining channel counts in multiples of k."""
from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

__all__ = ["check_round_to", "round_count", "round_ratios"]


def check_round_to(round_to: Any) -> int:
    """``round_to`` as an int >= 1, or a ValueError naming the problem (1 = no rounding)."""
    if isinstance(round_to, bool) or not isinstance(round_to, numbers.Integral) or int(round_to) < 1:
        raise ValueError(f"round_to={round_to!r}: give a positive integer k (remaining channels become multiples of "
                         "k, e.g. 8); 1 means no rounding")
    return int(round_to)


def round_count(channels: int, removed: int, round_to: int) -> int:
    """Channels to remove from a group of ``channels`` so that it keeps a multiple of ``round_to`` (the nearest
    one to ``channels - removed``, a tie keeping more): never fewer than ``round_to`` channels kept; 0 removed stays
    0; a group of at most ``round_to`` channels is left whole."""
    k = check_round_to(round_to)
    if removed <= 0 or k == 1:
        return max(int(removed), 0)
    if channels <= k:
        return 0
    kept = channels - int(removed)
    q = max(1, int(math.floor(kept / k + 0.5)))
    return max(channels - q * k, 0)


def round_ratios(ratios: Mapping[str, float], channels: Mapping[str, int], round_to: int) -> dict[str, float]:
    """{group: ratio} -> ratios whose remaining channel counts are multiples of ``round_to`` (see
    :func:`round_count`; the count before rounding is ``floor(ratio * channels)``, as :meth:`ChannelGraph.plan`
    counts). Used for sampled ratios in searches; budgets are then checked on the rounded model.
    ``channels``: {group: channel count}, e.g. ``{g.name: g.channels for g in graph.prunable_groups}``."""
    out = {}
    for g, r in ratios.items():
        c = int(channels[g])
        n = min(int(math.floor(float(r) * c + 1e-9)), c - 1)
        out[g] = round_count(c, n, round_to) / c
    return out
