"""Search-space files: one YAML file describes a whole pruning search.

:func:`load_config` reads a file (or a dict) into a validated :class:`SearchConfig`. Every error is a
:class:`ConfigError` (a ``ValueError``) naming the offending key, e.g.
``ratios.groups['layer4.*']: pattern matches no prunable group`` or
``unknown key 'n_trial' at top level; did you mean 'n_trials'?``.

Two stages of checks:

* :func:`load_config` -- keys, types, ranges, choices: everything that needs no model;
* :func:`check_against_graph` -- what needs the model's channel groups: every ``ratios.groups`` pattern must match
  a prunable group, and the budget constraints must be reachable within the ratio bounds.

The reference of every key, with defaults, is in ``docs/search.md`` and in :data:`SCHEMA` below.
"""
from __future__ import annotations

import contextlib
import copy
import difflib
import fnmatch
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

__all__ = [
    "ConfigError", "SearchConfig", "ModelSpec", "PretrainSpec", "DataSpec", "RatioSpec", "ConstraintSpec",
    "SamplerSpec", "FinetuneSpec", "ScoringSpec", "load_config", "check_against_graph", "group_bounds",
    "OBJECTIVES", "SAMPLERS", "GUIDES", "SCHEMA",
]

OBJECTIVES = ("accuracy", "macs", "params")
SAMPLERS = ("nsga2", "tpe")
GUIDES = ("sensitivity", "srr", "uniform")
MODES = ("guided", "per_group")

