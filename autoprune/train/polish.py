"""The final polish of a chosen pruned model: a longer fine-tune, with distillation from the unpruned model by default.

A search's trials fine-tune briefly, enough to rank pruned models; the model a user deploys deserves more. The front
chooses it (:class:`autoprune.study.ParetoFront`), :func:`polish` trains it: ``epochs`` epochs of SGD with a cosine
schedule from ``lr``, the loss mixed with the teacher's softened predictions (:mod:`autoprune.train.distill`) unless
``distill=False``, then val and test accuracy. ``ParetoFront.polish`` and ``autoprune export --finetune-epochs E``
rebuild a trial's model and call it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch.nn as nn

from ..data.adapter import split_of
from .distill import DistillOptions
from .evaluation import evaluate
from .loop import finetune

__all__ = ["PolishResult", "polish"]


@dataclass
class PolishResult:
    """The polished ``model`` (trained in place) and its accuracies before and after (top-1 fractions; test only
    when the data has a test split)."""

    model: nn.Module
    epochs: int
    distill: dict[str, float] | None
    val_before: float
    val_accuracy: float
    test_before: float | None = None
    test_accuracy: float | None = None
    finetune: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        fr = self.finetune
        return {"epochs": self.epochs, "distill": self.distill, "val_before": self.val_before,
                "val_accuracy": self.val_accuracy, "test_before": self.test_before,
                "test_accuracy": self.test_accuracy, "finetune_images": getattr(fr, "images", None),
                "finetune_seconds": getattr(fr, "seconds", None), **self.extra}

    def summary(self) -> str:
        how = (f"distillation alpha {self.distill['alpha']:g}, T {self.distill['temperature']:g}" if self.distill
               else "labels only")
        test = (f"; test {self.test_before:.2%} -> {self.test_accuracy:.2%}" if self.test_accuracy is not None
                and self.test_before is not None else "")
        return f"polished {self.epochs} epoch(s) ({how}): val {self.val_before:.2%} -> {self.val_accuracy:.2%}{test}"


def _has_test(data: Any) -> bool:
    try:
        return len(split_of(data, "test")) > 0
    except (ValueError, KeyError, AttributeError, TypeError):
        return False


def polish(model: nn.Module, data: Any, *, epochs: int, teacher: nn.Module | None = None,
           distill: bool | Mapping[str, float] | None = True, lr: float = 0.01, batch_size: int = 128,
           seed: int = 0, progress: bool = True, finetune_kwargs: Mapping[str, Any] | None = None) -> PolishResult:
    """Fine-tune ``model`` in place for ``epochs`` epochs and report val (and test) accuracy before and after.

    ``teacher``: the unpruned model; with ``distill`` (``True`` = alpha 0.5, T 4, or ``{"alpha", "temperature"}``)
    the loss distils from it. ``distill=False`` or no teacher: labels only. ``finetune_kwargs`` go to
    :func:`autoprune.train.finetune` (``max_batches``, ``schedule``, ``weight_decay``...)."""
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"polish epochs must be an integer >= 1, got {epochs!r}")
    use_kd = bool(distill) and teacher is not None
    if distill and teacher is None and distill is not True:
        raise ValueError("distill options were given without a teacher; pass teacher= (the unpruned model)")
    opts = DistillOptions.of(None if distill is True else distill) if use_kd else None
    has_test = _has_test(data)
    val_before = evaluate(model, data).accuracy
    test_before = evaluate(model, data, split="test").accuracy if has_test else None
    kw = {"lr": lr, "batch_size": batch_size, "seed": seed, "progress": progress, **dict(finetune_kwargs or {})}
    if use_kd:
        kw.update(teacher=teacher, distill={"alpha": opts.alpha, "temperature": opts.temperature})
    res = finetune(model, data, epochs=epochs, **kw)
    return PolishResult(
        model=model.eval(), epochs=epochs,
        distill={"alpha": float(opts.alpha), "temperature": float(opts.temperature)} if opts else None,
        val_before=val_before, val_accuracy=evaluate(model, data).accuracy, test_before=test_before,
        test_accuracy=evaluate(model, data, split="test").accuracy if has_test else None, finetune=res)
