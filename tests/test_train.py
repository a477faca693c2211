"""Tests for autoprune.train: finetune, evaluate and recalibrate_bn on a tiny CNN and synthetic data."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.data import load_data
from autoprune.train import EvalResult, FinetuneResult, evaluate, finetune, recalibrate_bn


def tiny_cnn(num_classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(32, num_classes),
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_data("synthetic", cache_dir=tmp_path_factory.mktemp("cache"), device="cpu",
                     train_per_class=100, test_per_class=20, val_fraction=0.2)


def test_finetune_learns_synthetic(bundle):
    model = tiny_cnn()
    before = evaluate(model, bundle)
    res = finetune(model, bundle, epochs=2, lr=0.05, batch_size=32, max_batches=15, progress=False)
    after = evaluate(model, bundle)
    assert isinstance(res, FinetuneResult) and res.epochs == 2 and len(res.losses) == 2
    assert res.losses[-1] < res.losses[0] and res.final_loss == res.losses[-1]
    assert res.steps == 2 * 15 and res.images == res.steps * 32
    assert res.images_per_s > 0 and res.seconds > 0
    assert after.loss < before.loss and after.accuracy > 0.3  # chance is 0.1
    assert not model.training and not any(m.training for m in model.modules())


def test_finetune_is_deterministic_and_leaves_global_rng(bundle):
    states, losses = [], []
    for _ in range(2):
        m = tiny_cnn(seed=1)
        torch.manual_seed(123)
        r = finetune(m, bundle, epochs=1, lr=0.05, batch_size=64, seed=5, progress=False, max_batches=4)
        states.append(m.state_dict())
        losses.append(r.losses)
    assert losses[0] == losses[1]
    assert all(torch.equal(a, b) for a, b in zip(states[0].values(), states[1].values()))
    m = tiny_cnn(seed=1)
    r = finetune(m, bundle, epochs=1, lr=0.05, batch_size=64, seed=6, progress=False, max_batches=4)
    assert r.losses != losses[0]
    # the caller's RNG stream is not consumed by fine-tuning
    m = tiny_cnn()
    torch.manual_seed(9)
    expected = torch.rand(3)
    torch.manual_seed(9)
    finetune(m, bundle, epochs=1, batch_size=64, progress=False, max_batches=1)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("schedule", ["onecycle", "constant"])
def test_other_schedules_and_max_batches(bundle, schedule):
    r = finetune(tiny_cnn(), bundle, epochs=2, lr=0.05, batch_size=32, schedule=schedule,
                 label_smoothing=0.1, progress=False, max_batches=3)
    assert r.steps == 6 and r.images == 6 * 32


def test_finetune_progress_bar_runs(bundle, capsys):
    finetune(tiny_cnn(), bundle, epochs=1, batch_size=64, max_batches=2, progress=True)


def test_bad_arguments(bundle, tmp_path):
    with pytest.raises(ValueError, match="schedule"):
        finetune(tiny_cnn(), bundle, schedule="step", progress=False)
    no_val = load_data("synthetic", cache_dir=tmp_path, device="cpu", train_per_class=2, test_per_class=1,
                       val_fraction=0.0)
    with pytest.raises(ValueError, match="empty"):
        evaluate(tiny_cnn(), no_val)
    with pytest.raises(TypeError, match="DataBundle"):
        evaluate(tiny_cnn(), [1, 2, 3])


def test_evaluate_matches_hand_written_loop(bundle):
    model = tiny_cnn()
    model.train()  # evaluate must switch to eval mode and then restore this
    got = evaluate(model, bundle, split="test", batch_size=37)
    assert model.training
    model.eval()
    x = (bundle.test.images.float() / 255 - torch.tensor(bundle.mean).view(1, 3, 1, 1)) / torch.tensor(
        bundle.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model(x)
    assert isinstance(got, EvalResult) and got.n == len(bundle.test) == 200
    assert got.accuracy == pytest.approx((logits.argmax(1) == bundle.test.labels).float().mean().item())
    assert got.loss == pytest.approx(F.cross_entropy(logits, bundle.test.labels).item(), rel=1e-5)
    # a split object works as well as the bundle
    assert evaluate(model, bundle.test).accuracy == got.accuracy


def test_recalibrate_bn_changes_only_running_stats(bundle):
    model = tiny_cnn()
    finetune(model, bundle, epochs=1, batch_size=64, progress=False, max_batches=3)
    model.train()
    model[-2].eval()  # a mixed mode that must survive
    modes = [m.training for m in model.modules()]
    momenta = [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    model[1].momentum = 0.3
    momenta[0] = 0.3
    before = {k: v.clone() for k, v in model.state_dict().items()}

    recalibrate_bn(model, bundle, batches=1, batch_size=len(bundle.train))

    after = model.state_dict()
    stats = ("running_mean", "running_var", "num_batches_tracked")
    for k, v in before.items():
        if k.endswith(stats):
            continue
        assert torch.equal(v, after[k]), k
    for k in ("1.running_mean", "1.running_var", "5.running_var", "9.running_mean"):
        assert not torch.equal(before[k], after[k]), k
    assert [m.training for m in model.modules()] == modes
    assert [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == momenta
    # one batch holding the whole split with momentum=None: running stats are that batch's exact statistics
    x = torch.cat([xb for xb, _ in bundle.train.batches(len(bundle.train))])
    with torch.no_grad():
        h = model[0](x)
    assert torch.allclose(model[1].running_mean, h.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model[1].running_var, h.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)


def test_recalibrate_bn_without_bn_is_noop(bundle):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    before = [p.clone() for p in model.parameters()]
    assert recalibrate_bn(model, bundle) is model
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_output_width_mismatch_is_a_clear_error(bundle):
    model = tiny_cnn(num_classes=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="outputs 7 logits.*10 classes"):
        finetune(model, bundle, progress=False)
    with pytest.raises(ValueError, match="outputs 7 logits.*10 classes"):
        evaluate(model, bundle)
    # failing the check must not have trained anything or touched BatchNorm statistics
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="num_classes"):
        finetune(nn.Sequential(nn.Conv2d(3, 10, 1)), bundle, progress=False)