#: Allowed keys per section, with a one-line description each (the reference of docs/search.md).
SCHEMA: dict[str, dict[str, str]] = {
    "": {
        "name": "name of the search; default study name and run directory (default: the file's stem)",
        "seed": "seed of the sampler, data split, scoring and fine-tuning (default 0)",
        "n_trials": "number of COMPLETE trials to reach (default 50)",
        "study_name": "Optuna study name (default: name)",
        "storage": "Optuna storage URL, or a journal file path; default <run_dir>/optuna.journal",
        "run_dir": "directory for the journal, pretrained base weights and reports (default runs/<name>)",
        "device": "device for data and training (default: cuda when available, else cpu)",
        "threads": "torch CPU threads while searching and exporting (default: torch's own setting)",
        "model": "the model to prune (section)",
        "data": "the data set (section)",
        "criteria": "criterion name, or a list of names (then the criterion is searched)",
        "ratios": "ratio parameterisation (section)",
        "objectives": "list of objectives: accuracy (max), macs (min), params (min)",
        "constraints": "budgets (section); infeasible trials never reach the Pareto front",
        "sampler": "Optuna sampler (section)",
        "finetune": "fine-tuning of every trial (section)",
        "scoring": "data used by activation criteria (section)",
    },
    "model": {
        "name": "package model (resnet56...), torchvision name (resnet50, torchvision:resnet50), "
                "or module:function of your own code",
        "kwargs": "keyword arguments for the model constructor (num_classes defaults to the data's)",
        "weights": "state_dict file (torch.load weights_only) or an autoprune model file",
        "input_shape": "[C, H, W] of one input (default: the data's)",
        "pretrain": "train the base model first when there are no weights (section; for quick tests)",
    },
    "model.pretrain": {
        "epochs": "training epochs (default 3)",
        "lr": "learning rate (default 0.05)",
        "batch_size": "batch size (default 128)",
        "max_batches": "cap on batches per epoch (default none)",
    },
    "data": {
        "dataset": "synthetic, cifar10, cifar100 or imagefolder",
        "root": "data set directory (imagefolder: holds train/ and test/)",
        "val_fraction": "fraction of the training images held out for validation (default 0.1)",
        "val_from": "train (default) or test: carve val from the test images (checkpoints trained on all of train)",
        "num_train": "keep only this many training images (default all)",
        "image_size": "resize images to this size (int or [H, W]; default native)",
        "eval_split": "split that trials are scored on: val (default) or test",
        "cache_dir": "decoded-data cache (default $AUTOPRUNE_CACHE or ~/.cache/autoprune)",
        "options": "extra load_data options (synthetic: num_classes, train_per_class...; imagefolder: stream...)",
    },
    "ratios": {
        "mode": "guided (budget level + per-group offsets around an allocation) or per_group",
        "guide": "guided mode: allocation the offsets are centred on: sensitivity (default), srr or uniform",
        "level": "guided mode: [low, high] range of the searched budget level (fraction of MACs kept)",
        "offset": "guided mode: per-group offsets are searched in [-offset, +offset] (default 0.1)",
        "anchors": "guided mode: first run this many trials at the guide's own allocation (offsets 0) at evenly "
                   "spaced levels (default 0)",
        "default": "[low, high] bounds of every group's ratio (default [0.0, 0.9])",
        "groups": "{fnmatch pattern: [low, high]} bounds for matching groups (later patterns win)",
        "step": "discretisation step of the searched ratios (default continuous)",
        "sensitivity": "guided sensitivity/srr: keyword arguments for autoprune.sensitivity_analysis (section)",
    },
    "constraints": {
        "max_macs": "keep at most this fraction of the base model's MACs",
        "max_params": "keep at most this fraction of the base model's parameters",
        "min_accuracy": "reject trials below this validation accuracy (fraction in [0, 1])",
        "finetune_infeasible": "fine-tune trials that break a MAC/param budget anyway (default false: they are "
                               "only evaluated after pruning)",
    },
    "sampler": {
        "name": "nsga2 (default) or tpe",
        "seed": "sampler seed (default: the top-level seed)",
        "population_size": "nsga2 population (default: n_trials // 4 clamped to [4, 50])",
        "n_startup_trials": "tpe random start-up trials (default 10)",
    },
    "finetune": {
        "epochs": "epochs per trial (default 1)",
        "max_batches": "cap on batches per epoch (default none)",
        "lr": "learning rate (default 0.01)",
        "batch_size": "batch size (default 128)",
        "schedule": "cosine (default), onecycle or constant",
        "weight_decay": "weight decay (default 5e-4)",
        "momentum": "SGD momentum (default 0.9)",
        "label_smoothing": "label smoothing (default 0)",
        "recalibrate_bn": "re-estimate BatchNorm statistics on this many batches before fine-tuning (default 0)",
    },
    "scoring": {
        "num_batches": "batches of training data seen by activation criteria (default 5)",
        "batch_size": "their batch size (default 128)",
    },
}


class ConfigError(ValueError):
    """An invalid search configuration; the message names the key."""


# ------------------------------------------------------------------------------------------------------------
# dataclasses


@dataclass
class PretrainSpec:
    epochs: int = 3
    lr: float = 0.05
    batch_size: int = 128
    max_batches: int | None = None


@dataclass
class ModelSpec:
    name: str
    kwargs: dict = field(default_factory=dict)
    weights: str | None = None
    input_shape: list[int] | None = None
    pretrain: PretrainSpec | None = None


@dataclass
class DataSpec:
    dataset: str
    root: str | None = None
    val_fraction: float = 0.1
    val_from: str = "train"
    num_train: int | None = None
    image_size: list[int] | None = None
    eval_split: str = "val"
    cache_dir: str | None = None
    options: dict = field(default_factory=dict)


@dataclass
class RatioSpec:
    mode: str = "per_group"
    guide: str = "sensitivity"
    level: list[float] | None = None
    offset: float = 0.1
    anchors: int = 0
    default: list[float] = field(default_factory=lambda: [0.0, 0.9])
    groups: dict[str, list[float]] = field(default_factory=dict)
    step: float | None = None
    sensitivity: dict = field(default_factory=dict)


