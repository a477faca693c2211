"""Per-group pruning ratios that meet a MAC (and/or parameter) budget.

Budget semantics: ``macs=0.5`` means **keep** 50% of the unpruned model's MACs (remove half); a float must lie in
(0, 1]. An ``int`` is an absolute number of MACs (or parameters) to keep. MACs are conv+linear multiply-accumulates
per sample of the physically pruned model (``ChannelGraph.macs``, equal to :func:`autoprune.count_macs`);
parameters are conv/linear/norm parameters (``ChannelGraph.macs(params=True)``, equal to
:func:`autoprune.count_params` for the usual CNNs).

A budget is *met* when the allocation's MACs (and parameters, if given) are <= the target; the allocation is
*within tolerance* when, in addition, the binding constraint is no more than ``tol`` (relative, default 1%) below
its target: ``target * (1 - tol) <= achieved <= target``.

Methods
-------
``"sensitivity"`` (methods.md §3, needs a :class:`~autoprune.sensitivity_analysis.SensitivityTable`):
    ``r_l(tau)`` = the largest grid ratio with damage per MAC saved ``s_l(r) <= tau`` (0 if none). MACs(tau) is a
    non-increasing step function of tau whose steps are the measured ``s`` values, so tau is bisected over the
    sorted distinct ``s`` values (exact): the smallest tau whose allocation meets the budget. The grid is coarse (a
    step can move a 64-channel group from 0 to 0.9 at once), so the result is refined: the groups that changed in
    the last step are interpolated channel by channel between the two neighbouring allocations (bisection on
    the interpolation parameter), then, if still short of the tolerance, a greedy step removes one channel at a
    time from the group with the lowest interpolated ``s`` that does not overshoot the tolerance band.
``"uniform"``: one ratio everywhere (``n = floor(r * channels)``), bisected exactly over the ratios at which some
    group's channel count changes; then the groups that change at the next step get their extra channel one at a
    time (smallest resulting ratio first) until the tolerance is met, so ratios differ from the uniform one by at
    most one channel per group. ``refine=False`` returns the pure uniform ratio.
``"srr"`` (methods.md §4, structural redundancy; constants **unverified**, see :func:`layer_redundancy`):
    repeatedly remove one channel from the group with the largest redundancy ``R``, recompute ``R`` for that group,
    until the budget is met.

Channel rounding (``round_to=k``, for hardware that prefers channel counts in multiples of 8 or 16): every pruned
group keeps a multiple of k channels, at least k (a group left whole keeps its own count; a group of at most k
channels is left whole). The method runs as above; its result is then moved to the nearest lattice counts and
landed with the method's own priority (more channels from the groups it would prune next until the budget is met,
then give-backs towards the tolerance band), k channels at a time. The budget is still met; the tolerance band may
be out of reach at that granularity (``info["within_tol"]`` says so). An infeasible rounded budget raises the same
error as above.

Within a group, channels are always removed in ascending score order (the table's scores, explicit ``scores``,
or ``criterion``), exactly as :meth:`ChannelGraph.plan` does, so ``graph.prune(allocation, scores=...)`` and
``graph.prune_channels(allocation.remove)`` give the model whose MACs were accounted for.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn as nn

__all__ = ["Allocation", "allocate", "sensitivity_ratios", "layer_redundancy", "group_features", "round_count",
           "round_ratios", "check_round_to", "METHODS"]

METHODS = ("sensitivity", "uniform", "srr")


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


# ---------------------------------------------------------------------------------------------- round_to


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


# ---------------------------------------------------------------------------------------------------- problem


def _resolve_target(value: Any, base: int, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a float fraction in (0, 1] or an int count, got {value!r}")
    if isinstance(value, numbers.Integral):
        if value <= 0:
            raise ValueError(f"{what}={value}: an absolute budget must be a positive number of {what} to keep")
        return int(value)
    v = float(value)
    if not (0.0 < v <= 1.0) or math.isnan(v):
        raise ValueError(f"{what}={value}: a float is the fraction of the unpruned model's {what} to KEEP and must be "
                         f"in (0, 1] (e.g. 0.5 keeps half); pass an int for an absolute count")
    return int(math.floor(v * base))


class _Problem:
    """Channel counts per group -> removal, MACs/params, and the budget slack (memoised)."""

    def __init__(self, graph: Any, names: list[str], scores: Mapping[str, torch.Tensor],
                 targets: dict[str, int], tol: float, round_to: int = 1) -> None:
        self.graph = graph
        self.names = names
        self.C = {n: graph.group(n).channels for n in names}
        self.round_to = int(round_to)
        self.k = 1  # the step of fill/polish/beam_fill: 1 while a method searches, round_to when snapping (_finish)
        self.caps: dict[str, int] = {}  # the method's per-group maximum of channels removed
        self.order: dict[str, np.ndarray] = {}
        for n in names:
            s = torch.as_tensor(scores[n], dtype=torch.float64).cpu()
            if s.shape != (self.C[n],):
                raise ValueError(f"scores for {n!r} have shape {tuple(s.shape)}, expected ({self.C[n]},)")
            self.order[n] = torch.sort(s, stable=True).indices.numpy()
        self.targets = targets
        self.tol = float(tol)
        self._memo: dict[tuple, dict[str, int]] = {}
        self.evaluations = 0

    # counts on the lattice: with step k a group keeps its channels, or a multiple of k (at least k) below them
    def allowed(self, g: str, k: int | None = None) -> list[int]:
        """Channel counts that group ``g`` may lose (ascending): ``C - j*k`` for ``1 <= j*k < C``, and 0."""
        k = self.k if k is None else k
        c = self.C[g]
        if k <= 1:
            return list(range(c))
        return [0] + sorted(c - j * k for j in range(1, (c - 1) // k + 1))

    def up(self, g: str, n: int) -> int | None:
        """The next allowed count above ``n`` (None at the top)."""
        if self.k <= 1:
            return n + 1 if n + 1 < self.C[g] else None
        return next((a for a in self.allowed(g) if a > n), None)

    def down(self, g: str, n: int) -> int | None:
        """The allowed count below ``n`` (None at 0)."""
        if self.k <= 1:
            return n - 1 if n > 0 else None
        return next((a for a in reversed(self.allowed(g)) if a < n), None)

    def floor_allowed(self, g: str, n: int, k: int | None = None) -> int:
        """The largest allowed count <= ``n``."""
        return max(a for a in self.allowed(g, k) if a <= n)

    def nearest_allowed(self, g: str, n: int, k: int | None = None) -> int:
        """The allowed count nearest ``n`` (a tie keeps more channels)."""
        return min(self.allowed(g, k), key=lambda a: (abs(a - n), a))

    def removal(self, n: Mapping[str, int]) -> dict[str, list[int]]:
        return {g: sorted(self.order[g][:k].tolist()) for g, k in n.items() if k > 0}

    def cost(self, n: Mapping[str, int]) -> dict[str, int]:
        key = tuple(int(n.get(g, 0)) for g in self.names)
        c = self._memo.get(key)
        if c is None:
            rm = self.removal(n)
            c = {"macs": self.graph.macs(rm)}
            if "params" in self.targets:
                c["params"] = self.graph.macs(rm, params=True)
            self._memo[key] = c
            self.evaluations += 1
        return c

    def slack(self, c: Mapping[str, int]) -> float:
        """min over targets of (target - achieved) / target: >= 0 meets the budget, <= tol is within tolerance."""
        return min((t - c[k]) / t for k, t in self.targets.items())

    def meets(self, n: Mapping[str, int]) -> bool:
        return self.slack(self.cost(n)) >= 0

    def fill(self, n: Mapping[str, int], caps: Mapping[str, int],
             priority: Callable[[str, int], float]) -> dict[str, int]:
        """Greedy: remove one channel at a time until the budget is met. Candidates are tried in ``priority`` order
        (lowest first; ``priority(group, new_count)``); the first whose removal stays inside the tolerance band is
        taken, else the one that overshoots least."""
        n = dict(n)
        while self.slack(self.cost(n)) < 0:
            nxt = {g: self.up(g, n[g]) for g in self.names}
            cands = [g for g in self.names if nxt[g] is not None and nxt[g] <= caps.get(g, 0)]  # type: ignore[operator]
            if not cands:
                break
            cands.sort(key=lambda g: (priority(g, nxt[g]), -self.C[g], g))  # type: ignore[arg-type]
            best = None
            for g in cands:
                m = dict(n)
                m[g] = nxt[g]  # type: ignore[assignment]
                sl = self.slack(self.cost(m))
                if sl <= self.tol:
                    best = m
                    break
                if best is None or sl < self.slack(self.cost(best)):
                    best = m
            n = best  # type: ignore[assignment]
        return n

    def polish(self, n: Mapping[str, int], lower: Mapping[str, int], caps: Mapping[str, int],
               priority: Callable[[str, int], float], damage: Callable[[Mapping[str, int]], float],
               max_rounds: int = 50, max_evals: int = 5000) -> dict[str, int]:
        """From a state that meets the budget but undershoots the tolerance band (channel granularity: one channel of
        an early layer can be worth several % of the MACs), try "give one channel of group h back (not below
        ``lower``), then :meth:`fill` again without h" for every h -- and, if no single give-back helps, every pair
        -- and keep the feasible state closest to the target (inside the band: the least ``damage``); repeat while
        it improves."""
        import itertools

        n = dict(n)
        evals0 = self.evaluations
        for _ in range(max_rounds):
            sl = self.slack(self.cost(n))
            if sl <= self.tol:
                break
            best, best_key = None, None
            for size in (1, 2):
                movable = [h for h in self.names if n[h] > lower.get(h, 0)]
                for combo in itertools.combinations_with_replacement(movable, size):
                    if self.evaluations - evals0 > max_evals:
                        break
                    m = dict(n)
                    for h in combo:
                        d = self.down(h, m[h])
                        m[h] = -1 if d is None else d
                    if any(m[h] < lower.get(h, 0) for h in combo):
                        continue
                    if self.slack(self.cost(m)) < 0:
                        m = self.fill(m, {**caps, **{h: m[h] for h in combo}}, priority)
                    s = self.slack(self.cost(m))
                    if s < 0 or s >= sl:
                        continue
                    key = (0, damage(m)) if s <= self.tol else (1, s)
                    if best_key is None or key < best_key:
                        best, best_key = m, key
                if best is not None:
                    break
            if best is None:
                break
            n = best
        return n

    def beam_fill(self, start: Mapping[str, int], caps: Mapping[str, int],
                  damage: Callable[[Mapping[str, int]], float], width: int = 16,
                  max_evals: int = 4000) -> dict[str, int] | None:
        """Beam search over "one more channel in some group" from ``start`` (which does not meet the budget): keep
        the ``width`` least-damage states that still exceed the target, stop at the first depth where some state
        lands in the band (returning the least-damage one); else the state that overshoots least."""
        key = lambda m: tuple(m[g] for g in self.names)  # noqa: E731
        frontier = [dict(start)]
        seen = {key(start)}
        best_over: dict[str, int] | None = None
        evals0 = self.evaluations
        while frontier and self.evaluations - evals0 < max_evals:
            cands = []
            for st in frontier:
                for g in self.names:
                    u = self.up(g, st[g])
                    if u is not None and u <= caps.get(g, 0):
                        m = dict(st)
                        m[g] = u
                        k = key(m)
                        if k not in seen:
                            seen.add(k)
                            cands.append((self.slack(self.cost(m)), m))
            band = [m for sl, m in cands if 0 <= sl <= self.tol]
            if band:
                return min(band, key=damage)
            over = [(sl, m) for sl, m in cands if sl > self.tol]
            if over:
                sl, m = min(over, key=lambda t: t[0])
                if best_over is None or sl < self.slack(self.cost(best_over)):
                    best_over = m
            frontier = sorted((m for sl, m in cands if sl < 0), key=damage)[:width]
        return best_over

    def land(self, above: Mapping[str, int], below: Mapping[str, int] | None, lower: Mapping[str, int],
             caps: Mapping[str, int], priority: Callable[[str, int], float],
             damage: Callable[[Mapping[str, int]], float]) -> tuple[dict[str, int], str]:
        """Bring a state that exceeds the budget (``above``) into the band: greedy :meth:`fill`, then :meth:`polish`,
        then :meth:`beam_fill`. ``below`` (a known feasible state, or None) is the fallback. Returns the best feasible
        state found (inside the band if any) and which step produced it."""
        options: list[tuple[dict[str, int], str]] = []
        if below is not None:
            options.append((dict(below), "step"))

        def done() -> bool:
            return any(0 <= self.slack(self.cost(m)) <= self.tol for m, _ in options)

        greedy = self.fill(above, caps, priority)
        options.append((greedy, "greedy"))
        if not done():
            feasible = [m for m, _ in options if self.slack(self.cost(m)) >= 0]
            if feasible:
                start = min(feasible, key=lambda m: self.slack(self.cost(m)))
                options.append((self.polish(start, lower, caps, priority, damage), "polish"))
        if not done():
            beam = self.beam_fill(above, caps, damage)
            if beam is not None:
                options.append((beam, "beam"))
        feasible = [(m, how) for m, how in options if self.slack(self.cost(m)) >= 0]
        if not feasible:
            return dict(caps), "caps"
        inside = [(m, how) for m, how in feasible if self.slack(self.cost(m)) <= self.tol]
        if inside:
            return min(inside, key=lambda t: damage(t[0]))
        return min(feasible, key=lambda t: self.slack(self.cost(t[0])))


def _infeasible(prob: _Problem, caps: Mapping[str, int], how: str) -> ValueError:
    c = prob.cost(caps)
    parts = []
    for k, t in prob.targets.items():
        base = prob.base[k]  # type: ignore[attr-defined]
        if c[k] > t:
            parts.append(f"{k} budget {t:,} ({100 * t / base:.2f}% of {base:,}) is infeasible: with every prunable "
                         f"group at its maximum ratio ({how}) the model keeps {c[k]:,} {k} "
                         f"({100 * c[k] / base:.2f}%), so at most {base - c[k]:,} {k} "
                         f"({100 * (base - c[k]) / base:.2f}%) can be removed")
    return ValueError("; ".join(parts))


def _lattice_caps(prob: _Problem, caps: Mapping[str, int]) -> dict[str, int]:
    return {g: prob.floor_allowed(g, caps[g], prob.round_to) for g in prob.names}


def _check_feasible(prob: _Problem, caps: dict[str, int], how: str) -> None:
    """Raise the infeasible-budget error when even ``caps`` (and, with ``round_to``, the caps rounded to the
    lattice) do not meet the budget; remember the caps for :func:`_finish`."""
    prob.caps = caps
    if not prob.meets(caps):
        raise _infeasible(prob, caps, how)
    if prob.round_to > 1:
        lcaps = _lattice_caps(prob, caps)
        if not prob.meets(lcaps):
            raise _infeasible(prob, lcaps, f"{how}, remaining channels rounded to multiples of {prob.round_to}")


def _snap(prob: _Problem, n: Mapping[str, int], priority: Callable[[str, int], float] | None,
          damage: Callable[[Mapping[str, int]], float] | None) -> tuple[dict[str, int], str]:
    """Move a state onto the ``round_to`` lattice (each group keeps its channels or a multiple of k, at least k):
    the nearest lattice count per group, then the same landing as the methods use (more channels from the groups of
    lowest ``priority`` until the budget is met, give-backs towards the tolerance band), one lattice step at a
    time. The budget stays met: the lattice caps meet it (:func:`_check_feasible`)."""
    caps = _lattice_caps(prob, prob.caps)
    snapped = {g: min(prob.nearest_allowed(g, n[g], prob.round_to), caps[g]) for g in prob.names}
    if priority is None:
        priority = lambda g, k: k / prob.C[g]  # noqa: E731  (as even as possible)
    if damage is None:
        damage = lambda m: float(sum((m[g] / prob.C[g]) ** 2 for g in prob.names))  # noqa: E731
    prob.k = prob.round_to
    try:
        best, how = prob.land(snapped, None, {g: 0 for g in prob.names}, caps, priority, damage)
    finally:
        prob.k = 1
    if prob.slack(prob.cost(best)) < 0:  # unreachable after _check_feasible; never return a state over budget
        raise _infeasible(prob, caps, f"remaining channels rounded to multiples of {prob.round_to}")
    return best, how


def _finish(prob: _Problem, n: Mapping[str, int], method: str, info: dict[str, Any], *,
            priority: Callable[[str, int], float] | None = None,
            damage: Callable[[Mapping[str, int]], float] | None = None) -> Allocation:
    info = dict(info)
    if prob.round_to > 1:
        info["round_to"] = prob.round_to
        if any(c != prob.floor_allowed(g, c, prob.round_to) for g, c in n.items()):
            n, info["rounded_by"] = _snap(prob, n, priority, damage)
    c = prob.cost(n)
    rm = prob.removal(n)
    macs = c["macs"]
    params = c.get("params")
    if params is None:
        params = prob.graph.macs(rm, params=True)
    sl = prob.slack(c)
    info.update(slack=sl, within_tol=bool(0 <= sl <= prob.tol), cost_evaluations=prob.evaluations)
    return Allocation(
        {g: (n[g] / prob.C[g]) for g in prob.names}, method=method, macs=macs, params=params,
        base_macs=prob.base["macs"], base_params=prob.base["params"],  # type: ignore[attr-defined]
        target={"macs": prob.targets.get("macs"), "params": prob.targets.get("params")},
        remove=rm, counts={g: int(n[g]) for g in prob.names}, info=info,
    )


def _bisect_sorted(prob: _Problem, states: list[dict[str, int]]) -> int:
    """Smallest index i whose state meets the budget (states are ordered by non-increasing cost; the last meets)."""
    lo, hi = -1, len(states) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if prob.meets(states[mid]):
            hi = mid
        else:
            lo = mid
    return hi


# ---------------------------------------------------------------------------------------------- sensitivity


def _alloc_sensitivity(prob: _Problem, table: Any, refine: bool) -> Allocation:
    curves: dict[str, list[tuple[float, float, int]]] = {}
    table_groups = set(table.groups)
    for g in prob.names:
        if g not in table_groups:
            curves[g] = []
            continue
        ch = table.group_channels.get(g)
        if ch is not None and ch != prob.C[g]:
            raise ValueError(f"the sensitivity table was measured on another model: group {g!r} has {ch} channels "
                             f"there and {prob.C[g]} here")
        curves[g] = [(r.ratio, float(r.damage_per_mac), int(r.channels_removed)) for r in table.curve(g)]
    caps = {g: max([k for _, _, k in curves[g]], default=0) for g in prob.names}
    zero = {g: 0 for g in prob.names}
    if prob.meets(zero):
        return _finish(prob, zero, "sensitivity", {"tau": None})

    def s_hat(g: str, k: int) -> float:  # interpolated damage per MAC saved with k channels removed
        pts = curves[g]
        if not pts:
            return math.inf
        return float(np.interp(k / prob.C[g], [p[0] for p in pts], [p[1] for p in pts]))

    # cumulative damage of a state: sum over groups of the interpolated damage (s * MACs saved), 0 at ratio 0
    dmg_curves = {g: ([0.0] + [r.ratio for r in table.curve(g)], [0.0] + [r.damage_per_mac * r.macs_saved
                                                                         for r in table.curve(g)])
                  for g in prob.names if curves[g]}

    def damage(m: Mapping[str, int]) -> float:
        return float(sum(np.interp(m[g] / prob.C[g], *dmg_curves[g]) for g in dmg_curves))

    _check_feasible(prob, caps, f"the largest measured ratio, {max(table.ratios):g}")

    def n_at(tau: float) -> dict[str, int]:
        return {g: max([k for _, s, k in curves[g] if s <= tau], default=0) for g in prob.names}

    taus = sorted({s for g in prob.names for _, s, _ in curves[g]})
    states = [n_at(t) for t in taus]
    i = _bisect_sorted(prob, states)
    tau = taus[i]
    hi_state = states[i]
    lo_state = states[i - 1] if i > 0 else zero
    info: dict[str, Any] = {"tau": tau, "tau_index": i, "taus": len(taus)}
    if not refine or prob.slack(prob.cost(hi_state)) <= prob.tol:
        return _finish(prob, hi_state, "sensitivity", info, priority=s_hat, damage=damage)

    # 1) interpolate the groups that changed between the neighbouring thresholds
    changed = [g for g in prob.names if hi_state[g] != lo_state[g]]

    def interp(t: float) -> dict[str, int]:
        m = dict(lo_state)
        for g in changed:
            m[g] = lo_state[g] + int(math.floor(t * (hi_state[g] - lo_state[g]) + 1e-9))
        return m

    t_lo, t_hi = 0.0, 1.0
    for _ in range(40):
        if interp(t_lo) == interp(t_hi):
            break
        mid = 0.5 * (t_lo + t_hi)
        if prob.meets(interp(mid)):
            t_hi = mid
        else:
            t_lo = mid
    best = interp(t_hi)
    info["interpolated"] = t_hi
    if prob.slack(prob.cost(best)) <= prob.tol:
        return _finish(prob, best, "sensitivity", info, priority=s_hat, damage=damage)

    # 2) one channel at a time by lowest interpolated damage per MAC (greedy, then local repairs)
    best, how = prob.land(interp(t_lo), best, zero, caps, s_hat, damage)
    info["refined_by"] = how
    return _finish(prob, best, "sensitivity", info, priority=s_hat, damage=damage)


def sensitivity_ratios(table: Any, tau: float) -> dict[str, float]:
    """``r_l(tau)`` for every group of ``table``: the largest grid ratio whose damage per MAC saved is <= ``tau``
    (0.0 if none). Non-decreasing in ``tau`` for every group, so the pruned model's MACs are non-increasing."""
    out = {}
    for g in table.groups:
        out[g] = max([r.ratio for r in table.curve(g) if r.damage_per_mac <= tau], default=0.0)
    return out


