"""The result of a search: the feasible Pareto front of accuracy vs MACs (and params)."""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import optuna
import torch.nn as nn
from optuna.trial import FrozenTrial, TrialState

from ..config import SearchConfig, load_stored_config
from ..deploy.export import FORMATS, ExportResult, export_model
from ..deploy.files import save
from ..train.polish import PolishResult, polish
from .digest import removal_digest
from .problem import Problem
from .speed import speed_table

__all__ = ["TrialRecord", "ParetoFront", "ExportedTrial", "front_records", "trial_records", "pareto_filter",
           "hypervolume_2d"]


@dataclass
class ExportedTrial:
    """What :meth:`ParetoFront.export_trial` made: the rebuilt (and maybe polished) ``model``, ``info`` (the dict
    written to ``<path>.json``), ``export`` (the :class:`~autoprune.deploy.export.ExportResult` of a deployment
    format, None for ``"autoprune"``) and ``polish`` (the :class:`~autoprune.train.polish.PolishResult` when it was
    polished, else None)."""

    model: nn.Module
    info: dict[str, Any]
    export: ExportResult | None = None
    polish: PolishResult | None = None


@dataclass
class TrialRecord:
    """One COMPLETE trial: what was pruned and what it measured."""

    number: int
    accuracy: float
    macs: int
    params: int
    macs_fraction: float
    params_fraction: float
    criterion: str
    ratios: dict[str, float] = field(repr=False)
    seconds: float = 0.0
    feasible: bool = True
    finetuned: bool = True
    level: float | None = None
    latency_ms: float | None = None       # measured (median ms per call) when the search had a latency objective
    latency_iqr_ms: float | None = None   # ... and its spread

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _record(t: FrozenTrial, cfg: SearchConfig | None) -> TrialRecord | None:
    a = t.user_attrs
    if "accuracy" not in a or "macs" not in a:
        return None
    feasible = all(v <= 0.0 for v in t.constraints.values())
    if cfg is not None:  # the budgets of the config at hand (they may be stricter than when the trial ran)
        c = cfg.constraints
        if c.max_macs is not None and a["macs_fraction"] > c.max_macs + 1e-12:
            feasible = False
        if c.max_params is not None and a["params_fraction"] > c.max_params + 1e-12:
            feasible = False
        if c.min_accuracy is not None and a["accuracy"] < c.min_accuracy:
            feasible = False
        if c.max_latency_ms is not None and a.get("latency_ms", float("inf")) > c.max_latency_ms:
            feasible = False
    return TrialRecord(number=t.number, accuracy=float(a["accuracy"]), macs=int(a["macs"]), params=int(a["params"]),
                       macs_fraction=float(a["macs_fraction"]), params_fraction=float(a["params_fraction"]),
                       criterion=str(a.get("criterion", "")), ratios=dict(a.get("ratios", {})),
                       seconds=float(a.get("seconds", 0.0)), feasible=feasible,
                       finetuned=bool(a.get("finetuned", True)), level=a.get("level"),
                       latency_ms=a.get("latency_ms"), latency_iqr_ms=a.get("latency_iqr_ms"))


