"""Many worker processes, on any machines, pulling the trials of one study from a database (PostgreSQL).

``autoprune worker CONFIG --storage postgresql://USER@HOST:5432/DB`` (or :func:`run_worker`) starts one worker;
start as many as you like, on as many machines as can reach the database. A worker is the search session
(:mod:`autoprune.study.session`) on a database storage, run until the study has ``n_trials`` COMPLETE trials:

* Heartbeats: a worker that dies mid-trial (``kill -9``, a lost machine, a pre-empted pod) stops beating; after
  ``grace_period`` seconds any other worker marks its trial FAIL and enqueues it again
  (:class:`~autoprune.study.recovery.RetryFailedTrial`), and the next free worker runs it. Ctrl-C or SIGTERM fails
  the running trial and enqueues its retry at once.
* A database that stops answering mid-run is retried with back-off for ``patience`` seconds (default 300; config key
  ``storage_patience``); then the worker stops with :class:`~autoprune.study.storage.StorageLost`, and its trial,
  left RUNNING without heartbeat, is failed and retried by the others or at the next start.
* Stop rule: a worker starts a trial only while ``COMPLETE + RUNNING < n_trials``, otherwise it waits (checking for
  stale trials) until the study has ``n_trials`` COMPLETE trials.
* Fail fast: an unreachable server or a wrong URL is reported within ``connect_timeout`` seconds, naming the URL
  (password hidden) and what to check; a missing driver names the package to install.
"""
from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from optuna.trial import FrozenTrial, TrialState

from .recovery import DEFAULT_MAX_RETRY
from .session import SearchSession, open_session
from .storage import (DEFAULT_CONNECT_TIMEOUT, DEFAULT_GRACE, DEFAULT_HEARTBEAT, StorageLost, StorageUnreachable,
                      redact_url)

__all__ = ["run_worker", "WorkerResult", "StorageUnreachable", "StorageLost", "DEFAULT_HEARTBEAT", "DEFAULT_GRACE",
           "DEFAULT_MAX_RETRY"]


@dataclass
class WorkerResult:
    """What one worker did."""

    study: str
    storage: str
    n_trials: int
    complete: int  # COMPLETE trials of the study when the worker stopped
    ran: list[int] = field(default_factory=list)  # trial numbers this worker finished (COMPLETE)
    failed: list[int] = field(default_factory=list)  # trial numbers this worker ran that failed
    reused: list[int] = field(default_factory=list)  # of `ran`: trials that reused an earlier trial's result
    seconds: float = 0.0
    waited_seconds: float = 0.0


def _trial_line(session: SearchSession, t: FrozenTrial) -> str:
    a = t.user_attrs
    if t.state == TrialState.COMPLETE:
        retry = t.system_attrs.get("retry_history")
        how = f" (reused trial {a['reused_from']}'s result)" if "reused_from" in a else \
            f" in {a.get('seconds', 0.0):.1f} s"
        return (f"trial {t.number} COMPLETE{how}: accuracy {a.get('accuracy', float('nan')):.2%}, "
                f"{a.get('macs_fraction', float('nan')):.1%} MACs{f' (retry of {retry})' if retry else ''} -- "
                f"{session.n_complete()}/{session.cfg.n_trials} complete")
    return f"trial {t.number} {t.state.name}: {a.get('error', '')}"


def run_worker(config: Any, *, storage: str | None = None, n_trials: int | None = None,
               study_name: str | None = None, heartbeat_interval: int = DEFAULT_HEARTBEAT,
               grace_period: int | None = DEFAULT_GRACE, max_retry: int | None = DEFAULT_MAX_RETRY,
               connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, patience: float | None = None,
               poll_interval: float | None = None, max_failures: int = 3,
               log: Callable[[str], None] | None = None) -> WorkerResult:
    """Run trials of the study of ``config`` (a YAML path, dict or :class:`SearchConfig`) from a shared database
    until it has ``n_trials`` COMPLETE trials; see the module docstring. ``storage`` (default: the config's
    ``storage``) must be a database URL, e.g. ``postgresql://USER:PASSWORD@HOST:5432/DB``.

    Raises :class:`StorageUnreachable` (within about ``connect_timeout`` seconds) when the database cannot be used,
    :class:`StorageLost` when it stopped answering for ``patience`` seconds mid-run, and ``RuntimeError`` after
    ``max_failures`` trials of this worker failed in a row (a broken config or model). ``KeyboardInterrupt`` fails
    the running trial, enqueues its retry, and is re-raised.
    """
    log = log or (lambda s: None)
    t_start = time.perf_counter()
    with open_session(config, n_trials=n_trials, storage=storage, study_name=study_name, log=log,
                      heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry,
                      connect_timeout=connect_timeout, patience=patience, require_database=True) as session:
        cfg = session.cfg
        if poll_interval is not None:
            session.poll_interval = poll_interval
        shown = redact_url(cfg.storage)
        log(f"worker {socket.gethostname()}:{os.getpid()}: storage {shown}, study {cfg.study!r}, "
            f"{cfg.n_trials} trials, sampler seed {session.seed}")
        run = session.run(max_failures=max_failures, on_trial=lambda s, t: log(_trial_line(s, t)))
        res = WorkerResult(study=cfg.study, storage=shown, n_trials=cfg.n_trials, complete=run.complete,
                           ran=run.ran, failed=run.failed, reused=run.reused, waited_seconds=run.waited_seconds,
                           seconds=time.perf_counter() - t_start)
        log(f"study {cfg.study!r} has {res.complete} COMPLETE trials (this worker finished {len(res.ran)}); stopping")
        return res