# -------------------------------------------------------------------------------------------------- uniform


def _alloc_uniform(prob: _Problem, max_ratio: float, refine: bool) -> Allocation:
    caps = {g: min(int(math.floor(max_ratio * c + 1e-9)), c - 1) for g, c in prob.C.items()}
    zero = {g: 0 for g in prob.names}
    if prob.meets(zero):
        return _finish(prob, zero, "uniform", {"uniform_ratio": 0.0})
    _check_feasible(prob, caps, f"max_ratio={max_ratio:g}, at most channels-1")

    def n_at(r: float) -> dict[str, int]:
        return {g: min(int(math.floor(r * prob.C[g] + 1e-9)), caps[g]) for g in prob.names}

    bps = sorted({k / prob.C[g] for g in prob.names for k in range(1, caps[g] + 1)})
    states = [n_at(r) for r in bps]
    i = _bisect_sorted(prob, states)
    hi_state = states[i]
    info: dict[str, Any] = {"uniform_ratio": bps[i]}

    def near_uniform(g: str, k: int) -> float:
        return k / prob.C[g]

    def spread(m: Mapping[str, int]) -> float:  # distance from the uniform ratio
        return float(sum((m[g] / prob.C[g] - bps[i]) ** 2 for g in prob.names))

    if not refine or prob.slack(prob.cost(hi_state)) <= prob.tol:
        return _finish(prob, hi_state, "uniform", info, priority=near_uniform, damage=spread)
    lo_state = states[i - 1] if i > 0 else zero

    # first only the groups that change at the next step, then any group
    best, how = prob.land(lo_state, hi_state, lo_state, hi_state, near_uniform, spread)
    if prob.slack(prob.cost(best)) > prob.tol:
        best, how = prob.land(lo_state, best, zero, caps, near_uniform, spread)
    info["uniform_ratio_below"] = bps[i - 1] if i > 0 else 0.0
    info["refined_by"] = how
    return _finish(prob, best, "uniform", info, priority=near_uniform, damage=spread)


