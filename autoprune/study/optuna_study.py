"""The Optuna study of a search: its attributes, directions, sampler and seeds, creating or loading it.

:func:`open_study` creates or loads the study of a config; :func:`record_study` writes what a new study records
(metric names, the ``autoprune`` attribute, the base weights' digest, the anchor trials) and warns when an existing
study was made from another config or another base model. :mod:`autoprune.study.session` builds a session on these.
"""
from __future__ import annotations

import random
import time
import warnings
import zlib
from typing import Any, Callable

import optuna

from .._hashing import weights_digest
from ..config import SearchConfig
from .recovery import worker_info
from .storage import open_storage

__all__ = ["STUDY_ATTR", "BASE_SHA_ATTR", "directions", "metric_names", "make_sampler", "process_seed", "retrying",
           "check_directions", "create_or_load", "open_study", "enqueue_anchors", "record_study"]

#: Study user attribute holding the config, its fingerprint and the base model's metrics.
STUDY_ATTR = "autoprune"
#: Study user attribute with the digest of the base model's weights (workers on other machines must match it).
BASE_SHA_ATTR = "autoprune_base_sha"


def directions(cfg: SearchConfig) -> list[str]:
    return ["maximize" if o == "accuracy" else "minimize" for o in cfg.objectives]


def metric_names(cfg: SearchConfig) -> list[str]:
    return [{"accuracy": "accuracy", "macs": "macs_fraction", "params": "params_fraction", "latency": "latency_ms"}[o]
            for o in cfg.objectives]


def make_sampler(cfg: SearchConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler named by ``cfg.sampler``, explicitly (Optuna's default sampler is not relied on)."""
    seed = cfg.sampler_seed if seed is None else seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if cfg.sampler.name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                              n_startup_trials=cfg.sampler.n_startup_trials)
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=cfg.population_size)


def process_seed(cfg: SearchConfig, first: bool, salt: int = 0) -> int:
    """The sampler seed of this process: the config's seed for the process that created the study (``first``),
    else the config's seed mixed with this host, pid and process start time (and ``salt``: the Ray driver's
    round)."""
    if first and not salt:
        return cfg.sampler_seed
    w = worker_info()
    h = zlib.crc32(f"{w['host']}:{w['pid']}:{w['start']}:{salt}".encode())
    return (cfg.sampler_seed * 1_000_003 + h) % 2**31


def retrying(fn: Callable[[], Any], tries: int = 4) -> Any:
    """A small storage write, retried when a concurrent process wrote the same row first."""
    # lazy: sqlalchemy costs 0.1-0.24 s at import and only a database storage needs it
    import sqlalchemy.exc

    for i in range(tries):
        try:
            return fn()
        except (sqlalchemy.exc.IntegrityError, optuna.exceptions.StorageInternalError):
            if i == tries - 1:
                raise
            time.sleep(0.05 + random.random() * 0.2)


def check_directions(cfg: SearchConfig, study: optuna.Study) -> None:
    want = [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
            for d in directions(cfg)]
    if list(study.directions) != want:
        raise ValueError(f"study {cfg.study!r} exists with {len(study.directions)} objectives "
                         f"{[d.name.lower() for d in study.directions]}, but the config asks for {cfg.objectives}; "
                         "use another study_name")


def create_or_load(cfg: SearchConfig, storage: optuna.storages.BaseStorage) -> tuple[optuna.Study, bool]:
    """The study of ``cfg`` and whether this call created it (exactly one of several concurrent callers does)."""
    try:
        study = retrying(lambda: optuna.create_study(storage=storage, study_name=cfg.study,
                                                      directions=directions(cfg), sampler=make_sampler(cfg)))
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=cfg.study, storage=storage, sampler=make_sampler(cfg)), False


def open_study(cfg: SearchConfig, storage: optuna.storages.BaseStorage | None = None, *,
               sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Create or load the study of ``cfg`` (its storage by default) with ``sampler`` (default: the config's sampler
    and seed); checks that the objectives match. Records nothing else: see :func:`open_session`."""
    study, _ = create_or_load(cfg, storage if storage is not None else open_storage(cfg))
    check_directions(cfg, study)
    if sampler is not None:
        study.sampler = sampler
    return study


def enqueue_anchors(study: optuna.Study, space: Any, log: Callable[[str], None]) -> None:
    """Enqueue the ``ratios.anchors`` trials of a new study (see ``RatioSpace.anchor_params``)."""
    params = space.anchor_params()
    for p in params:
        study.enqueue_trial(p, skip_if_exists=True)
    if params:
        levels = ", ".join(f"{p['level']:.2f}" for p in params if "level" in p)
        log(f"enqueued {len(params)} anchor trial(s) at the guide's allocation"
            + (f" (levels {levels})" if levels else ""))


def record_study(cfg: SearchConfig, study: optuna.Study, problem: Any, space: Any, log: Callable[[str], None]) -> None:
    """Metric names, the ``autoprune`` attribute (config, fingerprint, base metrics, groups) and the anchors of a new
    study; a warning when the study was made from another config or another base model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if study.metric_names != metric_names(cfg):
            retrying(lambda: study.set_metric_names(metric_names(cfg)))
    attrs = study.user_attrs.get(STUDY_ATTR)
    fp = cfg.fingerprint()
    if attrs is None:
        value = {"config": cfg.to_dict(), "source": cfg.source, "fingerprint": fp, "base": problem.base_metrics(),
                 "groups": list(problem.group_names), "created": time.time()}
        retrying(lambda: study.set_user_attr(STUDY_ATTR, value))
        retrying(lambda: enqueue_anchors(study, space, log))
    elif attrs.get("fingerprint") != fp:
        warnings.warn(f"study {cfg.study!r} was created from a different config (model, data, ratio space, "
                      "criteria or fine-tuning changed); its earlier trials measured something else. Use a new "
                      "study_name to start afresh.")
    digest = weights_digest(problem.base_model)
    known = study.user_attrs.get(BASE_SHA_ATTR)
    if known is None:
        retrying(lambda: study.set_user_attr(BASE_SHA_ATTR, digest))
    elif known != digest:
        warnings.warn(f"this process's base model (weights digest {digest}) differs from the one the study started "
                      f"with ({known}): its trials prune another model. Give model.weights (a file every machine "
                      "reads) instead of model.pretrain when workers run on different machines.")
