"""One search trial, the same for every driver (local search, PostgreSQL workers, Ray trainables).

:class:`TrialObjective` runs the steps of a trial in order, each its own method so that a feature hooks in at one
place (early stopping in :meth:`~TrialObjective.train_and_evaluate`, an extra objective in
:meth:`~TrialObjective.values`):

1. :meth:`~TrialObjective.propose`: the trial's criterion and per-group ratios (``RatioSpace.suggest``);
2. the removal plan (channels of each group), its MAC/parameter counts and the budget constraints;
3. :meth:`~TrialObjective.reuse`: a COMPLETE trial of the study that removed exactly the same channels (same
   ``removal_sha``) measured this model already: its results are copied (user attribute ``reused_from``) instead of
   training again. The pruned model depends only on the removal (the base model, data and fine-tuning seed are the
   study's), so the copy is what training would give;
4. :meth:`~TrialObjective.train_and_evaluate`: prune, fine-tune (budget-feasible trials only, unless
   ``constraints.finetune_infeasible``), evaluate;
5. :meth:`~TrialObjective.record`: the trial's user attributes and constraints; :meth:`~TrialObjective.values`: the
   objective values in the config's order.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import optuna
from optuna.trial import TrialState

from ..config import SearchConfig
from .digest import removal_digest
from .early_stopping import stopper_for, trial_callback
from .recovery import worker_info

__all__ = ["TrialObjective", "find_evaluated", "RESULT_ATTRS", "REUSED_ATTR"]

#: User attributes holding what a trial measured (copied when a trial reuses another's result).
RESULT_ATTRS = ("accuracy", "loss", "macs", "params", "macs_fraction", "params_fraction", "finetuned",
                "finetune_seconds")
#: User attribute of a trial that reused the result of an earlier trial: that trial's number.
REUSED_ATTR = "reused_from"

#: A source of earlier results: removal digest -> (trial number, user attributes) of a COMPLETE trial, or None.
Lookup = Callable[[str], "tuple[int, Mapping[str, Any]] | None"]


def find_evaluated(study: optuna.Study, removal_sha: str) -> tuple[int, Mapping[str, Any]] | None:
    """The earliest COMPLETE trial of ``study`` that measured the removal ``removal_sha`` (and was itself measured,
    not reused), as (number, user attributes); None when there is none."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        if a.get("removal_sha") == removal_sha and "accuracy" in a and REUSED_ATTR not in a:
            return t.number, a
    return None