# ------------------------------------------------------------------------------------------------------ SRR


def group_features(graph: Any, name: str) -> np.ndarray:
    """One row per channel unit of group ``name``: the unit's filters in every producing conv/linear layer,
    flattened and concatenated (zeros where a unit has no filter in a layer, e.g. channels created by a padding
    shortcut), then L2-normalised (float64 ``[channels, D]``)."""
    g = graph.group(name)
    modules = dict(graph.gm.named_modules())
    blocks = []
    for m in g.members:
        if m.module is None:
            continue
        w = getattr(modules[m.module], "weight", None)
        if w is None:
            continue
        w = w.detach().to("cpu", torch.float64)
        rows = w[torch.as_tensor(m.channels, dtype=torch.long)].reshape(len(m.channels), -1)
        block = torch.zeros((g.channels, rows.shape[1]), dtype=torch.float64)
        block.index_add_(0, torch.as_tensor(m.index, dtype=torch.long), rows)
        blocks.append(block)
    if not blocks:
        return np.zeros((g.channels, 1))
    f = torch.cat(blocks, 1)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return f.numpy()


def _pairwise(f: np.ndarray) -> np.ndarray:
    sq = (f * f).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * f @ f.T, 0.0)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2)


def _components(adj: np.ndarray) -> int:
    n = len(adj)
    labels = np.arange(n)
    big = n
    while True:
        new = np.where(adj, labels[None, :], big).min(1)
        new = np.minimum(new, labels)
        if np.array_equal(new, labels):
            return int(len(np.unique(labels)))
        labels = new


