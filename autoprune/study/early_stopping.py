"""Multi-objective early stopping of search trials: asynchronous successive halving on non-dominated sorting.

A trial fine-tunes in *rungs*: fractions of its fine-tuning budget (``0`` = after pruning and BatchNorm
re-estimation, before any step). At each rung it records its objective values (accuracy so far, MAC and parameter
fractions) and compares them with the values every other trial recorded at the *same* rung, in all objectives at
once: the rung's ``n`` results are put in one priority order -- non-dominated sorting first (front 0, 1, ...), and
inside a front by how much each result adds to it (its exclusive hypervolume contribution for two objectives, the
NSGA-II crowding distance for more) -- and the trial goes on only if it is among the first ``ceil(n /
reduction_factor)``. Otherwise it cannot be expected to reach the front and is stopped.

This follows multi-objective asynchronous successive halving (MO-ASHA; Schmucker et al., 2021, "Multi-objective
multi-fidelity hyperparameter optimization with application to fairness"; Salinas et al., 2021), as Syne Tune's
``MOASHA`` implements it: promotion is decided when a trial *reaches* a rung, against whatever results are there
(asynchronous: no trial waits for a rung to fill), from a non-dominated ranking, keeping about ``1/eta`` of a
rung's trials. The order inside a front is what makes this work for pruning searches, where every trial keeps its
own MAC fraction and so nearly every trial is non-dominated at its rung: promoting whole first fronts (this module's
first rule) stopped no trial in the 36-trial ResNet-56 search (docs/better_fronts.md); ordering a front by
hypervolume contribution keeps the trials that widen or lift it and stops those crowded next to a better one. Syne
Tune breaks ties inside a front with an epsilon-net; we use the hypervolume contribution because the search is judged
by its front's hypervolume. Nothing is decided before a rung holds ``min_results`` results, so the first trials of a
study are never stopped on a handful of comparisons.

Optuna's pruners and Ray's ASHA are single-objective (``trial.report`` raises in multi-objective studies), hence
this module. Rung results live in the study's storage, as the user attribute :data:`RUNG_ATTR` of each trial
(``{"<steps>": [values...]}``), so they survive restarts and every worker (local processes on a journal file,
PostgreSQL workers) sees the others'. Results are keyed by the number of fine-tuning steps, so only results after the
same amount of fine-tuning are compared. A stopped trial raises :class:`TrialStopped`, a subclass of
``optuna.TrialPruned``: Optuna records it as PRUNED (never COMPLETE with a partial accuracy), with its last values in
the user attribute :data:`STOP_ATTR`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.trial import TrialState

from ..train import evaluate

__all__ = ["RUNG_ATTR", "STOP_ATTR", "Rungs", "Decision", "TrialStopped", "RungStore", "EarlyStopper",
           "TrialMonitor", "RungReporter", "nondominated_ranks", "front_spread", "priority_order", "promotes",
           "default_rungs", "rungs_from", "stopper_for", "trial_callback"]

#: Trial user attribute with the trial's rung results: ``{"<fine-tuning steps>": [objective values]}``.
RUNG_ATTR = "rung_results"
#: Trial user attribute of a stopped trial: where it stopped and its last values.
STOP_ATTR = "early_stopped"

#: Trial states whose rung results count. A FAIL trial was interrupted (its retry records its own results).
_COUNTED = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


def default_rungs(reduction_factor: float = 3.0) -> tuple[float, ...]:
    """``(0, 1/eta)``: BatchNorm re-estimation only, then a ``1/eta`` of the fine-tuning budget, then the full
    budget (not a rung: a trial that gets there completes)."""
    return (0.0, round(1.0 / reduction_factor, 6))


@dataclass(frozen=True)
class Rungs:
    """Where trials are compared (``fractions`` of the fine-tuning budget, each in [0, 1); the full budget is the
    end, not a rung), how many are kept (about ``1 / reduction_factor`` of a rung's results) and from how many results
    on a rung comparisons start (``min_results``; default ``ceil(reduction_factor)``)."""

    fractions: tuple[float, ...] = field(default_factory=default_rungs)
    reduction_factor: float = 3.0
    min_results: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.reduction_factor, (int, float)) or not self.reduction_factor > 1:
            raise ValueError(f"early_stopping.reduction_factor must be a number > 1 (e.g. 3: keep about a third "
                             f"at each rung), got {self.reduction_factor!r}")
        fr = tuple(float(f) for f in self.fractions)
        if not fr or any(not (0.0 <= f < 1.0) for f in fr):
            raise ValueError(f"early_stopping.rungs must be a non-empty list of fractions of the fine-tuning budget in "
                             f"[0, 1) (e.g. [0, 0.33]: after BatchNorm re-estimation and after a third), got "
                             f"{list(self.fractions)!r}")
        object.__setattr__(self, "fractions", tuple(sorted(set(fr))))
        if self.min_results is not None and (not isinstance(self.min_results, int) or self.min_results < 2):
            raise ValueError(f"early_stopping.min_results must be an integer >= 2, got {self.min_results!r}")

    @property
    def min_count(self) -> int:
        return self.min_results if self.min_results is not None else max(2, math.ceil(self.reduction_factor))

    def milestones(self, total_steps: int) -> list[int]:
        """Fine-tuning step counts of the rungs for a budget of ``total_steps`` (distinct, below the total)."""
        steps = sorted({int(round(f * total_steps)) for f in self.fractions})
        return [s for s in steps if s < total_steps]


@dataclass(frozen=True)
class Decision:
    """What a rung decided for one trial: ``promote`` (go on) or stop; ``rank`` is its non-dominated front (0 =
    first), ``better`` how many results lie on strictly better fronts, ``position`` its place in the rung's priority
    order (0 = first; ``better`` <= ``position``), ``n`` the results on the rung (its own included), ``quota`` =
    ``ceil(n / reduction_factor)``: it goes on when ``position < quota`` (or the rung holds too few results)."""

    promote: bool
    step: int
    rank: int
    better: int
    n: int
    quota: int
    position: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"promote": self.promote, "step": self.step, "rank": self.rank, "better": self.better,
                "position": self.position, "n": self.n, "quota": self.quota}


class TrialStopped(optuna.TrialPruned):
    """Raised inside a trial that early stopping stopped: Optuna records the trial as PRUNED."""

    def __init__(self, decision: Decision, values: Sequence[float]) -> None:
        super().__init__(f"stopped at {decision.step} fine-tuning steps: placed {decision.position + 1} of "
                         f"{decision.n} results on this rung ({decision.better} on better fronts), quota "
                         f"{decision.quota}")
        self.decision = decision
        self.values = list(values)


# --------------------------------------------------------------------------------------------------------------
# ranking


def nondominated_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Front index of every point under non-dominated sorting (all objectives minimised; 0 = non-dominated).

    Written out (O(n^2 m), n = results on one rung, a few hundred at most) rather than borrowed from Optuna, whose
    ``_fast_non_domination_rank`` is private API."""
    n = len(points)
    pts = [tuple(float(v) for v in p) for p in points]

    def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))

    dominated_by = [[j for j in range(n) if dominates(pts[i], pts[j])] for i in range(n)]
    count = [0] * n
    for i in range(n):
        for j in dominated_by[i]:
            count[j] += 1
    ranks = [-1] * n
    current = [i for i in range(n) if count[i] == 0]
    r = 0
    while current:
        nxt = []
        for i in current:
            ranks[i] = r
            for j in dominated_by[i]:
                count[j] -= 1
                if count[j] == 0:
                    nxt.append(j)
        current, r = nxt, r + 1
    return ranks