def trial_records(study: optuna.Study, cfg: SearchConfig | None = None) -> list[TrialRecord]:
    """Every COMPLETE trial of ``study`` as a record (feasibility judged by the stored constraints and, when given,
    by ``cfg``'s budgets), in trial order."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        r = _record(t, cfg)
        if r is not None:
            out.append(r)
    return out


def _objectives_of(cfg: SearchConfig | None, study: optuna.Study) -> list[str]:
    if cfg is not None:
        return list(cfg.objectives)
    names = {"accuracy": "accuracy", "macs_fraction": "macs", "params_fraction": "params", "latency_ms": "latency"}
    stored = study.metric_names or []
    if stored and all(n in names for n in stored):
        return [names[n] for n in stored]
    return ["accuracy", "macs", "params"][: len(study.directions)]


def pareto_filter(records: Sequence[TrialRecord], objectives: Sequence[str] = ("accuracy", "macs")) -> list[
        TrialRecord]:
    """Non-dominated feasible records (accuracy maximised; MAC and parameter fractions minimised), sorted by MACs.
    Of records with identical objective values only the first is kept."""
    def key(r: TrialRecord) -> tuple[float, ...]:  # all minimised
        vals = {"accuracy": -r.accuracy, "macs": r.macs_fraction, "params": r.params_fraction,
                "latency": r.latency_ms if r.latency_ms is not None else float("inf")}
        return tuple(vals[o] for o in objectives)

    feas = [r for r in records if r.feasible]
    keys = [key(r) for r in feas]
    front, seen = [], set()
    for i, r in enumerate(feas):
        ki = keys[i]
        dominated = any(all(a <= b for a, b in zip(kj, ki)) and any(a < b for a, b in zip(kj, ki))
                        for j, kj in enumerate(keys) if j != i)
        if not dominated and ki not in seen:
            seen.add(ki)
            front.append(r)
    return sorted(front, key=lambda r: (r.macs, -r.accuracy, r.number))


def front_records(study: optuna.Study, cfg: SearchConfig | None = None) -> list[TrialRecord]:
    return pareto_filter(trial_records(study, cfg), _objectives_of(cfg, study))


def hypervolume_2d(points: Sequence[tuple[float, float]], ref: tuple[float, float] = (0.0, 1.0)) -> float:
    """Area dominated by ``(accuracy, macs_fraction)`` points (accuracy up, MACs down) and bounded by ``ref`` =
    (worst accuracy, worst MAC fraction). Higher is better; used to compare a search with a uniform baseline."""
    pts = sorted((m, a) for a, m in points if a > ref[0] and m < ref[1])
    area, best = 0.0, ref[0]
    # sweep MACs from high to low budgets: each point adds the slab it improves
    xs = [m for m, _ in pts] + [ref[1]]
    for i, (m, a) in enumerate(pts):
        best = max(best, a)
        area += (xs[i + 1] - m) * (best - ref[0])
    return float(area)


class ParetoFront(Sequence[TrialRecord]):
    """Feasible non-dominated trials of a search, sorted by MACs (ascending).

    >>> front = autoprune.study.search("search_spaces/quickstart.yaml")
    >>> for r in front: print(r.number, r.accuracy, r.macs_fraction)
    >>> r = front.best_under(macs=0.5)          # best accuracy keeping <= 50% of the MACs
    >>> model = front.export(r.number, "pruned.pt")
    """

    def __init__(self, study: optuna.Study, config: SearchConfig | None = None, *, problem: Any = None) -> None:
        self.study = study
        attrs = study.user_attrs.get("autoprune") or {}
        self._config_error: str | None = None
        if config is None and attrs.get("config"):
            try:  # untrusted: it may not name code, and its paths do not decide where files are written
                config = load_stored_config(attrs["config"], origin=f"the config stored in study {study.study_name!r}")
            except ValueError as e:  # written by another version of autoprune, or by someone else
                self._config_error = str(e)
                warnings.warn(f"study {study.study_name!r}: cannot read its stored config ({e}); pass your own "
                              "config file (config=)")
        self.config = config
        self.base: dict[str, float] = dict(attrs.get("base") or {})
        self._problem = problem
        self.all: list[TrialRecord] = trial_records(study, config)
        self.trials: list[TrialRecord] = pareto_filter(self.all, _objectives_of(config, study))

    # -- sequence --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.trials)

    def __getitem__(self, i):  # type: ignore[override]
        return self.trials[i]

    def __iter__(self) -> Iterator[TrialRecord]:
        return iter(self.trials)

    def __repr__(self) -> str:
        return f"ParetoFront(study={self.study.study_name!r}, front={len(self)}, complete={len(self.all)})"

    # -- queries ---------------------------------------------------------------------------------------------
    def trial(self, number: int) -> TrialRecord:
        """The COMPLETE trial ``number`` (on the front or not)."""
        for r in self.all:
            if r.number == number:
                return r
        states = {t.number: t.state.name for t in self.study.get_trials(deepcopy=False)}
        why = f"it is {states[number]}" if number in states else "no such trial"
        raise KeyError(f"trial {number} is not a COMPLETE trial of study {self.study.study_name!r} ({why})")

    def best_under(self, macs: float | None = None, params: float | None = None) -> TrialRecord | None:
        """The most accurate front trial within the budgets; a budget <= 1 is a fraction of the base model,
        larger values are absolute counts. None when no trial fits."""
        fits = []
        for r in self.trials:
            if macs is not None and (r.macs_fraction if macs <= 1 else r.macs) > macs + 1e-12:
                continue
            if params is not None and (r.params_fraction if params <= 1 else r.params) > params + 1e-12:
                continue
            fits.append(r)
        return max(fits, key=lambda r: (r.accuracy, -r.macs)) if fits else None

    def hypervolume(self, ref: tuple[float, float] = (0.0, 1.0)) -> float:
        """2-D hypervolume of the front in (accuracy, MAC fraction) space; see :func:`hypervolume_2d`."""
        return hypervolume_2d([(r.accuracy, r.macs_fraction) for r in self.trials], ref)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.trials]

    def table(self, records: Sequence[TrialRecord] | None = None) -> str:
        """The front as a text table (with a measured-latency column when the search measured latency)."""
        recs = self.trials if records is None else records
        lat = any(r.latency_ms is not None for r in recs)

        def ms(v: Any) -> str:
            return (f"{v:10.3f}  " if v is not None else f"{'-':>10}  ") if lat else ""

        rows = [f"{'trial':>5}  {'accuracy':>8}  {'MACs':>12}  {'MACs %':>6}  {'params':>10}  {'params %':>8}  "
                + (f"{'latency ms':>10}  " if lat else "") + f"{'criterion':9s}  note"]
        if self.base:
            rows.append(f"{'base':>5}  {self.base.get('accuracy', float('nan')):8.2%}  {int(self.base['macs']):>12,}  "
                        f"{1:6.1%}  {int(self.base['params']):>10,}  {1:8.1%}  {ms(self.base.get('latency_ms'))}"
                        f"{'-':9s}  unpruned")
        on_front = {r.number for r in self.trials}
        for r in recs:
            note = "front" if r.number in on_front else ("" if r.feasible else "infeasible")
            rows.append(f"{r.number:>5}  {r.accuracy:8.2%}  {r.macs:>12,}  {r.macs_fraction:6.1%}  {r.params:>10,}  "
                        f"{r.params_fraction:8.1%}  {ms(r.latency_ms)}{r.criterion:9s}  {note}".rstrip())
        return "\n".join(rows)

    def speed_table(self, *, measure: bool = False, settings: Mapping[str, Any] | None = None) -> str:
        """MACs, parameters and measured latency of the front's members side by side, with the speed-up over the
        unpruned model: does a smaller MAC count mean a faster model on this device? Latency as the search measured
        it; with ``measure`` measured now where missing (``settings``: :func:`autoprune.deploy.latency.measure_latency`
        keywords, default the config's ``latency`` section), cached in ``<run_dir>/latency.json``
        (:mod:`autoprune.study.speed`)."""
        return speed_table(self, measure=measure, settings=settings)

    # -- export ----------------------------------------------------------------------------------------------
    def _require_config(self, what: str) -> SearchConfig:
        """The config, or a ValueError saying why there is none and that the user passes their own."""
        if self.config is None:
            why = (f"its stored config cannot be used ({self._config_error})" if self._config_error
                   else "it has no stored config")
            raise ValueError(f"study {self.study.study_name!r}: {why}; {what} needs the search's config: pass your "
                             "own config file, e.g. `autoprune export CONFIG --trial N OUT` (in Python: config=)")
        return self.config

    def problem(self) -> Any:
        if self._problem is None:
            cfg = self._require_config("rebuilding its models")
            cfg.check_code_allowed()  # (build_model checks it too; here before any data is loaded)
            self._problem = Problem(self.config)
        return self._problem

    def rebuild(self, number: int) -> tuple[Any, Any]:
        """Re-run trial ``number`` deterministically: same scores, same channels removed, same fine-tuning seed.
        Returns (model, outcome)."""
        rec = self.trial(number)
        threads = self.config.cpu_threads() if self.config is not None else contextlib.nullcontext()
        with threads:  # the search's thread count: CPU float reductions depend on it
            prob = self.problem()
            removal = prob.removal(rec.ratios, rec.criterion)
            stored = self._user_attrs(number).get("removal_sha")
            if stored and stored != removal_digest(removal):
                warnings.warn(f"trial {number}: the rebuilt removal differs from the trial's (base model, data or "
                              "scoring changed?); the exported model is not the one that was measured")
            return prob.build(removal, train=rec.finetuned)

    def polish(self, number: int, epochs: int, *, distill: bool | dict[str, float] = True, lr: float | None = None,
               progress: bool = False, model: Any = None, max_batches: int | None = None) -> Any:
        """Rebuild trial ``number`` (or take its rebuilt ``model``) and fine-tune it ``epochs`` more epochs, with
        distillation from the unpruned model by default (``distill=False``: labels only; the options default to the
        config's ``finetune.distill`` or alpha 0.5, T 4); returns :class:`autoprune.train.polish.PolishResult` (val
        and test accuracy before and after). The front chooses the model; this is the model to deploy.
        ``max_batches`` caps each epoch (a quick check; default: whole epochs)."""
        self._require_config("polishing its models")
        if model is None:
            model, _ = self.rebuild(number)
        prob, ft = self.problem(), self.config.finetune
        if distill is True and ft.distill is not None and ft.distill.enabled:
            distill = {"alpha": ft.distill.alpha, "temperature": ft.distill.temperature}
        with self.config.cpu_threads():
            res = polish(model, prob.data, epochs=epochs, teacher=prob.teacher() if distill else None,
                         distill=distill, lr=ft.lr if lr is None else lr, batch_size=ft.batch_size,
                         seed=self.config.seed, progress=progress,
                         finetune_kwargs={"momentum": ft.momentum, "weight_decay": ft.weight_decay,
                                          "schedule": ft.schedule, "label_smoothing": ft.label_smoothing,
                                          "max_batches": max_batches})
        res.extra.update(trial=number, accuracy_search=self.trial(number).accuracy)
        return res

    def export(self, number: int, path: str | os.PathLike, *, verify: bool = True, atol: float = 1e-6,
               finetune_epochs: int = 0, distill: bool | dict[str, float] = True, lr: float | None = None,
               progress: bool = False, format: str = "autoprune") -> Any:
        """Rebuild trial ``number`` (see :meth:`rebuild`), save it with :func:`autoprune.deploy.files.save` to
        ``path`` and write ``<path>.json`` (trial, ratios, criterion, stored and reproduced accuracy). Returns the
        model (nothing is attached to it); :meth:`export_trial` (same arguments) returns an :class:`ExportedTrial`:
        the model with what was written, the format's check and the polish result.

        With ``verify`` a reproduced accuracy that differs from the trial's by more than ``atol`` warns (expected
        only on GPUs with non-deterministic kernels). ``finetune_epochs > 0`` polishes the rebuilt model first
        (:meth:`polish`: with distillation unless ``distill=False``); ``<path>.json`` then has ``polish`` (val and
        test accuracy before and after). ``format``: ``"autoprune"`` (:func:`autoprune.deploy.files.save`), or
        ``"onnx"``, ``"exported"``, ``"torchscript"``: written by :func:`autoprune.deploy.export.export_model`, which
        runs the file back and compares it with the model (its result is ``<path>.json``'s ``export`` entry and
        :attr:`ExportedTrial.export`)."""
        return self.export_trial(number, path, verify=verify, atol=atol, finetune_epochs=finetune_epochs,
                                 distill=distill, lr=lr, progress=progress, format=format).model

    def export_trial(self, number: int, path: str | os.PathLike, *, verify: bool = True, atol: float = 1e-6,
                     finetune_epochs: int = 0, distill: bool | dict[str, float] = True, lr: float | None = None,
                     progress: bool = False, format: str = "autoprune") -> ExportedTrial:
        """:meth:`export`, returning an :class:`ExportedTrial`: the model, the ``<path>.json`` dict, the deployment
        format's check result and the polish result."""
        if format not in FORMATS:
            raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
        rec = self.trial(number)
        model, out = self.rebuild(number)
        if verify and abs(out.accuracy - rec.accuracy) > atol:
            warnings.warn(f"trial {number}: reproduced accuracy {out.accuracy:.4%} differs from the search's "
                          f"{rec.accuracy:.4%} (non-deterministic kernels?)")
        polished = None
        if finetune_epochs:
            polished = self.polish(number, finetune_epochs, distill=distill, lr=lr, progress=progress, model=model)
        exported = None
        if format == "autoprune":
            save(model.cpu(), path)
        else:
            exported = export_model(model.cpu(), self.problem().example_inputs, path, format=format)
        info = {"study": self.study.study_name, "trial": number, "criterion": rec.criterion, "ratios": rec.ratios,
                "accuracy_search": rec.accuracy, "accuracy_export": out.accuracy, "macs": out.macs,
                "params": out.params, "macs_fraction": out.macs_fraction, "params_fraction": out.params_fraction,
                "base": self.base}
        if polished is not None:
            info["polish"] = polished.to_dict()
        if exported is not None:
            info["export"] = exported.to_dict()
        with open(os.fspath(path) + ".json", "w") as f:
            json.dump(info, f, indent=2)
        return ExportedTrial(model=model, info=info, export=exported, polish=polished)

    def _user_attrs(self, number: int) -> dict[str, Any]:
        for t in self.study.get_trials(deepcopy=False):
            if t.number == number:
                return dict(t.user_attrs)
        return {}
