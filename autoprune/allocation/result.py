"""The result of :func:`autoprune.allocation.allocate`: :class:`Allocation`."""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["Allocation"]


class Allocation(dict):
    """{group name: ratio} plus what it costs.

    Attributes: ``macs`` / ``params`` (achieved, per sample), ``base_macs`` / ``base_params`` (unpruned),
    ``target`` ({"macs": int or None, "params": int or None}), ``method``, ``remove`` ({group: channel indices},
    for :meth:`ChannelGraph.prune_channels`), ``counts`` ({group: channels removed}) and ``info`` (method details,
    e.g. ``tau`` or ``uniform_ratio``). Ratios are ``counts / channels`` exactly, so ``graph.plan`` reproduces the
    counts.
    """

    def __init__(self, ratios: Mapping[str, float], *, method: str, macs: int, params: int, base_macs: int,
                 base_params: int, target: Mapping[str, int | None], remove: Mapping[str, list[int]],
                 counts: Mapping[str, int], info: Mapping[str, Any] | None = None) -> None:
        super().__init__(ratios)
        self.method = method
        self.macs = int(macs)
        self.params = int(params)
        self.base_macs = int(base_macs)
        self.base_params = int(base_params)
        self.target = dict(target)
        self.remove = {k: list(v) for k, v in remove.items()}
        self.counts = dict(counts)
        self.info = dict(info or {})

    @property
    def ratios(self) -> dict[str, float]:
        """A plain dict copy of {group: ratio}."""
        return dict(self)

    @property
    def macs_fraction(self) -> float:
        """Kept share of the MACs."""
        return self.macs / self.base_macs if self.base_macs else 1.0

    @property
    def params_fraction(self) -> float:
        """Kept share of the parameters."""
        return self.params / self.base_params if self.base_params else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {"method": self.method, "ratios": dict(self), "counts": self.counts, "macs": self.macs,
                "params": self.params, "base_macs": self.base_macs, "base_params": self.base_params,
                "target": self.target, "info": {k: v for k, v in self.info.items()
                                                 if isinstance(v, (int, float, str, bool, type(None)))}}

    def __repr__(self) -> str:
        return (f"Allocation({self.method}, macs={self.macs:,} ({100 * self.macs_fraction:.1f}%), "
                f"params={self.params:,} ({100 * self.params_fraction:.1f}%), {len(self)} groups)")

    def summary(self) -> str:
        """A text table of the ratios."""
        lines = [repr(self)]
        for g, r in self.items():
            lines.append(f"  {g:32s} {r:6.3f}  ({self.counts.get(g, 0)} removed)")
        return "\n".join(lines)
