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

The ImageNet ResNet-50 is checked as itself by `groups`, `macs` and `search --dry-run` (its weights, its group
patterns such as `layer4.*` and its budget against the real graph); the commands that prune it once per group or
trial run on a torchvision ResNet-18 stand-in, which has the same stem and layer names, so the config's patterns
apply unchanged (the 38 groups of a ResNet-50 alone would double this test's time).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from autoprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))


def _resolve(p: str, base: Path) -> Path:
    q = Path(os.path.expanduser(p))
    return q if q.is_absolute() else (base / q if (base / q).exists() else q)


#: Models whose running commands use a cheaper stand-in with the same group names (see the module docstring).
STAND_IN = {"resnet50": "resnet18"}


def tiny_copy(path: Path, tmp: Path, *, stand_in: bool = False) -> Path:
    """The config at ``path`` with fast settings, written into ``tmp`` (see the module docstring)."""
    raw = yaml.safe_load(path.read_text())
    tmp.mkdir(parents=True, exist_ok=True)
    if stand_in:
        raw["model"]["name"] = STAND_IN[raw["model"]["name"]]
        raw["model"]["weights"] = "/nonexistent/weights.pt"  # replaced by a seeded state_dict below
    raw.update(n_trials=2, threads=1, device="cpu", run_dir=str(tmp / "run"))
    data = raw["data"]
    size = data.get("image_size", 32)
    size = min(size if isinstance(size, int) else max(size), 32)
    raw["data"] = {"dataset": "synthetic", "image_size": size, "val_fraction": 0.25,
                   "options": {"train_per_class": 4, "test_per_class": 2, "num_classes": 10}}
    model = raw["model"]
    if "pretrain" in model:
        model["pretrain"] = {"epochs": 1, "max_batches": 1, "batch_size": 16}
    if "weights" in model and not _resolve(model["weights"], path.parent).exists():
        from autoprune import get_model

        torch.manual_seed(0)
        torch.save(get_model(model["name"], num_classes=10, **model.get("kwargs", {})).state_dict(),
                   tmp / "weights.pt")  # (num_classes: the synthetic data's)
        model["weights"] = str(tmp / "weights.pt")
    elif "weights" in model:
        model["weights"] = str(_resolve(model["weights"], path.parent))
    if raw.get("ratios", {}).get("mode") == "guided":
        grid = raw["ratios"].get("sensitivity", {}).get("ratios", [0.9])
        # one ratio, the grid's largest: the allocation can still reach the low end of ratios.level
        raw["ratios"]["sensitivity"] = {"ratios": [max(grid)], "bn_batches": 1, "eval_batches": 1, "batch_size": 16,
                                         "bn_batch_size": 16}
    raw["finetune"] = {**raw.get("finetune", {}), "epochs": 1, "max_batches": 1, "batch_size": 16,
                       "recalibrate_bn": min(1, raw.get("finetune", {}).get("recalibrate_bn", 0))}
    raw["scoring"] = {"num_batches": 1, "batch_size": 16}
    out = tmp / path.name
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


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
