"""The config schema of every command: one YAML file describes a model, its data and a whole pruning search.

``autoprune search``, ``sensitivity``, ``prune``, ``compare-criteria``, ``export``, ``pareto``, ``report`` and
``dashboard`` all read this schema through :func:`load_config`, which returns a validated :class:`SearchConfig`.
Every error is a :class:`ConfigError` (a ``ValueError``) naming the file and the offending key, e.g.
``ratios.groups['layer4.*']: pattern matches no prunable group`` or
``unknown key 'n_trial' in the top level; did you mean 'n_trials'?``.

**One place for every key**: each key is a dataclass field below whose metadata holds its documentation and its
check; its default is the field's default. :data:`SCHEMA` (allowed keys) and the reference tables of
``docs/search.md`` (:func:`reference_markdown`) are derived from the dataclasses, and a test keeps the document
equal to them.

Two stages of checks:

* :func:`load_config` -- keys, types, ranges, choices: everything that needs no model;
* :func:`check_against_graph` -- what needs the model's channel groups: every ``ratios.groups`` pattern must match
  a prunable group, and the budget constraints must be reachable within the ratio bounds.

**Trust**: a config the user passes (a file, a dict, a :class:`SearchConfig`) may name code (``model.name:
module:function``) and choose where files are written. One read from a study's storage (:func:`load_stored_config`,
``SearchConfig.trusted`` False) may not: :meth:`SearchConfig.check_code_allowed` refuses its code names when a model
is built, and its output paths are kept under the working directory (docs/distributed.md, "What is trusted").
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import fnmatch
import hashlib
import json
import math
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping

__all__ = [
    "ConfigError", "UntrustedConfigError", "SearchConfig", "ModelSpec", "PretrainSpec", "DataSpec", "RatioSpec",
    "ConstraintSpec", "SamplerSpec", "FinetuneSpec", "ScoringSpec", "LatencySpec", "load_config", "load_stored_config",
    "check_against_graph", "group_bounds", "reference_markdown", "is_code_name", "OBJECTIVES", "SAMPLERS", "GUIDES",
    "SCHEMA",
]

OBJECTIVES = ("accuracy", "macs", "params", "latency")
SAMPLERS = ("nsga2", "tpe")
GUIDES = ("sensitivity", "srr", "uniform")
MODES = ("guided", "per_group")


class ConfigError(ValueError):
    """An invalid configuration; the message names the key (and the file, when read from one)."""


class UntrustedConfigError(ConfigError):
    """A config read from a study's storage names code (``model.name: module:function``); only the user's own
    config file may (see :meth:`SearchConfig.check_code_allowed`)."""


def is_code_name(name: str) -> bool:
    """Whether a ``model.name`` names code of the user's (``module:function``, imported and called) rather than a
    registered model (a package model, ``torchvision:NAME`` or a bare torchvision name)."""
    return ":" in name and not name.startswith("torchvision:")


# ------------------------------------------------------------------------------------------------------------
# one key = one field: its default, its documentation and its check


@dataclass
class _Ctx:
    """What a check may need: the config file's folder (relative input paths) and the keys parsed before it."""

    base: Path | None
    values: dict[str, Any]


Check = Callable[[Any, str, _Ctx], Any]


def _key(default: Any = MISSING, doc: str = "", check: Check | None = None, *, shown: str | None = None,
         section: type | None = None) -> Any:
    """A config key: ``default`` (MISSING = required; a list, dict or section class is copied per instance),
    ``doc`` (markdown, for docs/search.md), ``check(value, where, ctx) -> value`` (raises ConfigError), ``shown``
    (how the default reads in the reference when it is computed), ``section`` (a nested section's dataclass)."""
    md = {"doc": doc, "check": check, "shown": shown, "section": section}
    if default is MISSING:
        return field(metadata=md)
    if isinstance(default, type):
        return field(default_factory=default, metadata=md)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=md)
    return field(default=default, metadata=md)


# -- checks (each returns the normalised value) ----------------------------------------------------------------


def _c_int(lo: int | None = None) -> Check:
    return lambda v, where, ctx: _int(v, where, lo=lo)


def _c_float(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
    return lambda v, where, ctx: _float(v, where, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)


def _c_str(choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None) -> Check:
    return lambda v, where, ctx: _str(v, where, choices=choices() if callable(choices) else choices)


def _c_bool(v: Any, where: str, ctx: _Ctx) -> bool:
    return _bool(v, where)


def _c_bounds(v: Any, where: str, ctx: _Ctx) -> list[float]:
    return _bounds(v, where)


def _c_mapping(v: Any, where: str, ctx: _Ctx) -> dict:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {_show(v)}")
    return dict(v)


def _c_input_path(v: Any, where: str, ctx: _Ctx) -> str:
    return _resolve_input_path(_str(v, where), ctx.base)  # type: ignore[return-value]


def _c_expanded(v: Any, where: str, ctx: _Ctx) -> str:
    return os.path.expanduser(os.path.expandvars(_str(v, where)))  # type: ignore[arg-type]


def _c_input_shape(v: Any, where: str, ctx: _Ctx) -> list[int]:
    if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in v):
        raise ConfigError(f"{where}: expected [C, H, W] (three positive integers), got {_show(v)}")
    return [int(s) for s in v]


