"""Fine-tuning, evaluation and BatchNorm recalibration: the inner loop of every search trial.

All three take ``data`` in any form of :data:`autoprune.data_adapter.DataLike`: a
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
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .data import StreamSplit, TensorSplit
from .data_adapter import DataLike, as_bundle, check_labels

__all__ = ["EvalResult", "FinetuneResult", "evaluate", "finetune", "recalibrate_bn"]

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


@dataclass
class EvalResult:
    """Top-1 ``accuracy`` in [0, 1], mean cross-entropy ``loss`` and number of images ``n``."""

    accuracy: float
    loss: float
    n: int


# --------------------------------------------------------------------------------------------------
# helpers


def _split_of(data: Any, split: str) -> Any:
    """The split ``split`` of ``data`` (a single Dataset/DataLoader/split serves every split name)."""
    return as_bundle(data).split(split)


def _labels(y: Tensor | None, sp: Any, what: str) -> Tensor:
    if y is None:
        raise ValueError(f"{getattr(sp, 'name', 'the data')} yields images without labels; {what} needs "
                         "(images, labels) pairs")
    return y


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _default_amp(device: torch.device, amp: bool | None) -> bool:
    if amp is not None:
        return bool(amp)
    # bf16 needs no loss scaling; on the CPU it is usually slower than fp32 and breaks exact reproducibility.
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


@contextlib.contextmanager
def _preserve_modes(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


def check_num_classes(model: nn.Module, split: Any, device: torch.device | None = None) -> int:
    """Raise ``ValueError`` unless ``model`` maps one input of ``split`` to ``split.num_classes`` logits (any width
    when the data does not know its class count); returns the number of logits."""
    device = device or _model_device(model)
    x = torch.zeros((2, *split.input_shape), device=device)
    # eval mode: a forward in train mode would update BatchNorm running stats just to check a shape.
    with _preserve_modes(model), torch.no_grad():
        model.eval()
        out = model(x)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"model must return (batch, num_classes) logits; got {shape} for input {tuple(x.shape)}")
    if split.num_classes is not None and out.shape[1] != split.num_classes:
        raise ValueError(
            f"model outputs {out.shape[1]} logits per image but the data has {split.num_classes} classes; "
            f"replace the classifier (e.g. its last nn.Linear) with one of {split.num_classes} outputs"
        )
    return int(out.shape[1])


def _lr_lambda(schedule: str, total: int) -> Any:
    if schedule == "constant":
        return lambda step: 1.0
    # Per-step cosine from lr to 0; the last step trains with a small but non-zero lr.
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


# --------------------------------------------------------------------------------------------------
# public API


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
    ``distill={"alpha": 0.5, "temperature": 4.0}`` by default (:class:`autoprune.distill.Distiller`; one teacher
    forward per batch in inference mode, bf16 on CUDA when ``amp``). The teacher is not changed.
    ``callback(steps_done, total_steps)`` is called before the first step (0) and after every step; it may raise to
    stop fine-tuning (early stopping of search trials, :mod:`autoprune.study.early_stopping`).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
    split = _split_of(data, "train")
    if len(split) == 0:
        raise ValueError("the train split is empty")
    dev = torch.device(device) if device is not None else (split.device or _model_device(model))
    use_amp = _default_amp(dev, amp)
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
        from .distill import Distiller

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

    from tqdm.auto import tqdm

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
                y = _labels(y, split, "fine-tuning")
                if len(y) < 2:
                    continue  # a user loader's last batch of one image: BatchNorm cannot train on it
                if check:
                    check_labels(y, n_logits)
                x = x.to(dev, non_blocking=True)
                y = y.to(dev, non_blocking=True)
                if use_cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                with _autocast(dev, use_amp):
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
    sp = _split_of(data, split)
    if len(sp) == 0:
        raise ValueError(f"the {split!r} split is empty (val_fraction=0?); evaluate on another split")
    dev = torch.device(device) if device is not None else (sp.device or _model_device(model))
    use_amp = _default_amp(dev, amp)
    model.to(dev)
    n_logits = check_num_classes(model, sp, dev)
    check = getattr(sp, "checks_labels", False)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    n = 0
    with _preserve_modes(model):
        model.eval()
        for x, y in sp.batches(batch_size):
            y = _labels(y, sp, "evaluation")
            if check:
                check_labels(y, n_logits)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with _autocast(dev, use_amp):
                out = model(x)
            out = out.float()
            loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            correct += (out.argmax(1) == y).sum()
            n += len(y)
    return EvalResult(accuracy=int(correct) / n, loss=float(loss_sum) / n, n=n)


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
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return model
    sp = _split_of(data, split)
    if len(sp) == 0:
        raise ValueError(f"the {split!r} split is empty")
    dev = _model_device(model)
    momenta = [m.momentum for m in bns]
    drop_last = len(sp) >= batch_size
    with _preserve_modes(model):
        try:
            model.eval()
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average: every batch weighs the same
                m.train()
            for i, (x, _) in enumerate(sp.batches(batch_size, shuffle=True, augment=augment, seed=seed,
                                                  drop_last=drop_last)):
                if i >= batches:
                    break
                if len(x) < 2:
                    continue  # a user loader's last batch of one image: BatchNorm cannot take statistics of it
                model(x.to(dev, non_blocking=True))
        finally:
            for m, mom in zip(bns, momenta):
                m.momentum = mom
    return model
