"""What one search trial works on, built once per process: data, base model, channel graph, criterion scores.

:class:`Problem` is shared by the trials of a search and by :meth:`ParetoFront.export`, which rebuilds a trial's
model with exactly the same steps (same scores, same removal, same fine-tuning seed), so an exported model
reproduces the trial's accuracy (bit for bit on the CPU).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from ..config import SearchConfig

__all__ = ["Problem", "TrialOutcome", "build_base_model", "load_weights", "removal_digest"]


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


def removal_digest(removal: Mapping[str, Any]) -> str:
    """Short hash of a removal plan ({group: channel indices}); export checks it to prove it rebuilt the same cut."""
    canon = {k: sorted(int(i) for i in v) for k, v in sorted(removal.items()) if len(v)}
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _extra_sys_path(paths: list[str]):
    added = [p for p in paths if p and p not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for p in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(p)


def build_base_model(cfg: SearchConfig, num_classes: int | None) -> nn.Module:
    """The unpruned model named by ``cfg.model`` (weights not loaded).

    ``module:function`` names import ``module`` (searched also next to the config file and in the working directory)
    and call ``function(**kwargs)``. Package and torchvision models get ``num_classes`` from the data unless
    ``model.kwargs`` sets it.
    """
    name, kwargs = cfg.model.name, dict(cfg.model.kwargs)
    if ":" in name and not name.startswith("torchvision:"):
        mod_name, fn_name = name.split(":", 1)
        extra = [str(Path(cfg.source).resolve().parent)] if cfg.source else []
        with _extra_sys_path(extra + [os.getcwd()]):
            try:
                module = importlib.import_module(mod_name)
            except ModuleNotFoundError as e:
                raise ValueError(f"model.name {name!r}: cannot import module {mod_name!r} ({e})") from None
        fn = getattr(module, fn_name, None)
        if not callable(fn):
            raise ValueError(f"model.name {name!r}: module {mod_name!r} has no callable {fn_name!r}")
        model = fn(**kwargs)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model.name {name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    from ..models import get_model

    if num_classes is not None:
        kwargs.setdefault("num_classes", int(num_classes))
    return get_model(name, **kwargs)


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """Load ``path`` into ``model``: a plain state_dict, a checkpoint dict with ``state_dict``/``model``, or an
    autoprune model file (then the returned model is the pruned one it describes)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"model.weights: {path} not found")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and obj.get("format", "").startswith("autoprune."):
        from ..io import load

        return load(path, model=model)
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"model.weights: {path} holds {type(obj).__name__}, not a state_dict")
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise ValueError(f"model.weights: {path} does not fit model {type(model).__name__}: {e}") from None
    return model


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Problem:
    """Data, base model, channel graph and cached criterion scores for one search config."""

    def __init__(self, cfg: SearchConfig, *, log: Callable[[str], None] | None = None,
                 progress: bool = False) -> None:
        from ..data import load_data
        from ..graph import ChannelGraph

        self.cfg = cfg
        self.log = log or (lambda s: None)
        self.progress = progress
        d = cfg.data
        t0 = time.perf_counter()
        self.data = load_data(d.dataset, d.root, val_fraction=d.val_fraction, val_from=d.val_from, seed=cfg.seed,
                              num_train=d.num_train,
                              image_size=d.image_size, cache_dir=d.cache_dir, device=cfg.device, **d.options)
        self.log(f"data: {self.data} ({time.perf_counter() - t0:.1f} s)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)  # a deterministic initialisation: export rebuilds the same base model
            model = build_base_model(cfg, self.data.num_classes)
        if cfg.model.weights:
            model = load_weights(model, cfg.model.weights)
        elif cfg.model.pretrain is not None:
            model = self._pretrained(model)
        self.base_model = model.cpu().eval()
        shape = cfg.model.input_shape or list(self.data.input_shape)
        self.example_inputs = torch.zeros(1, *shape)
        self.graph = ChannelGraph(self.base_model, self.example_inputs)
        self.group_names = [g.name for g in self.graph.prunable_groups]
        self.base_macs = self.graph.macs()
        self.base_params = self.graph.macs(params=True)
        self._scores: dict[str, dict[str, torch.Tensor]] = {}
        self._sens: Any = None
        self._base_eval: dict[str, float] | None = None

    # -- base model ------------------------------------------------------------------------------------------
    def _pretrained(self, model: nn.Module) -> nn.Module:
        """Train the base model once (``model.pretrain``); cached in the run directory, keyed by the settings."""
        from ..train import finetune

        cfg, p = self.cfg, self.cfg.model.pretrain
        key = hashlib.sha256(json.dumps({"model": asdict(cfg.model), "data": asdict(cfg.data), "seed": cfg.seed},
                                        sort_keys=True, default=str).encode()).hexdigest()[:12]
        path = cfg.run_path / f"base-{key}.pt"
        if path.exists():
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                self.log(f"base model: pretrained weights {path}")
                return model
            except Exception as e:  # a truncated file: train again
                warnings.warn(f"ignoring unreadable pretrained weights {path} ({e})")
        self.log(f"base model: no weights given, training {cfg.model.name} for {p.epochs} epoch(s) "
                 f"(model.pretrain) -> {path}")
        finetune(model, self.data, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size, max_batches=p.max_batches,
                 seed=cfg.seed, progress=self.progress)
        _atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)
        return model

    def base_metrics(self) -> dict[str, float]:
        """Accuracy, loss, MACs and parameters of the unpruned model on the evaluation split."""
        if self._base_eval is None:
            from ..train import evaluate

            model = copy.deepcopy(self.base_model)
            ev = evaluate(model, self.data, split=self.cfg.data.eval_split)
            self._base_eval = {"accuracy": ev.accuracy, "loss": ev.loss, "macs": self.base_macs,
                               "params": self.base_params}
        return self._base_eval

    # -- scores and plans ------------------------------------------------------------------------------------
    def scores(self, criterion: str) -> dict[str, torch.Tensor]:
        """Scores of every prunable group's channels on the *base* model (computed once per criterion)."""
        if criterion not in self._scores:
            from ..scoring import score_groups

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

    def measure(self, removal: Mapping[str, Any]) -> dict[str, float]:
        macs = self.graph.macs(removal)
        params = self.graph.macs(removal, params=True)
        return {"macs": int(macs), "params": int(params), "macs_fraction": macs / self.base_macs,
                "params_fraction": params / self.base_params}

    def macs_fraction_at(self, ratios: Mapping[str, float]) -> float:
        """MAC fraction kept at ``ratios`` (channel counts only: the criterion does not change MACs)."""
        zeros = {n: torch.zeros(self.graph.group(n).channels) for n in ratios}
        return self.graph.macs(self.graph.plan(dict(ratios), zeros)) / self.base_macs

    def sensitivity_table(self) -> Any:
        """Sensitivity table for guided allocation (``autoprune.sensitivity``, cached on disk by that module)."""
        if self._sens is None:
            try:
                from ..sensitivity_analysis import sensitivity
            except ImportError as e:
                raise ImportError(f"ratios.guide={self.cfg.ratios.guide!r} needs autoprune.sensitivity, which is not "
                                  f"available ({e}); use ratios.guide: uniform or ratios.mode: per_group") from None
            opts = dict(self.cfg.ratios.sensitivity)
            opts.setdefault("criterion", self.cfg.criteria[0])
            opts.setdefault("progress", self.progress)
            t0 = time.perf_counter()
            self._sens = sensitivity(self.base_model, self.data, example_inputs=self.example_inputs, graph=self.graph,
                                     **opts)
            self.log(f"sensitivity table ({time.perf_counter() - t0:.1f} s)")
        return self._sens

    # -- one trial -------------------------------------------------------------------------------------------
    def build(self, removal: Mapping[str, Any], *, train: bool = True) -> tuple[nn.Module, TrialOutcome]:
        """Prune the base model by ``removal``, fine-tune it (unless ``train`` is False), evaluate it."""
        from ..train import evaluate, finetune, recalibrate_bn

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
                           progress=False)
            ft_s = res.seconds
        ev = evaluate(model, self.data, split=cfg.data.eval_split)
        acc = float(ev.accuracy)
        loss = float(ev.loss) if math.isfinite(ev.loss) else float("inf")
        out = TrialOutcome(accuracy=acc, loss=loss, macs=m["macs"], params=m["params"],
                           macs_fraction=m["macs_fraction"], params_fraction=m["params_fraction"], finetuned=trained,
                           finetune_seconds=ft_s, seconds=time.perf_counter() - t0)
        return model.eval(), out
