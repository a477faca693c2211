"""Build what a config describes: the data, the base model (its weights or its pretraining) and an example input.

One builder for every command: ``autoprune search`` (through :class:`autoprune.study.problem.Problem`),
``sensitivity``, ``prune``, ``compare-criteria``, ``export`` and the inspection commands all get their model and data
from here, so one config file means the same model and the same data everywhere.

>>> from autoprune.config import load_config
>>> from autoprune.build import build
>>> built = build(load_config("search_spaces/quickstart.yaml"))
>>> built.model, built.data, built.example_inputs

Every problem a user can fix is a :class:`~autoprune.config.ConfigError` naming the key or the file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from ._files import atomic_write
from .config import ConfigError, ModelSpec, SearchConfig, is_code_name, load_config
from .criteria import available_criteria
from .data.loading import load_data
from .deploy.files import load, read_checkpoint
from .graph.core import check_finite
from .models import get_model
from .train.loop import finetune

__all__ = ["Built", "build", "build_data", "build_model", "load_weights", "base_model", "example_inputs",
           "inspection_target", "sensitivity_options", "SensitivitySpec", "sensitivity_spec", "finetune_options", "PruneSpec", "prune_spec", "prune_options",
           "compare_options"]


@dataclass
class Built:
    """What :func:`build` returns: the config, its data, the unpruned model (CPU, eval mode) and an example input."""

    cfg: SearchConfig
    data: Any
    model: nn.Module
    example_inputs: torch.Tensor


def build_data(cfg: SearchConfig) -> Any:
    """The :class:`~autoprune.data.DataBundle` of ``cfg.data`` (split seeded by ``cfg.seed``)."""
    d = cfg.data
    return load_data(d.dataset, d.root, val_fraction=d.val_fraction, val_from=d.val_from, seed=cfg.seed,
                     num_train=d.num_train, image_size=d.image_size, cache_dir=d.cache_dir, device=cfg.device,
                     **d.options)


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


def build_model(spec: ModelSpec | SearchConfig, num_classes: int | None = None) -> nn.Module:
    """The unpruned model named by ``spec`` (a :class:`ModelSpec`, or a config's ``model``); weights not loaded.

    ``module:function`` names import ``module`` (searched also next to the config file and in the working directory)
    and call ``function(**kwargs)`` -- only for a trusted config: one read from a study's storage
    (:func:`autoprune.config.load_stored_config`) that names code raises
    :class:`~autoprune.config.UntrustedConfigError` before anything is imported. A :class:`ModelSpec` passed on its
    own is the caller's. Package and torchvision models get ``num_classes`` (the data's) unless ``model.kwargs``
    sets it.
    """
    source = None
    if isinstance(spec, SearchConfig):
        spec.check_code_allowed()
        spec, source = spec.model, spec.source
    name, kwargs = spec.name, dict(spec.kwargs)
    if is_code_name(name):
        mod_name, fn_name = name.split(":", 1)
        extra = [str(Path(source).resolve().parent)] if source else []
        with _extra_sys_path(extra + [os.getcwd()]):
            try:
                module = importlib.import_module(mod_name)
            except ModuleNotFoundError as e:
                raise ConfigError(f"model.name {name!r}: cannot import module {mod_name!r} ({e}); the module is "
                                  "looked up next to the config file, in the working directory and on sys.path")
        fn = getattr(module, fn_name, None)
        if not callable(fn):
            raise ConfigError(f"model.name {name!r}: module {mod_name!r} has no callable {fn_name!r}")
        model = fn(**kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model.name {name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    if num_classes is not None:
        kwargs.setdefault("num_classes", int(num_classes))
    try:
        return get_model(name, **kwargs)
    except TypeError as e:  # a keyword the constructor does not take
        raise ConfigError(f"model.kwargs: {name} does not accept them ({e})") from None


def load_weights(model: nn.Module, path: str | os.PathLike, what: str = "model.weights") -> nn.Module:
    """Load ``path`` into ``model``: a plain state_dict, a checkpoint dict with ``state_dict``/``model``, or an
    autoprune model file (then the returned model is the pruned one it describes).

    Weights holding NaN or Inf are refused (:class:`~autoprune.graph.core.NonFiniteError` naming the tensors): every
    command loads its model here, so a corrupt or diverged checkpoint stops each one, ``search --dry-run`` included.
    """
    path = os.fspath(path)
    obj = read_checkpoint(path, what)
    if isinstance(obj, dict) and str(obj.get("format", "")).startswith("autoprune."):
        model = load(path, model=model)
        check_finite(model, f"{what} {path}")
        return model
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: {path} holds {type(obj).__name__}, not a state_dict")
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        shown = "; ".join(lines[1:4]) + (" ..." if len(lines) > 4 else "")
        raise ValueError(f"{what}: {path} does not fit model {type(model).__name__} ({shown}); check model.name "
                         "and model.kwargs (e.g. num_classes) against the checkpoint") from None
    check_finite(model, f"{what} {path}")
    return model


def _pretrained(model: nn.Module, cfg: SearchConfig, data: Any, log: Callable[[str], None],
                progress: bool) -> nn.Module:
    """Train the base model once (``model.pretrain``); cached in the run directory, keyed by the settings."""
    p = cfg.model.pretrain
    key = hashlib.sha256(json.dumps({"model": asdict(cfg.model), "data": asdict(cfg.data), "seed": cfg.seed},
                                    sort_keys=True, default=str).encode()).hexdigest()[:12]
    path = cfg.run_path / f"base-{key}.pt"
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            log(f"base model: pretrained weights {path}")
            return model
        except Exception as e:  # a damaged cache file: train again (it is ours, not the user's)
            warnings.warn(f"ignoring unreadable pretrained weights {path} ({e})")
    log(f"base model: no weights given, training {cfg.model.name} for {p.epochs} epoch(s) (model.pretrain) -> {path}")
    finetune(model, data, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size, max_batches=p.max_batches,
             seed=cfg.seed, progress=progress)
    check_finite(model, f"model.pretrain ({p.epochs} epoch(s) at lr {p.lr})")  # a diverged run is never cached
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: torch.save(state, f))
    return model


def base_model(cfg: SearchConfig, data: Any, *, log: Callable[[str], None] | None = None,
               progress: bool = False, pretrain: bool = True) -> nn.Module:
    """The unpruned model of ``cfg`` on the CPU in eval mode: a seeded initialisation (so a rebuild gives the same
    model), then ``model.weights`` loaded, or ``model.pretrain`` run (cached in the run directory; skipped with
    ``pretrain=False``, e.g. to look at the model's structure)."""
    log = log or (lambda s: None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, getattr(data, "num_classes", None))
    example_inputs(cfg, data, model)  # before pretraining: a model that cannot run on the data fails in one line
    if cfg.model.weights:
        if not os.path.exists(cfg.model.weights):
            where = f" next to {cfg.source} and" if cfg.source else ""
            raise FileNotFoundError(
                f"model.weights: {cfg.model.weights} not found (a relative path is looked up{where} in the working "
                f"directory {os.getcwd()}); run from the folder the path is relative to (the shipped configs: the "
                "repository root, for ../shared/...) or give an absolute path")
        model = load_weights(model, cfg.model.weights)
    elif cfg.model.pretrain is not None and pretrain:
        model = _pretrained(model, cfg, data, log, progress)
    return model.cpu().eval()


def _sample_shape(data: Any) -> tuple[int, ...] | None:
    """``(C, H, W)`` of one real sample of the data (what the model will be fed), or None when it has none."""
    for name in ("val", "train", "test"):
        split = getattr(data, name, None)
        if split is None or not len(split):
            continue
        x, _ = next(iter(split.batches(1)))
        return tuple(int(s) for s in x.shape[1:])
    shape = getattr(data, "input_shape", None)
    return tuple(shape) if shape is not None else None


def example_inputs(cfg: SearchConfig, data: Any, model: nn.Module | None = None) -> torch.Tensor:
    """``torch.zeros(1, C, H, W)`` for tracing and MAC counting, checked against the data and the model.

    ``model.input_shape`` must equal the shape of a real data sample (a different size would make every MAC count
    wrong without any error); the model must run on it (a wrong channel count is one message, not a traceback).
    """
    sample = _sample_shape(data)
    shape = tuple(cfg.model.input_shape) if cfg.model.input_shape else sample
    where = f" ({cfg.source})" if cfg.source else ""
    if shape is None:
        raise ConfigError(f"model.input_shape{where}: the data has no sample to take the input shape from; set "
                          "model.input_shape: [C, H, W]")
    if sample is not None and tuple(shape) != tuple(sample):
        size = f"data.image_size {cfg.data.image_size}" if cfg.data.image_size else "native image size"
        raise ConfigError(
            f"model.input_shape{where} is {list(shape)} but a sample of the data ({cfg.data.dataset}, {size}) has "
            f"shape {list(sample)}: MACs would be counted for inputs the model never sees. Remove model.input_shape "
            f"(it defaults to the data's) or set data.image_size to [{shape[1]}, {shape[2]}]")
    x = torch.zeros(1, *shape)
    if model is not None:
        try:
            with torch.no_grad():
                was = model.training
                model.eval()
                model(x)
                model.train(was)
        except Exception as e:  # any failure of the user's model on this shape: one line, not its traceback
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(
                f"model {cfg.model.name!r}{where} does not run on inputs of shape {list(shape)} (from "
                f"{'model.input_shape' if cfg.model.input_shape else 'the data'}): {first}. Check data.image_size, "
                "model.input_shape and the model's expected input (e.g. 3 colour channels)") from None
    return x


def inspection_target(target: str, *, weights: str | os.PathLike | None = None, size: int = 32,
                      input_shape: Sequence[int] | None = None) -> tuple[nn.Module, torch.Tensor]:
    """The model and an example input that ``autoprune groups`` and ``macs`` look at: from a config file (``target``
    ending in .yaml/.yml: its model, weights -- ``weights`` replaces them -- and the data's input shape; pretraining
    skipped, it changes weights, not channels), or from a model name with ``weights`` and ``input_shape`` (default
    ``[3, size, size]``)."""
    if target.endswith((".yaml", ".yml")):
        cfg = load_config(target)
        if weights:
            cfg = cfg.replace(model=dataclasses.replace(cfg.model, weights=os.path.abspath(weights)))
        data = build_data(cfg)
        model = base_model(cfg, data, pretrain=False)
        return model, example_inputs(cfg, data)
    model = build_model(ModelSpec(name=target))
    if weights:
        model = load_weights(model, weights, what="--weights")
    shape = list(input_shape) if input_shape else [3, size, size]
    return model.eval(), torch.zeros(1, *shape)


def sensitivity_options(cfg: SearchConfig, *, criterion: bool = True) -> dict[str, Any]:
    """Keyword arguments of :func:`autoprune.allocation.sensitivity_analysis.sensitivity` for ``cfg``:
    ``ratios.sensitivity`` with the first of ``criteria`` as the default criterion (left out with
    ``criterion=False``). The guided search and ``autoprune sensitivity`` use the same options, so the command
    computes the very table (and cache entry) that the search reuses."""
    opts = dict(cfg.ratios.sensitivity)
    if criterion:
        opts.setdefault("criterion", cfg.criteria[0])
    else:
        opts.pop("criterion", None)
    return opts


@dataclass(frozen=True)
class SensitivitySpec:
    """What ``autoprune sensitivity`` computes, as one typed object: the criterion and the other keywords of
    :func:`autoprune.allocation.sensitivity_analysis.sensitivity` (``ratios.sensitivity``, checked against that
    signature by the config). :func:`sensitivity_spec` reads it from a config; a command changes it with
    :meth:`replace` (``None`` keeps a value); :meth:`kwargs` are the keywords of ``sensitivity``."""

    criterion: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, *, criterion: str | None = None, **options: Any) -> "SensitivitySpec":
        """A copy with ``criterion`` and ``options`` applied; ``None`` values are ignored."""
        given = {k: v for k, v in options.items() if v is not None}
        return dataclasses.replace(self, criterion=criterion or self.criterion, options={**self.options, **given})

    def kwargs(self) -> dict[str, Any]:
        return {**self.options, "criterion": self.criterion}