def _greedy_cover(cover: np.ndarray) -> int:
    uncovered = np.ones(len(cover), dtype=bool)
    count = 0
    while uncovered.any():
        gains = (cover & uncovered[None, :]).sum(1)
        i = int(np.argmax(gains))
        uncovered &= ~cover[i]
        count += 1
    return count


def layer_redundancy(dist: np.ndarray, gamma: float, ell: float | None = None, *, w_components: float = 0.35,
                     w_cover: float = 0.65) -> float:
    """Structural redundancy ``R = N / (w_components * k + w_cover * N_c)`` of one layer (methods.md §4).

    ``dist``: pairwise distances of the layer's N L2-normalised filters. ``k``: connected components of the graph
    with an edge where distance <= ``gamma``; ``N_c``: greedy ``ell``-covering number (balls of radius ``ell``,
    default ``gamma``, centred on filters). The constants 0.35/0.65 come from a third-party reproduction of SRR
    (Wang et al., CVPR 2021) and are **unverified**; ``gamma``/``ell`` have no published default (see
    :func:`allocate`)."""
    n = len(dist)
    if n == 0:
        return 0.0
    ell = gamma if ell is None else ell
    k = _components(dist <= gamma)
    nc = _greedy_cover(dist <= ell)
    return n / (w_components * k + w_cover * nc)


