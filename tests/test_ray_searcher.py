"""The adapter to Ray Tune's OptunaSearch internals (autoprune/study/ray/searcher.py), on the installed Ray: the
Optuna trial of a Tune trial is found, a result's record lands in it before it is told, the handed-out trials a
stopped round leaves are listed, and the pickled searcher carries no study. No Ray cluster is started."""
from __future__ import annotations

import json

import optuna
from optuna.trial import TrialState

from autoprune.study.ray.searcher import RECORD_KEY, searcher_class


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


def test_rung_scheduler_stops_a_dominated_trial_which_ends_pruned():
    """Early stopping on the Ray driver: rung results reported by trainables are recorded in their Optuna trials and
    judged with the local search's rule; a dominated trial is stopped there and told PRUNED, never COMPLETE."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from autoprune.study.early_stopping import RUNG_ATTR, STOP_ATTR, EarlyStopper, Rungs
    from autoprune.study.ray.driver import _Driver, _quota, _rung_scheduler
    from autoprune.study.ray.trainable import RUNG_INDEX, RUNG_STEP

    searcher, study = _searcher()
    stopper = EarlyStopper(Rungs((0.0,), reduction_factor=2, min_results=2), ["maximize", "minimize"],
                           names=["accuracy", "macs_fraction"])
    scheduler = _rung_scheduler(_Driver(SimpleNamespace(study=study), searcher, stopper), ["accuracy", "macs"], 16)
    for tid in ("a", "b", "c"):
        searcher.suggest(tid)

    def rung(tid, acc, macs):
        return scheduler.on_trial_result(None, SimpleNamespace(trial_id=tid),
                                         {"accuracy": acc, "macs": macs, RUNG_STEP: 0, RUNG_INDEX: 0})

    assert rung("a", 0.8, 0.5) == TrialScheduler.CONTINUE  # alone on the rung (min_results 2)
    assert rung("b", 0.9, 0.4) == TrialScheduler.CONTINUE  # dominates a
    assert rung("c", 0.5, 0.6) == TrialScheduler.STOP  # dominated by both: cannot reach the front
    assert scheduler.on_trial_result(None, SimpleNamespace(trial_id="a"), {"accuracy": 0.8, "macs": 0.5}) == \
        TrialScheduler.CONTINUE  # not a rung result
    searcher.on_trial_complete("c", result={"accuracy": 0.5, "macs": 0.6, RUNG_STEP: 0, RUNG_INDEX: 0})
    searcher.on_trial_complete("b", result={"accuracy": 0.92, "macs": 0.4})

    a, b, c = study.get_trials()
    assert c.state == TrialState.PRUNED and c.values is None
    assert c.user_attrs[STOP_ATTR]["values"] == {"accuracy": 0.5, "macs_fraction": 0.6}
    assert c.user_attrs[STOP_ATTR]["images"] == 0 and c.user_attrs[STOP_ATTR]["decision"]["promote"] is False
    assert b.state == TrialState.COMPLETE and b.values == [0.92, 0.4] and STOP_ATTR not in b.user_attrs
    assert {t.number: t.user_attrs[RUNG_ATTR] for t in (a, b, c)} == \
        {0: {"0": [0.8, 0.5]}, 1: {"0": [0.9, 0.4]}, 2: {"0": [0.5, 0.6]}}
    assert [t.number for t in searcher.unfinished()] == [0]
    # The searcher hands out trials until enough are COMPLETE, waiting while the running ones could suffice.
    assert [_quota(1, 0, 2), _quota(1, 1, 2), _quota(2, 1, 2)] == ["go", "wait", "done"]
    searcher.set_quota(lambda: "wait")
    assert searcher.suggest("d") is None
    searcher.set_quota(lambda: "done")
    assert searcher.suggest("d") == "FINISHED"
