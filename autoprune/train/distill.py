"""Knowledge distillation from the unpruned model while a pruned model is fine-tuned.

The loss is Hinton et al.'s (2015): the KL divergence between the teacher's and the student's
temperature-softened class distributions, scaled by ``T**2`` (so its gradients keep their size when the
temperature changes), mixed with the label loss::

    loss = (1 - alpha) * cross_entropy(student, labels) + alpha * T**2 * KL(softmax(t / T) || softmax(s / T))

The teacher is the model before pruning: same architecture, same training, so its soft targets are exactly
what the pruned student has to recover. :class:`Distiller` is what :func:`autoprune.train.finetune` calls
once per batch: one teacher forward in inference mode (bf16 autocast on CUDA) on the same augmented batch
the student sees. Caching teacher logits per image would only be exact for un-augmented passes, and the
default loop augments every batch (random crop + flip), so the forward is paid per batch; its cost is
measured in docs/finetune.md.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .common import model_device  # the train loop's own rule for a model's device

__all__ = ["DistillOptions", "Distiller", "distillation_loss", "kd_loss"]


@dataclass(frozen=True)
class DistillOptions:
    """``alpha``: weight of the distillation term in [0, 1] (0 = labels only, 1 = teacher only);
    ``temperature``: softening temperature (> 0)."""

    alpha: float = 0.5
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= float(self.alpha) <= 1.0):
            raise ValueError(f"distill alpha must be a number in [0, 1] (weight of the teacher's term), "
                             f"got {self.alpha!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ValueError(f"distill temperature must be a positive number (e.g. 4.0), got {self.temperature!r}")

    @classmethod
    def of(cls, spec: "DistillOptions | Mapping[str, Any] | bool | None") -> "DistillOptions":
        """Options from ``None``/``True`` (defaults), a mapping with ``alpha``/``temperature``, or options."""
        if spec is None or spec is True:
            return cls()
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - {"alpha", "temperature"})
            if unknown:
                raise ValueError(f"unknown distill option(s) {unknown}; the options are 'alpha' and 'temperature'")
            return cls(**{k: spec[k] for k in ("alpha", "temperature") if k in spec})
        raise TypeError(f"distill options must be a mapping {{alpha, temperature}}, got {type(spec).__name__}")


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch (zero when the
    logits are equal). Computed in float32 whatever the autocast dtype."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape; the teacher must have the same classes")
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *, alpha: float = 0.5,
                      temperature: float = 4.0, label_smoothing: float = 0.0) -> Tensor:
    """``(1 - alpha) * cross_entropy + alpha * kd_loss`` (see the module docstring)."""
    ce = F.cross_entropy(student_logits.float(), labels, label_smoothing=label_smoothing)
    if alpha == 0.0:
        return ce
    kd = kd_loss(student_logits, teacher_logits, temperature)
    return kd if alpha == 1.0 else (1.0 - alpha) * ce + alpha * kd


class Distiller:
    """The distillation loss of one fine-tuning run: holds the teacher and its options.

    >>> kd = Distiller(unpruned_model, alpha=0.5, temperature=4.0)
    >>> with kd.attached(device, amp=False):
    ...     loss = kd(student(x), x, y)            # one teacher forward in inference mode + the mixed loss

    The teacher is never trained and never changed: :meth:`attached` puts it in eval mode (restored on exit)
    and, when it lives on another device than the student, uses a copy on the student's device.
    """

    def __init__(self, teacher: nn.Module, *, alpha: float = 0.5, temperature: float = 4.0) -> None:
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module (the unpruned model), got {type(teacher).__name__}")
        self.options = DistillOptions(alpha=alpha, temperature=temperature)
        self.teacher = teacher
        self._active: nn.Module | None = None
        self._device = torch.device("cpu")
        self._amp = False
        self._channels_last = False

    @classmethod
    def of(cls, teacher: nn.Module, options: DistillOptions | Mapping[str, Any] | bool | None = None) -> "Distiller":
        o = DistillOptions.of(options)
        return cls(teacher, alpha=o.alpha, temperature=o.temperature)

    @property
    def alpha(self) -> float:
        return float(self.options.alpha)

    @property
    def temperature(self) -> float:
        return float(self.options.temperature)

    def __repr__(self) -> str:
        return f"Distiller({type(self.teacher).__name__}, alpha={self.alpha}, temperature={self.temperature})"

    @contextlib.contextmanager
    def attached(self, device: str | torch.device | None = None, *, amp: bool = False,
                 channels_last: bool = False) -> Iterator["Distiller"]:
        """Make the teacher ready for batches on ``device``: eval mode, no gradients, bf16 autocast if ``amp``."""
        dev = torch.device(device) if device is not None else model_device(self.teacher)
        teacher = self.teacher
        if model_device(teacher) != dev:
            teacher = copy.deepcopy(teacher).to(dev)  # the caller's model stays where it is
            if channels_last:
                teacher.to(memory_format=torch.channels_last)
        modes = [(m, m.training) for m in teacher.modules()]
        teacher.eval()
        self._active, self._device, self._amp, self._channels_last = teacher, dev, bool(amp), bool(channels_last)
        try:
            yield self
        finally:
            for m, t in modes:
                m.training = t
            self._active = None

    def teacher_logits(self, x: Tensor) -> Tensor:
        """The teacher's logits for ``x`` (float32, no autograd history)."""
        if self._active is None:
            with self.attached(x.device):
                return self.teacher_logits(x)
        amp = torch.autocast(device_type=self._device.type, dtype=torch.bfloat16) if self._amp \
            else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            out = self._active(x)
        if not isinstance(out, Tensor):
            raise ValueError(f"the teacher must return a logits tensor, got {type(out).__name__}")
        # Inference tensors cannot be saved for backward; a plain float32 copy of (batch, classes) is cheap.
        return out.float().clone()

    def __call__(self, student_logits: Tensor, x: Tensor, labels: Tensor, *, label_smoothing: float = 0.0) -> Tensor:
        """The mixed loss of a batch: ``x`` is the (augmented) input the student saw, ``labels`` its classes."""
        teacher = self.teacher_logits(x) if self.alpha > 0.0 else student_logits.detach()
        return distillation_loss(student_logits, teacher, labels, alpha=self.alpha, temperature=self.temperature,
                                 label_smoothing=label_smoothing)
