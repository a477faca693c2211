"""Multi-objective successive halving (autoprune.study.early_stopping) on synthetic trial results."""
from __future__ import annotations

import warnings

import optuna
import pytest
from optuna.trial import TrialState

from autoprune.study.early_stopping import (RUNG_ATTR, STOP_ATTR, Decision, EarlyStopper, Rungs, RungStore,
                                            TrialStopped, front_spread, nondominated_ranks, priority_order,
                                            promotes, rungs_from)
from autoprune.study.front import ParetoFront, front_records

from tiny_models import TINYNET

optuna.logging.set_verbosity(optuna.logging.WARNING)
DIRS = ("maximize", "minimize")  # accuracy, MAC fraction


def _study(storage=None, name="es"):
    return optuna.create_study(directions=list(DIRS), storage=storage, study_name=name, load_if_exists=True)


def test_nondominated_ranks():
    # minimised: (0,1) and (1,0) are non-dominated; (1,1) is dominated by both; (2,2) by everything
    assert nondominated_ranks([(0, 1), (1, 0), (1, 1), (2, 2)]) == [0, 0, 1, 2]
    assert nondominated_ranks([(1, 1), (1, 1)]) == [0, 0]  # equal points do not dominate each other
    assert nondominated_ranks([]) == []


def test_front_spread_is_the_hypervolume_contribution_inside_each_front():
    # minimised (-accuracy, macs); one front of three and a dominated point (its own front)
    pts = [(-0.9, 0.5), (-0.8, 0.3), (-0.85, 0.4), (-0.7, 0.6)]
    ranks = nondominated_ranks(pts)
    assert ranks == [0, 0, 0, 1]
    # reference (rung's worst + a tenth of its range): (-0.7 + 0.02, 0.6 + 0.03)
    got = front_spread(pts, ranks)
    assert got == pytest.approx([0.05 * (0.63 - 0.5), (-0.68 + 0.8) * 0.1, 0.05 * 0.1, 0.02 * 0.03])
    # a given reference: MAC fraction 1.0 (the unpruned model) widens the most accurate point's share
    assert front_spread(pts, ranks, [None, 1.0])[0] == pytest.approx(0.05 * 0.5)
    assert front_spread([(1, 1), (1, 1)], [0, 0]) == [0.0, 0.0]  # equal points add nothing to each other
    # three objectives: crowding distance, extremes first
    cd = front_spread([(0, 2, 1), (1, 1, 1), (2, 0, 1)], [0, 0, 0])
    assert cd[0] == cd[2] == float("inf") and cd[1] == pytest.approx(2.0)
    assert priority_order(pts) == [1, 0, 2, 3]


def test_promotes_dominated_stops_front_goes_on():
    # values are minimised: (-accuracy, macs)
    # a chain: each point dominates the next (ranks 0..5)
    others = [(-0.90, 0.3), (-0.85, 0.35), (-0.80, 0.5), (-0.70, 0.6), (-0.60, 0.7), (-0.55, 0.8)]
    dominated = promotes((-0.50, 0.9), others, reduction_factor=3, min_results=3)
    assert not dominated.promote and dominated.rank > 0 and dominated.position >= dominated.quota
    assert dominated.n == 7 and dominated.quota == 3 and dominated.better == 6
    front = promotes((-0.95, 0.6), others, reduction_factor=3, min_results=3)  # most accurate: on the front
    assert front.promote and front.rank == 0
    cheap = promotes((-0.10, 0.05), others, reduction_factor=3, min_results=3)  # fewest MACs: on the front too
    assert cheap.promote and cheap.rank == 0
    # second front, but only one result is better: within the quota of ceil(7/3) = 3
    near = promotes((-0.86, 0.34), others, reduction_factor=3, min_results=3)
    assert near.rank == 1 and near.better == 1 and near.position == 1 and near.promote
    # third front: two better results, still within the quota; fourth front: three, no longer
    assert promotes((-0.84, 0.4), others, reduction_factor=3, min_results=3).promote
    assert not promotes((-0.79, 0.55), others, reduction_factor=3, min_results=3).promote
    # a large first front: a second-front trial comes after all of it
    wide = [(-0.90, 0.5), (-0.85, 0.4), (-0.80, 0.3), (-0.70, 0.2), (-0.60, 0.1)]
    d = promotes((-0.84, 0.45), wide, reduction_factor=3, min_results=3)
    assert d.rank == 1 and d.better == 5 and d.position == 5 and not d.promote


