"""The one adapter to Ray Tune's ``OptunaSearch`` internals, used by the Ray driver (:mod:`autoprune.study.ray.driver`).

``OptunaSearch`` keeps the Optuna trial of every Tune trial in private attributes (``_ot_trials``, the handed-out
trials; ``_completed_trials``, those told; ``_ot_study``) and exposes no way to write user attributes or constraints
into a trial before it is told, nor to end one PRUNED. :func:`searcher_class` subclasses it to do exactly that, to
list the handed-out trials a stopped round leaves unfinished, and to keep Tune's experiment checkpoint of the
searcher out (the Optuna storage is the record). Only this module reads those attributes;
tests/test_ray_searcher.py checks them on the installed Ray.
Written against ray 2.60 (:data:`TESTED_VERSIONS`).
"""
from __future__ import annotations

import json
from typing import Any, Callable

import optuna

__all__ = ["RECORD_KEY", "searcher_class", "TESTED_VERSIONS"]

#: Versions this adapter (and the Ray backend) was written and tested against (pin them together).
TESTED_VERSIONS = {"ray": "2.60.0", "optuna": "5.1.0"}

#: The result key under which a trainable returns (as JSON) the user attributes and constraints of its trial.
RECORD_KEY = "autoprune_record"


def searcher_class() -> type:
    """``OptunaSearch`` that writes a result's :data:`RECORD_KEY` (``{"user_attrs": {...}, "constraints": {...}}``)
    into the Optuna trial before telling it, tells trials stopped by early stopping (:meth:`mark_stopped`) PRUNED,
    lists its unfinished trials, and pickles without its study."""
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    class AutopruneOptunaSearch(OptunaSearch):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.quota: Callable[[], str] | None = None  # see set_quota
            self.stopped: set[str] = set()  # Tune trials stopped by early stopping: told PRUNED, never COMPLETE

        def set_quota(self, quota: Callable[[], str]) -> None:
            """Hand out trials only while ``quota()`` says ``"go"``; ``"wait"``: none now (Tune asks again later);
            ``"done"``: the search is finished (early stopping: trials are asked for until enough are COMPLETE)."""
            self.quota = quota

        def suggest(self, trial_id: str) -> dict | str | None:
            state = self.quota() if self.quota is not None else "go"
            if state == "done":
                return Searcher.FINISHED
            if state == "wait":
                return None
            return super().suggest(trial_id)

        def optuna_trial(self, trial_id: str) -> optuna.Trial | None:
            """The Optuna trial handed out for Tune trial ``trial_id``, or None."""
            return self._ot_trials.get(trial_id)

        def mark_stopped(self, trial_id: str) -> None:
            """Tune trial ``trial_id`` was stopped by early stopping: when it ends it is told PRUNED."""
            self.stopped.add(trial_id)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            ot_trial = self.optuna_trial(trial_id)
            if ot_trial is not None and trial_id in self.stopped:
                if trial_id not in self._completed_trials:
                    try:
                        self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
                    except optuna.exceptions.UpdateFinishedTrialError:
                        pass  # failed meanwhile by another process (stale)
                    self._completed_trials.add(trial_id)
                return
            if ot_trial is not None and result and result.get(RECORD_KEY):
                rec = json.loads(result[RECORD_KEY])
                try:
                    for k, v in rec.get("user_attrs", {}).items():
                        ot_trial.set_user_attr(k, v)
                    for k, v in rec.get("constraints", {}).items():
                        ot_trial.set_constraint(k, v)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass  # failed meanwhile by another process (stale); super() logs the tell failure
            elif ot_trial is not None and error:
                try:
                    ot_trial.set_user_attr("error", "the Ray trial failed (see the Ray Tune trial log)")
                except Exception:
                    pass
            super().on_trial_complete(trial_id, result=result, error=error)

        def unfinished(self) -> list[optuna.Trial]:
            """The Optuna trials handed out and not told (a round stopped by Ctrl-C leaves them RUNNING)."""
            return [t for tid, t in self._ot_trials.items() if tid not in self._completed_trials]

        def save(self, checkpoint_path: str) -> None:
            pass

        def restore(self, checkpoint_path: str) -> None:
            pass

        def __getstate__(self) -> dict:  # Tuner pickles its config (tuner.pkl); the study and space stay here
            keep = ("_metric", "_mode", "_study_name")
            return {k: v for k, v in self.__dict__.items() if k in keep}

    return AutopruneOptunaSearch