@dataclass
class ConstraintSpec:
    max_macs: float | None = None
    max_params: float | None = None
    min_accuracy: float | None = None
    finetune_infeasible: bool = False

    def active(self) -> dict[str, float]:
        return {k: v for k, v in (("max_macs", self.max_macs), ("max_params", self.max_params),
                                  ("min_accuracy", self.min_accuracy)) if v is not None}


@dataclass
class SamplerSpec:
    name: str = "nsga2"
    seed: int | None = None
    population_size: int | None = None
    n_startup_trials: int = 10


@dataclass
class FinetuneSpec:
    epochs: int = 1
    max_batches: int | None = None
    lr: float = 0.01
    batch_size: int = 128
    schedule: str = "cosine"
    weight_decay: float = 5e-4
    momentum: float = 0.9
    label_smoothing: float = 0.0
    recalibrate_bn: int = 0


@dataclass
class ScoringSpec:
    num_batches: int = 5
    batch_size: int = 128


@dataclass
class SearchConfig:
    """A validated search description (see :func:`load_config`)."""

    name: str
    model: ModelSpec
    data: DataSpec
    criteria: list[str] = field(default_factory=lambda: ["l1"])
    ratios: RatioSpec = field(default_factory=RatioSpec)
    objectives: list[str] = field(default_factory=lambda: ["accuracy", "macs"])
    constraints: ConstraintSpec = field(default_factory=ConstraintSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    scoring: ScoringSpec = field(default_factory=ScoringSpec)
    n_trials: int = 50
    seed: int = 0
    study_name: str | None = None
    storage: str | None = None
    run_dir: str | None = None
    device: str | None = None
    threads: int | None = None
    source: str | None = None  # the file it was read from (not a YAML key)

    # -- derived ---------------------------------------------------------------------------------------------
    @property
    def study(self) -> str:
        return self.study_name or self.name

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    @property
    def sampler_seed(self) -> int:
        return self.seed if self.sampler.seed is None else self.sampler.seed

    @property
    def population_size(self) -> int:
        if self.sampler.population_size is not None:
            return self.sampler.population_size
        return int(min(50, max(4, self.n_trials // 4)))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-safe); ``load_config(cfg.to_dict())`` gives back an equal config."""
        d = asdict(self)
        d.pop("source", None)
        if d["model"]["pretrain"] is None:
            d["model"].pop("pretrain")
        if self.ratios.mode == "per_group":
            for k in ("guide", "level", "offset", "anchors", "sensitivity"):
                d["ratios"].pop(k)
        return d

    def fingerprint(self) -> str:
        """Hash of everything that changes what a trial measures (not n_trials, storage, names, sampler)."""
        d = self.to_dict()
        keep = {k: d[k] for k in ("model", "data", "criteria", "ratios", "objectives", "constraints", "finetune",
                                  "scoring", "seed")}
        keep["ratios"].pop("anchors", None)  # where sampling starts, not what a trial measures
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @contextlib.contextmanager
    def cpu_threads(self) -> Iterator[None]:
        """``torch.set_num_threads(threads)`` for the duration (restored after), when ``threads`` is set."""
        if self.threads is None:
            yield
            return
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def replace(self, **changes: Any) -> "SearchConfig":
        new = copy.deepcopy(self)
        for k, v in changes.items():
            if not hasattr(new, k):
                raise AttributeError(k)
            setattr(new, k, v)
        return new


# ------------------------------------------------------------------------------------------------------------
# validation helpers


def _where(section: str, key: str | None = None) -> str:
    if key is None:
        return section or "top level"
    return f"{section}.{key}" if section else key


def _check_keys(d: Mapping[str, Any], section: str) -> None:
    allowed = SCHEMA[section]
    for k in d:
        if not isinstance(k, str):
            raise ConfigError(f"{_where(section)}: keys must be strings, got {k!r}")
        if k not in allowed:
            close = difflib.get_close_matches(k, list(allowed), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; allowed keys: {', '.join(allowed)}"
            raise ConfigError(f"unknown key {k!r} in {_where(section) if section else 'the top level'}{hint}")


def _section(raw: Any, section: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{section}: expected a mapping (section), got {_show(raw)}")
    _check_keys(raw, section)
    return dict(raw)


def _show(v: Any) -> str:
    return f"{v!r} ({type(v).__name__})"


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(v: Any, where: str, *, lo: int | None = None, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(f"{where}: expected an integer, got {_show(v)}")
    if lo is not None and v < lo:
        raise ConfigError(f"{where}: must be >= {lo}, got {v}")
    return int(v)


def _float(v: Any, where: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, optional: bool = False) -> float | None:
    if v is None and optional:
        return None
    if not _is_num(v) or math.isnan(v):
        raise ConfigError(f"{where}: expected a number, got {_show(v)}")
    v = float(v)
    bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
    bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
    if bad_lo or bad_hi:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ConfigError(f"{where}: must be in {lb}{lo if lo is not None else '-inf'}, "
                          f"{hi if hi is not None else 'inf'}{rb}, got {v}")
    return v


def _str(v: Any, where: str, *, optional: bool = False, choices: tuple[str, ...] | None = None) -> str | None:
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{where}: expected a non-empty string, got {_show(v)}")
    if choices is not None and v not in choices:
        close = difflib.get_close_matches(v, choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: {v!r} is not one of {', '.join(choices)}{hint}")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: expected true or false, got {_show(v)}")
    return v


def _bounds(v: Any, where: str) -> list[float]:
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_is_num(x) for x in v):
        raise ConfigError(f"{where}: expected bounds [low, high] (two numbers), got {_show(v)}")
    lo, hi = float(v[0]), float(v[1])
    if not (0.0 <= lo <= hi < 1.0):
        raise ConfigError(f"{where}: bounds must satisfy 0 <= low <= high < 1 (a ratio is the fraction of a group's "
                          f"channels removed), got [{v[0]}, {v[1]}]")
    return [lo, hi]


def _resolve_input_path(p: str | None, base: Path | None) -> str | None:
    """An input file/directory: absolute, else relative to the config file's directory if it exists there, else
    relative to the working directory. ``~`` and ``$VARS`` are expanded."""
    if p is None:
        return None
    s = os.path.expanduser(os.path.expandvars(str(p)))
    path = Path(s)
    if path.is_absolute():
        return str(path)
    if base is not None and (base / path).exists():
        return str((base / path).resolve())
    return str(path.resolve())


# ------------------------------------------------------------------------------------------------------------
# sections


def _model(raw: Any, base: Path | None) -> ModelSpec:
    if isinstance(raw, str):
        raw = {"name": raw}
    if raw is None:
        raise ConfigError("missing required section 'model' (at least model.name)")
    d = _section(raw, "model")
    if "name" not in d:
        raise ConfigError("model.name is required (e.g. resnet56, resnet50 or my_package.models:build)")
    name = _str(d["name"], "model.name")
    kwargs = d.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"model.kwargs: expected a mapping, got {_show(kwargs)}")
    shape = d.get("input_shape")
    if shape is not None:
        if not isinstance(shape, (list, tuple)) or len(shape) != 3 or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise ConfigError(f"model.input_shape: expected [C, H, W] (three positive integers), got {_show(shape)}")
        shape = [int(s) for s in shape]
    weights = d.get("weights")
    if weights is not None:
        _str(weights, "model.weights")
        weights = _resolve_input_path(weights, base)
    pre = None
    if d.get("pretrain") is not None:
        p = _section(d["pretrain"], "model.pretrain")
        pre = PretrainSpec(
            epochs=_int(p.get("epochs", 3), "model.pretrain.epochs", lo=1),
            lr=_float(p.get("lr", 0.05), "model.pretrain.lr", lo=0.0, lo_open=True),
            batch_size=_int(p.get("batch_size", 128), "model.pretrain.batch_size", lo=1),
            max_batches=_int(p.get("max_batches"), "model.pretrain.max_batches", lo=1, optional=True),
        )
        if weights is not None:
            raise ConfigError("model: give either weights or pretrain, not both")
    return ModelSpec(name=name, kwargs=dict(kwargs), weights=weights, input_shape=shape, pretrain=pre)


def _data(raw: Any, base: Path | None) -> DataSpec:
    if raw is None:
        raise ConfigError("missing required section 'data' (at least data.dataset)")
    d = _section(raw, "data")
    from .data import DATASETS, _OPTIONS

    if "dataset" not in d:
        raise ConfigError(f"data.dataset is required (one of {', '.join(DATASETS)})")
    ds = _str(d["dataset"], "data.dataset", choices=DATASETS)
    root = d.get("root")
    if root is not None:
        root = _resolve_input_path(_str(root, "data.root"), base)
    elif ds == "imagefolder":
        raise ConfigError("data.root is required for dataset imagefolder (a directory with train/ and test/)")
    size = d.get("image_size")
    if size is not None:
        if isinstance(size, int) and not isinstance(size, bool):
            size = [size, size]
        if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(
                isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
            raise ConfigError(f"data.image_size: expected an integer or [H, W], got {_show(d.get('image_size'))}")
        size = [int(s) for s in size]
    opts = d.get("options") or {}
    if not isinstance(opts, Mapping):
        raise ConfigError(f"data.options: expected a mapping, got {_show(opts)}")
    for k in opts:
        if k not in _OPTIONS[ds]:
            close = difflib.get_close_matches(str(k), sorted(_OPTIONS[ds]), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {k!r} in data.options for dataset {ds}{hint} "
                              f"(accepted: {', '.join(sorted(_OPTIONS[ds]))})")
    cache = d.get("cache_dir")
    if cache is not None:
        cache = os.path.expanduser(os.path.expandvars(_str(cache, "data.cache_dir")))
    return DataSpec(
        dataset=ds, root=root,
        val_fraction=_float(d.get("val_fraction", 0.1), "data.val_fraction", lo=0.0, hi=1.0, hi_open=True),
        val_from=_str(d.get("val_from", "train"), "data.val_from", choices=("train", "test")),
        num_train=_int(d.get("num_train"), "data.num_train", lo=1, optional=True),
        image_size=size,
        eval_split=_str(d.get("eval_split", "val"), "data.eval_split", choices=("val", "test")),
        cache_dir=cache, options=dict(opts),
    )


def _criteria(raw: Any) -> list[str]:
    from .criteria import available_criteria

    if raw is None:
        return ["l1"]
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(f"criteria: expected a criterion name or a non-empty list of names, got {_show(raw)}")
    known = list(available_criteria())
    out = []
    for i, c in enumerate(items):
        _str(c, f"criteria[{i}]", choices=tuple(known))
        if c in out:
            raise ConfigError(f"criteria: {c!r} is listed twice")
        out.append(c)
    return out


def _ratios(raw: Any) -> RatioSpec:
    d = _section(raw, "ratios")
    mode = _str(d.get("mode", "per_group"), "ratios.mode", choices=MODES)
    spec = RatioSpec(mode=mode)
    if "default" in d:
        spec.default = _bounds(d["default"], "ratios.default")
    groups = d.get("groups") or {}
    if not isinstance(groups, Mapping):
        raise ConfigError(f"ratios.groups: expected a mapping {{pattern: [low, high]}}, got {_show(groups)}")
    for pat, b in groups.items():
        if not isinstance(pat, str) or not pat:
            raise ConfigError(f"ratios.groups: patterns must be non-empty strings, got {pat!r}")
        spec.groups[pat] = _bounds(b, f"ratios.groups[{pat!r}]")
    if d.get("step") is not None:
        spec.step = _float(d["step"], "ratios.step", lo=0.0, hi=0.5, lo_open=True)
    guided_only = [k for k in ("guide", "level", "offset", "anchors", "sensitivity") if k in d]
    if mode == "per_group":
        if guided_only:
            raise ConfigError(f"ratios.{guided_only[0]} only applies to mode: guided (mode is per_group)")
        return spec
    spec.guide = _str(d.get("guide", "sensitivity"), "ratios.guide", choices=GUIDES)
    if d.get("level") is not None:
        lv = d["level"]
        if _is_num(lv):
            lv = [lv, lv]
        if not isinstance(lv, (list, tuple)) or len(lv) != 2 or not all(_is_num(x) for x in lv):
            raise ConfigError(f"ratios.level: expected [low, high] (fractions of MACs kept), got {_show(d['level'])}")
        lo, hi = float(lv[0]), float(lv[1])
        if not (0.0 < lo <= hi <= 1.0):
            raise ConfigError(f"ratios.level: must satisfy 0 < low <= high <= 1 (fraction of MACs kept), "
                              f"got [{lv[0]}, {lv[1]}]")
        spec.level = [lo, hi]
    spec.offset = _float(d.get("offset", 0.1), "ratios.offset", lo=0.0, hi=0.5)
    spec.anchors = _int(d.get("anchors", 0), "ratios.anchors", lo=0)
    sens = d.get("sensitivity") or {}
    if not isinstance(sens, Mapping):
        raise ConfigError(f"ratios.sensitivity: expected a mapping of autoprune.sensitivity_analysis options, got {_show(sens)}")
    if sens and spec.guide != "sensitivity":
        raise ConfigError(f"ratios.sensitivity only applies to guide: sensitivity (guide is {spec.guide})")
    try:
        import inspect

        from .sensitivity_analysis import sensitivity as _sens_fn
    except ImportError:
        _sens_fn = None
    if _sens_fn is not None:
        accepted = [p for p in inspect.signature(_sens_fn).parameters
                    if p not in ("model", "data", "example_inputs", "graph")]
        for k in sens:
            if k not in accepted:
                close = difflib.get_close_matches(str(k), accepted, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; accepted: {', '.join(accepted)}"
                raise ConfigError(f"unknown key {k!r} in ratios.sensitivity{hint}")
    spec.sensitivity = dict(sens)
    return spec


def _objectives(raw: Any) -> list[str]:
    if raw is None:
        return ["accuracy", "macs"]
    want = {"accuracy": "max", "macs": "min", "params": "min"}
    if isinstance(raw, Mapping):
        for k, v in raw.items():
            _str(k, "objectives", choices=OBJECTIVES)
            if v not in (want[k], want[k] + "imize"):
                raise ConfigError(f"objectives.{k}: {k} is always {want[k]}imised, got {v!r}")
        items = list(raw)
    elif isinstance(raw, (list, tuple)):
        items = list(raw)
    else:
        raise ConfigError(f"objectives: expected a list such as [accuracy, macs], got {_show(raw)}")
    for i, o in enumerate(items):
        _str(o, f"objectives[{i}]", choices=OBJECTIVES)
    if len(set(items)) != len(items):
        raise ConfigError(f"objectives: duplicates in {items}")
    if "accuracy" not in items or len(items) < 2:
        raise ConfigError(f"objectives: need accuracy and at least one of macs, params; got {items}")
    return sorted(items, key=OBJECTIVES.index)


def _constraints(raw: Any) -> ConstraintSpec:
    d = _section(raw, "constraints")
    return ConstraintSpec(
        max_macs=_float(d.get("max_macs"), "constraints.max_macs", lo=0.0, hi=1.0, lo_open=True, optional=True),
        max_params=_float(d.get("max_params"), "constraints.max_params", lo=0.0, hi=1.0, lo_open=True,
                          optional=True),
        min_accuracy=_float(d.get("min_accuracy"), "constraints.min_accuracy", lo=0.0, hi=1.0, optional=True),
        finetune_infeasible=_bool(d.get("finetune_infeasible", False), "constraints.finetune_infeasible"),
    )


def _sampler(raw: Any) -> SamplerSpec:
    if isinstance(raw, str):
        raw = {"name": raw}
    d = _section(raw, "sampler")
    name = str(d.get("name", "nsga2")).lower().replace("-", "").replace("_", "")
    name = {"nsgaii": "nsga2"}.get(name, name)
    return SamplerSpec(
        name=_str(name, "sampler.name", choices=SAMPLERS),
        seed=_int(d.get("seed"), "sampler.seed", optional=True),
        population_size=_int(d.get("population_size"), "sampler.population_size", lo=2, optional=True),
        n_startup_trials=_int(d.get("n_startup_trials", 10), "sampler.n_startup_trials", lo=0),
    )


def _finetune(raw: Any) -> FinetuneSpec:
    d = _section(raw, "finetune")
    from .train import SCHEDULES

    return FinetuneSpec(
        epochs=_int(d.get("epochs", 1), "finetune.epochs", lo=0),
        max_batches=_int(d.get("max_batches"), "finetune.max_batches", lo=1, optional=True),
        lr=_float(d.get("lr", 0.01), "finetune.lr", lo=0.0, lo_open=True),
        batch_size=_int(d.get("batch_size", 128), "finetune.batch_size", lo=1),
        schedule=_str(d.get("schedule", "cosine"), "finetune.schedule", choices=SCHEDULES),
        weight_decay=_float(d.get("weight_decay", 5e-4), "finetune.weight_decay", lo=0.0),
        momentum=_float(d.get("momentum", 0.9), "finetune.momentum", lo=0.0, hi=1.0, hi_open=True),
        label_smoothing=_float(d.get("label_smoothing", 0.0), "finetune.label_smoothing", lo=0.0, hi=1.0,
                               hi_open=True),
        recalibrate_bn=_int(d.get("recalibrate_bn", 0), "finetune.recalibrate_bn", lo=0),
    )


def _scoring(raw: Any) -> ScoringSpec:
    d = _section(raw, "scoring")
    return ScoringSpec(num_batches=_int(d.get("num_batches", 5), "scoring.num_batches", lo=1),
                       batch_size=_int(d.get("batch_size", 128), "scoring.batch_size", lo=1))


# ------------------------------------------------------------------------------------------------------------
# public


def load_config(src: str | os.PathLike | Mapping[str, Any] | SearchConfig, **overrides: Any) -> SearchConfig:
    """Read and validate a search description: a YAML file path, a dict with the same keys, or a config.

    ``overrides`` replace top-level keys after reading (``n_trials=5``, ``storage=...``, ``study_name=...``).
    Relative input paths (``model.weights``, ``data.root``) are looked up next to the YAML file first, then in the
    working directory; outputs (``run_dir``, a journal ``storage`` path) are relative to the working directory.
    """
    if isinstance(src, SearchConfig):
        raw: Any = src.to_dict()
        base, source = (Path(src.source).parent if src.source else None), src.source
    elif isinstance(src, Mapping):
        raw, base, source = copy.deepcopy(dict(src)), None, None
    else:
        path = Path(os.fspath(src))
        if not path.exists():
            raise FileNotFoundError(f"search config {str(path)!r} not found")
        import yaml

        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if raw is None:
            raw = {}
        base, source = path.resolve().parent, str(path)
        if isinstance(raw, Mapping):
            raw = dict(raw)
            raw.setdefault("name", path.stem)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a search config is a mapping of keys, got {_show(raw)}")
    raw = dict(raw)
    for k, v in overrides.items():
        if v is not None:
            raw[k] = v
    _check_keys(raw, "")
    name = _str(raw.get("name", "search"), "name")
    cfg = SearchConfig(
        name=name,
        model=_model(raw.get("model"), base),
        data=_data(raw.get("data"), base),
        criteria=_criteria(raw.get("criteria")),
        ratios=_ratios(raw.get("ratios")),
        objectives=_objectives(raw.get("objectives")),
        constraints=_constraints(raw.get("constraints")),
        sampler=_sampler(raw.get("sampler")),
        finetune=_finetune(raw.get("finetune")),
        scoring=_scoring(raw.get("scoring")),
        n_trials=_int(raw.get("n_trials", 50), "n_trials", lo=1),
        seed=_int(raw.get("seed", 0), "seed", lo=0),
        study_name=_str(raw.get("study_name"), "study_name", optional=True),
        storage=_str(raw.get("storage"), "storage", optional=True),
        run_dir=_str(raw.get("run_dir"), "run_dir", optional=True),
        device=_str(raw.get("device"), "device", optional=True),
        threads=_int(raw.get("threads"), "threads", lo=1, optional=True),
        source=source,
    )
    r, c = cfg.ratios, cfg.constraints
    if r.mode == "guided":
        if r.level is None:
            hi = c.max_macs if c.max_macs is not None else 0.9
            r.level = [min(0.2, hi), hi]
        if c.max_macs is not None and r.level[0] > c.max_macs + 1e-12:
            raise ConfigError(f"constraints.max_macs={c.max_macs} cannot be met by any guided allocation: "
                              f"ratios.level {r.level} keeps at least {r.level[0]:.0%} of the MACs; lower "
                              f"ratios.level or relax the budget")
    return cfg


def group_bounds(cfg: SearchConfig, names: list[str]) -> dict[str, tuple[float, float]]:
    """[low, high] ratio bounds per prunable group: ``ratios.default``, overridden by matching ``ratios.groups``
    patterns in file order (later patterns win)."""
    out = {n: tuple(cfg.ratios.default) for n in names}
    for pat, b in cfg.ratios.groups.items():
        for n in names:
            if fnmatch.fnmatchcase(n, pat):
                out[n] = (b[0], b[1])
    return out  # type: ignore[return-value]


def check_against_graph(cfg: SearchConfig, graph: Any) -> None:
    """Checks that need the model: patterns match prunable groups, and the budgets are reachable.

    Raises :class:`ConfigError`.
    """
    prunable = [g.name for g in graph.prunable_groups]
    if not prunable:
        raise ConfigError(f"model {cfg.model.name!r} has no prunable channel group; see `autoprune groups`")
    locked = {g.name: g.reason for g in graph.groups if not g.prunable}
    for pat in cfg.ratios.groups:
        hits = [n for n in prunable if fnmatch.fnmatchcase(n, pat)]
        if hits:
            continue
        locked_hits = [n for n in locked if fnmatch.fnmatchcase(n, pat)]
        if locked_hits:
            raise ConfigError(f"ratios.groups[{pat!r}]: pattern matches only locked groups "
                              f"({', '.join(locked_hits[:5])}: {locked[locked_hits[0]]}); they are never pruned")
        close = difflib.get_close_matches(pat, prunable, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        shown = ", ".join(prunable[:12]) + (" ..." if len(prunable) > 12 else "")
        raise ConfigError(f"ratios.groups[{pat!r}]: pattern matches no prunable group{hint} (groups: {shown}; "
                          "list them with `autoprune groups MODEL`)")
    c = cfg.constraints
    if c.max_macs is None and c.max_params is None:
        return
    bounds = group_bounds(cfg, prunable)
    import torch

    zeros = {n: torch.zeros(graph.group(n).channels) for n in prunable}
    most = graph.plan({n: b[1] for n, b in bounds.items()}, zeros)
    for key, params in (("max_macs", False), ("max_params", True)):
        limit = getattr(c, key)
        if limit is None:
            continue
        base = graph.macs(params=params)
        least = graph.macs(most, params=params) / base
        if least > limit + 1e-12:
            what = "parameters" if params else "MACs"
            raise ConfigError(f"constraints.{key}={limit} cannot be met: pruning every group to its upper bound "
                              f"still keeps {least:.1%} of the {what}; raise the upper bounds (ratios.default, "
                              f"ratios.groups) or relax the budget")