def test_promotes_orders_a_front_by_what_each_trial_adds():
    """Every trial at its own MAC level is non-dominated: the front's order decides (the pruning-search case)."""
    spread = [(-0.70, 0.30), (-0.78, 0.40), (-0.83, 0.50), (-0.86, 0.60), (-0.88, 0.70)]
    # crowded next to (0.83, 0.50): on the first front, but adds almost nothing -> stopped
    crowded = promotes((-0.835, 0.51), spread, reduction_factor=3, min_results=3, reference=[None, 1.0])
    assert crowded.rank == 0 and crowded.position == 5 and crowded.quota == 2 and not crowded.promote
    # lifts the front (dominates three of it) -> first
    lifts = promotes((-0.90, 0.45), spread, reduction_factor=3, min_results=3, reference=[None, 1.0])
    assert lifts.rank == 0 and lifts.position == 0 and lifts.promote
    # most accurate by a margin at the top of the MAC range: with MAC reference 1.0 its share is the largest
    top = promotes((-0.93, 0.75), spread, reduction_factor=3, min_results=3, reference=[None, 1.0])
    assert top.position == 0 and top.promote
    # an exact tie goes to the result that was there first
    tie = promotes((-0.83, 0.50), spread, reduction_factor=3, min_results=3)
    assert tie.rank == 0 and not tie.promote


def test_promotes_waits_for_min_results_and_rate_matters():
    assert promotes((-0.1, 0.9), [(-0.9, 0.1)], reduction_factor=3, min_results=3).promote  # too few results
    others = [(-0.9, 0.1), (-0.8, 0.2), (-0.7, 0.3)]
    # dominated by every other result: position 3, quota ceil(4/3) = 2 -> stop; with eta = 1.2 quota 4 -> go on
    assert not promotes((-0.1, 0.9), others, reduction_factor=3, min_results=3).promote
    assert promotes((-0.1, 0.9), others, reduction_factor=1.2, min_results=3).promote


def test_rungs_validation_and_milestones():
    r = Rungs()
    assert r.fractions == (0.0, 0.333333) and r.min_count == 3
    assert r.milestones(60) == [0, 20]
    assert Rungs(fractions=(0.5, 0.0, 0.5)).fractions == (0.0, 0.5)
    assert Rungs(fractions=(0.0, 0.01)).milestones(10) == [0]  # 0.1 steps rounds to 0: one rung
    assert rungs_from({"reduction_factor": 4}).fractions == (0.0, 0.25)
    assert rungs_from({"rungs": [0.1, 0.5], "min_results": 5}).min_count == 5
    with pytest.raises(ValueError, match="reduction_factor must be a number > 1"):
        Rungs(reduction_factor=1)
    with pytest.raises(ValueError, match=r"fractions of the fine-tuning budget in \[0, 1\)"):
        Rungs(fractions=(0.0, 1.0))
    with pytest.raises(ValueError, match="min_results"):
        Rungs(min_results=1)


def _run_rung(stopper, study, acc, macs, step=0):
    """A trial that reaches a rung with (acc, macs): returns (trial, decision)."""
    t = study.ask()
    return t, stopper.report(t, step, [acc, macs])


def test_stopper_dominated_trial_stops_front_trial_goes_on():
    study = _study()
    es = EarlyStopper(Rungs(fractions=(0.0, 0.5), reduction_factor=3), DIRS, names=["accuracy", "macs_fraction"],
                      reference=[None, 1.0])
    assert es.reference == [None, 1.0]
    for acc, macs in [(0.80, 0.3), (0.85, 0.4), (0.90, 0.5)]:
        t, d = _run_rung(es, study, acc, macs)
        assert d.promote  # too few results, then the first of the rung's order
        study.tell(t, [acc, macs])
    assert d.position == 0 and d.n == 3 and d.quota == 1
    t, d = _run_rung(es, study, 0.50, 0.6)  # dominated by all three
    assert not d.promote and d.better == 3 and d.n == 4
    t2, d2 = _run_rung(es, study, 0.95, 0.6)  # most accurate so far
    assert d2.promote and d2.rank == 0
    # results at another rung are kept apart
    t3, d3 = _run_rung(es, study, 0.10, 0.9, step=7)
    assert d3.promote and d3.n == 1
    assert RungStore(study).results(0, exclude=t2.number) == {0: [0.80, 0.3], 1: [0.85, 0.4], 2: [0.90, 0.5],
                                                              3: [0.50, 0.6]}
    with pytest.raises(ValueError, match="one value"):
        EarlyStopper(directions=DIRS, reference=[1.0])


def test_failed_trials_do_not_count():
    study = _study()
    es = EarlyStopper(Rungs(reduction_factor=3, min_results=2), DIRS)
    t, _ = _run_rung(es, study, 0.9, 0.1)
    study.tell(t, state=TrialState.FAIL)  # interrupted; its retry records again
    _, d = _run_rung(es, study, 0.1, 0.9)
    assert d.promote and d.n == 1


