"""A tiny search end to end: constraints keep infeasible trials off the front; an exported trial reloads and
reproduces its accuracy; reports and the pareto command work."""
from __future__ import annotations

import json
import textwrap

import optuna
import pytest
import torch

from tiny_models import TINYNET


CONFIG = """
name: tiny
seed: 0
n_trials: 5
run_dir: {run}
model: {{name: "tinynet:build", kwargs: {{width: 8}}, pretrain: {{epochs: 6, lr: 0.05, batch_size: 32}}}}
data:
  dataset: synthetic
  image_size: 12
  val_fraction: 0.25
  cache_dir: {cache}
  options: {{train_per_class: 24, test_per_class: 2}}
criteria: [l1, l2]
ratios:
  mode: per_group
  default: [0.0, 0.75]
  groups: {{"3": [0.0, 0.5]}}
objectives: [accuracy, macs]
constraints: {{max_macs: 0.5}}
sampler: {{name: nsga2, population_size: 4}}
finetune: {{epochs: 1, max_batches: 2, batch_size: 32, lr: 0.02}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is fastest, and robust on a shared machine
    try:
        d = tmp_path_factory.mktemp("search")
        (d / "tinynet.py").write_text(textwrap.dedent(TINYNET))
        path = d / "tiny.yaml"
        path.write_text(CONFIG.format(run=d / "run", cache=d / "cache"))
        from autoprune.study import load_config
        from autoprune.study.optuna_study import open_study

        cfg = load_config(path)
        # Two fixed trials first: nothing pruned (100% of the MACs: over the 50% budget) and 70% everywhere.
        study = open_study(cfg)
        names = ["0", "3", "6"]  # the prunable groups of tinynet: its three convs
        study.enqueue_trial({"criterion": "l1", **{f"r:{n}": 0.0 for n in names}})
        study.enqueue_trial({"criterion": "l2", **{f"r:{n}": 0.7 if n != "3" else 0.5 for n in names}})
        from autoprune.study import search

        front = search(path)
        yield cfg, path, front
    finally:
        torch.set_num_threads(threads)


def test_groups_of_tinynet(run):
    _, _, front = run
    assert front.problem().group_names == ["0", "3", "6"]


def test_constraints_keep_infeasible_trials_off_the_front(run):
    cfg, _, front = run
    assert len(front.all) == cfg.n_trials
    full = front.trial(0)
    assert full.macs_fraction == pytest.approx(1.0) and not full.feasible and not full.finetuned
    # The unpruned trial is the most accurate: without the feasibility filter it would be on the front.
    assert full.accuracy > max(r.accuracy for r in front)
    infeasible = [r for r in front.all if not r.feasible]
    assert infeasible and all(r.macs_fraction > 0.5 for r in infeasible)
    assert all(r.feasible and r.macs_fraction <= 0.5 for r in front)
    assert not {r.number for r in infeasible} & {r.number for r in front}
    # Optuna sees the constraints too (trial.set_constraint): its own front excludes them as well.
    best = {t.number for t in front.study.best_trials}
    assert not best & {r.number for r in infeasible}
    t0 = front.study.trials[0]
    assert t0.constraints["max_macs"] == pytest.approx(0.5)
    # A stricter budget given afterwards filters the stored trials again.
    from autoprune.study import ParetoFront

    strict = ParetoFront(front.study, cfg.replace(constraints=type(cfg.constraints)(max_macs=0.3)))
    assert all(r.macs_fraction <= 0.3 for r in strict)


def test_front_is_sorted_and_non_dominated(run):
    _, _, front = run
    assert len(front) >= 1
    assert front.base["accuracy"] > 0.3  # the pretrained base model learned something (chance: 0.1)
    macs = [r.macs for r in front]
    assert macs == sorted(macs)
    for a in front:
        for b in front:
            assert not (b.accuracy >= a.accuracy and b.macs < a.macs and b.accuracy > a.accuracy)
    best = front.best_under(macs=0.5)
    assert best is not None and best.accuracy == max(r.accuracy for r in front)
    assert front.best_under(macs=1e-6) is None
    assert front.best_under(macs=best.macs) is not None  # an absolute count works too


def test_trial_records_have_everything(run):
    _, _, front = run
    t = front.study.trials[1]
    for k in ("ratios", "criterion", "accuracy", "macs", "params", "macs_fraction", "seconds", "worker",
              "removal_sha"):
        assert k in t.user_attrs, k
    assert t.user_attrs["criterion"] == "l2" and t.user_attrs["ratios"]["3"] == 0.5


def test_export_reproduces_accuracy(run, tmp_path):
    cfg, path, front = run
    from autoprune.deploy.files import load
    from autoprune.train import evaluate

    rec = front[len(front) - 1]
    out = tmp_path / "pruned.pt"
    with torch.random.fork_rng():
        model = front.export(rec.number, out)
    info = json.loads((tmp_path / "pruned.pt.json").read_text())
    assert info["trial"] == rec.number and info["accuracy_export"] == pytest.approx(rec.accuracy, abs=1e-9)
    with torch.random.fork_rng():  # the same, returned instead of stamped on the model
        res = front.export_trial(rec.number, tmp_path / "again.pt")
    assert res.info == json.loads((tmp_path / "again.pt.json").read_text()) and res.info["trial"] == rec.number
    assert res.export is None and res.polish is None and res.info["accuracy_export"] == info["accuracy_export"]
    assert not hasattr(res.model, "_autoprune_search")
    import importlib
    import sys

    sys.path.insert(0, str(path.parent))
    try:
        tinynet = importlib.import_module("tinynet")
        loaded = load(out, model=tinynet.build(width=8))  # a model of your own code: pass an unpruned instance
    finally:
        sys.path.remove(str(path.parent))
    acc = evaluate(loaded, front.problem().data, split=cfg.data.eval_split).accuracy
    assert acc == pytest.approx(rec.accuracy, abs=1e-9)
    from autoprune import count_macs

    assert count_macs(loaded, torch.zeros(1, 3, 12, 12)) == rec.macs
    # From the storage alone the stored config may not run tinynet:build (a study's storage never names code);
    # with the user's own config file and the storage, a fresh front rebuilds the same model.
    from autoprune.config import UntrustedConfigError
    from autoprune.study import load_front

    journal = str(cfg.run_path / "optuna.journal")
    with pytest.raises(UntrustedConfigError, match="names code"):
        load_front(storage=journal).rebuild(rec.number)
    again = load_front(path, storage=journal)
    m2, o2 = again.rebuild(rec.number)
    assert o2.accuracy == pytest.approx(rec.accuracy, abs=1e-9)
    sd1, sd2 = model.state_dict(), m2.state_dict()
    assert all(torch.equal(sd1[k].cpu(), sd2[k].cpu()) for k in sd1)


def test_resume_when_complete_runs_nothing(run):
    cfg, path, front = run
    from autoprune.study import search

    again = search(path)
    assert len(again.all) == cfg.n_trials and len(again.study.trials) == len(front.study.trials)
    more = search(path, n_trials=cfg.n_trials + 1)
    assert len(more.all) == cfg.n_trials + 1


def test_report_and_pareto_command(run, tmp_path, capsys):
    cfg, path, front = run
    from autoprune.cli import main
    from autoprune.study.report import make_report

    paths = make_report(front, tmp_path / "rep")
    for k in ("pareto_png", "ratios_png", "html"):
        assert (tmp_path / "rep" / paths[k].split("/")[-1]).stat().st_size > 1000
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Pareto front" in html and "<td>no</td>" in html  # the infeasible trial is listed as such
    assert main(["pareto", str(path)]) == 0
    out = capsys.readouterr().out
    from autoprune.study import load_front

    now = load_front(path)  # (an earlier test may have added a trial)
    assert "unpruned" in out and f"{len(now)} on the front of {len(now.all)} complete trials" in out
    assert main(["pareto", "--storage", str(cfg.run_path / "optuna.journal"), "--all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) >= len(front.all) and all("ratios" in r for r in rows)
    assert main(["report", str(path), "--out", str(tmp_path / "rep2"), "--trials", "0,1"]) == 0
    assert (tmp_path / "rep2" / "ratios.png").exists()


def test_no_constraints_means_unconstrained_study(tmp_path):
    """Without budgets no constraint is set, and optuna treats the study as unconstrained."""
    from autoprune.study import load_config

    cfg = load_config({"name": "u", "model": {"name": "resnet20"}, "data": {"dataset": "synthetic"}})
    assert cfg.constraints.active() == {}
    from autoprune.study.optuna_study import make_sampler

    assert isinstance(make_sampler(cfg), optuna.samplers.NSGAIISampler)
    assert isinstance(make_sampler(cfg.replace(sampler=type(cfg.sampler)(name="tpe"))), optuna.samplers.TPESampler)


@pytest.mark.parametrize("guide", ["sensitivity", "srr"])
def test_guided_search(tmp_path, guide):
    """Guided mode: a budget level plus offsets around the sensitivity (or SRR) allocation, clipped to the bounds."""
    (tmp_path / "tinynet.py").write_text(textwrap.dedent(TINYNET))
    text = CONFIG.format(run=tmp_path / "run", cache=tmp_path / "cache")
    text = text.replace("n_trials: 5", "n_trials: 3").replace("pretrain: {epochs: 6,", "pretrain: {epochs: 1,")
    sens = ("  sensitivity: {ratios: [0.25, 0.5, 0.75], bn_batches: 1, progress: false, "
            f"cache_dir: {tmp_path / 'sens'}}}\n" if guide == "sensitivity" else "")
    text = text.replace("  mode: per_group\n", f"  mode: guided\n  guide: {guide}\n  offset: 0.05\n  anchors: 2\n{sens}")
    path = tmp_path / "guided.yaml"
    path.write_text(text)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from autoprune.study import search

        front = search(path)
    finally:
        torch.set_num_threads(threads)
    assert len(front.all) == 3
    # the two anchor trials come first: the guide's own allocation at both ends of the level range
    first = sorted(front.study.trials, key=lambda t: t.number)[:2]
    assert [t.params["level"] for t in first] == [0.2, 0.5] and [t.params["criterion"] for t in first] == ["l1", "l2"]
    assert all(t.params[f"d:{g}"] == 0.0 for t in first for g in ("0", "3", "6"))
    space_alloc = None
    for t in front.study.trials:
        a = t.user_attrs
        assert 0.2 <= a["level"] <= 0.5 and set(t.params) == {"criterion", "level", "d:0", "d:3", "d:6"}
        assert 0.0 <= a["ratios"]["3"] <= 0.5 and all(0.0 <= r <= 0.75 for r in a["ratios"].values())
        # the ratio is the allocation at the level plus the offset (clipped to the bounds)
        from autoprune.study.space import RatioSpace

        space_alloc = space_alloc or RatioSpace(front.config, front.problem())
        base = space_alloc.allocation(a["level"])
        for g in ("0", "3", "6"):
            lo, hi = space_alloc.bounds[g]
            assert a["ratios"][g] == pytest.approx(min(max(base[g] + t.params[f"d:{g}"], lo), hi), abs=1e-6)
