"""The adapter to Ray Tune's OptunaSearch internals (autoprune/study/tune_searcher.py), on the installed Ray: the
Optuna trial of a Tune trial is found, a result's record lands in it before it is told, the handed-out trials a
stopped round leaves are listed, and the pickled searcher carries no study. No Ray cluster is started."""
from __future__ import annotations

import json

import optuna
from optuna.trial import TrialState

from autoprune.study.tune_searcher import RECORD_KEY, searcher_class


def _searcher():
    storage = optuna.storages.InMemoryStorage()

    def space(trial):
        trial.suggest_float("x", 0.0, 1.0)
        return None

    searcher = searcher_class()(space, metric=["accuracy", "macs"], mode=["max", "min"], storage=storage,
                                study_name="adapter", seed=0)
    return searcher, optuna.load_study(study_name="adapter", storage=storage)


def test_record_is_written_before_the_trial_is_told_and_unfinished_are_listed():
    searcher, study = _searcher()
    params = [searcher.suggest(tid) for tid in ("a", "b", "c")]
    assert all(0.0 <= p["x"] <= 1.0 for p in params)
    assert [t.number for t in searcher.unfinished()] == [0, 1, 2]
    assert searcher.optuna_trial("b").number == 1 and searcher.optuna_trial("zzz") is None

    record = {"user_attrs": {"accuracy": 0.9, "worker": {"pid": 1}}, "constraints": {"max_macs": -0.1}}
    searcher.on_trial_complete("a", result={"accuracy": 0.9, "macs": 0.4, RECORD_KEY: json.dumps(record)})
    searcher.on_trial_complete("b", error=True)
    assert [t.number for t in searcher.unfinished()] == [2]

    t0, t1, t2 = study.get_trials()
    assert t0.state == TrialState.COMPLETE and t0.values == [0.9, 0.4]
    assert t0.user_attrs == record["user_attrs"] and t0.constraints == {"max_macs": -0.1}
    assert t1.state == TrialState.FAIL and "Ray trial failed" in t1.user_attrs["error"]
    assert t2.state == TrialState.RUNNING


def test_pickled_searcher_keeps_metric_and_mode_only():
    searcher, _ = _searcher()
    searcher.suggest("a")
    from ray import cloudpickle  # as Tune pickles its config (tuner.pkl)

    state = cloudpickle.loads(cloudpickle.dumps(searcher)).__dict__
    assert set(state) == {"_metric", "_mode", "_study_name"}
    assert state["_metric"] == ["accuracy", "macs"] and state["_mode"] == ["max", "min"]