def front_spread(points: Sequence[Sequence[float]], ranks: Sequence[int],
                 reference: Sequence[float | None] | None = None) -> list[float]:
    """How much each point adds to its own non-dominated front (all objectives minimised; larger = keep first).

    Two objectives: the exclusive hypervolume contribution of the point to its front (the area only it dominates),
    with the reference point ``reference`` (minimised values; None or a None entry: the rung's worst value in that
    objective plus a tenth of the rung's range in it, so the front's extreme points contribute too, but not without
    bound; a reference better than a point's value counts as that value). More objectives: the crowding distance
    of NSGA-II (Deb et al. 2002; extreme points ``inf``). Equal points add nothing to each other (both 0 for two
    objectives)."""
    n = len(points)
    if n == 0:
        return []
    pts = [tuple(float(v) for v in p) for p in points]
    m = len(pts[0])
    out = [0.0] * n
    fronts: dict[int, list[int]] = {}
    for i, r in enumerate(ranks):
        fronts.setdefault(r, []).append(i)
    if m == 2:
        ref = []
        for k in range(2):
            lo, hi = min(p[k] for p in pts), max(p[k] for p in pts)
            given = reference[k] if reference is not None else None
            ref.append(float(given) if given is not None else
                       hi + (0.1 * (hi - lo) if hi > lo else 1e-6 * max(1.0, abs(hi))))
        for members in fronts.values():
            order = sorted(members, key=lambda i: (pts[i][0], pts[i][1]))
            for j, i in enumerate(order):
                x_next = pts[order[j + 1]][0] if j + 1 < len(order) else ref[0]
                y_prev = pts[order[j - 1]][1] if j > 0 else ref[1]
                out[i] = max(0.0, x_next - pts[i][0]) * max(0.0, y_prev - pts[i][1])
        return out
    for members in fronts.values():
        for k in range(m):
            order = sorted(members, key=lambda i: pts[i][k])
            lo, hi = pts[order[0]][k], pts[order[-1]][k]
            out[order[0]] = out[order[-1]] = math.inf
            if hi <= lo:
                continue
            for j in range(1, len(order) - 1):
                out[order[j]] += (pts[order[j + 1]][k] - pts[order[j - 1]][k]) / (hi - lo)
    return out