class TrialObjective:
    """The trial function: ``objective(trial) -> [objective values]`` (see the module docstring).

    ``lookup`` finds earlier results by removal digest (default: :func:`find_evaluated` on the trial's own study; the
    Ray trainable, which has no study, gets the driver's answer). ``worker`` is recorded as the trial's ``worker``
    attribute (host, pid, process start, sampler seed)."""

    def __init__(self, cfg: SearchConfig, problem: Any, space: Any, *, worker: Mapping[str, Any] | None = None,
                 lookup: Lookup | None = None) -> None:
        self.cfg, self.problem, self.space = cfg, problem, space
        self.worker = dict(worker) if worker is not None else worker_info()
        self.lookup = lookup
        c = cfg.constraints
        self.budget_keys = [k for k in ("max_macs", "max_params", "max_latency_ms") if getattr(c, k) is not None]
        self.stopper = stopper_for(cfg)  # None unless early_stopping.enabled
        #: Where a trial that cannot read its study sends its rung values, ``send(steps, rung, values)`` (the Ray
        #: trainable: to the driver, which decides); None: the trial decides itself from the study's storage.
        self.rung_sink: Callable[[int, int, list[float]], None] | None = None

    # -- the steps -------------------------------------------------------------------------------------------
    def propose(self, trial: optuna.Trial) -> tuple[str, dict[str, float], dict[str, Any]]:
        """(criterion, {group: ratio}, extra user attributes) of the trial's parameters."""
        return self.space.suggest(trial)

    def constrain(self, trial: optuna.Trial, measured: Mapping[str, float]) -> bool:
        """Set the budget constraints of a removal's MAC/parameter fractions; True when all budgets are met."""
        c = self.cfg.constraints
        violation = {"max_macs": measured["macs_fraction"] - (c.max_macs or 0.0),
                     "max_params": measured["params_fraction"] - (c.max_params or 0.0),
                     "max_latency_ms": measured.get("latency_ms", 0.0) - (c.max_latency_ms or 0.0)}
        for k in self.budget_keys:
            trial.set_constraint(k, violation[k])
        return all(violation[k] <= 1e-12 for k in self.budget_keys)

    def reuse(self, trial: optuna.Trial, removal_sha: str) -> dict[str, Any] | None:
        """The results of an earlier trial with the same removal, recorded on ``trial`` (``reused_from``), or None."""
        lookup = self.lookup
        if lookup is None:
            study = getattr(trial, "study", None)
            if study is None:
                return None
            lookup = lambda sha: find_evaluated(study, sha)  # noqa: E731
        found = lookup(removal_sha)
        if found is None:
            return None
        number, attrs = found
        out = {k: attrs.get(k) for k in RESULT_ATTRS}
        if out["loss"] is None:
            out["loss"] = float("inf")
        trial.set_user_attr(REUSED_ATTR, int(number))
        return out

    def train_and_evaluate(self, trial: optuna.Trial, removal: Mapping[str, Any], *, train: bool) -> dict[str, Any]:
        """Prune, fine-tune (when ``train``), evaluate: the measured results (keys :data:`RESULT_ATTRS`).

        With ``early_stopping`` the fine-tuning is checked at its rungs and a trial that cannot reach the front raises
        :class:`~autoprune.study.early_stopping.TrialStopped` (an ``optuna.TrialPruned``: the trial ends PRUNED)."""
        callback_for = None
        if train and self.stopper is not None:
            callback_for = trial_callback(self.stopper, trial, self.problem, removal, self.values,
                                          send=self.rung_sink)
        _, out = self.problem.build(removal, train=train, callback_for=callback_for)
        return {k: getattr(out, k) for k in RESULT_ATTRS}

    def record(self, trial: optuna.Trial, results: Mapping[str, Any]) -> None:
        """The trial's result attributes and its accuracy constraint."""
        c = self.cfg.constraints
        if c.min_accuracy is not None:
            trial.set_constraint("min_accuracy", c.min_accuracy - results["accuracy"])
        for k in RESULT_ATTRS:
            v = results[k]
            trial.set_user_attr(k, None if k == "loss" and v == float("inf") else v)
        for k, v in results.items():  # measured latency (median, spread, settings) when the config asks for it
            if k.startswith("latency"):
                trial.set_user_attr(k, v)

    def values(self, results: Mapping[str, Any]) -> list[float]:
        """The objective values in the config's order."""
        vals = {"accuracy": results["accuracy"], "macs": results["macs_fraction"],
                "params": results["params_fraction"], "latency": results.get("latency_ms")}
        return [float(vals[o]) for o in self.cfg.objectives]

    # -- the trial -------------------------------------------------------------------------------------------
    def __call__(self, trial: optuna.Trial) -> list[float]:
        trial.set_user_attr("worker", self.worker)
        t0 = time.perf_counter()
        try:
            crit, ratios, extra = self.propose(trial)
            removal = self.problem.removal(ratios, crit)
            measured = self.problem.measure(removal)
            within = self.constrain(trial, measured)
            sha = removal_digest(removal)
            trial.set_user_attr("criterion", crit)
            # exact floats: export rebuilds the removal as floor(r * C), so a rounded k/C would lose a channel
            trial.set_user_attr("ratios", {n: float(r) for n, r in ratios.items()})
            trial.set_user_attr("removal_sha", sha)
            for k, v in extra.items():
                trial.set_user_attr(k, v)
            results = self.reuse(trial, sha)
            if results is None:
                results = self.train_and_evaluate(trial, removal,
                                                  train=within or self.cfg.constraints.finetune_infeasible)
            results = {**results, **{k: v for k, v in measured.items() if k.startswith("latency")}}
            self.record(trial, results)
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            return self.values(results)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise

