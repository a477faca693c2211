"""Pruning-ratio search: an Optuna multi-objective study over per-group pruning ratios (and criteria).

>>> from autoprune.study import search
>>> front = search("search_spaces/quickstart.yaml")       # runs, or resumes, the study
>>> print(front.table())
>>> best = front.best_under(macs=0.5)
>>> front.export(best.number, "pruned.pt")

One trial: criterion scores (computed once per criterion on the base model) -> per-group ratios from the trial's
parameters -> budget constraints (``trial.set_constraint``) -> physical pruning -> brief fine-tuning -> validation
accuracy. Objectives: accuracy (max), MAC fraction (min) and optionally parameter fraction (min).
See docs/search.md.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import optuna

from ..config import ConfigError, SearchConfig, load_config
from .bounds import check_against_graph, group_bounds
from .front import ParetoFront, TrialRecord, hypervolume_2d, pareto_filter
from .local import run_local
from .problem import Problem
from .storage import open_storage

__all__ = ["search", "load_front", "load_config", "check_config", "SearchConfig", "ConfigError", "ParetoFront",
           "TrialRecord", "hypervolume_2d", "pareto_filter", "group_bounds", "check_against_graph"]


def check_config(config: str | os.PathLike | Mapping[str, Any] | SearchConfig, *, log: Callable[[str], None] | None
                 = None, **overrides: Any) -> tuple[SearchConfig, Any]:
    """Validate ``config`` fully: keys and types, then against the model (patterns, budgets). Builds the data and
    the base model (pretraining it if configured). Returns (config, problem)."""
    cfg = load_config(config, **overrides)
    problem = Problem(cfg, log=log)
    check_against_graph(cfg, problem.graph)
    return cfg, problem


def search(config: str | os.PathLike | Mapping[str, Any] | SearchConfig, *, n_trials: int | None = None,
           storage: str | None = None, study_name: str | None = None, progress: bool = False,
           log: Callable[[str], None] | None = None, patience: float | None = None) -> ParetoFront:
    """Run (or resume) the search described by ``config`` (a YAML path, a dict or a :class:`SearchConfig`) and
    return its feasible Pareto front.

    ``n_trials``, ``storage`` and ``study_name`` override the config. The study stops when ``n_trials`` trials are
    COMPLETE; run the same call again after an interruption to resume (completed trials are kept, trials of dead
    workers are failed and retried). Several processes may run the same config at once to share the work: each
    samples with its own seed, and a trial that removes exactly the channels an earlier trial removed reuses its
    result. ``patience``: seconds to wait for a database storage that stopped answering (default
    ``storage_patience`` of the config, else 300).
    """
    return run_local(config, n_trials=n_trials, storage=storage, study_name=study_name, progress=progress, log=log,
                     patience=patience)


def load_front(config: str | os.PathLike | Mapping[str, Any] | SearchConfig | None = None, *,
               storage: str | None = None, study_name: str | None = None) -> ParetoFront:
    """The Pareto front of an existing study, without running anything: from a config (its storage and study
    name), or from ``storage`` (URL or journal file) and ``study_name`` (optional when the storage holds one study).
    """
    cfg = load_config(config, storage=storage, study_name=study_name) if config is not None else None
    st = open_storage(cfg, storage)
    name = cfg.study if cfg is not None else study_name
    if name is None:
        names = [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]
        if len(names) != 1:
            raise ValueError(f"storage holds {len(names)} studies ({', '.join(names) or 'none'}); pass a study name")
        name = names[0]
    try:
        study = optuna.load_study(study_name=name, storage=st)
    except KeyError:
        raise ValueError(f"no study named {name!r} in {storage or (cfg and cfg.storage) or 'the run directory'}; "
                         "has the search been started?") from None
    return ParetoFront(study, cfg)
