"""Evaluation (top-1 accuracy and loss) and BatchNorm re-estimation.

Both take ``data`` in any form of :data:`autoprune.data.adapter.DataLike` (see :mod:`autoprune.train.loop`).
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.adapter import DataLike, check_labels, split_of
from .common import autocast, check_num_classes, default_amp, model_device, preserve_modes, require_labels

__all__ = ["EvalResult", "evaluate", "recalibrate_bn"]


@dataclass
class EvalResult:
    """Top-1 ``accuracy`` in [0, 1], mean cross-entropy ``loss`` and number of images ``n``."""

    accuracy: float
    loss: float
    n: int


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataLike,
    *,
    split: str = "val",
    batch_size: int = 512,
    device: str | torch.device | None = None,
    amp: bool | None = None,
) -> EvalResult:
    """Top-1 accuracy and mean cross-entropy of ``model`` on a split (``"val"`` by default).

    A single Dataset or DataLoader is evaluated whatever ``split`` says; a ``(train, val)`` pair picks by name.
    ``device`` defaults to the data's device, else the model's (the model is moved there); ``amp`` defaults to bf16
    autocast on CUDA. The model is evaluated in eval mode and its modes are restored afterwards.
    """
    sp = split_of(data, split)
    if len(sp) == 0:
        raise ValueError(f"the {split!r} split is empty (val_fraction=0?); evaluate on another split")
    dev = torch.device(device) if device is not None else (sp.device or model_device(model))
    use_amp = default_amp(dev, amp)
    model.to(dev)
    n_logits = check_num_classes(model, sp, dev)
    check = getattr(sp, "checks_labels", False)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    n = 0
    with preserve_modes(model):
        model.eval()
        for x, y in sp.batches(batch_size):
            y = require_labels(y, sp, "evaluation")
            if check:
                check_labels(y, n_logits)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with autocast(dev, use_amp):
                out = model(x)
            out = out.float()
            loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            n += len(y)
    return EvalResult(accuracy=int(correct) / n, loss=float(loss_sum) / n, n=n)


def bn_inputs(data: DataLike, *, batches: int = 10, batch_size: int = 128, split: str = "train", augment: bool = False,
              seed: int = 0) -> Iterator[torch.Tensor]:
    """The input batches :func:`recalibrate_bn` feeds (the same for the same arguments): ``batches`` shuffled batches
    of ``split`` (a user loader's one-image batch skipped: BatchNorm cannot take statistics of it)."""
    sp = split_of(data, split)
    if len(sp) == 0:  # raised here, before any statistics are reset
        raise ValueError(f"the {split!r} split is empty")
    src = sp.batches(batch_size, shuffle=True, augment=augment, seed=seed, drop_last=len(sp) >= batch_size)
    return (x for x, _ in itertools.islice(src, batches) if len(x) >= 2)


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics (those :func:`recalibrate_bn` re-estimates)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def bn_estimation(model: nn.Module) -> Iterator[None]:
    """Inside: every BatchNorm of ``model`` with reset statistics accumulating an exact average (``momentum=None``)
    in train mode, everything else in eval mode (dropout off); on exit modes and momenta are restored."""
    bns = batchnorms(model)
    momenta = [m.momentum for m in bns]
    with preserve_modes(model):
        try:
            model.eval()
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average: every batch weighs the same
                m.train()
            yield
        finally:
            for m, mom in zip(bns, momenta):
                m.momentum = mom


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    data: DataLike,
    *,
    batches: int = 10,
    batch_size: int = 128,
    split: str = "train",
    augment: bool = False,
    seed: int = 0,
) -> nn.Module:
    """Re-estimate BatchNorm running statistics from ``batches`` batches; returns ``model``.

    After pruning, the stored running mean/var no longer match the activations, which can cost more
    accuracy than the pruning itself. Stats are reset and re-accumulated as an exact average
    (``momentum=None``). Only BatchNorm layers run in train mode (dropout stays off); nothing but the running
    stats changes, and all modes and momenta are restored. ``augment=True`` feeds the training augmentation
    (pad-crop + flip): for crop-trained models that reproduces the stored statistics far better (shared ResNet-56:
    88.2% like the stored ones, vs 85.0% from un-augmented batches; docs/sensitivity.md).
    """
    if not batchnorms(model):
        return model
    dev = model_device(model)
    xs = bn_inputs(data, batches=batches, batch_size=batch_size, split=split, augment=augment, seed=seed)
    with bn_estimation(model):
        for x in xs:
            model(x.to(dev, non_blocking=True))
    return model
