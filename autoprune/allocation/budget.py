"""One call from a trained model to a pruned, fine-tuned model that meets a MAC/parameter budget.

>>> result = prune_to_budget(model, data, macs=0.5, criterion="ezcrop", allocation="sensitivity", finetune_epochs=2)
>>> result.model, result.ratios, result.accuracy, result.macs, result.params
>>> result.save("resnet56-half.pt")

Steps: channel scores (one pass) -> per-group ratios (:func:`autoprune.allocation.allocate`; with
``allocation="sensitivity"`` the sensitivity table of :func:`autoprune.sensitivity` is computed, or
loaded from its cache, first) -> physical pruning -> BatchNorm re-estimation -> fine-tuning -> evaluation.
``result.macs`` is measured with :func:`autoprune.count_macs` on the returned model.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..data.adapter import DataLike, as_bundle, example_inputs_for, warn_if_not_held_out
from ..graph.flops import count_macs, count_params
from ..deploy.files import save
from ..criteria.scoring import score_groups
from ..train import evaluate, finetune, recalibrate_bn
from ..train.common import model_device
from .dispatch import allocate
from .repetitive import repetitive_prune
from .result import Allocation
from .rounding import check_round_to, round_ratios
from .sensitivity_analysis import cpu_graph, sensitivity

__all__ = ["BudgetResult", "prune_to_budget"]


@dataclass
class BudgetResult:
    """What :func:`prune_to_budget` produced. Accuracies are top-1 fractions on the val split (``test_accuracy``
    on the test split when requested); ``macs`` (conv+linear, per sample) and ``params`` are measured on
    ``model``."""

    model: nn.Module
    ratios: Any  # autoprune.allocation.Allocation ({group: ratio} with .macs/.params/.target)
    accuracy: float
    loss: float
    macs: int
    params: int
    base_accuracy: float
    base_macs: int
    base_params: int
    accuracy_before_finetune: float | None = None
    test_accuracy: float | None = None
    criterion: str = ""
    allocation: str = ""
    sensitivity: Any = None
    finetune: Any = None
    seconds: dict[str, float] = field(default_factory=dict)
    prune_steps: list[Any] = field(default_factory=list)  # repetitive pruning: one PruneStep each

    def save(self, path: str | os.PathLike) -> Any:
        """Save the pruned model with :func:`autoprune.save` (no pickled code)."""
        return save(self.model, path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no model, no tables)."""
        ratios = self.ratios.to_dict() if hasattr(self.ratios, "to_dict") else dict(self.ratios)
        return {
            "criterion": self.criterion, "allocation": self.allocation, "ratios": ratios,
            "accuracy": self.accuracy, "loss": self.loss, "test_accuracy": self.test_accuracy,
            "accuracy_before_finetune": self.accuracy_before_finetune, "macs": self.macs, "params": self.params,
            "base_accuracy": self.base_accuracy, "base_macs": self.base_macs, "base_params": self.base_params,
            "seconds": self.seconds,
        }

    def summary(self) -> str:
        """Two lines: before/after accuracy, MACs and parameters."""
        test = f", test {100 * self.test_accuracy:.2f}%" if self.test_accuracy is not None else ""
        before = (f" (after pruning + BN re-estimation, before fine-tuning: {100 * self.accuracy_before_finetune:.2f}%)"
                  if self.accuracy_before_finetune is not None else "")
        return (f"{self.allocation} allocation, {self.criterion} criterion: val accuracy "
                f"{100 * self.base_accuracy:.2f}% -> {100 * self.accuracy:.2f}%{test}{before}\n"
                f"MACs {self.base_macs / 1e6:.2f}M -> {self.macs / 1e6:.2f}M "
                f"({100 * self.macs / self.base_macs:.1f}%), "
                f"params {self.base_params / 1e6:.3f}M -> {self.params / 1e6:.3f}M "
                f"({100 * self.params / self.base_params:.1f}%)")


