"""Repetitive pruning (autoprune.allocation.repetitive, prune_to_budget(steps=k)) and distillation in prune_to_budget."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from autoprune import count_macs
from autoprune.allocation.budget import prune_to_budget
from autoprune.data import load_data
from autoprune.allocation.repetitive import step_counts, steps_per_epoch

from tiny_models import tiny_cnn

EX = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_data("synthetic", cache_dir=tmp_path_factory.mktemp("data"), device="cpu",
                     train_per_class=16, test_per_class=2, val_fraction=0.25)


def test_step_counts():
    assert step_counts({"a": 5, "b": 0, "c": 3}, 3) == [{"a": 1, "b": 0, "c": 1}, {"a": 3, "b": 0, "c": 2},
                                                          {"a": 5, "b": 0, "c": 3}]
    assert step_counts({"a": 4}, 1) == [{"a": 4}]
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        step_counts({"a": 4}, 0)


def test_repetitive_same_budget_and_macs_as_one_shot(bundle):
    model = tiny_cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ft = dict(max_batches=4, batch_size=16)
    one = prune_to_budget(model, bundle, macs=0.5, criterion="l1", allocation="uniform", finetune_epochs=1,
                          finetune_kwargs=ft, progress=False)
    rep = prune_to_budget(model, bundle, macs=0.5, criterion="l1", allocation="uniform", finetune_epochs=1,
                          finetune_kwargs=ft, progress=False, steps=2)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the input model is untouched
    # the same allocation reached: same MACs, measured on the returned model
    assert rep.macs == one.macs == count_macs(rep.model, EX) == rep.ratios.macs
    assert len(rep.prune_steps) == 2 and one.prune_steps == []
    first, last = rep.prune_steps
    counts = rep.ratios.counts
    assert first.removed == {g: c // 2 for g, c in counts.items()} and last.removed == counts
    assert one.macs < first.macs < model_macs(model) and last.macs == rep.macs  # half-way after the first step
    # the same total fine-tuning: 4 batches of 16 once, or 2 x 2 batches of 16
    assert sum(s.images for s in rep.prune_steps) == one.finetune.images == 4 * 16
    assert rep.accuracy_before_finetune == first.accuracy_pruned
    assert 0.0 <= rep.accuracy <= 1.0 and rep.accuracy == last.accuracy


def model_macs(model: nn.Module) -> int:
    return count_macs(model, EX)


def test_repetitive_rescored_on_the_pruned_model(bundle, monkeypatch):
    """Scores are recomputed on the partly pruned model: the second step scores groups of the reduced widths."""
    import autoprune.allocation.budget
    import autoprune.allocation.dispatch
    import autoprune.allocation.repetitive

    seen = []
    real = autoprune.allocation.repetitive.score_groups

    def spy(graph, criterion, **kw):
        out = real(graph, criterion, **kw)
        seen.append({g: len(v) for g, v in out.items()})
        return out

    for mod in (autoprune.allocation.budget, autoprune.allocation.dispatch, autoprune.allocation.repetitive):
        monkeypatch.setattr(mod, "score_groups", spy)
    res = prune_to_budget(tiny_cnn(), bundle, macs=0.5, criterion="l1", allocation="uniform", finetune_epochs=1,
                          finetune_kwargs=dict(max_batches=2, batch_size=16), progress=False, steps=3)
    widths = [w for w in seen]
    assert len(widths) == 3  # the base model's scores (allocation), then steps 2 and 3
    removed = res.prune_steps[0].removed
    assert all(widths[1][g] == widths[0][g] - removed[g] for g in widths[0])


def test_prune_to_budget_distill_and_bad_steps(bundle):
    ft = dict(max_batches=2, batch_size=16)
    res = prune_to_budget(tiny_cnn(), bundle, macs=0.5, criterion="l1", allocation="uniform", finetune_epochs=1,
                          finetune_kwargs=ft, progress=False, distill={"alpha": 0.7, "temperature": 2.0})
    plain = prune_to_budget(tiny_cnn(), bundle, macs=0.5, criterion="l1", allocation="uniform", finetune_epochs=1,
                            finetune_kwargs=ft, progress=False)
    assert res.macs == plain.macs and res.finetune.losses != plain.finetune.losses
    with pytest.raises(ValueError, match="alpha must be a number"):
        prune_to_budget(tiny_cnn(), bundle, macs=0.5, criterion="l1", allocation="uniform", finetune_epochs=1,
                        finetune_kwargs=ft, progress=False, distill={"alpha": 2})
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        prune_to_budget(tiny_cnn(), bundle, macs=0.5, criterion="l1", allocation="uniform", finetune_epochs=1,
                        finetune_kwargs=ft, progress=False, steps=0)
    assert steps_per_epoch(bundle, 16) == len(bundle.train) // 16 and steps_per_epoch(bundle, 16, 3) == 3


def test_cli_prune_steps_and_distill(tmp_path, monkeypatch, capsys):
    import json

    import yaml

    from autoprune.cli import main

    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    torch.save(tiny_cnn(seed=3).state_dict(), tmp_path / "w.pt")
    cfg = {"model": {"name": "tiny_models:tiny_cnn", "weights": "w.pt"},
           "data": {"dataset": "synthetic", "image_size": 32, "val_fraction": 0.25,
                    "options": {"train_per_class": 12, "test_per_class": 2}},
           "device": "cpu", "run_dir": str(tmp_path / "run"), "criteria": "l1", "constraints": {"max_macs": 0.6},
           "finetune": {"epochs": 1, "batch_size": 16, "max_batches": 2, "prune_steps": 2,
                        "distill": {"alpha": 0.8}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    calls = []
    import autoprune.allocation.budget
    import autoprune.cli.budget

    real = autoprune.allocation.budget.prune_to_budget

    def spy(*a, **kw):
        calls.append({k: kw[k] for k in ("steps", "distill")})
        return real(*a, **kw)

    monkeypatch.setattr(autoprune.cli.budget, "prune_to_budget", spy)
    assert main(["prune", str(path), "--allocation", "uniform", "--quiet"]) == 0
    assert calls[-1] == {"steps": 2, "distill": {"alpha": 0.8, "temperature": 4.0}}
    assert main(["prune", str(path), "--allocation", "uniform", "--quiet", "--steps", "1"]) == 0
    assert calls[-1]["steps"] == 1
    summary = json.loads((tmp_path / "run" / "pruned.json").read_text())
    assert summary["macs"] <= 0.6 * summary["base_macs"]
    assert main(["prune", str(path), "--allocation", "uniform", "--quiet", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
