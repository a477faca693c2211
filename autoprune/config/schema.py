"""The config schema: one dataclass per section, every key a field whose metadata holds its documentation and its
check (:func:`autoprune.config.keys.key`); :data:`SECTIONS` names them and :data:`SCHEMA` lists the keys.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch

from .keys import (GUIDES, MODES, UntrustedConfigError, c_bool, c_bounds, c_criteria, c_data_options, c_expanded,
                   c_float, c_groups, c_image_size, c_input_path, c_input_shape, c_int, c_level, c_mapping, c_name,
                   c_objectives, c_rungs, c_sampler_name, c_sensitivity, c_str, dataset_names, is_code_name, key,
                   schedule_names)

__all__ = ["SearchConfig", "ModelSpec", "PretrainSpec", "DataSpec", "RatioSpec", "ConstraintSpec", "SamplerSpec",
           "FinetuneSpec", "ScoringSpec", "LatencySpec", "DistillSpec", "EarlyStoppingSpec", "GUIDED_ONLY", "SECTIONS",
           "SCHEMA", "schema_keys"]


@dataclass
class PretrainSpec:
    """No weights: train the base model first (cached as ``<run_dir>/base-<hash>.pt``; for quick tests)."""

    epochs: int = key(3, "training epochs", c_int(1))
    lr: float = key(0.05, "learning rate", c_float(0.0, lo_open=True))
    batch_size: int = key(128, "batch size", c_int(1))
    max_batches: int | None = key(None, "cap on batches per epoch", c_int(1), shown="all")


@dataclass
class ModelSpec:
    """The model to prune. A bare string is read as `{name: ...}`."""

    shorthand: ClassVar[str] = "name"

    name: str = key(doc="package model (`resnet56`, `vgg16_bn_cifar`...), torchvision name (`resnet50`, "
                     "`torchvision:resnet50`), timm model (`timm:vit_tiny_patch16_224`), or `module:function` "
                     "of your own code (imported from next to the "
                     "config file or the working directory, called with `kwargs`)", check=c_str())
    kwargs: dict = key({}, "keyword arguments of the constructor; package, torchvision and timm models get "
                        "`num_classes` "
                        "from the data unless given", c_mapping)
    weights: str | None = key(None, "a state_dict file (`torch.load(weights_only=True)`; `state_dict`/`model` "
                               "entries of a checkpoint and `module.` prefixes are handled) or an autoprune model file "
                               "(then an already-pruned model is pruned further)", c_input_path,
                               shown="none (random initialisation, or `pretrain`)")
    input_shape: list[int] | None = key(None, "`[C, H, W]` of one input; must equal the shape of a data sample "
                                         "(checked)", c_input_shape, shown="the data's")
    pretrain: PretrainSpec | None = key(None, "no weights: train the base model first (section)",
                                         section=PretrainSpec, shown="none")


@dataclass
class DataSpec:
    """The data set (see docs/finetune.md)."""

    dataset: str = key(doc="`synthetic`, `cifar10`, `cifar100` or `imagefolder`", check=c_str(dataset_names))
    root: str | None = key(None, "data directory (`imagefolder`: holds `train/` and `test/` or `val/`)",
                            c_input_path, shown="none (required for imagefolder)")
    val_fraction: float = key(0.1, "fraction of the training images held out for validation; trials are scored "
                               "on it", c_float(0.0, 1.0, hi_open=True))
    val_from: str = key("train", "`train` or `test`: carve the val split from the test images instead "
                         "(`val_fraction` of them; test keeps the rest) -- for checkpoints trained on the whole "
                         "training split, whose train-carved val scores ~100%", c_str(("train", "test")))
    num_train: int | None = key(None, "keep only this many training images", c_int(1), shown="all")
    image_size: list[int] | None = key(None, "resize images to this size (int or `[H, W]`)", c_image_size,
                                        shown="native")
    eval_split: str = key("val", "split that trials are scored on: `val` or `test`", c_str(("val", "test")))
    cache_dir: str | None = key(None, "decoded-data cache", c_expanded,
                                 shown="`$AUTOPRUNE_CACHE` or `~/.cache/autoprune`")
    options: dict = key({}, "extra `load_data` options: synthetic `num_classes`, `train_per_class`, "
                         "`test_per_class`; cifar `download`; imagefolder `stream`, `num_workers`, "
                         "`max_cached_size`; all `mean`, `std`, `padding`", c_data_options)


GUIDED_ONLY = ("guide", "level", "offset", "anchors", "sensitivity")


@dataclass
class RatioSpec:
    """Ratio parameterisation. A ratio is the fraction of a group's channels removed, in `[0, 1)`."""

    mode: str = key("per_group", "`per_group` (one searched ratio per group) or `guided` (a searched budget level "
                     "plus per-group offsets around an allocation)", c_str(MODES))
    guide: str = key("sensitivity", "guided: what the offsets are centred on -- `sensitivity` (the damage-per-MAC "
                      "allocation of `autoprune.allocate` from a sensitivity table, computed once and cached on "
                      "disk), `srr` (structural redundancy, no table) or `uniform` (one ratio for all groups)",
                      c_str(GUIDES))
    level: list[float] | None = key(None, "guided: `[low, high]` of the searched budget level = fraction of MACs "
                                     "the allocation keeps", c_level,
                                     shown="`[0.2, max_macs]`, or `[0.2, 0.9]` without a budget")
    offset: float = key(0.1, "guided: each group's ratio is `clip(allocation(level)[group] + offset_g, low, high)` "
                         "with `offset_g` searched in `[-offset, offset]`", c_float(0.0, 0.5))
    anchors: int = key(0, "guided: when the study is created, enqueue this many trials at the guide's own "
                        "allocation (every offset 0) at evenly spaced levels, both ends included (criteria in "
                        "turn). Not part of the study fingerprint", c_int(0))
    default: list[float] = key([0.0, 0.9], "`[low, high]` bounds of every group's ratio", c_bounds)
    groups: dict[str, list[float]] = key({}, "`{pattern: [low, high]}`: bounds for the groups whose name matches "
                                          "the `fnmatch` pattern (`layer1.*`, `conv1`); in file order, later "
                                          "patterns win. Equal bounds fix a group (`conv1: [0, 0]` never prunes it). "
                                          "Group names: `autoprune groups CONFIG`", c_groups)
    step: float | None = key(None, "discretisation step of the searched ratios/offsets",
                              c_float(0.0, 0.5, lo_open=True), shown="continuous")
    round_to: int = key(1, "keep every pruned group at a multiple of this many channels (at least that many; a group "
                         "left whole keeps its count): the sampled ratios are rounded to the nearest multiple before "
                         "channels are chosen (e.g. 8 for SIMD/tensor-core friendly widths; docs/deploy.md)", c_int(1))
    sensitivity: dict = key({}, "guided `sensitivity`: options of "
                            "`autoprune.allocation.sensitivity_analysis.sensitivity` (`ratios`, `bn_batches`, "
                            "`eval_batches`, `batch_size`, `criterion` -- default the first of `criteria` -- ...); "
                            "`autoprune sensitivity CONFIG` uses them too", c_sensitivity)