def _alloc_srr(prob: _Problem, max_ratio: float, options: Mapping[str, Any]) -> Allocation:
    opts = {"gamma": None, "gamma_quantile": 0.05, "ell": None, "w_components": 0.35, "w_cover": 0.65}
    unknown = set(options) - set(opts)
    if unknown:
        raise TypeError(f"unknown srr option(s) {sorted(unknown)}; accepted: {sorted(opts)}")
    opts.update(options)
    caps = {g: min(int(math.floor(max_ratio * c + 1e-9)), c - 1) for g, c in prob.C.items()}
    zero = {g: 0 for g in prob.names}
    if prob.meets(zero):
        return _finish(prob, zero, "srr", {})
    _check_feasible(prob, caps, f"max_ratio={max_ratio:g}, at most channels-1")

    dists = {g: _pairwise(group_features(prob.graph, g)) for g in prob.names}
    gamma = opts["gamma"]
    if gamma is None:
        pooled = np.concatenate([d[np.triu_indices(len(d), 1)] for d in dists.values() if len(d) > 1])
        gamma = float(np.quantile(pooled, opts["gamma_quantile"])) if len(pooled) else 0.0
    ell = gamma if opts["ell"] is None else float(opts["ell"])

    def redundancy(g: str, k: int) -> float:
        keep = prob.order[g][k:]
        d = dists[g][np.ix_(keep, keep)]
        return layer_redundancy(d, gamma, ell, w_components=opts["w_components"], w_cover=opts["w_cover"])

    n = dict(zero)
    R = {g: redundancy(g, 0) for g in prob.names}
    initial = dict(R)
    steps = 0
    while prob.slack(prob.cost(n)) < 0:
        cands = sorted((g for g in prob.names if n[g] < caps[g]), key=lambda g: (-R[g], -(prob.C[g] - n[g]), g))
        if not cands:
            break
        pick, pick_sl = None, None
        for g in cands:
            m = dict(n)
            m[g] += 1
            sl = prob.slack(prob.cost(m))
            if sl <= prob.tol:
                pick = g
                break
            if pick_sl is None or sl < pick_sl:
                pick, pick_sl = g, sl
        n[pick] += 1  # type: ignore[index]
        R[pick] = redundancy(pick, n[pick])  # type: ignore[index]
        steps += 1
    info = {"gamma": gamma, "ell": ell, "steps": steps, "initial_redundancy": initial, "final_redundancy": R}
    if prob.slack(prob.cost(n)) > prob.tol:
        # the last filter overshot the band: undo it and land with local repairs (most redundant groups first)
        last = dict(n)
        last[pick] -= 1  # type: ignore[index]
        n, how = prob.land(last, n, zero, caps, lambda g, k: -R[g],
                           lambda m: -sum(R[g] * m[g] for g in prob.names))
        info["refined_by"] = how
    return _finish(prob, n, "srr", info, priority=lambda g, k: -R[g],
                   damage=lambda m: -sum(R[g] * m[g] for g in prob.names))


