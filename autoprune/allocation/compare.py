"""Criteria study (the methodology of Liu et al.): prune at fixed uniform ratios with each criterion, no
fine-tuning (optionally BN re-estimation), and compare validation accuracy. Tells users which criterion to pick."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..criteria import available_criteria, get_criterion
from ..data.adapter import DataLike, as_bundle, example_inputs_for, warn_if_not_held_out
from ..graph import ChannelGraph
from ..criteria.scoring import activation_scores, score_groups
from ..train import evaluate, recalibrate_bn

__all__ = ["compare_criteria", "CriteriaComparison", "CriteriaRow"]


@dataclass
class CriteriaRow:
    criterion: str
    ratio: float
    accuracy: float
    loss: float
    macs: int


@dataclass
class CriteriaComparison:
    base_accuracy: float
    base_macs: int
    rows: list[CriteriaRow] = field(default_factory=list)
    score_seconds: dict[str, float] = field(default_factory=dict)

    def ranking(self) -> list[tuple[str, float]]:
        """Criteria by mean accuracy over the ratios, best first."""
        acc: dict[str, list[float]] = {}
        for r in self.rows:
            acc.setdefault(r.criterion, []).append(r.accuracy)
        return sorted(((c, sum(v) / len(v)) for c, v in acc.items()), key=lambda kv: -kv[1])

    def table(self) -> str:
        """Markdown table: one row per criterion, one column per ratio (validation accuracy)."""
        ratios = sorted({r.ratio for r in self.rows})
        by = {(r.criterion, r.ratio): r for r in self.rows}
        head = "| criterion | " + " | ".join(f"acc @ {x:.0%} pruned" for x in ratios) + " | mean |"
        lines = [head, "|" + "---|" * (len(ratios) + 2)]
        for c, mean in self.ranking():
            cells = " | ".join(f"{by[(c, x)].accuracy:.2%}" for x in ratios)
            lines.append(f"| {c} | {cells} | {mean:.2%} |")
        macs = " | ".join(f"{next(r.macs for r in self.rows if r.ratio == x) / 1e6:.1f}M" for x in ratios)
        lines.append(f"| MACs | {macs} | (unpruned {self.base_macs / 1e6:.1f}M, {self.base_accuracy:.2%}) |")
        return "\n".join(lines)

    def plot(self, path: str) -> None:
        """Accuracy vs ratio, one line per criterion (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for c, _ in self.ranking():
            pts = sorted((r.ratio, r.accuracy) for r in self.rows if r.criterion == c)
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=c)
        ax.axhline(100 * self.base_accuracy, color="k", ls="--", lw=1, label="unpruned")
        ax.set_xlabel("fraction of every prunable group removed")
        ax.set_ylabel("validation accuracy (%) without fine-tuning")
        ax.legend(fontsize=8, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def compare_criteria(model: nn.Module, data: DataLike, criteria: Sequence[str] | None = None,
                     ratios: Sequence[float] = (0.3, 0.5, 0.7), *, recalibrate: bool = True, bn_batches: int = 10,
                     example_inputs: Any = None, score_batches: int = 5, seed: int = 0,
                     split: str = "val", progress: bool = True) -> CriteriaComparison:
    """Prune ``model`` uniformly at each ratio with each criterion and measure validation accuracy.

    Activation criteria are all scored in one pass over ``score_batches`` training batches. With ``recalibrate``,
    BatchNorm statistics are re-estimated on ``bn_batches`` batches (no weight changes) before evaluation.
    ``split`` is the split evaluated: the validation split carved from train by default; pass ``"test"`` when the
    checkpoint was trained on the whole train split (its val accuracy is then inflated). ``data`` takes the forms
    of :func:`autoprune.prune_to_budget`'s (a ``(train, val)`` pair of DataLoaders or Datasets, or a DataBundle).
    """

    criteria = list(criteria or available_criteria())
    data = as_bundle(data)
    warn_if_not_held_out(data, "compare_criteria")
    example_inputs = example_inputs_for(data, example_inputs, "compare_criteria")
    model = model.eval()
    graph = ChannelGraph(model.cpu(), example_inputs)
    names = [g.name for g in graph.prunable_groups]
    base = evaluate(model, data, split=split)
    out = CriteriaComparison(base.accuracy, graph.macs())
    scores: dict[str, dict[str, torch.Tensor]] = {}
    crits = {c: get_criterion(c, **({"seed": seed} if c == "random" else {})) for c in criteria}
    act = {c: k for c, k in crits.items() if k.kind == "activation"}
    if act:
        t = time.time()
        scores.update(activation_scores(graph, act, names, data, None, score_batches, 128, seed,
                                         data.num_classes, None))
        out.score_seconds["activation criteria (one pass)"] = time.time() - t
    for c, k in crits.items():
        if k.kind in ("weight", "gradient"):
            t = time.time()
            scores[c] = score_groups(graph, c, groups=names, seed=seed, data=data if k.kind == "gradient" else None,
                                     num_batches=score_batches)
            out.score_seconds[c] = time.time() - t
    jobs = [(c, r) for c in criteria for r in ratios]
    for c, r in tqdm(jobs, desc="criteria x ratios", disable=not progress):
        removal = graph.plan(r, scores[c])
        pruned = graph.prune_channels(removal)
        if recalibrate:
            recalibrate_bn(pruned, data, batches=bn_batches, seed=seed)
        ev = evaluate(pruned, data, split=split)
        out.rows.append(CriteriaRow(c, float(r), ev.accuracy, ev.loss, graph.macs(removal)))
    return out
