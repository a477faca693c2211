"""Repetitive pruning: reach a channel allocation in ``k`` prune -> fine-tune steps instead of one.

EZCrop's "robust output pruning" and HRank's layer-by-layer schedule both prune a little, fine-tune, score the
channels again on the partly pruned (and partly recovered) model, and prune again. :func:`repetitive_prune` does that
for any allocation: step ``j`` of ``k`` removes, in every group, the lowest-scoring channels of the current model until
``floor(j * count / k)`` of the group's ``count`` channels are gone (so the last step lands exactly on the allocation,
with the same MACs and parameters as one-shot pruning), re-estimates BatchNorm statistics and fine-tunes for ``1/k``
of the fine-tuning budget. Scores are recomputed on the current model before every step but the first (which may use
scores the caller already has, e.g. a sensitivity table's). :func:`autoprune.prune_to_budget` calls it for
``steps > 1``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from ..data.adapter import split_of
from ..criteria.scoring import score_groups
from ..train import evaluate, finetune, recalibrate_bn
from ..train.common import model_device
from .sensitivity_analysis import cpu_graph

__all__ = ["PruneStep", "repetitive_prune", "step_counts", "steps_per_epoch"]


@dataclass
class PruneStep:
    """One prune -> fine-tune step: channels removed so far per group, MACs after it, val accuracy right after
    pruning + BatchNorm re-estimation (``accuracy_pruned``) and after fine-tuning, fine-tuning images and seconds."""

    step: int
    removed: dict[str, int]
    macs: int
    accuracy_pruned: float | None
    accuracy: float | None
    images: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "macs": self.macs, "accuracy_pruned": self.accuracy_pruned,
                "accuracy": self.accuracy, "images": self.images, "seconds": self.seconds}


def step_counts(counts: Mapping[str, int], steps: int) -> list[dict[str, int]]:
    """Cumulative channels removed per group after each of ``steps`` steps: ``floor(j * count / steps)``."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 (prune -> fine-tune repetitions), got {steps!r}")
    return [{g: (int(c) * j) // steps for g, c in counts.items()} for j in range(1, steps + 1)]


def steps_per_epoch(data: Any, batch_size: int = 128, max_batches: int | None = None) -> int:
    """Optimizer steps per epoch :func:`autoprune.train.finetune` takes on ``data`` (mirrors its rule)."""
    split = split_of(data, "train")
    if hasattr(split, "num_batches"):
        per = split.num_batches() or int(max_batches or 0)
    else:
        per = len(split) // batch_size if len(split) >= batch_size else 1
    if max_batches is not None:
        per = max(1, min(per, int(max_batches)))
    return max(1, per)


def repetitive_prune(model: nn.Module, data: Any, counts: Mapping[str, int], *, criterion: str, steps: int,
                     example_inputs: Any, finetune_epochs: int = 1, finetune_kwargs: Mapping[str, Any] | None = None,
                     first_scores: Mapping[str, torch.Tensor] | None = None,
                     score_kwargs: Mapping[str, Any] | None = None, bn_batches: int = 5, seed: int = 0,
                     measure: bool = True, log: Callable[[str], None] | None = None,
                     ) -> tuple[nn.Module, list[PruneStep]]:
    """Prune ``model`` (untouched; a new model is returned) by ``counts`` ({group: channels to remove}) in ``steps``
    prune -> BatchNorm re-estimation -> fine-tune steps.

    The fine-tuning budget of one-shot pruning, ``finetune_epochs`` epochs of ``steps_per_epoch`` batches, is split
    evenly: each step fine-tunes ``finetune_epochs`` epochs of ``ceil(steps_per_epoch / steps)`` batches (a fresh
    cosine schedule, its own data order: seed ``seed + j``), so the total is the one-shot budget (rounded up by less
    than ``steps`` batches per epoch). ``finetune_kwargs`` go to every :func:`autoprune.train.finetune` call (lr,
    batch size, ``teacher``/``distill``...). ``measure`` evaluates val accuracy after each prune and each fine-tune
    (for the step records; it costs two evaluations per step).
    """

    log = log or (lambda s: None)
    plan = step_counts(counts, steps)
    fkw = dict(finetune_kwargs or {})
    bs = int(fkw.get("batch_size", 128))
    per_epoch = steps_per_epoch(data, bs, fkw.pop("max_batches", None))
    ft_seed = int(fkw.pop("seed", seed))
    step_batches = math.ceil(per_epoch / steps)
    dev = model_device(model)
    current = model
    done = {g: 0 for g in counts}
    records: list[PruneStep] = []
    for j, target in enumerate(plan):
        t0 = time.perf_counter()
        graph = cpu_graph(current, example_inputs)
        names = {g.name for g in graph.prunable_groups}
        lost = [g for g in counts if counts[g] and g not in names]
        if lost:
            raise ValueError(f"groups {lost} are no longer prunable after step {j}; pass counts for the groups of "
                             f"{type(model).__name__}'s channel graph")
        if j == 0 and first_scores is not None:
            scores = dict(first_scores)
        else:
            skw = {"seed": seed, **dict(score_kwargs or {})}
            scores = score_groups(graph, criterion, data=data, **skw)
        removal: dict[str, list[int]] = {}
        for g, n_total in target.items():
            n = n_total - done[g]
            if n <= 0:
                continue
            s = torch.as_tensor(scores[g], dtype=torch.float64).cpu()
            removal[g] = sorted(torch.sort(s, stable=True).indices[:n].tolist())
        macs = graph.macs(removal)
        current = graph.prune_channels(removal).to(dev)
        done = dict(target)
        recalibrate_bn(current, data, batches=bn_batches, seed=seed + j)
        acc_pruned = evaluate(current, data).accuracy if measure else None
        images = 0
        if finetune_epochs > 0:
            res = finetune(current, data, epochs=finetune_epochs, max_batches=step_batches, seed=ft_seed + j, **fkw)
            images = res.images
        acc = evaluate(current, data).accuracy if measure else None
        records.append(PruneStep(step=j + 1, removed=dict(done), macs=int(macs), accuracy_pruned=acc_pruned,
                                 accuracy=acc, images=images, seconds=time.perf_counter() - t0))
        log(f"step {j + 1}/{steps}: {macs:,} MACs, pruned {acc_pruned}, fine-tuned {acc}")
    return current, records
