"""Tests for autoprune.budget.prune_to_budget and the CLI commands of autoprune.cli.budget."""
from __future__ import annotations

import argparse
import json
import math
import sys
import types

import pytest
import torch
import torch.nn as nn
import yaml

from autoprune import count_macs, count_params
from autoprune.budget import BudgetResult, prune_to_budget
from autoprune.cli.budget import add_subcommands, load_model_and_data, parse_budget
from autoprune.data import load_data

EX = torch.zeros(1, 3, 32, 32)


def tiny_cnn(num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Also the builder the CLI test imports as ``test_budget:tiny_cnn``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    ).eval()


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
    fake = types.ModuleType("autoprune.io")
    fake.save = lambda model, path: calls.append((model, path))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "autoprune.io", fake)
    import autoprune

    monkeypatch.setattr(autoprune, "io", fake, raising=False)
    res = prune_to_budget(tiny_cnn(), bundle, macs=0.7, criterion="l1", allocation="uniform", finetune_epochs=0,
                          progress=False)
    res.save(tmp_path / "m.pt")
    assert calls == [(res.model, tmp_path / "m.pt")]


# ---------------------------------------------------------------------------------------------------- CLI


def test_parse_budget():
    assert parse_budget("0.5") == 0.5 and parse_budget("50%") == 0.5
    assert parse_budget("62M") == 62_000_000 and parse_budget("1000") == 1000 and parse_budget(None) is None


def _parser():
    p = argparse.ArgumentParser(prog="autoprune")
    add_subcommands(p.add_subparsers(dest="command", required=True))
    return p


@pytest.mark.parametrize("cmd", ["sensitivity", "prune"])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "CONFIG" in out and ("--macs" in out) == (cmd == "prune")


@pytest.fixture()
def config(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    torch.save(tiny_cnn(seed=3).state_dict(), tmp_path / "w.pt")
    cfg = {"model": {"builder": "test_budget:tiny_cnn", "weights": "w.pt"},  # relative to the config's folder
           "data": {"name": "synthetic", "cache_dir": str(tmp_path / "data"), "device": "cpu",
                    "train_per_class": 12, "test_per_class": 2, "val_fraction": 0.25},
           "criterion": "l1", "ratios": [0.5], "sensitivity": {"bn_batches": 1},
           "finetune": {"epochs": 1, "lr": 0.01, "batch_size": 32, "max_batches": 1}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_load_model_and_data(config):
    cfg = yaml.safe_load(config.read_text())
    model, data = load_model_and_data(cfg, base_dir=config.parent)
    ref = tiny_cnn(seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))
    assert data.name == "synthetic" and len(data.val) == 30
    with pytest.raises(ValueError, match="model"):
        load_model_and_data({"data": cfg["data"]})


def test_cli_sensitivity_and_prune(config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    args = _parser().parse_args(["sensitivity", str(config), "--out", str(tmp_path / "s"), "--quiet"])
    assert args.func(args) == 0
    assert {p.name for p in (tmp_path / "s").iterdir()} == {"sensitivity.json", "sensitivity.txt", "sensitivity.png"}
    args = _parser().parse_args(["sensitivity", str(config), "--out", str(tmp_path / "s"), "--quiet"])
    assert args.func(args) == 0 and "loaded from cache" in capsys.readouterr().out

    saved = []
    fake = types.ModuleType("autoprune.io")
    fake.save = lambda model, path: saved.append(path)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "autoprune.io", fake)
    import autoprune

    monkeypatch.setattr(autoprune, "io", fake, raising=False)
    out = tmp_path / "p" / "model.pt"
    args = _parser().parse_args(["prune", str(config), "--macs", "60%", "--allocation", "uniform",
                                 "--out", str(out), "--quiet"])
    assert args.func(args) == 0 and saved == [out]
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["allocation"] == "uniform" and summary["macs"] <= 0.6 * summary["base_macs"]