def test_restart_keeps_rung_results(tmp_path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = str(tmp_path / "optuna.journal")
    study = _study(JournalStorage(JournalFileBackend(path)))
    es = EarlyStopper(Rungs(reduction_factor=3), DIRS)
    for acc, macs in [(0.90, 0.5), (0.85, 0.4), (0.80, 0.3)]:
        t, _ = _run_rung(es, study, acc, macs)
        study.tell(t, [acc, macs])
    running, _ = _run_rung(es, study, 0.88, 0.45)  # a worker killed while this trial ran at rung 0
    del study, es
    # a new process: new storage object, new stopper; the results are read back from the journal
    study = _study(JournalStorage(JournalFileBackend(path)))
    es = EarlyStopper(Rungs(reduction_factor=3), DIRS)
    assert set(RungStore(study).results(0)) == {0, 1, 2, 3}
    t, d = _run_rung(es, study, 0.50, 0.6)
    assert not d.promote and d.n == 5 and d.better == 4


def test_monitor_stops_trials_as_pruned_and_pruned_never_on_front():
    """Trials driven by study.optimize: the monitor is called as finetune(callback=...) would call it."""
    study = _study()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["accuracy", "macs_fraction"])
    es = EarlyStopper(Rungs(fractions=(0.0, 0.5), reduction_factor=3), DIRS, names=["accuracy", "macs_fraction"],
                      reference=[None, 1.0])
    # (accuracy after k of 10 steps) = start + gain * k / 10
    plans = [(0.60, 0.10, 0.3), (0.70, 0.10, 0.4), (0.80, 0.10, 0.5), (0.20, 0.05, 0.6), (0.85, 0.10, 0.6),
             (0.30, 0.05, 0.9)]
    seen_steps: list[list[int]] = []

    def objective(trial):
        start, gain, macs = plans[trial.number]
        step = {"k": 0}
        mon = es.monitor(trial, lambda: [start + gain * step["k"] / 10, macs], batch_size=32)
        steps = []
        seen_steps.append(steps)
        for k in range(11):  # callback(0) before the first step, then after each of 10 steps
            step["k"] = k
            mon(k, 10)
            steps.append(k)
        acc = start + gain
        # what the trial runner stores for COMPLETE trials
        trial.set_user_attr("accuracy", acc)
        for key, v in (("macs", int(macs * 1000)), ("params", 1), ("macs_fraction", macs), ("params_fraction", 1.0)):
            trial.set_user_attr(key, v)
        return [acc, macs]

    study.optimize(objective, n_trials=len(plans))
    states = [t.state for t in study.trials]
    assert states[:3] == [TrialState.COMPLETE] * 3  # the first trials fill the rungs
    assert states[3] == TrialState.PRUNED  # dominated at rung 0 by all three
    assert states[4] == TrialState.COMPLETE  # most accurate: first or second of the rung's order at every rung
    assert states[5] == TrialState.PRUNED
    assert seen_steps[3] == []  # stopped before its first fine-tuning step
    stopped = study.trials[3]
    info = stopped.user_attrs[STOP_ATTR]
    assert info["step"] == 0 and info["rung"] == 0 and info["images"] == 0
    assert info["values"] == {"accuracy": pytest.approx(0.20), "macs_fraction": 0.6}
    assert stopped.values is None  # never a complete result with a partial accuracy
    assert set(stopped.user_attrs[RUNG_ATTR]) == {"0"}
    assert set(study.trials[4].user_attrs[RUNG_ATTR]) == {"0", "5"}

    # Even with an accuracy attribute that would dominate everything, a PRUNED trial is never on the front.
    t = study.ask()
    for key, v in (("accuracy", 0.999), ("macs", 1), ("params", 1), ("macs_fraction", 0.01),
                   ("params_fraction", 0.01)):
        t.set_user_attr(key, v)
    study.tell(t, state=TrialState.PRUNED)
    numbers = {r.number for r in front_records(study)}
    assert numbers and numbers <= {0, 1, 2, 4} and t.number not in numbers
    front = ParetoFront(study)
    assert t.number not in {r.number for r in front} and t.number not in {r.number for r in front.all}
    with pytest.raises(KeyError, match="PRUNED"):
        front.trial(t.number)


def test_trial_stopped_is_optuna_pruned():
    d = Decision(False, 4, 2, 5, 9, 3, position=6)
    e = TrialStopped(d, [0.5, 0.4])
    assert isinstance(e, optuna.TrialPruned) and "placed 7 of 9" in str(e) and e.values == [0.5, 0.4]
    with pytest.raises(TypeError, match="attached to a study"):
        EarlyStopper().report(optuna.trial.FixedTrial({}), 0, [0.5, 0.5])
    with pytest.raises(ValueError, match="maximize"):
        EarlyStopper(directions=["max", "min"])