@dataclass
class ConstraintSpec:
    """Budgets; infeasible trials never reach the Pareto front. `autoprune prune CONFIG` prunes to them."""

    max_macs: float | None = key(None, "keep at most this fraction of the base model's MACs",
                                  c_float(0.0, 1.0, lo_open=True), shown="none")
    max_params: float | None = key(None, "keep at most this fraction of its parameters",
                                    c_float(0.0, 1.0, lo_open=True), shown="none")
    min_accuracy: float | None = key(None, "reject trials below this validation accuracy (fraction in [0, 1])",
                                      c_float(0.0, 1.0), shown="none")
    max_latency_ms: float | None = key(None, "reject trials slower than this measured latency (median ms per call, "
                                        "settings in the `latency` section); over-budget trials are not fine-tuned",
                                        c_float(0.0, lo_open=True), shown="none")
    finetune_infeasible: bool = key(False, "fine-tune trials over a MAC/parameter budget anyway (otherwise they "
                                     "are only evaluated after pruning)", c_bool)

    def active(self) -> dict[str, float]:
        return {k: v for k, v in (("max_macs", self.max_macs), ("max_params", self.max_params),
                                  ("min_accuracy", self.min_accuracy), ("max_latency_ms", self.max_latency_ms))
                if v is not None}


