"""The budget problem every allocation method searches: channel counts per group -> removal, cost, slack;
feasibility, snapping to the ``round_to`` lattice and the final :class:`~autoprune.allocation.result.Allocation`."""
from __future__ import annotations

import itertools
import math
import numbers
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .result import Allocation

__all__ = ["BudgetProblem", "bisect_sorted", "check_feasible", "finish", "infeasible", "lattice_caps", "resolve_target",
           "snap"]


def resolve_target(value: Any, base: int, what: str) -> int | None:
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


class BudgetProblem:
    """Channel counts per group -> removal, MACs/params, and the budget slack (memoised).

    ``base``: the unpruned model's {"macs", "params"}."""

    def __init__(self, graph: Any, names: list[str], scores: Mapping[str, torch.Tensor],
                 targets: dict[str, int], tol: float, round_to: int = 1, *,
                 base: Mapping[str, int]) -> None:
        self.graph = graph
        self.base = dict(base)  # {"macs": ..., "params": ...} of the unpruned model
        self.names = names
        self.C = {n: graph.group(n).channels for n in names}
        self.round_to = int(round_to)
        self.k = 1  # the step of fill/polish/beam_fill: 1 while a method searches, round_to when snapping (finish)
        self.caps: dict[str, int] = {}  # the method's per-group maximum of channels removed
        self.order: dict[str, np.ndarray] = {}
        self.sorted_scores: dict[str, np.ndarray] = {}  # each group's scores in removal order (ascending)
        for n in names:
            s = torch.as_tensor(scores[n], dtype=torch.float64).cpu()
            if s.shape != (self.C[n],):
                raise ValueError(f"scores for {n!r} have shape {tuple(s.shape)}, expected ({self.C[n]},)")
            self.order[n] = torch.sort(s, stable=True).indices.numpy()
            self.sorted_scores[n] = s.numpy()[self.order[n]]
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

    def land_step(self, lo_state: Mapping[str, int], hi_state: Mapping[str, int], caps: Mapping[str, int],
                  priority: Callable[[str, int], float],
                  damage: Callable[[Mapping[str, int]], float]) -> tuple[dict[str, int], str]:
        """Land between the neighbouring states of a bisected step (``lo_state`` over the budget, ``hi_state``
        meeting it): first only the groups that change in that step, then, if still outside the band, any group up
        to ``caps``."""
        best, how = self.land(lo_state, hi_state, lo_state, hi_state, priority, damage)
        if self.slack(self.cost(best)) > self.tol:
            best, how = self.land(lo_state, best, {g: 0 for g in self.names}, caps, priority, damage)
        return best, how


def infeasible(prob: BudgetProblem, caps: Mapping[str, int], how: str) -> ValueError:
    c = prob.cost(caps)
    parts = []
    for k, t in prob.targets.items():
        base = prob.base[k]
        if c[k] > t:
            parts.append(f"{k} budget {t:,} ({100 * t / base:.2f}% of {base:,}) is infeasible: with every prunable "
                         f"group at its maximum ratio ({how}) the model keeps {c[k]:,} {k} "
                         f"({100 * c[k] / base:.2f}%), so at most {base - c[k]:,} {k} "
                         f"({100 * (base - c[k]) / base:.2f}%) can be removed")
    return ValueError("; ".join(parts))


def lattice_caps(prob: BudgetProblem, caps: Mapping[str, int]) -> dict[str, int]:
    return {g: prob.floor_allowed(g, caps[g], prob.round_to) for g in prob.names}


def check_feasible(prob: BudgetProblem, caps: dict[str, int], how: str) -> None:
    """Raise the infeasible-budget error when even ``caps`` (and, with ``round_to``, the caps rounded to the
    lattice) do not meet the budget; remember the caps for :func:`finish`."""
    prob.caps = caps
    if not prob.meets(caps):
        raise infeasible(prob, caps, how)
    if prob.round_to > 1:
        lcaps = lattice_caps(prob, caps)
        if not prob.meets(lcaps):
            raise infeasible(prob, lcaps, f"{how}, remaining channels rounded to multiples of {prob.round_to}")


def snap(prob: BudgetProblem, n: Mapping[str, int], priority: Callable[[str, int], float] | None,
          damage: Callable[[Mapping[str, int]], float] | None) -> tuple[dict[str, int], str]:
    """Move a state onto the ``round_to`` lattice (each group keeps its channels or a multiple of k, at least k):
    the nearest lattice count per group, then the same landing as the methods use (more channels from the groups of
    lowest ``priority`` until the budget is met, give-backs towards the tolerance band), one lattice step at a
    time. The budget stays met: the lattice caps meet it (:func:`check_feasible`)."""
    caps = lattice_caps(prob, prob.caps)
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
    if prob.slack(prob.cost(best)) < 0:  # unreachable after check_feasible; never return a state over budget
        raise infeasible(prob, caps, f"remaining channels rounded to multiples of {prob.round_to}")
    return best, how


def finish(prob: BudgetProblem, n: Mapping[str, int], method: str, info: dict[str, Any], *,
            priority: Callable[[str, int], float] | None = None,
            damage: Callable[[Mapping[str, int]], float] | None = None) -> Allocation:
    info = dict(info)
    if prob.round_to > 1:
        info["round_to"] = prob.round_to
        if any(c != prob.floor_allowed(g, c, prob.round_to) for g, c in n.items()):
            n, info["rounded_by"] = snap(prob, n, priority, damage)
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
        base_macs=prob.base["macs"], base_params=prob.base["params"],
        target={"macs": prob.targets.get("macs"), "params": prob.targets.get("params")},
        remove=rm, counts={g: int(n[g]) for g in prob.names}, info=info,
    )


def bisect_sorted(prob: BudgetProblem, states: list[dict[str, int]]) -> int:
    """Smallest index i whose state meets the budget (states are ordered by non-increasing cost; the last meets)."""
    lo, hi = -1, len(states) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if prob.meets(states[mid]):
            hi = mid
        else:
            lo = mid
    return hi
