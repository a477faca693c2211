"""Ratio parameterisations: how a trial's Optuna parameters become per-group pruning ratios.

``per_group``
    one float parameter ``r:<group>`` per prunable group in its ``[low, high]`` bounds (groups whose bounds are
    equal are fixed, not searched).
``guided``
    a global budget ``level`` (fraction of MACs kept) plus one offset ``d:<group>`` in ``[-offset, +offset]`` per
    group; the ratio is ``clip(allocation(level)[group] + offset, low, high)``, where the allocation comes from the
    sensitivity table (``guide: sensitivity``), from structural redundancy (``guide: srr``; both via
    :func:`autoprune.allocation.allocate`), or is the uniform ratio meeting the level (``guide: uniform``, computed
    here). Only ``sensitivity`` runs a sensitivity analysis (once; cached on disk by
    :mod:`autoprune.allocation.sensitivity_analysis`).

The criterion is the categorical parameter ``criterion`` when ``criteria`` lists several. With ``ratios.round_to: k``
the ratios of either mode are rounded so that every pruned group keeps a multiple of k channels.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

from ..allocation import allocate, round_ratios
from ..allocation.by_sensitivity import FlatSensitivityWarning
from ..config import SearchConfig
from .bounds import group_bounds

__all__ = ["RatioSpace"]


def _as_ratio_dict(alloc: Any) -> dict[str, float]:
    """An ``Allocation`` (a mapping, or an object with ``.ratios``) as {group: ratio}."""
    if isinstance(alloc, Mapping):
        return {str(k): float(v) for k, v in alloc.items()}
    r = getattr(alloc, "ratios", None)
    if isinstance(r, Mapping):
        return {str(k): float(v) for k, v in r.items()}
    raise TypeError(f"allocate() returned {type(alloc).__name__}; expected a mapping {{group: ratio}}")


class RatioSpace:
    """Turns Optuna trials into (criterion, {group: ratio}) for one config and model."""

    def __init__(self, cfg: SearchConfig, problem: Any) -> None:
        self.cfg = cfg
        self.problem = problem
        self.names: list[str] = list(problem.group_names)
        self.bounds = group_bounds(cfg, self.names)
        self._alloc_cache: dict[float, dict[str, float]] = {}

    # -- allocations -----------------------------------------------------------------------------------------
    def allocation(self, level: float) -> dict[str, float]:
        """Ratios meeting ``level`` (fraction of MACs kept) before offsets, clipped to the bounds."""
        key = round(float(level), 6)
        if key not in self._alloc_cache:
            if self.cfg.ratios.guide == "uniform":
                base = self._uniform(key)
            else:
                max_hi = max(b[1] for b in self.bounds.values())
                try:
                    if self.cfg.ratios.guide == "srr":  # structural redundancy: needs no sensitivity table
                        alloc = allocate(self.problem.graph, macs=key, method="srr", max_ratio=max_hi)
                    else:  # the search measures each trial: a table too flat to rank its entries only guides it
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", FlatSensitivityWarning)
                            alloc = allocate(self.problem.sensitivity_table(), macs=key, method="sensitivity",
                                             graph=self.problem.graph)
                except ValueError as e:
                    raise ValueError(f"ratios.level: the {self.cfg.ratios.guide} allocation cannot keep only "
                                     f"{key:.0%} of the MACs ({e}); raise the lower end of ratios.level") from None
                base = _as_ratio_dict(alloc)
            self.use_allocation(key, base)
        return self._alloc_cache[key]

    def use_allocation(self, level: float, ratios: Mapping[str, float]) -> dict[str, float]:
        """Use ``ratios`` as the allocation at ``level`` (e.g. the one a Ray driver computed and sent to its
        workers): clipped to the bounds and cached exactly like an allocation computed here; returns it."""
        key = round(float(level), 6)
        self._alloc_cache[key] = {n: self._clip(n, float(ratios.get(n, 0.0))) for n in self.names}
        return self._alloc_cache[key]

    def _uniform(self, level: float) -> dict[str, float]:
        """The largest uniform ratio (clipped per group) whose model keeps at least ``level`` of the MACs -- or
        the smallest that gets closest, when even that is above ``level``."""
        lo, hi = 0.0, max(b[1] for b in self.bounds.values())

        def frac(r: float) -> float:
            return self.problem.macs_fraction_at({n: self._clip(n, r) for n in self.names})

        if frac(hi) >= level:
            return {n: hi for n in self.names}
        for _ in range(40):
            mid = (lo + hi) / 2
            if frac(mid) >= level:
                lo = mid
            else:
                hi = mid
        # `hi` is the smallest ratio below the level, `lo` the largest above: take the closer one.
        r = hi if abs(frac(hi) - level) < abs(frac(lo) - level) else lo
        return {n: r for n in self.names}

    def _clip(self, name: str, r: float) -> float:
        lo, hi = self.bounds[name]
        return float(min(max(r, lo), hi))

    # -- trials ----------------------------------------------------------------------------------------------
    def suggest(self, trial: Any) -> tuple[str, dict[str, float], dict[str, Any]]:
        """(criterion, {group: ratio}, extra user attributes) for an Optuna trial."""
        crit = self.cfg.criteria[0]
        if len(self.cfg.criteria) > 1:
            crit = trial.suggest_categorical("criterion", list(self.cfg.criteria))
        r = self.cfg.ratios
        step = r.step
        extra: dict[str, Any] = {}
        ratios: dict[str, float] = {}
        if r.mode == "per_group":
            for n in self.names:
                lo, hi = self.bounds[n]
                if hi - lo < 1e-12:
                    ratios[n] = lo
                    continue
                if step is not None:
                    hi = lo + step * int((hi - lo) / step + 1e-9)
                    if hi <= lo:
                        ratios[n] = lo
                        continue
                ratios[n] = float(trial.suggest_float(f"r:{n}", lo, hi, step=step))
            return crit, self.rounded(ratios), extra
        lv_lo, lv_hi = r.level
        if lv_hi - lv_lo < 1e-12:
            level = lv_lo
        else:
            level = float(trial.suggest_float("level", lv_lo, lv_hi, step=self._level_step()))
        extra["level"] = round(level, 6)
        base = self.allocation(level)
        for n in self.names:
            d = 0.0
            span = self._offset_span(n)
            if span:
                d = float(trial.suggest_float(f"d:{n}", -span, span, step=step))
            ratios[n] = self._clip(n, base[n] + d)
        return crit, self.rounded(ratios), extra

    def rounded(self, ratios: dict[str, float]) -> dict[str, float]:
        """``ratios.round_to``: each group keeps a multiple of k channels (the nearest; at least k; a group left whole
        stays whole), see :func:`autoprune.allocation.round_ratios`."""
        k = self.cfg.ratios.round_to
        if k <= 1:
            return ratios
        return round_ratios(ratios, {n: self.problem.graph.group(n).channels for n in ratios}, k)

    def _level_step(self) -> float | None:
        lv_lo, lv_hi = self.cfg.ratios.level
        return 0.01 if lv_hi - lv_lo >= 0.01 else None

    def _offset_span(self, name: str) -> float:
        """Half-width of group ``name``'s searched offset (0: not searched)."""
        r = self.cfg.ratios
        lo, hi = self.bounds[name]
        if r.offset <= 0 or hi - lo <= 1e-12:
            return 0.0
        if r.step is None:
            return float(r.offset)
        return int(r.offset / r.step + 1e-9) * r.step

    def anchor_params(self) -> list[dict[str, Any]]:
        """Optuna parameters of the ``ratios.anchors`` trials (guided mode): the guide's own allocation, every offset
        0, at evenly spaced levels (both ends included), cycling through the criteria. Enqueued when a study is
        created, so the first trials measure the allocations the offsets are centred on."""
        r = self.cfg.ratios
        if r.mode != "guided" or not r.anchors:
            return []
        lv_lo, lv_hi = r.level
        step = self._level_step()
        out = []
        for i in range(r.anchors):
            p: dict[str, Any] = {}
            if len(self.cfg.criteria) > 1:
                p["criterion"] = self.cfg.criteria[i % len(self.cfg.criteria)]
            if lv_hi - lv_lo >= 1e-12:
                level = lv_hi if r.anchors == 1 else lv_lo + (lv_hi - lv_lo) * i / (r.anchors - 1)
                if step is not None:  # on the suggest_float grid, or Optuna would not use the value
                    level = lv_lo + round((level - lv_lo) / step) * step
                p["level"] = round(min(max(level, lv_lo), lv_hi), 6)
            for n in self.names:
                if self._offset_span(n):
                    p[f"d:{n}"] = 0.0
            out.append(p)
        return out