CONFIG = """
name: tiny_es
seed: 0
n_trials: 6
threads: 1
run_dir: {run}
model: {{name: "tinynet:build", kwargs: {{width: 8}}, pretrain: {{epochs: 6, lr: 0.05, batch_size: 32}}}}
data:
  dataset: synthetic
  image_size: 12
  val_fraction: 0.25
  cache_dir: {cache}
  options: {{train_per_class: 24, test_per_class: 2}}
criteria: [l1]
ratios: {{mode: per_group, default: [0.0, 0.75]}}
objectives: [accuracy, macs]
sampler: {{name: nsga2, population_size: 4}}
finetune: {{epochs: 1, max_batches: 4, batch_size: 32, lr: 0.02, distill: true}}
early_stopping: {{enabled: true, rungs: [0, 0.5], reduction_factor: 3, min_results: 2}}
"""


def test_search_with_early_stopping_and_distillation(tmp_path):
    """A tiny search end to end: trials stopped at a rung are PRUNED (never on the front), complete trials carry
    their rung results, and a complete trial rebuilt without the rung checks reproduces its accuracy exactly."""
    import textwrap

    from autoprune.study import search

    (tmp_path / "tinynet.py").write_text(textwrap.dedent(TINYNET))
    path = tmp_path / "tiny_es.yaml"
    path.write_text(CONFIG.format(run=tmp_path / "run", cache=tmp_path / "cache"))
    front = search(str(path))
    trials = front.study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(complete) == 6 and pruned, [t.state for t in trials]
    for t in pruned:
        info = t.user_attrs[STOP_ATTR]
        assert t.values is None and "accuracy" not in t.user_attrs
        assert info["step"] in (0, 2) and set(info["values"]) == {"accuracy", "macs_fraction"}
        assert not info["decision"]["promote"]
    for t in complete:
        if "reused_from" not in t.user_attrs:  # a removal measured before is not trained again
            assert set(t.user_attrs[RUNG_ATTR]) == {"0", "2"}  # 4 steps: rungs after 0 and 2 steps
    assert {r.number for r in front} <= {t.number for t in complete}
    best = max(front, key=lambda r: r.accuracy)
    model, out = front.rebuild(best.number)
    assert out.accuracy == best.accuracy  # the rung evaluations did not change the training


def test_config_sections():
    from autoprune.config import ConfigError, load_config
    from autoprune.study.early_stopping import stopper_for

    base = {"model": "resnet20", "data": {"dataset": "synthetic"}}
    on = load_config({**base, "early_stopping": True, "finetune": {"distill": True}})
    assert on.early_stopping.enabled and on.finetune.distill.alpha == 0.5 and on.finetune.distill.temperature == 4.0
    es = stopper_for(on)
    assert es.rungs.fractions == (0.0, 0.333333) and es.directions == ["maximize", "minimize"]
    assert es.reference == [None, 1.0]  # the MAC fraction's reference: the unpruned model, as the front's
    assert stopper_for(load_config(base)) is None and load_config(base).finetune.distill is None
    assert load_config(on.to_dict()).early_stopping == on.early_stopping  # round trip
    custom = load_config({**base, "early_stopping": {"enabled": True, "rungs": [0.5, 0.1], "reduction_factor": 4},
                          "objectives": ["accuracy", "macs", "params"]})
    assert stopper_for(custom).rungs.fractions == (0.1, 0.5) and stopper_for(custom).names[2] == "params_fraction"
    # what a trial measures: distillation changes it, early stopping and prune_steps do not
    fp = load_config(base).fingerprint()
    assert load_config({**base, "early_stopping": True, "finetune": {"prune_steps": 3}}).fingerprint() == fp
    assert load_config({**base, "finetune": {"distill": True}}).fingerprint() != fp
    for bad, msg in [({"early_stopping": {"rungs": [1.0]}}, r"fractions of the fine-tuning budget in \[0, 1\)"),
                     ({"early_stopping": {"reduction_factor": 1}}, "reduction_factor"),
                     ({"early_stopping": {"enabeld": True}}, "did you mean 'enabled'"),
                     ({"finetune": {"distill": {"alpha": 2}}}, "distill.alpha"),
                     ({"early_stopping": True, "finetune": {"epochs": 0}}, "needs fine-tuning")]:
        with pytest.raises(ConfigError, match=msg):
            load_config({**base, **bad})
