"""What the training loop, evaluation and distillation share: a model's device, bf16 autocast, modes kept, labels
required, the class-count check."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["autocast", "check_num_classes", "default_amp", "model_device", "preserve_modes", "require_labels"]


def require_labels(y: Tensor | None, sp: Any, what: str) -> Tensor:
    """``y``, or a ``ValueError`` naming ``sp`` when its batches carry no labels (``what`` needs them)."""
    if y is None:
        raise ValueError(f"{getattr(sp, 'name', 'the data')} yields images without labels; {what} needs "
                         "(images, labels) pairs")
    return y


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (else first buffer, else the CPU)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``amp``, else a no-op context."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def default_amp(device: torch.device, amp: bool | None) -> bool:
    """``amp`` as given, else on for CUDA with bf16 support."""
    if amp is not None:
        return bool(amp)
    # bf16 needs no loss scaling; on the CPU it is usually slower than fp32 and breaks exact reproducibility.
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


@contextlib.contextmanager
def preserve_modes(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval mode on exit."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, t in modes:
            m.training = t


def check_num_classes(model: nn.Module, split: Any, device: torch.device | None = None) -> int:
    """Raise ``ValueError`` unless ``model`` maps one input of ``split`` to ``split.num_classes`` logits (any width
    when the data does not know its class count); returns the number of logits."""
    device = device or model_device(model)
    x = torch.zeros((2, *split.input_shape), device=device)
    # eval mode: a forward in train mode would update BatchNorm running stats just to check a shape.
    with preserve_modes(model), torch.no_grad():
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