@dataclass
class LatencySpec:
    """How trial latency is measured (`autoprune.deploy.latency.measure_latency`) for a `latency` objective or
    `constraints.max_latency_ms`: on the base model pruned by the trial's channels (speed depends on the
    architecture, not the weights), before fine-tuning, cached by the removal digest in `<run_dir>/latency.json`.
    Warm-up calls, then the median of `repeats` timed calls; the spread is recorded with every trial."""

    device: str = key("cpu", "`cpu` or `cuda`", c_str(("cpu", "cuda")))
    batch_size: int = key(1, "inputs per call", c_int(1))
    threads: int | None = key(1, "intra-op threads (torch or ONNX Runtime); `null` for the runtime's default",
                               c_int(1))
    runtime: str = key("torch", "`torch` (eager PyTorch) or `onnxruntime` (the trial's model exported to ONNX; "
                        "needs `pip install \"autoprune[deploy]\"`)", c_str(("torch", "onnxruntime")))
    warmup: int = key(5, "untimed calls first", c_int(0))
    repeats: int = key(20, "timed calls; the median is the objective (more repeats: steadier on a busy machine)",
                        c_int(1))


@dataclass
class SamplerSpec:
    """The Optuna sampler. A bare string is read as `{name: ...}`."""

    shorthand: ClassVar[str] = "name"

    name: str = key("nsga2", "`nsga2` (`optuna.samplers.NSGAIISampler`) or `tpe` (`TPESampler(multivariate=True, "
                     "constant_liar=True)`)", c_sampler_name)
    seed: int | None = key(None, "sampler seed", c_int(), shown="the top-level `seed`")
    population_size: int | None = key(None, "NSGA-II population", c_int(2),
                                       shown="`n_trials // 4`, clamped to [4, 50]")
    n_startup_trials: int = key(10, "TPE random start-up trials", c_int(0))


@dataclass
class DistillSpec:
    """Knowledge distillation from the unpruned model while fine-tuning (`autoprune.train.distill`): the loss is
    `(1 - alpha) * cross_entropy + alpha * T^2 * KL(teacher || student)` on logits softened by `T`. `distill: true`
    uses the defaults."""

    switch: ClassVar[str] = "enabled"

    enabled: bool = key(True, "`false` turns distillation off", c_bool)
    alpha: float = key(0.5, "weight of the teacher's term (0 = labels only, 1 = teacher only)", c_float(0.0, 1.0))
    temperature: float = key(4.0, "softening temperature `T`", c_float(0.0, lo_open=True))


@dataclass
class FinetuneSpec:
    """Fine-tuning of every trial (and of `autoprune prune`), as `autoprune.train.finetune`."""

    epochs: int = key(1, "epochs per trial (0 = evaluate right after pruning)", c_int(0))
    max_batches: int | None = key(None, "cap on batches per epoch", c_int(1), shown="all")
    lr: float = key(0.01, "learning rate", c_float(0.0, lo_open=True))
    batch_size: int = key(128, "batch size", c_int(1))
    schedule: str = key("cosine", "`cosine`, `onecycle` or `constant`", c_str(schedule_names))
    weight_decay: float = key(5e-4, "weight decay", c_float(0.0))
    momentum: float = key(0.9, "SGD momentum", c_float(0.0, 1.0, hi_open=True))
    label_smoothing: float = key(0.0, "label smoothing", c_float(0.0, 1.0, hi_open=True))
    recalibrate_bn: int = key(0, "re-estimate BatchNorm statistics on this many batches before fine-tuning",
                               c_int(0))
    distill: DistillSpec | None = key(None, "knowledge distillation from the unpruned model (section; `true` for "
                                       "alpha 0.5, temperature 4)", section=DistillSpec, shown="none (labels only)")
    prune_steps: int = key(1, "`autoprune prune`: reach the budget in this many prune -> fine-tune steps "
                            "(repetitive pruning, scores recomputed on the partly pruned model, the same total "
                            "fine-tuning split between the steps); search trials prune in one step", c_int(1))


@dataclass
class ScoringSpec:
    """Data seen by activation criteria (`hrank`, `ezcrop`, ...)."""

    num_batches: int = key(5, "training batches seen by activation criteria", c_int(1))
    batch_size: int = key(128, "their batch size", c_int(1))


@dataclass
class EarlyStoppingSpec:
    """Multi-objective early stopping of trials (`autoprune.study.early_stopping`): at each rung a trial is compared
    with the other trials' results at the same rung, in every objective, and stopped (Optuna state PRUNED) when it
    cannot reach the front. `early_stopping: true` is `{enabled: true}` with the defaults."""

    switch: ClassVar[str] = "enabled"

    enabled: bool = key(False, "stop trials that cannot reach the front", c_bool)
    rungs: list[float] | None = key(None, "where trials are compared: fractions of the fine-tuning budget in `[0, 1)` "
                                     "(0 = after pruning and BatchNorm re-estimation, before fine-tuning)", c_rungs,
                                     shown="`[0, 1/reduction_factor]`")
    reduction_factor: float = key(3.0, "a trial goes on when it is among the first `ceil(n / reduction_factor)` of "
                                   "its rung's `n` results, ordered by non-dominated front, then by hypervolume "
                                   "contribution inside a front",
                                   c_float(1.0, lo_open=True))
    min_results: int | None = key(None, "results a rung needs before it stops any trial", c_int(2),
                                   shown="`ceil(reduction_factor)`")