def sensitivity_spec(cfg: SearchConfig) -> SensitivitySpec:
    """The :class:`SensitivitySpec` of ``cfg``: the table a guided search of ``cfg`` uses (same cache entry)."""
    return SensitivitySpec(criterion=cfg.criteria[0], options=sensitivity_options(cfg, criterion=False))


def finetune_options(cfg: SearchConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`autoprune.train.finetune` from ``cfg.finetune`` (all but ``epochs`` and
    ``recalibrate_bn``, which are steps around it), with ``cfg.seed``."""
    ft = cfg.finetune
    return {"lr": ft.lr, "momentum": ft.momentum, "weight_decay": ft.weight_decay, "batch_size": ft.batch_size,
            "schedule": ft.schedule, "label_smoothing": ft.label_smoothing, "max_batches": ft.max_batches,
            "seed": cfg.seed}


@dataclass(frozen=True)
class PruneSpec:
    """What ``autoprune prune`` does, as one typed object: the budget, the criterion and allocation, the fine-tuning
    (``finetune`` section), the sensitivity options (``ratios.sensitivity``), the seed, distillation, repetitive
    steps and ``ratios.round_to``. :func:`prune_spec` reads it from a config; a command changes fields with
    :meth:`replace` (``None`` keeps a field); :meth:`budget_kwargs` are the keywords of
    :func:`autoprune.allocation.budget.prune_to_budget`."""

    macs: float | int | None
    params: float | int | None
    criterion: str
    allocation: str
    finetune_epochs: int
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    schedule: str
    label_smoothing: float
    max_batches: int | None
    seed: int
    sensitivity: dict[str, Any] = field(default_factory=dict)  # ratios.sensitivity, but the criterion
    sensitivity_cache_dir: str | None = None  # overrides ratios.sensitivity's cache_dir when set
    distill_alpha: float | None = None  # None: no distillation
    distill_temperature: float = 4.0
    steps: int = 1
    round_to: int = 1

    def replace(self, **changes: Any) -> "PruneSpec":
        """A copy with ``changes`` applied; ``None`` values are ignored (an option not given keeps the config's)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def with_budget(self, macs: float | int | None, params: float | int | None) -> "PruneSpec":
        """A copy with this budget: both kinds replaced (``None``: no limit of that kind)."""
        return dataclasses.replace(self, macs=macs, params=params)

    def budget_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`autoprune.allocation.budget.prune_to_budget`."""
        sens = dict(self.sensitivity)
        if self.sensitivity_cache_dir is not None:
            sens["cache_dir"] = self.sensitivity_cache_dir
        ft = {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
              "batch_size": self.batch_size, "schedule": self.schedule, "label_smoothing": self.label_smoothing,
              "max_batches": self.max_batches}
        distill = (None if self.distill_alpha is None
                   else {"alpha": self.distill_alpha, "temperature": self.distill_temperature})
        return {"macs": self.macs, "params": self.params, "criterion": self.criterion, "allocation": self.allocation,
                "finetune_epochs": self.finetune_epochs, "finetune_kwargs": ft, "sensitivity_kwargs": sens,
                "seed": self.seed, "distill": distill, "steps": self.steps, "round_to": self.round_to}


def prune_spec(cfg: SearchConfig) -> PruneSpec:
    """The :class:`PruneSpec` that ``cfg`` implies (what ``autoprune prune CONFIG`` does): the budget of
    ``constraints``, the first of ``criteria``, the guided config's ``ratios.guide`` (else ``sensitivity``) as
    allocation, the ``finetune`` section (epochs, optimiser, distillation, ``prune_steps``), ``ratios.sensitivity``
    and ``ratios.round_to``."""
    ft, d = cfg.finetune, cfg.finetune.distill
    on = d is not None and d.enabled
    return PruneSpec(
        macs=cfg.constraints.max_macs, params=cfg.constraints.max_params, criterion=cfg.criteria[0],
        allocation=cfg.ratios.guide if cfg.ratios.mode == "guided" else "sensitivity", finetune_epochs=ft.epochs,
        lr=ft.lr, momentum=ft.momentum, weight_decay=ft.weight_decay, batch_size=ft.batch_size,
        schedule=ft.schedule, label_smoothing=ft.label_smoothing, max_batches=ft.max_batches, seed=cfg.seed,
        sensitivity=sensitivity_options(cfg, criterion=False),
        distill_alpha=d.alpha if on else None, distill_temperature=d.temperature if on else 4.0,
        steps=ft.prune_steps, round_to=cfg.ratios.round_to)


def prune_options(cfg: SearchConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`autoprune.allocation.budget.prune_to_budget` that ``cfg`` implies:
    ``prune_spec(cfg).budget_kwargs()``."""
    return prune_spec(cfg).budget_kwargs()


def compare_options(cfg: SearchConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`autoprune.allocation.compare.compare_criteria` that ``cfg`` implies (``autoprune
    compare-criteria CONFIG``): its criteria when it lists several, else every registered criterion; scoring
    batches, seed and evaluation split from the config."""
    criteria = list(cfg.criteria) if len(cfg.criteria) > 1 else list(available_criteria())
    return {"criteria": criteria, "score_batches": cfg.scoring.num_batches, "seed": cfg.seed,
            "split": cfg.data.eval_split}


def build(cfg: SearchConfig, *, log: Callable[[str], None] | None = None, progress: bool = False) -> Built:
    """Data, base model and a checked example input for ``cfg`` (see :func:`autoprune.config.load_config`)."""
    log = log or (lambda s: None)
    t0 = time.perf_counter()
    data = build_data(cfg)
    log(f"data: {data} ({time.perf_counter() - t0:.1f} s)")
    model = base_model(cfg, data, log=log, progress=progress)
    return Built(cfg=cfg, data=data, model=model, example_inputs=example_inputs(cfg, data))
