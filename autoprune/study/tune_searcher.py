"""The one adapter to Ray Tune's ``OptunaSearch`` internals, used by :mod:`autoprune.study.ray_backend`.

``OptunaSearch`` keeps the Optuna trial of every Tune trial in private attributes (``_ot_trials``, the handed-out
trials; ``_completed_trials``, those told) and exposes no way to write user attributes or constraints into a trial
before it is told. :func:`searcher_class` subclasses it to do exactly that, to list the handed-out trials a stopped
round leaves unfinished, and to keep Tune's experiment checkpoint of the searcher out (the Optuna storage is the
record). Only this module reads those attributes; tests/test_tune_searcher.py checks them on the installed Ray.
Written against ray 2.60 (``TESTED_VERSIONS`` in ray_backend).
"""
from __future__ import annotations

import json
from typing import Any

import optuna

__all__ = ["RECORD_KEY", "searcher_class"]

#: The result key under which a trainable returns (as JSON) the user attributes and constraints of its trial.
RECORD_KEY = "autoprune_record"


def searcher_class() -> type:
    """``OptunaSearch`` that writes a result's :data:`RECORD_KEY` (``{"user_attrs": {...}, "constraints": {...}}``)
    into the Optuna trial before telling it, lists its unfinished trials, and pickles without its study."""
    from ray.tune.search.optuna import OptunaSearch

    class AutopruneOptunaSearch(OptunaSearch):
        def optuna_trial(self, trial_id: str) -> optuna.Trial | None:
            """The Optuna trial handed out for Tune trial ``trial_id``, or None."""
            return self._ot_trials.get(trial_id)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            ot_trial = self.optuna_trial(trial_id)
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
