"""Feed activation criteria from forward hooks: one pass over the data scores every hook point.

>>> relus = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.ReLU)}
>>> scores = collect_activation_scores(model, relus, ["hrank", "tt", "snr"], loader, num_classes=10)
>>> scores["layer1.0.relu1"]["hrank"]   # float64 [C]
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from .accumulators import ActivationStats, CriteriaSpec, compute_label_range

__all__ = ["ActivationRecorder", "collect_activation_scores"]


class ActivationRecorder:
    """Forward hooks that fold each hooked module's output (or input) into an :class:`ActivationStats`.

    Use as a context manager (hooks are removed on exit). Before each forward pass that needs labels call
    :meth:`set_labels`. A module that runs twice in one forward pass would mix two different maps; this is
    detected (``RuntimeError``) whenever :meth:`set_labels` marks the batches.

    ``point``: ``"output"`` (default) hooks the module's output, ``"input"`` its first input.
    """

    def __init__(self, modules: Mapping[str, nn.Module], criteria: CriteriaSpec, *,
                 num_classes: int | None = None, device: torch.device | str | None = None,
                 point: str = "output") -> None:
        if point not in ("output", "input"):
            raise ValueError(f"point must be 'output' or 'input', got {point!r}")
        if not modules:
            raise ValueError("no modules to hook")
        self.modules = dict(modules)
        self.point = point
        self.stats: dict[str, ActivationStats] = {
            name: ActivationStats(criteria, num_classes=num_classes, device=device) for name in self.modules}
        self.labels: Tensor | None = None
        self._label_range: tuple[Tensor | None, tuple[int, int] | None] = (None, None)  # (labels, their range)
        self._batch = 0
        self._seen: dict[str, int] = {}
        self._handles: list[Any] = []

    def set_labels(self, labels: Tensor | None) -> None:
        """Labels ``[N]`` of the next forward pass's batch (None when no criterion needs them)."""
        self.labels = None if labels is None else torch.as_tensor(labels)
        # (min, max) once per batch, shared by every hooked module (one synchronisation per batch, not per hook)
        self._label_range = (self.labels, compute_label_range(self.labels))
        self._batch += 1

    def _hook(self, name: str):
        stats = self.stats[name]

        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            fmap = output if self.point == "output" else inputs[0]
            if isinstance(fmap, (tuple, list)):
                fmap = fmap[0]
            if self._batch:
                if self._seen.get(name) == self._batch:
                    raise RuntimeError(f"module {name!r} ran twice in one forward pass; hook a module that runs "
                                       "once (e.g. a separate nn.ReLU instance)")
                self._seen[name] = self._batch
            labels = self.labels
            of, label_range = self._label_range
            if labels is not of:  # labels assigned without set_labels
                label_range = compute_label_range(labels)
            if labels is not None and isinstance(fmap, Tensor) and labels.device != fmap.device:
                labels = self.labels = labels.to(fmap.device)  # move once per batch, not once per hook
            self._label_range = (labels, label_range)
            stats.update(fmap.detach(), labels, label_range=label_range)

        return hook

    def attach(self) -> "ActivationRecorder":
        """Register the forward hooks."""
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def detach(self) -> None:
        """Remove the forward hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "ActivationRecorder":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def finalize(self) -> dict[str, dict[str, Tensor]]:
        """``{module name: {criterion label: float64 scores [C]}}``."""
        return {name: st.finalize() for name, st in self.stats.items()}


def collect_activation_scores(model: nn.Module, modules: Mapping[str, nn.Module], criteria: CriteriaSpec,
                              batches: Iterable, *, num_classes: int | None = None,
                              device: torch.device | str | None = None, point: str = "output",
                              max_batches: int | None = None) -> dict[str, dict[str, Tensor]]:
    """Run ``model`` (eval mode, no grad) over ``batches`` of ``(inputs, labels)`` (or bare inputs) and score the
    channels of every module in ``modules`` with ``criteria`` in one pass.

    ``device``: where inputs are moved (default: the model's parameters' device). The model's train/eval mode is
    restored afterwards.
    """
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with ActivationRecorder(modules, criteria, num_classes=num_classes, point=point) as rec, torch.no_grad():
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                if isinstance(batch, (tuple, list)):
                    x, y = batch[0], (batch[1] if len(batch) > 1 else None)
                else:
                    x, y = batch, None
                rec.set_labels(None if y is None else torch.as_tensor(y).to(device, non_blocking=True))
                model(x.to(device, non_blocking=True))
        return rec.finalize()
    finally:
        model.train(was_training)
