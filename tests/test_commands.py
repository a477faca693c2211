"""Every shipped config through every command: one config schema for `autoprune sensitivity | prune |
compare-criteria | search [--dry-run] | pareto | report | export | dashboard | groups | macs`.

Fast settings: each file of search_spaces/ is rewritten into a temporary copy that keeps what defines the problem
(the model and its kwargs, criteria, the ratio space with its group patterns, objectives, constraints, sampler) and
shrinks its cost: 2 trials, 1 fine-tuning batch, 1 scoring batch, a 1-ratio sensitivity grid (the largest ratio of
the shipped grid, so the allocation still reaches the low end of ratios.level).

Data sets this machine may not hold (CIFAR-10 download, the extracted CIFAR-10-JPEG, ImageNet) are replaced by the
synthetic data set (10 classes, 40 training images) at the config's image size, capped at 32x32: a ResNet-50 at
224x224 costs ~4 GMACs per image on the CPU. Weights that exist (the shared ResNet-56 checkpoint) are loaded;
missing ones (the ImageNet ResNet-50) are replaced by a seeded state_dict, so the weights path is still exercised.

The ImageNet ResNet-50 and the CIFAR ResNet-56 are checked as themselves by `groups`, `macs` and `search --dry-run`
(their weights -- the shared ResNet-56 checkpoint is loaded --, their group patterns such as `layer4.*` and their
budgets against the real graph); the commands that prune once per group or trial run on a stand-in of the same
family with the same stem and layer names (torchvision ResNet-18, CIFAR ResNet-20), so the config's patterns apply
unchanged (ResNet-50's 38 groups, or ResNet-56's sensitivity table, would double this test's time).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from autoprune.cli import main

from tiny_configs import SHIPPED, STAND_IN, tiny_copy


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One data and sensitivity cache for the module: the two ResNet-56 configs share their (identical) tables."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("shipped", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_config_through_every_command(shipped, tmp_path, cache, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(cache))
    cfg = tiny_copy(shipped, tmp_path)
    raw = yaml.safe_load(cfg.read_text())

    def ok(*argv: str) -> str:
        code = main([*argv])
        out, err = capsys.readouterr()
        assert code == 0, f"autoprune {' '.join(argv)} -> {code}\n{err}"
        return out

    assert "groups prunable" in ok("groups", str(cfg))
    assert int(ok("macs", str(cfg)).split()[0]) > 0
    assert "config OK" in ok("search", str(cfg), "--dry-run", "--quiet")
    if raw["model"]["name"] in STAND_IN:
        cfg = tiny_copy(shipped, tmp_path / "stand-in", stand_in=True)
        raw = yaml.safe_load(cfg.read_text())
        assert "config OK" in ok("search", str(cfg), "--dry-run", "--quiet")
    run = Path(raw["run_dir"])
    assert "sensitivity.json" in ok("sensitivity", str(cfg), "--quiet")
    assert (run / "sensitivity" / "sensitivity.json").exists()

    ok("prune", str(cfg), "--quiet")  # the budget is the config's constraints.max_macs
    summary = json.loads((run / "pruned.json").read_text())
    assert summary["macs"] <= raw["constraints"]["max_macs"] * summary["base_macs"]

    ok("compare-criteria", str(cfg), "--criteria", "l1,l2", "--ratios", "0.5", "--bn-batches", "1", "--quiet")
    assert (run / "criteria" / "criteria.json").exists()

    ok("search", str(cfg), "--quiet")
    front = json.loads(ok("pareto", str(cfg), "--all", "--json"))
    assert len(front) == 2
    ok("report", str(cfg))
    assert (run / "report" / "report.html").exists()
    trial = str(front[0]["number"])
    ok("export", str(cfg), "--trial", trial, str(tmp_path / "exported.pt"))  # the README's argument order
    assert (tmp_path / "exported.pt").exists()

    import optuna_dashboard

    served = []
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, host, port: served.append((host, port)))
    ok("dashboard", str(cfg))
    assert served == [("127.0.0.1", 8080)]