def priority_order(points: Sequence[Sequence[float]], reference: Sequence[float | None] | None = None,
                   ranks: Sequence[int] | None = None) -> list[int]:
    """Indices of ``points`` (minimised) best first: by non-dominated front, then by :func:`front_spread` (larger
    first), then by index (an earlier result wins a tie). ``ranks``: the points' :func:`nondominated_ranks`, when
    the caller has them already."""
    ranks = nondominated_ranks(points) if ranks is None else ranks
    spread = front_spread(points, ranks, reference)
    return sorted(range(len(points)), key=lambda i: (ranks[i], -spread[i], i))


def promotes(own: Sequence[float], others: Sequence[Sequence[float]], *, reduction_factor: float,
             min_results: int, step: int = 0, reference: Sequence[float | None] | None = None) -> Decision:
    """Whether a trial whose (minimised) values at a rung are ``own`` goes on, given the other trials' values at
    the same rung (earliest first): it goes on when it is among the first ``ceil(n / reduction_factor)`` of the
    rung's :func:`priority_order` (``reference``: see :func:`front_spread`). See the module docstring."""
    pts = [list(o) for o in others] + [list(own)]  # own last: it loses exact ties to results already there
    n = len(pts)
    quota = max(1, math.ceil(n / reduction_factor))
    if n < min_results:
        return Decision(True, step, 0, 0, n, quota, 0)
    ranks = nondominated_ranks(pts)
    position = priority_order(pts, reference, ranks).index(n - 1)
    better = sum(1 for r in ranks[:-1] if r < ranks[-1])
    return Decision(position < quota, step, ranks[-1], better, n, quota, position)


# --------------------------------------------------------------------------------------------------------------
# storage


