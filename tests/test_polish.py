"""The final polish of a chosen model (autoprune.polish)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from autoprune.data import load_data
from autoprune.polish import PolishResult, polish


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
