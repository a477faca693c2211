"""What one search trial works on, built once per process: data, base model, channel graph, criterion scores.

:class:`Problem` is shared by the trials of a search and by :meth:`ParetoFront.export`, which rebuilds a trial's
model with exactly the same steps (same scores, same removal, same fine-tuning seed), so an exported model
reproduces the trial's accuracy (bit for bit on the CPU).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from ..allocation.sensitivity_analysis import sensitivity
from ..build import build, sensitivity_options
from ..config import SearchConfig
from ..graph import ChannelGraph
from ..criteria.scoring import score_groups
from ..train import evaluate, finetune, recalibrate_bn
from .speed import RemovalLatency, latency_attrs, latency_settings, wants_latency

__all__ = ["Problem", "TrialOutcome"]


@dataclass
class TrialOutcome:
    """Measurements of one pruned (and usually fine-tuned) model."""

    accuracy: float
    loss: float
    macs: int
    params: int
    macs_fraction: float
    params_fraction: float
    finetuned: bool
    finetune_seconds: float
    seconds: float


class Problem:
    """Data, base model, channel graph and cached criterion scores for one search config."""

    def __init__(self, cfg: SearchConfig, *, log: Callable[[str], None] | None = None,
                 progress: bool = False) -> None:
        self.cfg = cfg
        self.log = log or (lambda s: None)
        self.progress = progress
        built = build(cfg, log=self.log, progress=progress)  # the builder every command uses
        self.data, self.base_model, self.example_inputs = built.data, built.model, built.example_inputs
        self.graph = ChannelGraph(self.base_model, self.example_inputs)
        self.group_names = [g.name for g in self.graph.prunable_groups]
        self.base_macs = self.graph.macs()
        self.base_params = self.graph.macs(params=True)
        self._scores: dict[str, dict[str, torch.Tensor]] = {}
        self._sens: Any = None
        self._base_eval: dict[str, float] | None = None
        self._latency: RemovalLatency | None = None
        self._teacher: nn.Module | None = None

    def base_metrics(self) -> dict[str, float]:
        """Accuracy, loss, MACs and parameters of the unpruned model on the evaluation split."""
        if self._base_eval is None:
            model = copy.deepcopy(self.base_model)
            ev = evaluate(model, self.data, split=self.cfg.data.eval_split)
            self._base_eval = {"accuracy": ev.accuracy, "loss": ev.loss, "macs": self.base_macs,
                               "params": self.base_params}
            if wants_latency(self.cfg):  # the unpruned model's speed, for the speed-up of the front's members
                lat = self.latency({})
                self._base_eval.update(latency_ms=lat.median_ms, latency_iqr_ms=lat.iqr_ms)
        return self._base_eval

    # -- scores and plans ------------------------------------------------------------------------------------
    def scores(self, criterion: str) -> dict[str, torch.Tensor]:
        """Scores of every prunable group's channels on the *base* model (computed once per criterion)."""
        if criterion not in self._scores:
            t0 = time.perf_counter()
            s = self.cfg.scoring
            self._scores[criterion] = score_groups(
                self.graph, criterion, data=self.data, groups=self.group_names, num_batches=s.num_batches,
                batch_size=s.batch_size, seed=self.cfg.seed, num_classes=self.data.num_classes,
                device=self.data.device)
            self.log(f"scores: {criterion} ({time.perf_counter() - t0:.1f} s)")
        return self._scores[criterion]

    def removal(self, ratios: Mapping[str, float], criterion: str) -> dict[str, list[int]]:
        return self.graph.plan(dict(ratios), self.scores(criterion))

    def measure(self, removal: Mapping[str, Any]) -> dict[str, Any]:
        """MACs and parameters of a removal (counts and fractions of the base model); with a latency objective or
        constraint also its measured latency (:data:`autoprune.study.speed.LATENCY_ATTRS` and ``latency_setup``)."""
        macs = self.graph.macs(removal)
        params = self.graph.macs(removal, params=True)
        out: dict[str, Any] = {"macs": int(macs), "params": int(params), "macs_fraction": macs / self.base_macs,
                               "params_fraction": params / self.base_params}
        if wants_latency(self.cfg):
            out.update(latency_attrs(self.latency(removal)))
        return out

    def latency(self, removal: Mapping[str, Any], sha: str | None = None) -> Any:
        """Measured latency (:class:`autoprune.deploy.latency.Latency`) of the base model pruned by ``removal``, with
        the config's ``latency`` settings; cached by the removal digest in memory and in
        ``<run_dir>/latency.json``."""
        if self._latency is None:
            self._latency = RemovalLatency(self.graph, self.example_inputs, latency_settings(self.cfg),
                                           self.cfg.run_path / "latency.json")
        return self._latency(removal, sha)

    def macs_fraction_at(self, ratios: Mapping[str, float]) -> float:
        """MAC fraction kept at ``ratios`` (channel counts only: the criterion does not change MACs)."""
        zeros = {n: torch.zeros(self.graph.group(n).channels) for n in ratios}
        return self.graph.macs(self.graph.plan(dict(ratios), zeros)) / self.base_macs

    def sensitivity_table(self) -> Any:
        """Sensitivity table for guided allocation (``autoprune.sensitivity``, cached on disk by that module)."""
        if self._sens is None:
            opts = sensitivity_options(self.cfg)
            opts.setdefault("progress", self.progress)
            t0 = time.perf_counter()
            self._sens = sensitivity(self.base_model, self.data, example_inputs=self.example_inputs, graph=self.graph,
                                     **opts)
            self.log(f"sensitivity table ({time.perf_counter() - t0:.1f} s)")
        return self._sens

    # -- one trial -------------------------------------------------------------------------------------------
    def teacher(self) -> nn.Module:
        """The unpruned model on the data's device, for distillation (``finetune.distill``); one copy per process."""
        if self._teacher is None:
            self._teacher = copy.deepcopy(self.base_model).to(self.data.device).eval()
        return self._teacher

    def distill_kwargs(self) -> dict[str, Any]:
        """``teacher=``/``distill=`` of :func:`autoprune.train.finetune` per ``finetune.distill`` (empty when off)."""
        d = self.cfg.finetune.distill
        if d is None or not d.enabled:
            return {}
        return {"teacher": self.teacher(), "distill": {"alpha": d.alpha, "temperature": d.temperature}}

    def build(self, removal: Mapping[str, Any], *, train: bool = True,
              callback_for: Callable[[nn.Module], Callable[[int, int], Any]] | None = None,
              ) -> tuple[nn.Module, TrialOutcome]:
        """Prune the base model by ``removal``, fine-tune it (unless ``train`` is False), evaluate it.

        ``callback_for(model)`` -> the fine-tuning callback (``finetune(callback=)``) of the pruned model: early
        stopping checks the trial at its rungs with it and may raise to stop."""
        t0 = time.perf_counter()
        cfg, ft = self.cfg, self.cfg.finetune
        m = self.measure(removal)
        model = self.graph.prune_channels(removal).to(self.data.device)
        if ft.recalibrate_bn:
            recalibrate_bn(model, self.data, batches=ft.recalibrate_bn, batch_size=ft.batch_size, seed=cfg.seed)
        ft_s = 0.0
        trained = bool(train and ft.epochs > 0)
        if trained:
            res = finetune(model, self.data, epochs=ft.epochs, lr=ft.lr, momentum=ft.momentum,
                           weight_decay=ft.weight_decay, batch_size=ft.batch_size, schedule=ft.schedule,
                           label_smoothing=ft.label_smoothing, seed=cfg.seed, max_batches=ft.max_batches,
                           progress=False, callback=callback_for(model) if callback_for is not None else None,
                           **self.distill_kwargs())
            ft_s = res.seconds
        ev = evaluate(model, self.data, split=cfg.data.eval_split)
        acc = float(ev.accuracy)
        loss = float(ev.loss) if math.isfinite(ev.loss) else float("inf")
        out = TrialOutcome(accuracy=acc, loss=loss, macs=m["macs"], params=m["params"],
                           macs_fraction=m["macs_fraction"], params_fraction=m["params_fraction"], finetuned=trained,
                           finetune_seconds=ft_s, seconds=time.perf_counter() - t0)
        return model.eval(), out