class RungStore:
    """Rung results of a study, read from and written to its storage (trial user attributes)."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study

    def record(self, trial: optuna.Trial, step: int, values: Sequence[float]) -> None:
        own = dict(trial.user_attrs.get(RUNG_ATTR) or {})
        own[str(int(step))] = [float(v) for v in values]
        trial.set_user_attr(RUNG_ATTR, own)

    def results(self, step: int, *, exclude: int | None = None) -> dict[int, list[float]]:
        """``{trial number: values}`` recorded after ``step`` fine-tuning steps by trials that are running,
        complete or stopped (a failed trial's results are left out: its retry records them again)."""
        key = str(int(step))
        out: dict[int, list[float]] = {}
        for t in self.study.get_trials(deepcopy=False, states=_COUNTED):
            if t.number == exclude:
                continue
            vals = (t.user_attrs.get(RUNG_ATTR) or {}).get(key)
            if vals is not None:
                out[t.number] = [float(v) for v in vals]
        return out


class EarlyStopper:
    """Multi-objective successive halving for the trials of one study.

    ``directions``: ``"maximize"``/``"minimize"`` per objective, in the order of the values recorded (the study's
    objectives). ``reference``: per objective, the worst value that still counts (natural direction; e.g. 1.0 for a
    MAC fraction: the unpruned model), or None for the rung's own (its worst value and a tenth of its range); it
    places a front's extreme results in the rung's order (:func:`front_spread`). One instance serves every trial of
    a process; all state is in the storage.
    """

    def __init__(self, rungs: Rungs | None = None, directions: Sequence[str] = ("maximize", "minimize"),
                 *, names: Sequence[str] | None = None,
                 reference: Sequence[float | None] | None = None) -> None:
        self.rungs = rungs or Rungs()
        bad = [d for d in directions if d not in ("maximize", "minimize")]
        if bad or not directions:
            raise ValueError(f"directions must be 'maximize' or 'minimize' per objective, got {list(directions)}")
        self.directions = list(directions)
        self.names = list(names) if names is not None else [f"objective_{i}" for i in range(len(directions))]
        if reference is not None and len(reference) != len(self.directions):
            raise ValueError(f"reference needs one value (or None) per objective, got {list(reference)}")
        self.reference = None if reference is None else [
            None if r is None else (-float(r) if d == "maximize" else float(r))
            for r, d in zip(reference, self.directions)]

    def _minimised(self, values: Sequence[float]) -> list[float]:
        if len(values) != len(self.directions):
            raise ValueError(f"expected {len(self.directions)} objective values, got {len(values)}")
        return [-float(v) if d == "maximize" else float(v) for v, d in zip(values, self.directions)]

    def report(self, trial: optuna.Trial, step: int, values: Sequence[float],
               study: optuna.Study | None = None) -> Decision:
        """Record ``values`` (natural directions) of ``trial`` after ``step`` fine-tuning steps and decide."""
        store = RungStore(study if study is not None else _study_of(trial))
        store.record(trial, step, values)
        others = store.results(step, exclude=trial.number)
        return promotes(self._minimised(values), [self._minimised(v) for v in others.values()],
                        reduction_factor=self.rungs.reduction_factor, min_results=self.rungs.min_count, step=step,
                        reference=self.reference)

    def stop(self, trial: optuna.Trial, decision: Decision, values: Sequence[float], *,
             rung: int | None = None, images: int | None = None) -> TrialStopped:
        """Mark ``trial`` as stopped (its last values and the decision as a user attribute) and return the
        exception to raise."""
        info = {"step": decision.step, "rung": rung, "images": images,
                "values": dict(zip(self.names, (float(v) for v in values))), "decision": decision.to_dict(),
                "time": time.time()}
        trial.set_user_attr(STOP_ATTR, info)
        return TrialStopped(decision, values)

    def judge(self, trial: optuna.Trial, step: int, values: Sequence[float], *, rung: int,
              batch_size: int | None = None, study: optuna.Study | None = None
              ) -> tuple[Decision, TrialStopped | None]:
        """:meth:`report` the trial's values at rung ``rung`` (``step`` fine-tuning steps) and, when it is not
        promoted, :meth:`stop` it (its images: ``step * batch_size``). Returns the decision and the exception to
        raise (None: it goes on). The one step both the trial's own monitor and the Ray driver take."""
        decision = self.report(trial, step, values, study=study)
        if decision.promote:
            return decision, None
        images = step * batch_size if batch_size else None
        return decision, self.stop(trial, decision, values, rung=rung, images=images)

    def monitor(self, trial: optuna.Trial, measure: Callable[[], Sequence[float]], *,
                batch_size: int | None = None, study: optuna.Study | None = None,
                log: Callable[[str], None] | None = None) -> "TrialMonitor":
        """A fine-tuning callback for ``trial`` (see :class:`TrialMonitor`)."""
        return TrialMonitor(self, trial, measure, batch_size=batch_size, study=study, log=log)


def _study_of(trial: Any) -> optuna.Study:
    study = getattr(trial, "study", None)
    if not isinstance(study, optuna.Study):
        raise TypeError(f"early stopping needs a trial attached to a study (its storage holds the other trials' "
                        f"rung results); got {type(trial).__name__}")
    return study


class RungReporter:
    """The trial's side of early stopping where the trial cannot read the study (a Ray trainable runs on a
    ``FixedTrial``): at each rung it measures the model and ``send(steps_done, rung, values)``s the values to the
    driver, which records them, decides (:meth:`EarlyStopper.report`) and stops the trial there. ``send`` blocks
    until the driver has decided (Ray Tune's function trainables report synchronously), so a stopped trial runs no
    further step."""

    def __init__(self, rungs: Rungs, measure: Callable[[], Sequence[float]],
                 send: Callable[[int, int, list[float]], None]) -> None:
        self.rungs, self.measure, self.send = rungs, measure, send
        self._milestones: list[int] | None = None
        self.total_steps: int | None = None

    def __call__(self, steps_done: int, total_steps: int) -> None:
        if self._milestones is None:
            self.total_steps = int(total_steps)
            self._milestones = self.rungs.milestones(self.total_steps)
        if steps_done in self._milestones:
            self.send(int(steps_done), self._milestones.index(steps_done), [float(v) for v in self.measure()])


class TrialMonitor(RungReporter):
    """Checks one trial at its rungs while it fine-tunes.

    Call it as ``monitor(steps_done, total_steps)`` before the first step (``steps_done=0``) and after every step
    (``autoprune.train.finetune(callback=...)`` does). At a rung it calls ``measure()`` for the objective values
    of the model as it is now (accuracy on the evaluation split, MAC fraction...), records them and raises
    :class:`TrialStopped` when the trial is stopped: a :class:`RungReporter` that decides itself, from the study's
    storage, instead of sending the values to a driver.
    """

    def __init__(self, stopper: EarlyStopper, trial: optuna.Trial, measure: Callable[[], Sequence[float]], *,
                 batch_size: int | None = None, study: optuna.Study | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        super().__init__(stopper.rungs, measure, self._judge)
        self.stopper, self.trial = stopper, trial
        self.study = study if study is not None else _study_of(trial)
        self.batch_size = batch_size
        self.log = log or (lambda s: None)
        self.decisions: list[Decision] = []

    def _judge(self, steps_done: int, rung: int, values: list[float]) -> None:
        d, stopped = self.stopper.judge(self.trial, steps_done, values, rung=rung, batch_size=self.batch_size,
                                        study=self.study)
        self.decisions.append(d)
        if stopped is not None:
            self.log(f"trial {self.trial.number}: stopped at rung {rung} ({steps_done}/{self.total_steps} steps), "
                     f"placed {d.position + 1} of {d.n} results (quota {d.quota})")
            raise stopped


def rungs_from(spec: Mapping[str, Any] | Rungs | None) -> Rungs:
    """:class:`Rungs` from a config mapping ``{rungs, reduction_factor, min_results}`` (missing keys: defaults)."""
    if isinstance(spec, Rungs):
        return spec
    d = dict(spec or {})
    eta = d.get("reduction_factor", 3.0)
    fractions = d.get("rungs")
    if fractions is None:
        Rungs(reduction_factor=eta)  # validates eta before it is used below
        fractions = default_rungs(eta)
    return Rungs(fractions=tuple(fractions), reduction_factor=eta, min_results=d.get("min_results"))


# --------------------------------------------------------------------------------------------------------------
# the search's side: what TrialObjective uses


def stopper_for(cfg: Any) -> EarlyStopper | None:
    """The :class:`EarlyStopper` of a search config's ``early_stopping`` section; None when it is off."""
    es = getattr(cfg, "early_stopping", None)
    if es is None or not es.enabled:
        return None
    rungs = rungs_from({"rungs": es.rungs, "reduction_factor": es.reduction_factor, "min_results": es.min_results})
    directions = ["maximize" if o == "accuracy" else "minimize" for o in cfg.objectives]
    names = [{"accuracy": "accuracy", "macs": "macs_fraction", "params": "params_fraction"}.get(o, o)
             for o in cfg.objectives]
    # MAC and parameter fractions are worth nothing at 1.0 (the unpruned model): the same reference the front's
    # hypervolume uses; accuracy and latency take the rung's own
    reference = [1.0 if o in ("macs", "params") else None for o in cfg.objectives]
    return EarlyStopper(rungs, directions, names=names, reference=reference)


def trial_callback(stopper: EarlyStopper, trial: optuna.Trial, problem: Any, removal: Mapping[str, Any],
                   values_of: Callable[[Mapping[str, Any]], Sequence[float]],
                   log: Callable[[str], None] | None = None,
                   send: Callable[[int, int, list[float]], None] | None = None
                   ) -> Callable[[Any], TrialMonitor | RungReporter]:
    """``callback_for(model)`` for :meth:`Problem.build`: a :class:`TrialMonitor` that measures the pruned model at
    each rung (accuracy on the config's evaluation split; MAC/parameter fractions of the removal), turns the
    measurements into objective values with ``values_of`` (the trial function's own) and decides; with ``send``, a
    :class:`RungReporter` that sends the values to a driver that decides (Ray)."""
    if send is None and not isinstance(getattr(trial, "study", None), optuna.Study):
        raise ValueError("early_stopping needs the study's storage inside the trial (to read the other trials' rung "
                         "results), or a driver that decides for it (send=); this trial has neither")
    measured = problem.measure(removal)

    def callback_for(model: Any) -> TrialMonitor:
        def values() -> Sequence[float]:
            acc = evaluate(model, problem.data, split=problem.cfg.data.eval_split).accuracy
            return values_of({"accuracy": acc, **measured})

        if send is not None:
            return RungReporter(stopper.rungs, values, send)
        return stopper.monitor(trial, values, batch_size=problem.cfg.finetune.batch_size, log=log)

    return callback_for
