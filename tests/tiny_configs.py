"""Shipped configs with fast settings, for tests that run them (see tests/test_commands.py's docstring for what is
kept and what is shrunk)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))


def _resolve(p: str, base: Path) -> Path:
    q = Path(os.path.expanduser(p))
    return q if q.is_absolute() else (base / q if (base / q).exists() else q)


#: Models whose running commands use a cheaper stand-in with the same group names (see the module docstring).
STAND_IN = {"resnet50": "resnet18", "resnet56": "resnet20"}


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
