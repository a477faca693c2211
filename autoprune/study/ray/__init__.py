"""The search on a Ray cluster: every trial a Ray Tune trial, every result in the search's own Optuna storage.

This package is the only place that imports Ray, and only when a function here is called (``import autoprune``
never imports Ray; only ``--backend ray`` needs it). Its modules, by job:

* :mod:`.cluster` -- connecting to a cluster (:func:`connect`, :class:`RayUnreachable`);
* :mod:`.trainable` -- the worker side: the Ray Tune trainable and the base weights it loads;
* :mod:`.driver` -- :func:`search_ray`: the session, the define-by-run space, the rung scheduler, the progress
  callback and the Tune rounds;
* :mod:`.searcher` -- the one adapter to ``OptunaSearch``'s private attributes.

:func:`search_ray` (``autoprune search CONFIG --backend ray``):

* connects to a cluster (``address``: ``auto``, ``HOST:PORT``, ``ray://HOST:10001``, or a new local instance), failing
  within seconds with a message naming the address when nothing answers there;
* builds the problem once on the driver (data, base model, pretraining) and ships the base weights to the workers
  through Ray's object store with their sha256, so every node prunes the very same model: a worker writes them into
  its user's private folder (``<tempdir>/autoprune-ray-<uid>``, mode 0700; refused when someone else owns or can
  write it) and loads the file only when it has that digest (else rewrites it from the payload first);
* runs ``tune.Tuner(tune.with_resources(trainable, {"cpu": c, "gpu": g}), tune_config=TuneConfig(
  search_alg=OptunaSearch(define-by-run space, metric=[...], mode=[...], sampler=<the config's sampler>,
  storage=<the search's storage>, study_name=<the study>), num_samples=...))``. The trainable runs the local
  search's trial function (:class:`autoprune.study.objective.TrialObjective`) on an ``optuna.trial.FixedTrial`` of the
  proposed parameters; the trial's user attributes and constraints travel back with its metrics and are written into
  the Optuna trial before it is told COMPLETE. Fractional ``gpus_per_trial`` (0.25) runs several trials per GPU.
* repeats with the missing count until ``n_trials`` trials are COMPLETE (failed trials are replaced), so the study
  ends like a local search's; ``autoprune pareto``/``report``/``export``/``dashboard`` read it unchanged, and a
  local ``autoprune search`` (or more ``autoprune worker`` processes) can continue the same study.

Tested with ray 2.60 and optuna 5.1 (:data:`TESTED_VERSIONS`). Ray Tune's own experiment checkpoint of the searcher
is disabled: the Optuna storage is the record, and running the same command again resumes (trials of a killed driver
are failed and their parameters enqueued again, as in the local search).
"""
from __future__ import annotations

from .cluster import RayUnreachable, connect
from .driver import search_ray
from .searcher import TESTED_VERSIONS

__all__ = ["search_ray", "connect", "RayUnreachable", "TESTED_VERSIONS"]
