"""Gradient criteria: ``taylor``, the first-order Taylor importance of a filter (Molchanov et al. 2019, "Importance
Estimation for Neural Network Pruning", the weight variant): per output channel, ``(sum over its weights of w *
dL/dw)^2`` on each mini-batch of cross-entropy, averaged over the batches. It needs labelled data and one backward
pass per batch; it reads the weights (and their gradients) of the layers that produce a group's channels, so it
scores token widths and whole heads (their q, k, v rows) as it scores conv filters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .base import Criterion, filter_weight
from .registry import register_criterion

__all__ = ["GradientCriterion", "TaylorCriterion", "gradient_module_scores"]


class GradientCriterion(Criterion):
    """Scores the output channels of a layer from its weight and the gradient of the loss on a mini-batch."""

    kind: ClassVar[str] = "gradient"
    needs_labels: ClassVar[bool] = True

    def score_pair(self, weight: Tensor, grad: Tensor) -> Tensor:
        """Per-output-channel scores ``[out]`` of one mini-batch (weight and gradient laid out ``[out, ...]``)."""
        raise NotImplementedError


@dataclass(frozen=True)
class TaylorCriterion(GradientCriterion):
    """First-order Taylor importance of a filter: ``(sum(w * g))^2`` per mini-batch, averaged over the batches."""

    name: ClassVar[str] = "taylor"

    def score_pair(self, weight: Tensor, grad: Tensor) -> Tensor:
        return (weight.double() * grad.double()).reshape(weight.shape[0], -1).sum(1).pow(2)


def gradient_module_scores(model: nn.Module, modules: list[str], crit: GradientCriterion,
                           batches: Iterable[tuple[Tensor, Tensor | None]], device: torch.device,
                           source: str) -> dict[str, Tensor]:
    """{module: float64 CPU scores [out rows]} of ``crit`` on ``model`` (eval mode: BatchNorm statistics and
    dropout as at inference), averaged over ``batches`` of (images, labels). ``source`` names the data in errors."""
    mods = {m: model.get_submodule(m) for m in modules}
    for p in model.parameters():
        p.requires_grad_(True)
    total: dict[str, Tensor] = {}
    n = 0
    for x, y in batches:
        if y is None:
            raise ValueError(f"criterion {crit.name!r} needs labels (it differentiates the classification loss), "
                             f"but {source} yields images alone; pass (images, labels) batches")
        model.zero_grad(set_to_none=True)
        out = model(x.to(device))
        F.cross_entropy(out[0] if isinstance(out, (tuple, list)) else out, y.to(device)).backward()
        for name, m in mods.items():
            s = crit.score_pair(filter_weight(m), filter_weight(m, grad=True)).cpu()
            total[name] = total[name] + s if name in total else s
        n += 1
    if not n:
        raise ValueError(f"criterion {crit.name!r}: {source} gave no batch")
    return {k: v / n for k, v in total.items()}


register_criterion(TaylorCriterion.name, TaylorCriterion, overwrite=True)