def prune_to_budget(
    model: nn.Module,
    data: DataLike,
    macs: float | int | None = 0.5,
    criterion: str = "ezcrop",
    allocation: str | Mapping[str, float] = "sensitivity",
    finetune_epochs: int = 2,
    example_inputs: Any = None,
    sensitivity_kwargs: Mapping[str, Any] | None = None,
    finetune_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    *,
    params: float | int | None = None,
    allocate_kwargs: Mapping[str, Any] | None = None,
    score_kwargs: Mapping[str, Any] | None = None,
    bn_batches: int = 5,
    evaluate_test: bool = False,
    progress: bool = True,
    distill: bool | Mapping[str, float] | None = None,
    steps: int = 1,
    round_to: int = 1,
) -> BudgetResult:
    """Prune ``model`` (untouched; a new model is returned) to keep ``macs`` (and/or ``params``) and fine-tune it.

    ``macs``/``params``: fraction of the unpruned model's MACs/parameters to KEEP (float in (0, 1]) or an absolute
    count (int). ``allocation``: ``"sensitivity"``, ``"uniform"``, ``"global"``, ``"srr"`` (see :mod:`autoprune.allocate`) or an
    explicit {group: ratio} mapping (then no budget search; ``macs`` is ignored). ``criterion`` orders channels
    within a group (activation criteria use the train split). ``sensitivity_kwargs`` go to
    :func:`autoprune.sensitivity` (e.g. ``ratios``, ``eval_batches``, ``cache_dir``), ``finetune_kwargs``
    to :func:`autoprune.train.finetune` (e.g. ``lr``, ``max_batches``), ``allocate_kwargs`` to
    :func:`autoprune.allocation.allocate`, ``score_kwargs`` to :func:`autoprune.scoring.score_groups`.
    ``finetune_epochs=0`` only re-estimates BatchNorm statistics on ``bn_batches`` batches.

    ``distill``: ``True`` or ``{"alpha": .., "temperature": ..}`` fine-tunes with knowledge distillation from
    ``model`` (the unpruned model; :mod:`autoprune.train.distill`). ``steps=k > 1``: repetitive pruning
    (:func:`autoprune.allocation.repetitive.repetitive_prune`): the same allocation reached in ``k`` prune ->
    fine-tune steps, channel scores recomputed on the partly pruned model before each, the fine-tuning budget split
    evenly between them (same total); ``result.prune_steps`` records each step and ``accuracy_before_finetune`` is
    the accuracy after the first step's pruning.

    ``round_to=k``: every pruned group keeps a multiple of k channels (at least k; the budget still met; see
    :mod:`autoprune.allocation`); an explicit ``allocation`` mapping is rounded the same way
    (:func:`autoprune.allocation.round_ratios`).

    ``data``: a ``(train, val)`` pair of DataLoaders or Datasets of ``(image, label)`` (train: scores, BatchNorm
    statistics, fine-tuning; val: every accuracy), a ``(train, val, test)`` triple (``evaluate_test``), or a
    DataBundle from :func:`autoprune.load_data`. One DataLoader or Dataset alone serves both roles (with a warning:
    its accuracies are measured on training images). ``example_inputs`` defaults to zeros shaped like one input; one
    of another shape is refused (ValueError: the MACs would be those of inputs the model never sees).

    A model whose weights hold NaN or Inf is refused (:class:`~autoprune.graph.core.NonFiniteError` naming the
    tensors), and so are NaN scores from the criterion.
    """

    round_to = check_round_to(round_to)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    dev = model_device(model)
    data = as_bundle(data)
    warn_if_not_held_out(data, "prune_to_budget")
    example_inputs = example_inputs_for(data, example_inputs, "prune_to_budget")
    ex = tuple(x.to(dev) for x in example_inputs) if isinstance(example_inputs, (tuple, list)) \
        else example_inputs.to(dev)
    graph = cpu_graph(model, ex)  # surgery on the CPU; pruned models are moved to the model's device
    base = evaluate(model, data)
    base_macs = graph.macs()
    base_params = count_params(model)
    times["setup"] = time.perf_counter() - t0

    table = None
    t = time.perf_counter()
    if isinstance(allocation, str) and allocation == "sensitivity":
        skw = dict(sensitivity_kwargs or {})
        skw.setdefault("progress", progress)
        if score_kwargs:
            skw.setdefault("criterion_kwargs", dict(score_kwargs))
        table = sensitivity(model, data, criterion=criterion, example_inputs=ex, graph=graph, **skw)
        scores = {g: torch.tensor(v, dtype=torch.float64) for g, v in table.scores.items()}
        missing = [g.name for g in graph.prunable_groups if g.name not in scores]
        if missing:
            scores.update(score_groups(graph, criterion, data=data, groups=missing, **dict(score_kwargs or {})))
        times["sensitivity"] = time.perf_counter() - t
    else:
        skw = {"seed": seed, **dict(score_kwargs or {})}
        scores = score_groups(graph, criterion, data=data, **skw)
        times["scores"] = time.perf_counter() - t

    t = time.perf_counter()
    if isinstance(allocation, Mapping):
        if round_to > 1:
            resolved = graph.resolve_ratios(dict(allocation))
            allocation = round_ratios(resolved, {n: graph.group(n).channels for n in resolved}, round_to)
        removal = graph.plan(allocation, scores)
        counts = {g.name: len(removal.get(g.name, ())) for g in graph.prunable_groups}
        alloc = Allocation(
            {g.name: counts[g.name] / g.channels for g in graph.prunable_groups}, method="explicit",
            macs=graph.macs(removal), params=graph.macs(removal, params=True), base_macs=base_macs,
            base_params=graph.macs(params=True), target={"macs": None, "params": None}, remove=removal,
            counts=counts, info={"requested": dict(allocation)})
        method_name = "explicit"
    else:
        alloc = allocate(table if table is not None else graph, macs=macs, params=params, method=allocation,
                         graph=graph, scores=scores, **{"round_to": round_to, **dict(allocate_kwargs or {})})
        method_name = allocation
    times["allocate"] = time.perf_counter() - t

    before = None
    ft = None
    prune_steps: list[Any] = []
    fkw = {"seed": seed, "progress": progress, **dict(finetune_kwargs or {})}
    if distill:
        fkw.update(teacher=model, distill=None if distill is True else dict(distill))
    t = time.perf_counter()
    if steps != 1:

        pruned, prune_steps = repetitive_prune(
            model, data, alloc.counts, criterion=criterion, steps=steps, example_inputs=ex,
            finetune_epochs=finetune_epochs, finetune_kwargs=fkw, first_scores=scores, score_kwargs=score_kwargs,
            bn_batches=bn_batches, seed=seed)
        before = prune_steps[0].accuracy_pruned
    else:
        pruned = graph.prune_channels(alloc.remove)
        pruned.to(dev)
        recalibrate_bn(pruned, data, batches=bn_batches, seed=seed)
        if finetune_epochs > 0:
            before = evaluate(pruned, data).accuracy
            ft = finetune(pruned, data, epochs=finetune_epochs, **fkw)
    times["finetune"] = time.perf_counter() - t
    ev = evaluate(pruned, data)
    test_acc = evaluate(pruned, data, split="test").accuracy if evaluate_test else None
    pdev = model_device(pruned)
    ex_p = tuple(x.to(pdev) for x in ex) if isinstance(ex, tuple) else ex.to(pdev)
    measured = count_macs(pruned, ex_p)
    if measured != alloc.macs:
        warnings.warn(f"measured MACs {measured} differ from the allocation's accounting {alloc.macs}")
    times["total"] = time.perf_counter() - t0
    return BudgetResult(
        model=pruned, ratios=alloc, accuracy=ev.accuracy, loss=ev.loss, macs=int(measured),
        params=count_params(pruned), base_accuracy=base.accuracy, base_macs=int(base_macs),
        base_params=int(base_params), accuracy_before_finetune=before, test_accuracy=test_acc,
        criterion=criterion, allocation=method_name, sensitivity=table, finetune=ft, seconds=times,
        prune_steps=prune_steps,
    )
