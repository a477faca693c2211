"""Fine-tuning: the inner loop of every search trial.

:func:`finetune` takes ``data`` in any form of :data:`autoprune.data.adapter.DataLike`: a
:class:`~autoprune.data.DataBundle` (or one of its splits) from :func:`autoprune.data.load_data`, a map-style
``Dataset`` of ``(image, label)``, a ``DataLoader``, or a ``(train, val)`` pair of these. Defaults favour
throughput on CUDA (bf16 autocast, channels_last) and exact reproducibility on the CPU.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.adapter import DataLike, check_labels, split_of
from .common import autocast, check_num_classes, default_amp, model_device, require_labels
from .distill import Distiller

__all__ = ["SCHEDULES", "FinetuneResult", "finetune"]

SCHEDULES = ("cosine", "onecycle", "constant")


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: per-epoch mean training loss and throughput."""

    epochs: int
    final_loss: float
    losses: list[float] = field(default_factory=list)
    images_per_s: float = 0.0
    seconds: float = 0.0
    images: int = 0
    steps: int = 0


def _lr_lambda(schedule: str, total: int) -> Any:
    if schedule == "constant":
        return lambda step: 1.0
    # Per-step cosine from lr to 0; the last step trains with a small but non-zero lr.
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def finetune(
    model: nn.Module,
    data: DataLike,
    *,
    epochs: int = 1,
    lr: float = 0.01,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
    batch_size: int = 128,
    schedule: str = "cosine",
    label_smoothing: float = 0.0,
    device: str | torch.device | None = None,
    seed: int = 0,
    amp: bool | None = None,
    channels_last: bool | None = None,
    progress: bool = True,
    max_batches: int | None = None,
    teacher: nn.Module | None = None,
    distill: Any = None,
    callback: Any = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place on the train split with SGD; the model ends in eval mode.

    ``schedule``: ``"cosine"`` (per step, lr -> 0), ``"onecycle"`` (``OneCycleLR`` peaking at ``lr``;
    momentum is kept fixed) or ``"constant"``. ``device`` defaults to the data's device (the model is
    moved there). ``amp`` (bf16 autocast) and ``channels_last`` default to on for CUDA, off otherwise.
    ``max_batches`` caps the batches per epoch (quick trials, benchmarks). Same ``seed`` on the CPU
    gives identical weights; the caller's global RNG state is left untouched.

    ``data`` trains on its train split (a single Dataset or DataLoader is the train split). A Dataset is batched
    with ``batch_size`` and shuffled with ``seed``; a DataLoader is used as it is (its batch size, order and
    transforms). Data from :func:`~autoprune.data.load_data` is augmented (crop + flip) on the device; other data
    keeps its own transforms. ``device`` then defaults to the model's device.

    ``teacher`` (e.g. the unpruned model) adds knowledge distillation: the loss becomes
    ``(1 - alpha) * cross_entropy + alpha * T**2 * KL(teacher || student)`` on temperature-``T`` softened logits, with
    ``distill={"alpha": 0.5, "temperature": 4.0}`` by default (:class:`autoprune.train.distill.Distiller`; one teacher
    forward per batch in inference mode, bf16 on CUDA when ``amp``). The teacher is not changed.
    ``callback(steps_done, total_steps)`` is called before the first step (0) and after every step; it may raise to
    stop fine-tuning (early stopping of search trials, :mod:`autoprune.study.early_stopping`).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
    split = split_of(data, "train")
    if len(split) == 0:
        raise ValueError("the train split is empty")
    dev = torch.device(device) if device is not None else (split.device or model_device(model))
    use_amp = default_amp(dev, amp)
    use_cl = dev.type == "cuda" if channels_last is None else bool(channels_last)

    model.to(dev)
    n_logits = check_num_classes(model, split, dev)
    check = getattr(split, "checks_labels", False)
    if use_cl:
        model.to(memory_format=torch.channels_last)

    # A last batch of one image would make BatchNorm fail in train mode; drop the ragged tail instead
    # (it is reshuffled into the next epoch), unless the whole split is smaller than one batch.
    drop_last = len(split) >= batch_size
    per_epoch = len(split) // batch_size if drop_last else 1
    if hasattr(split, "num_batches"):  # a user's DataLoader: its own batches
        per_epoch = split.num_batches() or 0
        if not per_epoch and max_batches is None:
            raise ValueError(f"{split.name} cannot tell its length (an iterable-style dataset); pass max_batches= "
                             "(batches per epoch) to finetune")
        per_epoch = per_epoch or int(max_batches)  # type: ignore[arg-type]
    if max_batches is not None:
        per_epoch = max(1, min(per_epoch, int(max_batches)))
    total = epochs * per_epoch
    kd = None
    if teacher is not None:
        if teacher is model:
            raise ValueError("teacher is the model being fine-tuned; pass a separate model, e.g. the unpruned one "
                             "(prune_to_budget and the search do), or copy.deepcopy(model) before pruning")
        kd = Distiller.of(teacher, distill)
    elif distill:
        raise ValueError("distill options were given without a teacher; pass teacher= (e.g. the unpruned model)")
    kd_ctx = kd.attached(dev, amp=use_amp, channels_last=use_cl) if kd is not None else contextlib.nullcontext()

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=weight_decay
    )
    if schedule == "onecycle":
        sched: Any = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, cycle_momentum=False)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(schedule, total))

    losses: list[float] = []
    seen = 0
    fork_devices = [dev.index or 0] if dev.type == "cuda" else []
    done = 0
    with torch.random.fork_rng(devices=fork_devices), kd_ctx:
        torch.manual_seed(seed)  # dropout & co.; data order and augmentation get their own seeds below
        bar_bs = getattr(getattr(split, "loader", None), "batch_size", None) or batch_size  # a user's DataLoader
        bar = tqdm(total=total * bar_bs, unit="img", unit_scale=True, disable=not progress,
                   desc="finetune", leave=False, dynamic_ncols=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        model.train()
        if callback is not None:
            callback(0, total)
        for epoch in range(epochs):
            # Accumulate on the device: reading loss.item() every step would synchronise CUDA each batch.
            loss_sum = torch.zeros((), device=dev)
            n_epoch = 0
            batches = split.batches(batch_size, shuffle=True, augment=True, seed=seed * 1_000_003 + epoch,
                                    drop_last=drop_last)
            for step, (x, y) in enumerate(batches):
                if step >= per_epoch:
                    break
                y = require_labels(y, split, "fine-tuning")
                if len(y) < 2:
                    continue  # a user loader's last batch of one image: BatchNorm cannot train on it
                if check:
                    check_labels(y, n_logits)
                x = x.to(dev, non_blocking=True)
                y = y.to(dev, non_blocking=True)
                if use_cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(dev, use_amp):
                    out = model(x)
                if kd is not None:
                    loss = kd(out, x, y, label_smoothing=label_smoothing)
                else:
                    loss = F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                done += 1
                if callback is not None:
                    callback(done, total)
                loss_sum += loss.detach() * len(y)
                n_epoch += len(y)
                bar.update(len(y))
                if progress and step % 20 == 0:
                    bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.2g}")
            losses.append(float(loss_sum) / max(n_epoch, 1))
            seen += n_epoch
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
        bar.close()
    if use_cl:
        # Back to the default layout: graph surgery and state_dict consumers expect contiguous weights.
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    if not math.isfinite(losses[-1]):
        warnings.warn(f"fine-tuning diverged (loss {losses[-1]}); try a smaller lr than {lr}")
    return FinetuneResult(
        epochs=epochs, final_loss=losses[-1], losses=losses, images_per_s=seen / seconds if seconds > 0 else 0.0,
        seconds=seconds, images=seen, steps=epochs * per_epoch,
    )
