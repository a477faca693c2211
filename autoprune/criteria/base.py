"""Base classes shared by every channel-importance criterion.

Convention everywhere in :mod:`autoprune.criteria`: a criterion returns one float64 score per channel and a
**higher score means more important** (kept); pruning removes the lowest scores (stable sort).

Two kinds exist:

* :class:`WeightCriterion` (``kind == "weight"``) scores the output channels of a weight tensor with
  :meth:`WeightCriterion.score_weight`.
* :class:`~autoprune.criteria.gradient.GradientCriterion` (``kind == "gradient"``, ``taylor``) scores the output
  channels of a layer from its weight and the loss's gradient on labelled mini-batches;
* :class:`ActivationCriterion` (``kind == "activation"``) scores the channels of a feature map from streamed
  batches: ``state = crit.init(...)``, ``crit.update(state, fmap, labels)`` for every batch,
  ``crit.finalize(state)``. The state is an :class:`Accumulator` of bounded size (independent of the number of
  images). Criteria whose :meth:`ActivationCriterion.accumulator_key` are equal can share one accumulator
  (see :class:`autoprune.criteria.ActivationStats`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Hashable

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["Criterion", "WeightCriterion", "ActivationCriterion", "Accumulator", "as_nchw", "filter_weight"]


def as_nchw(fmap: Tensor) -> Tensor:
    """Return ``fmap`` as a detached ``[N, C, H, W]`` tensor; ``[N, C]`` (Linear outputs) becomes ``[N, C, 1, 1]``."""
    if not isinstance(fmap, Tensor):
        raise TypeError(f"feature map must be a torch.Tensor, got {type(fmap).__name__}")
    if fmap.dim() == 2:
        fmap = fmap[:, :, None, None]
    elif fmap.dim() != 4:
        raise ValueError(f"feature map must be [N, C, H, W] or [N, C], got shape {tuple(fmap.shape)}")
    return fmap.detach()


def filter_weight(module_or_weight: nn.Module | Tensor, grad: bool = False) -> Tensor:
    """The weight of a module laid out with output channels first: ``[out, in/groups, *kernel]``.

    ConvTranspose weights (stored ``[in, out/groups, *k]``) are regrouped; Linear gives ``[out, in]``; a 1-D weight
    (e.g. a norm layer's scale) gives ``[C]``; ``nn.MultiheadAttention`` its q, k, v rows. A tensor is returned
    detached and unchanged. ``grad=True``: the gradient of that weight, laid out the same way (zeros if none).
    """
    if isinstance(module_or_weight, Tensor):
        return module_or_weight.detach()
    if isinstance(module_or_weight, nn.MultiheadAttention):  # its q, k, v rows (zero-padded to one input width)
        return _qkv_rows(module_or_weight, grad)
    weight = getattr(module_or_weight, "weight", None)
    if not isinstance(weight, Tensor):
        raise TypeError(f"{type(module_or_weight).__name__} has no weight tensor to score")
    w = _value(weight, grad)
    if isinstance(module_or_weight, nn.modules.conv._ConvTransposeNd):
        g = module_or_weight.groups
        cin, cout_g = w.shape[:2]
        k = w.shape[2:]
        w = w.reshape(g, cin // g, cout_g, *k).transpose(1, 2).reshape(g * cout_g, cin // g, *k)
    return w


def _value(t: Tensor, grad: bool) -> Tensor:
    """``t`` detached, or its gradient (zeros when it has none)."""
    if not grad:
        return t.detach()
    return t.grad.detach() if t.grad is not None else torch.zeros_like(t, requires_grad=False)


def _qkv_rows(m: nn.MultiheadAttention, grad: bool = False) -> Tensor:
    if m.in_proj_weight is not None:
        return _value(m.in_proj_weight, grad)
    ws = [_value(w, grad) for w in (m.q_proj_weight, m.k_proj_weight, m.v_proj_weight)]
    width = max(w.shape[1] for w in ws)
    return torch.cat([torch.nn.functional.pad(w, (0, width - w.shape[1])) for w in ws])


class Criterion:
    """A channel-importance criterion (higher score = more important = kept).

    Subclasses are dataclasses whose fields are the criterion's parameters.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    needs_labels: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        """The criterion's parameters (its dataclass fields) as a dict."""
        if dataclasses.is_dataclass(self):
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {}


class WeightCriterion(Criterion):
    """Scores the output channels of a weight tensor; no data needed."""

    kind: ClassVar[str] = "weight"

    def score_weight(self, module_or_weight: torch.nn.Module | Tensor, name: str | None = None) -> Tensor:
        """Score the output channels of a module (Conv, ConvTranspose, Linear, norm) or a weight tensor.

        ``name`` (the module's name) is only used by criteria that need a per-layer identity (``random``).
        Returns a float64 CPU tensor ``[out_channels]``.
        """
        weight = filter_weight(module_or_weight)
        return self.score_tensor(weight, name=name)

    def score_tensor(self, weight: Tensor, name: str | None = None) -> Tensor:
        """Score a weight already laid out as ``[out, in/groups, *kernel]`` (or ``[out, in]``, ``[out]``)."""
        raise NotImplementedError


class Accumulator:
    """Bounded-memory running statistics of one hook point, updated batch by batch.

    Tensors are allocated on the first :meth:`update` (on ``device`` if given at construction, else on the
    device of that first feature map); later feature maps are moved there if they live elsewhere.
    """

    needs_labels: ClassVar[bool] = False

    def __init__(self, channels: int | None = None, num_classes: int | None = None,
                 device: torch.device | str | None = None) -> None:
        self.channels = channels
        self.num_classes = num_classes
        self.device = torch.device(device) if device is not None else None
        self.num_images = 0

    # -- helpers for subclasses -------------------------------------------------------------------------
    def _prepare(self, fmap: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        fmap = as_nchw(fmap)
        if self.device is None:
            self.device = fmap.device
        elif fmap.device != self.device:
            fmap = fmap.to(self.device)
        c = fmap.shape[1]
        if self.channels is None:
            self.channels = c
        elif c != self.channels:
            raise ValueError(f"feature map has {c} channels, accumulator was built for {self.channels}")
        if self.needs_labels:
            if labels is None:
                raise ValueError(f"{type(self).__name__} needs class labels (got labels=None)")
            labels = torch.as_tensor(labels).to(self.device)
            if labels.dim() != 1 or labels.shape[0] != fmap.shape[0]:
                raise ValueError(f"labels must be [N] with N={fmap.shape[0]}, got shape {tuple(labels.shape)}")
            if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
                raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
            labels = labels.long()
        return fmap, labels

    def update(self, fmap: Tensor, labels: Tensor | None = None) -> None:
        """Fold one batch ``fmap`` ([N, C, H, W] or [N, C]) with optional ``labels`` [N] into the statistics."""
        raise NotImplementedError


class ActivationCriterion(Criterion):
    """Scores channels from streamed feature maps through an :class:`Accumulator`."""

    kind: ClassVar[str] = "activation"
    #: Where the criterion reads its maps by default: "act" (after the activation, e.g. ReLU), "conv" (the conv /
    #: linear output) or "bn" (the BatchNorm output). EZCrop: "conv"; all other built-ins: "act".
    default_hook: ClassVar[str] = "act"
    #: Needs 2-D feature maps per channel (HRank's rank, EZCrop's spectrum)? Then it refuses channels that are token
    #: widths (``[B, N, C]``: a transformer's MLP or head width), whose map per channel is a sequence.
    needs_maps: ClassVar[bool] = False

    def accumulator_key(self) -> Hashable:
        """Criteria returning equal keys can share one accumulator (one set of statistics per hook point)."""
        return (type(self).__name__, tuple(sorted(self.params().items())))

    def init(self, channels: int | None = None, num_classes: int | None = None,
             device: torch.device | str | None = None) -> Accumulator:
        """Create the empty streaming state (an :class:`Accumulator`)."""
        raise NotImplementedError

    def update(self, state: Accumulator, fmap: Tensor, labels: Tensor | None = None) -> None:
        """Fold one batch into ``state`` (no feature map is stored)."""
        with torch.no_grad():
            state.update(fmap, labels)

    def finalize(self, state: Accumulator) -> Tensor:
        """Scores ``[C]`` (float64, on the state's device) from the accumulated state; non-destructive."""
        raise NotImplementedError