def _c_image_size(v: Any, where: str, ctx: _Ctx) -> list[int]:
    size = [v, v] if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ConfigError(f"{where}: expected an integer or [H, W], got {_show(v)}")
    return [int(s) for s in size]


def _datasets() -> tuple[str, ...]:
    from .data import DATASETS

    return tuple(DATASETS)


def _schedules() -> tuple[str, ...]:
    from .train import SCHEDULES

    return tuple(SCHEDULES)


def _c_data_options(v: Any, where: str, ctx: _Ctx) -> dict:
    from .data import _OPTIONS

    opts = _c_mapping(v, where, ctx)
    ds = ctx.values.get("dataset")
    accepted = sorted(_OPTIONS.get(ds, ()))
    for k in opts:
        if k not in accepted:
            close = difflib.get_close_matches(str(k), accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown key {k!r} in {where} for dataset {ds}{hint} (accepted: {', '.join(accepted)})")
    return opts


def _c_criteria(v: Any, where: str, ctx: _Ctx) -> list[str]:
    from .criteria import available_criteria

    items = [v] if isinstance(v, str) else v
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigError(f"{where}: expected a criterion name or a non-empty list of names, got {_show(v)}")
    known = tuple(available_criteria())
    out: list[str] = []
    for i, c in enumerate(items):
        _str(c, f"{where}[{i}]", choices=known)
        if c in out:
            raise ConfigError(f"{where}: {c!r} is listed twice")
        out.append(c)
    return out


def _c_objectives(v: Any, where: str, ctx: _Ctx) -> list[str]:
    want = {"accuracy": "max", "macs": "min", "params": "min", "latency": "min"}
    if isinstance(v, Mapping):
        for k, d in v.items():
            _str(k, where, choices=OBJECTIVES)
            if d not in (want[k], want[k] + "imize"):
                raise ConfigError(f"{where}.{k}: {k} is always {want[k]}imised, got {d!r}")
        items = list(v)
    elif isinstance(v, (list, tuple)):
        items = list(v)
    else:
        raise ConfigError(f"{where}: expected a list such as [accuracy, macs], got {_show(v)}")
    for i, o in enumerate(items):
        _str(o, f"{where}[{i}]", choices=OBJECTIVES)
    if len(set(items)) != len(items):
        raise ConfigError(f"{where}: duplicates in {items}")
    if "accuracy" not in items or len(items) < 2:
        raise ConfigError(f"{where}: need accuracy and at least one of macs, params, latency; got {items}")
    return sorted(items, key=OBJECTIVES.index)


def _c_level(v: Any, where: str, ctx: _Ctx) -> list[float]:
    lv = [v, v] if _is_num(v) else v
    if not isinstance(lv, (list, tuple)) or len(lv) != 2 or not all(_is_num(x) for x in lv):
        raise ConfigError(f"{where}: expected [low, high] (fractions of MACs kept), got {_show(v)}")
    lo, hi = float(lv[0]), float(lv[1])
    if not (0.0 < lo <= hi <= 1.0):
        raise ConfigError(f"{where}: must satisfy 0 < low <= high <= 1 (fraction of MACs kept), got [{lv[0]}, {lv[1]}]")
    return [lo, hi]


def _c_groups(v: Any, where: str, ctx: _Ctx) -> dict[str, list[float]]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: expected a mapping {{pattern: [low, high]}}, got {_show(v)}")
    out = {}
    for pat, b in v.items():
        if not isinstance(pat, str) or not pat:
            raise ConfigError(f"{where}: patterns must be non-empty strings, got {pat!r}")
        out[pat] = _bounds(b, f"{where}[{pat!r}]")
    return out


def _c_sensitivity(v: Any, where: str, ctx: _Ctx) -> dict:
    import inspect

    from .sensitivity_analysis import sensitivity as _sens_fn

    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: expected a mapping of autoprune.sensitivity_analysis options, got {_show(v)}")
    accepted = [p for p in inspect.signature(_sens_fn).parameters
                if p not in ("model", "data", "example_inputs", "graph")]
    for k in v:
        if k not in accepted:
            close = difflib.get_close_matches(str(k), accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; accepted: {', '.join(accepted)}"
            raise ConfigError(f"unknown key {k!r} in {where}{hint}")
    return dict(v)


def _c_name(v: Any, where: str, ctx: _Ctx) -> str:
    """A search's name is a folder of ``runs/``: one plain file-name-like word, never a path (``../x``, ``/x``)."""
    s: str = _str(v, where)  # type: ignore[assignment]
    bad = [c for c in ("/", "\\", ":") if c in s]
    if bad or not s.strip(".") or s != s.strip() or not s.isprintable() or os.path.isabs(s):
        why = (f"it contains {bad[0]!r}" if bad else "it is only dots" if not s.strip(".") else
               "it starts or ends with a space" if s != s.strip() else "it holds a control character")
        raise ConfigError(f"{where}: {s!r} is not a plain name ({why}): the run directory is runs/<name>, so a name "
                          "with path separators, '..' or an absolute path would put it outside the working directory. "
                          "Use one word such as 'resnet56-search' (letters, digits, '-', '_', '.'; the default is the "
                          "config file's stem), and set run_dir: PATH for a run directory elsewhere")
    return s


def _c_sampler_name(v: Any, where: str, ctx: _Ctx) -> str:
    name = str(v).lower().replace("-", "").replace("_", "")
    return _str({"nsgaii": "nsga2"}.get(name, name), where, choices=SAMPLERS)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------------------
# the schema


@dataclass
class PretrainSpec:
    """No weights: train the base model first (cached as ``<run_dir>/base-<hash>.pt``; for quick tests)."""

    epochs: int = _key(3, "training epochs", _c_int(1))
    lr: float = _key(0.05, "learning rate", _c_float(0.0, lo_open=True))
    batch_size: int = _key(128, "batch size", _c_int(1))
    max_batches: int | None = _key(None, "cap on batches per epoch", _c_int(1), shown="all")


@dataclass
class ModelSpec:
    """The model to prune. A bare string is read as `{name: ...}`."""

    shorthand: ClassVar[str] = "name"

    name: str = _key(doc="package model (`resnet56`, `vgg16_bn_cifar`...), torchvision name (`resnet50`, "
                     "`torchvision:resnet50`), or `module:function` of your own code (imported from next to the "
                     "config file or the working directory, called with `kwargs`)", check=_c_str())
    kwargs: dict = _key({}, "keyword arguments of the constructor; package and torchvision models get `num_classes` "
                        "from the data unless given", _c_mapping)
    weights: str | None = _key(None, "a state_dict file (`torch.load(weights_only=True)`; `state_dict`/`model` "
                               "entries of a checkpoint and `module.` prefixes are handled) or an autoprune model file "
                               "(then an already-pruned model is pruned further)", _c_input_path,
                               shown="none (random initialisation, or `pretrain`)")
    input_shape: list[int] | None = _key(None, "`[C, H, W]` of one input; must equal the shape of a data sample "
                                         "(checked)", _c_input_shape, shown="the data's")
    pretrain: PretrainSpec | None = _key(None, "no weights: train the base model first (section)",
                                         section=PretrainSpec, shown="none")


@dataclass
class DataSpec:
    """The data set (see docs/finetune.md)."""

    dataset: str = _key(doc="`synthetic`, `cifar10`, `cifar100` or `imagefolder`", check=_c_str(_datasets))
    root: str | None = _key(None, "data directory (`imagefolder`: holds `train/` and `test/` or `val/`)",
                            _c_input_path, shown="none (required for imagefolder)")
    val_fraction: float = _key(0.1, "fraction of the training images held out for validation; trials are scored "
                               "on it", _c_float(0.0, 1.0, hi_open=True))
    val_from: str = _key("train", "`train` or `test`: carve the val split from the test images instead "
                         "(`val_fraction` of them; test keeps the rest) -- for checkpoints trained on the whole "
                         "training split, whose train-carved val scores ~100%", _c_str(("train", "test")))
    num_train: int | None = _key(None, "keep only this many training images", _c_int(1), shown="all")
    image_size: list[int] | None = _key(None, "resize images to this size (int or `[H, W]`)", _c_image_size,
                                        shown="native")
    eval_split: str = _key("val", "split that trials are scored on: `val` or `test`", _c_str(("val", "test")))
    cache_dir: str | None = _key(None, "decoded-data cache", _c_expanded,
                                 shown="`$AUTOPRUNE_CACHE` or `~/.cache/autoprune`")
    options: dict = _key({}, "extra `load_data` options: synthetic `num_classes`, `train_per_class`, "
                         "`test_per_class`; cifar `download`; imagefolder `stream`, `num_workers`, "
                         "`max_cached_size`; all `mean`, `std`, `padding`", _c_data_options)


GUIDED_ONLY = ("guide", "level", "offset", "anchors", "sensitivity")


@dataclass
class RatioSpec:
    """Ratio parameterisation. A ratio is the fraction of a group's channels removed, in `[0, 1)`."""

    mode: str = _key("per_group", "`per_group` (one searched ratio per group) or `guided` (a searched budget level "
                     "plus per-group offsets around an allocation)", _c_str(MODES))
    guide: str = _key("sensitivity", "guided: what the offsets are centred on -- `sensitivity` (the damage-per-MAC "
                      "allocation of `autoprune.allocate` from a sensitivity table, computed once and cached on "
                      "disk), `srr` (structural redundancy, no table) or `uniform` (one ratio for all groups)",
                      _c_str(GUIDES))
    level: list[float] | None = _key(None, "guided: `[low, high]` of the searched budget level = fraction of MACs "
                                     "the allocation keeps", _c_level,
                                     shown="`[0.2, max_macs]`, or `[0.2, 0.9]` without a budget")
    offset: float = _key(0.1, "guided: each group's ratio is `clip(allocation(level)[group] + offset_g, low, high)` "
                         "with `offset_g` searched in `[-offset, offset]`", _c_float(0.0, 0.5))
    anchors: int = _key(0, "guided: when the study is created, enqueue this many trials at the guide's own "
                        "allocation (every offset 0) at evenly spaced levels, both ends included (criteria in "
                        "turn). Not part of the study fingerprint", _c_int(0))
    default: list[float] = _key([0.0, 0.9], "`[low, high]` bounds of every group's ratio", _c_bounds)
    groups: dict[str, list[float]] = _key({}, "`{pattern: [low, high]}`: bounds for the groups whose name matches "
                                          "the `fnmatch` pattern (`layer1.*`, `conv1`); in file order, later "
                                          "patterns win. Equal bounds fix a group (`conv1: [0, 0]` never prunes it). "
                                          "Group names: `autoprune groups CONFIG`", _c_groups)
    step: float | None = _key(None, "discretisation step of the searched ratios/offsets",
                              _c_float(0.0, 0.5, lo_open=True), shown="continuous")
    round_to: int = _key(1, "keep every pruned group at a multiple of this many channels (at least that many; a group "
                         "left whole keeps its count): the sampled ratios are rounded to the nearest multiple before "
                         "channels are chosen (e.g. 8 for SIMD/tensor-core friendly widths; docs/deploy.md)", _c_int(1))
    sensitivity: dict = _key({}, "guided `sensitivity`: options of `autoprune.sensitivity_analysis.sensitivity` "
                             "(`ratios`, `bn_batches`, `eval_batches`, `batch_size`, `criterion` -- default the first "
                             "of `criteria` -- ...); `autoprune sensitivity CONFIG` uses them too", _c_sensitivity)


@dataclass
class ConstraintSpec:
    """Budgets; infeasible trials never reach the Pareto front. `autoprune prune CONFIG` prunes to them."""

    max_macs: float | None = _key(None, "keep at most this fraction of the base model's MACs",
                                  _c_float(0.0, 1.0, lo_open=True), shown="none")
    max_params: float | None = _key(None, "keep at most this fraction of its parameters",
                                    _c_float(0.0, 1.0, lo_open=True), shown="none")
    min_accuracy: float | None = _key(None, "reject trials below this validation accuracy (fraction in [0, 1])",
                                      _c_float(0.0, 1.0), shown="none")
    max_latency_ms: float | None = _key(None, "reject trials slower than this measured latency (median ms per call, "
                                        "settings in the `latency` section); over-budget trials are not fine-tuned",
                                        _c_float(0.0, lo_open=True), shown="none")
    finetune_infeasible: bool = _key(False, "fine-tune trials over a MAC/parameter budget anyway (otherwise they "
                                     "are only evaluated after pruning)", _c_bool)

    def active(self) -> dict[str, float]:
        return {k: v for k, v in (("max_macs", self.max_macs), ("max_params", self.max_params),
                                  ("min_accuracy", self.min_accuracy), ("max_latency_ms", self.max_latency_ms))
                if v is not None}


@dataclass
class LatencySpec:
    """How trial latency is measured (`autoprune.latency.measure_latency`) for a `latency` objective or
    `constraints.max_latency_ms`: on the base model pruned by the trial's channels (speed depends on the
    architecture, not the weights), before fine-tuning, cached by the removal digest in `<run_dir>/latency.json`.
    Warm-up calls, then the median of `repeats` timed calls; the spread is recorded with every trial."""

    device: str = _key("cpu", "`cpu` or `cuda`", _c_str(("cpu", "cuda")))
    batch_size: int = _key(1, "inputs per call", _c_int(1))
    threads: int | None = _key(1, "intra-op threads (torch or ONNX Runtime); `null` for the runtime's default",
                               _c_int(1))
    runtime: str = _key("torch", "`torch` (eager PyTorch) or `onnxruntime` (the trial's model exported to ONNX; "
                        "needs `pip install \"autoprune[deploy]\"`)", _c_str(("torch", "onnxruntime")))
    warmup: int = _key(5, "untimed calls first", _c_int(0))
    repeats: int = _key(20, "timed calls; the median is the objective (more repeats: steadier on a busy machine)",
                        _c_int(1))


@dataclass
class SamplerSpec:
    """The Optuna sampler. A bare string is read as `{name: ...}`."""

    shorthand: ClassVar[str] = "name"

    name: str = _key("nsga2", "`nsga2` (`optuna.samplers.NSGAIISampler`) or `tpe` (`TPESampler(multivariate=True, "
                     "constant_liar=True)`)", _c_sampler_name)
    seed: int | None = _key(None, "sampler seed", _c_int(), shown="the top-level `seed`")
    population_size: int | None = _key(None, "NSGA-II population", _c_int(2),
                                       shown="`n_trials // 4`, clamped to [4, 50]")
    n_startup_trials: int = _key(10, "TPE random start-up trials", _c_int(0))


def _c_rungs(v: Any, where: str, ctx: _Ctx) -> list[float]:
    if not isinstance(v, (list, tuple)) or not v or not all(_is_num(x) and 0.0 <= x < 1.0 for x in v):
        raise ConfigError(f"{where}: expected a non-empty list of fractions of the fine-tuning budget in [0, 1) "
                          f"(e.g. [0, 0.33]: after BatchNorm re-estimation and after a third), got {_show(v)}")
    return sorted({float(x) for x in v})


@dataclass
class DistillSpec:
    """Knowledge distillation from the unpruned model while fine-tuning (`autoprune.distill`): the loss is
    `(1 - alpha) * cross_entropy + alpha * T^2 * KL(teacher || student)` on logits softened by `T`. `distill: true`
    uses the defaults."""

    switch: ClassVar[str] = "enabled"

    enabled: bool = _key(True, "`false` turns distillation off", _c_bool)
    alpha: float = _key(0.5, "weight of the teacher's term (0 = labels only, 1 = teacher only)", _c_float(0.0, 1.0))
    temperature: float = _key(4.0, "softening temperature `T`", _c_float(0.0, lo_open=True))


@dataclass
class FinetuneSpec:
    """Fine-tuning of every trial (and of `autoprune prune`), as `autoprune.train.finetune`."""

    epochs: int = _key(1, "epochs per trial (0 = evaluate right after pruning)", _c_int(0))
    max_batches: int | None = _key(None, "cap on batches per epoch", _c_int(1), shown="all")
    lr: float = _key(0.01, "learning rate", _c_float(0.0, lo_open=True))
    batch_size: int = _key(128, "batch size", _c_int(1))
    schedule: str = _key("cosine", "`cosine`, `onecycle` or `constant`", _c_str(_schedules))
    weight_decay: float = _key(5e-4, "weight decay", _c_float(0.0))
    momentum: float = _key(0.9, "SGD momentum", _c_float(0.0, 1.0, hi_open=True))
    label_smoothing: float = _key(0.0, "label smoothing", _c_float(0.0, 1.0, hi_open=True))
    recalibrate_bn: int = _key(0, "re-estimate BatchNorm statistics on this many batches before fine-tuning",
                               _c_int(0))
    distill: DistillSpec | None = _key(None, "knowledge distillation from the unpruned model (section; `true` for "
                                       "alpha 0.5, temperature 4)", section=DistillSpec, shown="none (labels only)")
    prune_steps: int = _key(1, "`autoprune prune`: reach the budget in this many prune -> fine-tune steps "
                            "(repetitive pruning, scores recomputed on the partly pruned model, the same total "
                            "fine-tuning split between the steps); search trials prune in one step", _c_int(1))


@dataclass
class ScoringSpec:
    """Data seen by activation criteria (`hrank`, `ezcrop`, ...)."""

    num_batches: int = _key(5, "training batches seen by activation criteria", _c_int(1))
    batch_size: int = _key(128, "their batch size", _c_int(1))


@dataclass
class EarlyStoppingSpec:
    """Multi-objective early stopping of trials (`autoprune.study.early_stopping`): at each rung a trial is compared
    with the other trials' results at the same rung, in every objective, and stopped (Optuna state PRUNED) when it
    cannot reach the front. `early_stopping: true` is `{enabled: true}` with the defaults."""

    switch: ClassVar[str] = "enabled"

    enabled: bool = _key(False, "stop trials that cannot reach the front", _c_bool)
    rungs: list[float] | None = _key(None, "where trials are compared: fractions of the fine-tuning budget in `[0, 1)` "
                                     "(0 = after pruning and BatchNorm re-estimation, before fine-tuning)", _c_rungs,
                                     shown="`[0, 1/reduction_factor]`")
    reduction_factor: float = _key(3.0, "a trial goes on when it is among the first `ceil(n / reduction_factor)` of "
                                   "its rung's `n` results, ordered by non-dominated front, then by hypervolume "
                                   "contribution inside a front",
                                   _c_float(1.0, lo_open=True))
    min_results: int | None = _key(None, "results a rung needs before it stops any trial", _c_int(2),
                                   shown="`ceil(reduction_factor)`")


@dataclass(kw_only=True)
class SearchConfig:
    """A validated config (see :func:`load_config`)."""

    name: str = _key("search", "name of the search; default study name and run directory", _c_name,
                     shown="the file's stem")
    seed: int = _key(0, "seed of the sampler, data split, scoring, model initialisation and fine-tuning", _c_int(0))
    n_trials: int = _key(50, "number of COMPLETE trials to reach", _c_int(1))
    study_name: str | None = _key(None, "Optuna study name", _c_str(), shown="`name`")
    storage: str | None = _key(None, "Optuna storage URL, or a journal file path", _c_str(),
                               shown="`<run_dir>/optuna.journal`")
    storage_patience: float = _key(300.0, "seconds a process keeps retrying (with back-off) a database storage "
                                   "that stopped answering mid-run before it exits with status 2; its trial is then "
                                   "failed and retried by the other workers or at the next start", _c_float(0.0))
    run_dir: str | None = _key(None, "directory for the journal, pretrained base weights, reports and the outputs "
                               "of `sensitivity`, `prune`, `compare-criteria`", _c_str(), shown="`runs/<name>`")
    device: str | None = _key(None, "device for data and training", _c_str(), shown="cuda when available, else cpu")
    threads: int | None = _key(None, "`torch.set_num_threads` while searching and exporting, restored after; an "
                               "exported model is rebuilt with the same count, so CPU results match bit for bit",
                               _c_int(1), shown="torch's own")
    model: ModelSpec = _key(doc="the model to prune (section)", section=ModelSpec)
    data: DataSpec = _key(doc="the data set (section)", section=DataSpec)
    criteria: list[str] = _key(["l1"], "a criterion name (`l1`), or a list (`[l1, hrank, ezcrop]`): then the "
                               "criterion is a searched categorical. Names: `autoprune.available_criteria()`",
                               _c_criteria)
    ratios: RatioSpec = _key(RatioSpec, "ratio parameterisation (section)", section=RatioSpec)
    objectives: list[str] = _key(["accuracy", "macs"], "`[accuracy, macs]`, `[accuracy, macs, params]`, "
                                 "`[accuracy, params]`, `[accuracy, latency]` or `[accuracy, macs, latency]`; accuracy "
                                 "is maximised, the others minimised (latency: measured, see the `latency` section)",
                                 _c_objectives)
    constraints: ConstraintSpec = _key(ConstraintSpec, "budgets (section)", section=ConstraintSpec)
    latency: LatencySpec = _key(LatencySpec, "how latency is measured for a `latency` objective or "
                                "`constraints.max_latency_ms` (section)", section=LatencySpec)
    sampler: SamplerSpec = _key(SamplerSpec, "Optuna sampler (section)", section=SamplerSpec)
    finetune: FinetuneSpec = _key(FinetuneSpec, "fine-tuning of every trial (section)", section=FinetuneSpec)
    scoring: ScoringSpec = _key(ScoringSpec, "data used by activation criteria (section)", section=ScoringSpec)
    early_stopping: EarlyStoppingSpec = _key(EarlyStoppingSpec, "multi-objective early stopping of trials "
                                             "(section)", section=EarlyStoppingSpec)
    source: str | None = field(default=None, metadata={"internal": True})  # the file it was read from (no key)
    # Whether this config may name code to import and run (model.name `module:function`): True for the user's own
    # config (a file, a dict or a SearchConfig they pass); False for one read from a study's storage
    # (:func:`load_stored_config`), which anyone who can write to a shared database may have written. No key.
    trusted: bool = field(default=True, metadata={"internal": True})
    origin: str | None = field(default=None, metadata={"internal": True})  # where an untrusted config was read

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
        for f in fields(self):
            if f.metadata.get("internal"):
                d.pop(f.name, None)  # (source, trusted, origin: not keys)
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
        if keep["ratios"].get("round_to") == 1:
            keep["ratios"].pop("round_to")  # the default: the fingerprint of a study made before the key existed
        if keep["constraints"].get("max_latency_ms") is None:
            keep["constraints"].pop("max_latency_ms", None)
        if "latency" in self.objectives or self.constraints.max_latency_ms is not None:
            keep["latency"] = d["latency"]  # what the latency objective/constraint measures
        keep["finetune"].pop("prune_steps", None)  # `autoprune prune` only; trials prune in one step
        if keep["finetune"].get("distill") is None:
            keep["finetune"].pop("distill", None)  # off: the fingerprint of a study made before the key existed
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

    def code_names(self) -> dict[str, str]:
        """The keys of this config that name code to import and call, with their values: ``model.name`` of the form
        ``module:function`` (see :func:`is_code_name`). It is the only such key of the schema: criteria, data sets,
        samplers, guides, schedules and runtimes are names of what is registered in the running process."""
        return {"model.name": self.model.name} if is_code_name(self.model.name) else {}

    def check_code_allowed(self) -> None:
        """Raise :class:`UntrustedConfigError` when this config is untrusted (read from a study's storage) and names
        code (:meth:`code_names`); :func:`autoprune.build.build_model` calls it before importing anything."""
        names = self.code_names()
        if self.trusted or not names:
            return
        shown = ", ".join(f"{k} {v!r}" for k, v in names.items())
        where = self.origin or "a study's storage"
        raise UntrustedConfigError(
            f"{where} names code to import and run ({shown}), and a config read from a study's storage is never "
            "trusted to name code: anyone who can write to the storage could run commands on this machine. Pass "
            "your own config file of the search instead, e.g. `autoprune export CONFIG --trial N OUT` or "
            "`autoprune report CONFIG --latency` (with --storage/--study when the study lives elsewhere); in "
            "Python: load_front(CONFIG) or ParetoFront(study, config=load_config(CONFIG))")

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
# parsing: one generic walk over the dataclasses, plus the rules that tie keys of a section together


_SECTIONS: dict[str, type] = {"": SearchConfig, "model": ModelSpec, "model.pretrain": PretrainSpec, "data": DataSpec,
                              "ratios": RatioSpec, "constraints": ConstraintSpec, "sampler": SamplerSpec,
                              "finetune": FinetuneSpec, "finetune.distill": DistillSpec, "scoring": ScoringSpec,
                              "early_stopping": EarlyStoppingSpec, "latency": LatencySpec}


def _keys(cls: type) -> list[dataclasses.Field]:
    return [f for f in fields(cls) if not f.metadata.get("internal")]


#: Allowed keys per section with their documentation, derived from the dataclasses.
SCHEMA: dict[str, dict[str, str]] = {sec: {f.name: f.metadata["doc"] for f in _keys(cls)}
                                     for sec, cls in _SECTIONS.items()}


def _required(f: dataclasses.Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING  # type: ignore[misc]


def _parse(cls: type, raw: Any, section: str, base: Path | None) -> Any:
    shorthand = getattr(cls, "shorthand", None)
    if isinstance(raw, str) and shorthand:
        raw = {shorthand: raw}
    switch = getattr(cls, "switch", None)
    if isinstance(raw, bool) and switch:  # `early_stopping: true` = `{enabled: true}`
        raw = {switch: raw}
    d = _section(raw, section)
    values: dict[str, Any] = {}
    for f in _keys(cls):
        where = _where(section, f.name)
        if f.name not in d:
            if _required(f):
                raise ConfigError(f"{where} is required: {f.metadata['doc']}")
            continue
        v = d[f.name]
        if v is None and f.default is None:
            values[f.name] = None
        elif f.metadata["section"] is not None:
            values[f.name] = _parse(f.metadata["section"], v, where, base)
        else:
            values[f.name] = f.metadata["check"](v, where, _Ctx(base, values))
    obj = cls(**values)
    rule = _RULES.get(cls)
    if rule is not None:
        rule(obj, d)
    return obj


def _rule_model(m: ModelSpec, given: Mapping[str, Any]) -> None:
    if m.weights is not None and m.pretrain is not None:
        raise ConfigError("model: give either weights or pretrain, not both")


def _rule_data(d: DataSpec, given: Mapping[str, Any]) -> None:
    if d.dataset == "imagefolder" and d.root is None:
        raise ConfigError("data.root is required for dataset imagefolder (a directory with train/ and test/)")


def _rule_ratios(r: RatioSpec, given: Mapping[str, Any]) -> None:
    guided_only = [k for k in GUIDED_ONLY if k in given]
    if r.mode == "per_group" and guided_only:
        raise ConfigError(f"ratios.{guided_only[0]} only applies to mode: guided (mode is per_group)")
    if r.sensitivity and r.guide != "sensitivity":
        raise ConfigError(f"ratios.sensitivity only applies to guide: sensitivity (guide is {r.guide})")


_RULES: dict[type, Callable[[Any, Mapping[str, Any]], None]] = {
    ModelSpec: _rule_model, DataSpec: _rule_data, RatioSpec: _rule_ratios}


# ------------------------------------------------------------------------------------------------------------
# public


def load_config(src: str | os.PathLike | Mapping[str, Any] | SearchConfig, **overrides: Any) -> SearchConfig:
    """Read and validate a config: a YAML file path, a dict with the same keys, or a config.

    ``overrides`` replace top-level keys after reading (``n_trials=5``, ``storage=...``, ``study_name=...``,
    ``device=...``); ``None`` values are ignored. Relative input paths (``model.weights``, ``data.root``) are looked
    up next to the YAML file first, then in the working directory; outputs (``run_dir``, a journal ``storage``
    path) are relative to the working directory. Errors name the file (when there is one) and the key.
    """
    if isinstance(src, SearchConfig):
        raw: Any = src.to_dict()
        base, source = (Path(src.source).parent if src.source else None), src.source
    elif isinstance(src, Mapping):
        raw, base, source = copy.deepcopy(dict(src)), None, None
    else:
        path = Path(os.fspath(src))
        if not path.exists():
            raise FileNotFoundError(f"config file {str(path)!r} not found (a YAML file such as "
                                    "search_spaces/quickstart.yaml)")
        if path.is_dir():
            found = sorted(q.name for q in path.iterdir() if q.suffix in (".yaml", ".yml"))
            which = (f"one of its YAML files ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})" if found
                     else "the YAML file (e.g. search_spaces/quickstart.yaml)")
            raise ConfigError(f"config path {str(path)!r} is a directory; give {which}")
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
    try:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"a config is a mapping of keys, got {_show(raw)}")
        raw = dict(raw)
        for k, v in overrides.items():
            if v is not None:
                raw[k] = v
        cfg = _parse(SearchConfig, raw, "", base)
        cfg.source = source
        if isinstance(src, SearchConfig):  # a config read from a study's storage stays untrusted when re-read
            cfg.trusted, cfg.origin = src.trusted, src.origin
        r, c = cfg.ratios, cfg.constraints
        if r.mode == "guided":
            if r.level is None:
                hi = c.max_macs if c.max_macs is not None else 0.9
                r.level = [min(0.2, hi), hi]
            if c.max_macs is not None and r.level[0] > c.max_macs + 1e-12:
                raise ConfigError(f"constraints.max_macs={c.max_macs} cannot be met by any guided allocation: "
                                  f"ratios.level {r.level} keeps at least {r.level[0]:.0%} of the MACs; lower "
                                  f"ratios.level or relax the budget")
        if cfg.early_stopping.enabled and cfg.finetune.epochs == 0:
            raise ConfigError("early_stopping needs fine-tuning to stop: finetune.epochs is 0 (set it to 1 or more, "
                              "or early_stopping: false)")
    except ConfigError as e:
        if source is None or str(e).startswith(f"{source}: "):
            raise
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def load_stored_config(raw: Any, *, origin: str) -> SearchConfig:
    """A config read from a study's storage (what ``autoprune search`` stored in the study's user attributes), for
    reading the study without the config file: validated like any other, but **untrusted** -- anyone who can write
    to a shared database may have written it. ``origin`` says where it was read (it opens the error messages).

    * it never names code: ``model.name: module:function`` is refused when a model is built
      (:meth:`SearchConfig.check_code_allowed`: the user passes their own config file instead);
    * the paths it would write to stay under the working directory: a ``run_dir`` outside it is replaced by
      ``runs/<name>``, a ``data.cache_dir`` or ``ratios.sensitivity`` ``cache_dir`` outside it by the default cache,
      and a CIFAR ``data.root`` outside it is read but never downloaded into.

    Inputs it reads (``model.weights``, ``data.root``) are read as data only (``torch.load(weights_only=True)``).
    """
    cfg = load_config(raw)
    cfg.source = None  # (a stored source path would only tell where to import code from)
    cfg.trusted, cfg.origin = False, origin
    cwd = Path.cwd().resolve()

    def outside(p: Any) -> bool:
        return not Path(os.path.expanduser(str(p))).resolve().is_relative_to(cwd)

    # (silently: `pareto --storage` writes nothing, and `report` prints where it writes; docs/distributed.md)
    if cfg.run_dir is not None and outside(cfg.run_dir):
        cfg.run_dir = None  # runs/<name>: the name is a plain word (_c_name)
    if cfg.data.cache_dir is not None and outside(cfg.data.cache_dir):
        cfg.data.cache_dir = None  # the user's own default cache
    sens_cache = cfg.ratios.sensitivity.get("cache_dir")
    if isinstance(sens_cache, (str, os.PathLike)) and outside(sens_cache):
        cfg.ratios.sensitivity.pop("cache_dir")
    if cfg.data.dataset in ("cifar10", "cifar100") and cfg.data.root is not None and outside(cfg.data.root):
        cfg.data.options["download"] = False  # read what is there, never download into it
    return cfg


def _shown_default(f: dataclasses.Field) -> str:
    md = f.metadata
    if md.get("shown"):
        return md["shown"]
    if md.get("section") is not None:
        return "required section" if _required(f) else "section"
    if _required(f):
        return "required"
    v = f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, (list, dict, str, int, float)):
        return f"`{json.dumps(v).replace(chr(34), '')}`"
    return str(v)


def reference_markdown() -> str:
    """The key reference of docs/search.md (one table per section), generated from the dataclasses."""
    out = []
    for sec, cls in _SECTIONS.items():
        title = "top level" if not sec else f"`{sec}`"
        intro = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split()) if sec else \
            "Sections are the keys whose default says *section*."
        lines = [f"### {title}", "", intro, "",
                 "| key | default | meaning |", "|---|---|---|"]
        for f in _keys(cls):
            lines.append(f"| `{f.name}` | {_shown_default(f)} | {f.metadata['doc']} |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


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

