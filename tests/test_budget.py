"""Tests for autoprune.allocation.budget.prune_to_budget and the CLI commands of autoprune.cli.budget (sensitivity, prune)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from autoprune import count_macs, count_params
from autoprune.allocation.budget import BudgetResult, prune_to_budget
from autoprune.build import build
from autoprune.cli import main
from autoprune.cli.common import parse_budget
from autoprune.config import load_config
from autoprune.deploy.files import load as load_model
from autoprune.data import load_data

from tiny_models import tiny_cnn

EX = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_data("synthetic", cache_dir=tmp_path_factory.mktemp("data"), device="cpu",
                     train_per_class=12, test_per_class=2, val_fraction=0.25)


@pytest.fixture(scope="module")
def sens_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sens")


FT = dict(max_batches=2, batch_size=32)


@pytest.mark.parametrize("allocation,criterion", [("sensitivity", "ezcrop"), ("uniform", "l1"), ("srr", "l1")])
def test_prune_to_budget_measured_macs(bundle, sens_cache, allocation, criterion):
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = prune_to_budget(model, bundle, macs=0.5, criterion=criterion, allocation=allocation, finetune_epochs=1,
                          sensitivity_kwargs=dict(ratios=(0.3, 0.6, 0.9), bn_batches=1, cache_dir=sens_cache),
                          finetune_kwargs=FT, progress=False)
    assert isinstance(res, BudgetResult)
    assert res.macs == count_macs(res.model, EX) == res.ratios.macs  # measured, and equal to the accounting
    assert res.params == count_params(res.model)
    base = count_macs(model, EX)
    assert res.base_macs == base and 0.99 * math.floor(0.5 * base) <= res.macs <= math.floor(0.5 * base)
    assert 0.0 <= res.accuracy <= 1.0 and res.accuracy_before_finetune is not None
    assert res.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input model untouched
    assert (res.sensitivity is not None) == (allocation == "sensitivity")
    json.dumps(res.to_dict())
    assert "MACs" in res.summary()


def test_params_budget_explicit_ratios_and_no_finetune(bundle):
    model = tiny_cnn()
    res = prune_to_budget(model, bundle, macs=None, params=0.6, criterion="l1", allocation="uniform",
                          finetune_epochs=0, evaluate_test=True, progress=False)
    target = math.floor(0.6 * count_params(model))
    assert 0.99 * target <= res.params <= target and res.finetune is None and res.test_accuracy is not None
    explicit = prune_to_budget(model, bundle, criterion="l1", allocation={"0": 0.5, "8": 0.25}, finetune_epochs=0,
                               progress=False)
    assert explicit.ratios.counts["0"] == 4 and explicit.ratios.counts["8"] == 4
    assert explicit.macs == count_macs(explicit.model, EX)


def test_infeasible_budget_error(bundle):
    with pytest.raises(ValueError, match="at most .* can be removed"):
        prune_to_budget(tiny_cnn(), bundle, macs=0.01, criterion="l1", allocation="uniform", finetune_epochs=0,
                        progress=False)


def test_save_uses_autoprune_io(bundle, monkeypatch, tmp_path):
    calls = []
    import autoprune.allocation.budget

    monkeypatch.setattr(autoprune.allocation.budget, "save", lambda model, path: calls.append((model, path)))
    res = prune_to_budget(tiny_cnn(), bundle, macs=0.7, criterion="l1", allocation="uniform", finetune_epochs=0,
                          progress=False)
    res.save(tmp_path / "m.pt")
    assert calls == [(res.model, tmp_path / "m.pt")]


# ---------------------------------------------------------------------------------------------------- CLI


def test_parse_budget():
    assert parse_budget("0.5") == 0.5 and parse_budget("50%") == 0.5
    assert parse_budget("62M") == 62_000_000 and parse_budget("1000") == 1000 and parse_budget(None) is None
    with pytest.raises(ValueError, match="budget 'half': expected a fraction"):
        parse_budget("half")


@pytest.mark.parametrize("cmd", ["sensitivity", "prune"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "CONFIG" in out and ("--macs" in out) == (cmd == "prune")


@pytest.fixture()
def config(tmp_path, monkeypatch):
    """A config of the search schema (docs/search.md): the one every command reads."""
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    torch.save(tiny_cnn(seed=3).state_dict(), tmp_path / "w.pt")
    cfg = {"model": {"name": "tiny_models:tiny_cnn", "weights": "w.pt"},  # relative to the config's folder
           "data": {"dataset": "synthetic", "image_size": 32, "val_fraction": 0.25,
                    "options": {"train_per_class": 12, "test_per_class": 2}},
           "device": "cpu", "run_dir": str(tmp_path / "run"), "criteria": "l1",
           "ratios": {"mode": "guided", "sensitivity": {"ratios": [0.5], "bn_batches": 1}},
           "constraints": {"max_macs": 0.6},
           "finetune": {"epochs": 1, "lr": 0.01, "batch_size": 32, "max_batches": 1}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_build_from_config(config):
    built = build(load_config(config))
    ref = tiny_cnn(seed=3)
    assert all(torch.equal(a, b) for a, b in zip(built.model.state_dict().values(), ref.state_dict().values()))
    assert built.data.name == "synthetic" and len(built.data.val) == 30
    assert tuple(built.example_inputs.shape) == (1, 3, 32, 32)


def test_cli_sensitivity_and_prune(config, tmp_path, capsys):
    assert main(["sensitivity", str(config), "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert {p.name for p in (tmp_path / "s").iterdir()} == {"sensitivity.json", "sensitivity.txt", "sensitivity.png"}
    assert main(["sensitivity", str(config), "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert "loaded from cache" in capsys.readouterr().out

    # the budget is the config's constraints.max_macs; --allocation overrides the config's guide
    assert main(["prune", str(config), "--allocation", "uniform", "--quiet"]) == 0
    out = tmp_path / "run" / "pruned.pt"
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["allocation"] == "uniform" and summary["macs"] <= 0.6 * summary["base_macs"]
    model = load_model(out, model=tiny_cnn())
    assert count_macs(model, EX) == summary["macs"]


def test_prune_options_come_from_the_config(config):
    from autoprune.build import prune_options

    opts = prune_options(load_config(config))
    assert (opts["macs"], opts["params"], opts["criterion"], opts["allocation"]) == (0.6, None, "l1", "sensitivity")
    assert opts["finetune_epochs"] == 1 and opts["finetune_kwargs"]["max_batches"] == 1 and opts["seed"] == 0
    assert opts["sensitivity_kwargs"] == {"ratios": [0.5], "bn_batches": 1}  # the criterion is prune's own argument
    assert opts["distill"] is None and opts["steps"] == 1


def test_compare_options_come_from_the_config(config):
    from autoprune import available_criteria
    from autoprune.build import compare_options

    cfg = load_config(config)
    assert compare_options(cfg)["criteria"] == list(available_criteria())  # one criterion: compare them all
    opts = compare_options(cfg.replace(criteria=["l1", "hrank"]))
    assert opts == {"criteria": ["l1", "hrank"], "score_batches": 5, "seed": 0, "split": "val"}