@dataclass(kw_only=True)
class SearchConfig:
    """A validated config (see :func:`load_config`)."""

    name: str = key("search", "name of the search; default study name and run directory", c_name,
                     shown="the file's stem")
    seed: int = key(0, "seed of the sampler, data split, scoring, model initialisation and fine-tuning", c_int(0))
    n_trials: int = key(50, "number of COMPLETE trials to reach", c_int(1))
    study_name: str | None = key(None, "Optuna study name", c_str(), shown="`name`")
    storage: str | None = key(None, "Optuna storage URL, or a journal file path", c_str(),
                               shown="`<run_dir>/optuna.journal`")
    storage_patience: float = key(300.0, "seconds a process keeps retrying (with back-off) a database storage "
                                   "that stopped answering mid-run before it exits with status 2; its trial is then "
                                   "failed and retried by the other workers or at the next start", c_float(0.0))
    run_dir: str | None = key(None, "directory for the journal, pretrained base weights, reports and the outputs "
                               "of `sensitivity`, `prune`, `compare-criteria`", c_str(), shown="`runs/<name>`")
    device: str | None = key(None, "device for data and training", c_str(), shown="cuda when available, else cpu")
    threads: int | None = key(None, "`torch.set_num_threads` while searching and exporting, restored after; an "
                               "exported model is rebuilt with the same count, so CPU results match bit for bit",
                               c_int(1), shown="torch's own")
    model: ModelSpec = key(doc="the model to prune (section)", section=ModelSpec)
    data: DataSpec = key(doc="the data set (section)", section=DataSpec)
    criteria: list[str] = key(["l1"], "a criterion name (`l1`), or a list (`[l1, hrank, ezcrop]`): then the "
                               "criterion is a searched categorical. Names: `autoprune.available_criteria()`",
                               c_criteria)
    ratios: RatioSpec = key(RatioSpec, "ratio parameterisation (section)", section=RatioSpec)
    objectives: list[str] = key(["accuracy", "macs"], "`[accuracy, macs]`, `[accuracy, macs, params]`, "
                                 "`[accuracy, params]`, `[accuracy, latency]` or `[accuracy, macs, latency]`; accuracy "
                                 "is maximised, the others minimised (latency: measured, see the `latency` section)",
                                 c_objectives)
    constraints: ConstraintSpec = key(ConstraintSpec, "budgets (section)", section=ConstraintSpec)
    latency: LatencySpec = key(LatencySpec, "how latency is measured for a `latency` objective or "
                                "`constraints.max_latency_ms` (section)", section=LatencySpec)
    sampler: SamplerSpec = key(SamplerSpec, "Optuna sampler (section)", section=SamplerSpec)
    finetune: FinetuneSpec = key(FinetuneSpec, "fine-tuning of every trial (section)", section=FinetuneSpec)
    scoring: ScoringSpec = key(ScoringSpec, "data used by activation criteria (section)", section=ScoringSpec)
    early_stopping: EarlyStoppingSpec = key(EarlyStoppingSpec, "multi-objective early stopping of trials "
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
# the sections and their keys


SECTIONS: dict[str, type] = {"": SearchConfig, "model": ModelSpec, "model.pretrain": PretrainSpec, "data": DataSpec,
                              "ratios": RatioSpec, "constraints": ConstraintSpec, "sampler": SamplerSpec,
                              "finetune": FinetuneSpec, "finetune.distill": DistillSpec, "scoring": ScoringSpec,
                              "early_stopping": EarlyStoppingSpec, "latency": LatencySpec}


def schema_keys(cls: type) -> list[dataclasses.Field]:
    return [f for f in fields(cls) if not f.metadata.get("internal")]


#: Allowed keys per section with their documentation, derived from the dataclasses.
SCHEMA: dict[str, dict[str, str]] = {sec: {f.name: f.metadata["doc"] for f in schema_keys(cls)}
                                     for sec, cls in SECTIONS.items()}