# ------------------------------------------------------------------------------------------------------ public


def allocate(
    sens_or_graph: Any,
    *,
    macs: float | int | None = None,
    params: float | int | None = None,
    method: str = "sensitivity",
    graph: Any = None,
    model: nn.Module | None = None,
    example_inputs: Any = None,
    tol: float = 0.01,
    scores: Mapping[str, torch.Tensor] | None = None,
    criterion: str = "l1",
    max_ratio: float = 0.9,
    refine: bool = True,
    srr_options: Mapping[str, Any] | None = None,
    round_to: int = 1,
) -> Allocation:
    """Per-group ratios meeting a budget: ``macs`` / ``params`` to KEEP (float fraction in (0, 1] or int count).

    ``sens_or_graph``: a :class:`~autoprune.sensitivity_analysis.SensitivityTable` (required for ``method="sensitivity"``;
    then pass ``graph=`` or ``model=`` + ``example_inputs=``), a :class:`~autoprune.graph.ChannelGraph`, or a model
    (with ``example_inputs``). Channel order within a group: ``scores`` if given, else the table's scores, else
    ``criterion`` (weight-based). ``max_ratio`` caps each group for uniform/SRR (always at most channels-1); the
    sensitivity method is capped by the largest ratio of its grid. ``tol``: the relative tolerance band below the
    target (see the module docstring). ``refine=False`` skips the final interpolation/greedy steps (pure tau
    threshold / pure uniform ratio). ``srr_options``: ``gamma`` (absolute distance threshold; default None = the
    ``gamma_quantile``, 0.05, quantile of all within-group filter distances of the model), ``ell`` (covering radius,
    default gamma), ``w_components`` (0.35), ``w_cover`` (0.65) -- all unverified constants. ``round_to=k``: every
    pruned group keeps a multiple of k channels (at least k; a group left whole keeps its count, and a group of at
    most k channels is left whole), the budget still met (see the module docstring).

    Raises ``ValueError`` for an infeasible budget, saying how much at most can be removed.
    """
    from .graph import ChannelGraph
    from .sensitivity_analysis import SensitivityTable

    if method not in METHODS:
        raise ValueError(f"unknown allocation method {method!r}; choose one of {', '.join(METHODS)}")
    if macs is None and params is None:
        raise ValueError("give a budget: macs= and/or params= (fraction to keep in (0, 1], or an absolute int)")
    if not (0.0 <= tol < 1.0):
        raise ValueError(f"tol must be in [0, 1), got {tol}")
    if not (0.0 < max_ratio < 1.0):
        raise ValueError(f"max_ratio must be in (0, 1), got {max_ratio}")
    round_to = check_round_to(round_to)

    table = None
    if isinstance(sens_or_graph, SensitivityTable):
        table = sens_or_graph
    elif isinstance(sens_or_graph, ChannelGraph):
        graph = sens_or_graph
    elif isinstance(sens_or_graph, nn.Module):
        model = sens_or_graph
    else:
        raise TypeError("first argument must be a SensitivityTable, a ChannelGraph or a model, got "
                        f"{type(sens_or_graph).__name__}")
    if graph is None:
        if model is None:
            raise ValueError("pass graph= (a ChannelGraph) or model= and example_inputs= to account for MACs")
        if example_inputs is None:
            raise ValueError("pass example_inputs= (e.g. torch.zeros(1, 3, 32, 32)) together with model=")
        graph = ChannelGraph(model, example_inputs)
    if method == "sensitivity" and table is None:
        raise ValueError("method='sensitivity' needs a SensitivityTable (autoprune.sensitivity_analysis.sensitivity(...)) "
                         "as first argument")

    names = [g.name for g in graph.prunable_groups]
    if table is not None:
        extra = [g for g in table.groups if g not in set(names)]
        if extra:
            raise ValueError(f"the sensitivity table has groups this model lacks (another model?): {extra[:5]}")
    if scores is None and table is not None and table.scores:
        scores = {g: torch.tensor(v, dtype=torch.float64) for g, v in table.scores.items()}
    missing = [g for g in names if scores is None or g not in scores]
    if missing:
        from .scoring import score_groups

        computed = score_groups(graph, criterion, groups=missing)
        scores = {**(scores or {}), **computed}

    base = {"macs": graph.macs(), "params": graph.macs(params=True)}
    targets = {}
    t = _resolve_target(macs, base["macs"], "macs")
    if t is not None:
        targets["macs"] = t
    t = _resolve_target(params, base["params"], "params")
    if t is not None:
        targets["params"] = t
    prob = _Problem(graph, names, scores, targets, tol, round_to)  # type: ignore[arg-type]
    prob.base = base  # type: ignore[attr-defined]

    if method == "sensitivity":
        return _alloc_sensitivity(prob, table, refine)
    if method == "uniform":
        return _alloc_uniform(prob, max_ratio, refine)
    return _alloc_srr(prob, max_ratio, dict(srr_options or {}))
