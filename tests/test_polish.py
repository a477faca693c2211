"""The final polish of a chosen model (autoprune.train.polish)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from autoprune.data import load_data
from autoprune.train.polish import PolishResult, polish
from tiny_models import TINYNET


def tiny(seed: int = 0, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_data("synthetic", cache_dir=tmp_path_factory.mktemp("data"), device="cpu",
                     train_per_class=16, test_per_class=4, val_fraction=0.25)


def test_polish_reports_val_and_test(bundle):
    teacher, student = tiny(0, 16), tiny(1)
    before = copy.deepcopy(student.state_dict())
    res = polish(student, bundle, epochs=2, teacher=teacher, distill={"alpha": 0.7, "temperature": 2.0},
                 batch_size=16, progress=False, finetune_kwargs={"max_batches": 3})
    assert isinstance(res, PolishResult) and res.model is student and not student.training
    assert res.distill == {"alpha": 0.7, "temperature": 2.0} and res.finetune.steps == 6
    assert res.test_accuracy is not None and res.test_before is not None and 0 <= res.val_accuracy <= 1
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())
    assert "alpha 0.7" in res.summary() and res.to_dict()["finetune_images"] == 6 * 16
    plain = polish(tiny(1), bundle, epochs=2, teacher=teacher, distill=False, batch_size=16, progress=False,
                   finetune_kwargs={"max_batches": 3})
    assert plain.distill is None and plain.finetune.losses != res.finetune.losses and "labels only" in plain.summary()
    assert polish(tiny(1), bundle, epochs=1, progress=False, finetune_kwargs={"max_batches": 1}).distill is None
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        polish(student, bundle, epochs=0)
    with pytest.raises(ValueError, match="without a teacher"):
        polish(student, bundle, epochs=1, distill={"alpha": 0.5})


CONFIG = """
name: tiny_polish
n_trials: 3
threads: 1
run_dir: {run}
model: {{name: "tinynet:build", pretrain: {{epochs: 4, lr: 0.05, batch_size: 32}}}}
data: {{dataset: synthetic, image_size: 12, val_fraction: 0.25, cache_dir: {cache},
        options: {{train_per_class: 16, test_per_class: 3}}}}
ratios: {{mode: per_group, default: [0.0, 0.6]}}
sampler: {{name: nsga2, population_size: 4}}
finetune: {{epochs: 1, max_batches: 2, batch_size: 32, lr: 0.02}}
"""


def test_export_polish_cli_and_front_polish(tmp_path, capsys):
    import json
    import textwrap

    from autoprune.cli import main
    from autoprune.study import search

    (tmp_path / "tinynet.py").write_text(textwrap.dedent(TINYNET))  # tests/tiny_models.py
    cfg = tmp_path / "tiny_polish.yaml"
    cfg.write_text(CONFIG.format(run=tmp_path / "run", cache=tmp_path / "cache"))
    front = search(str(cfg))
    n = front[0].number
    res = front.polish(n, 1)
    assert res.distill == {"alpha": 0.5, "temperature": 4.0} and res.test_accuracy is not None
    assert res.val_before == front.trial(n).accuracy  # the rebuilt model is the trial's
    assert res.finetune.steps == res.finetune.images // 32 > 0
    out = tmp_path / "polished.pt"
    assert main(["export", str(cfg), str(out), "--trial", str(n), "--finetune-epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "polished 1 epoch(s) (distillation alpha 0.5, T 4)" in printed and "test" in printed
    info = json.loads((tmp_path / "polished.pt.json").read_text())
    assert info["polish"]["epochs"] == 1 and info["polish"]["val_accuracy"] == res.val_accuracy  # deterministic
    assert out.stat().st_size > 0
    assert main(["export", str(cfg), str(tmp_path / "plain.pt"), "--trial", str(n), "--finetune-epochs", "1",
                 "--no-distill"]) == 0
    assert "labels only" in capsys.readouterr().out
    assert main(["export", str(cfg), str(tmp_path / "bad.pt"), "--trial", str(n), "--finetune-epochs", "-1"]) == 2
    assert "--finetune-epochs must be >= 0" in capsys.readouterr().err
