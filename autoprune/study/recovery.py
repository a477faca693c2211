"""Dead workers and their trials: who runs a trial, whether that process still lives, and the one retry scheme.

* Every trial records its ``worker`` (host, pid, process start time, sampler seed).
* A RUNNING trial whose worker is gone is failed: by its stopped heartbeat on a database storage (Optuna's
  ``fail_stale_trials``), or, on this host, because its process is gone (:func:`recover_stale_trials`; a journal has
  no heartbeats).
* Whichever way a trial is failed (dead worker, Ctrl-C/SIGTERM, lost database), :class:`RetryFailedTrial` enqueues its
  parameters again once, with the user attribute ``retry_of`` and Optuna's system attributes ``failed_trial`` and
  ``retry_history`` (as ``RetryHeartbeatStaleTrialCallback`` writes them, so optuna-dashboard shows the chain). It is
  also the heartbeat callback of database storages: there is one retry scheme.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from .._files import disk_full_in
from .patient_storage import storage_of, trial_id_of

__all__ = ["worker_info", "worker_alive", "WorkerRegistry", "RetryFailedTrial", "recover_stale_trials",
           "DEFAULT_MAX_RETRY"]

#: Retries of one trial whose workers keep dying (then it stays FAIL).
DEFAULT_MAX_RETRY = 3
_STALE_NO_WORKER_S = 600.0  # a RUNNING trial that never recorded its worker is stale after this long
#: Seconds after which an interrupted FAIL trial without a retry is retried by whoever sees it. Whoever fails a trial
#: enqueues its retry right after (milliseconds later); only a process killed in between leaves one without. Waiting
#: keeps a second worker from retrying a trial whose failer is still enqueuing (two retries of one trial).
LATE_RETRY_AFTER_S = 60.0
#: How Optuna names a trial's constraint values among its system attributes (``constraints:<key>``; Optuna's private
#: ``optuna.study._constrained_optimization._CONSTRAINTS_KEY``; tests/test_faults.py checks it).
_CONSTRAINT_PREFIX = "constraints:"


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of a process, from /proc; None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return rest[0], rest[19]
    except (OSError, IndexError):
        return None


def worker_info() -> dict[str, Any]:
    """This process as a trial's ``worker`` attribute: host, pid and start time (a reused pid is told apart)."""
    pid = os.getpid()
    st = _proc_stat(pid)
    return {"host": socket.gethostname(), "pid": pid, "start": st[1] if st else None}


def worker_alive(w: dict[str, Any]) -> bool:
    """Whether the process of a ``worker`` attribute (of this host) still runs."""
    pid = int(w.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    st = _proc_stat(pid)
    if st is None:
        return True  # no /proc: trust kill(0)
    state, start = st
    if state in ("Z", "X"):
        return False  # killed, not yet reaped
    return w.get("start") in (None, start)  # a different start time: the pid was reused


class WorkerRegistry:
    """Worker processes of one journal: each holds an ``flock`` on ``<journal>.workers/<host>-<pid>`` for its
    lifetime (the kernel drops it when the process dies, however it dies). ``others_alive()`` tells whether any
    other worker of this machine is still running -- then a RUNNING trial that had no time to record its worker
    (killed right after ``study.ask()``) may still be someone's, otherwise it is certainly stale."""

    _held: dict[str, int] = {}  # path -> fd, kept open for the life of the process

    def __init__(self, journal: str | os.PathLike) -> None:
        self.dir = Path(os.fspath(journal) + ".workers")
        self.me = self.dir / f"{socket.gethostname()}-{os.getpid()}"

    def register(self) -> None:
        import fcntl  # lazy: fcntl is POSIX-only

        if str(self.me) in self._held:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.me, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as e:
            full = disk_full_in(e, self.me)
            if full is None:
                raise
            raise full from e
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._held[str(self.me)] = fd

    def others_alive(self) -> bool:
        import fcntl  # lazy: fcntl is POSIX-only

        alive = False
        for f in self.dir.glob("*") if self.dir.exists() else []:
            if f == self.me or not f.name.startswith(socket.gethostname() + "-"):
                continue
            try:
                fd = os.open(f, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                alive = True
            else:
                with contextlib.suppress(OSError):
                    f.unlink()  # its process is gone
            finally:
                os.close(fd)
        return alive


class RetryFailedTrial:
    """Enqueue a FAIL trial's parameters again, at most ``max_retry`` times along a chain of retries (``None``: no
    limit). The retry carries the user attribute ``retry_of`` and the system attributes ``failed_trial`` (the first
    trial of the chain) and ``retry_history``, like Optuna's ``RetryHeartbeatStaleTrialCallback``, whose place it
    takes as the heartbeat callback of database storages; unlike it, the failed trial's user attributes (its dead
    ``worker`` among them) and constraint values (``Trial.set_constraint``: the retry sets its own) are not
    copied."""

    def __init__(self, max_retry: int | None = DEFAULT_MAX_RETRY) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # The failed trial's constraints are not carried over: the retry measures and sets its own (Optuna keeps
        # a constraint set first and warns "The constraint value is ignored" at every later set_constraint).
        system_attrs = {k: v for k, v in trial.system_attrs.items() if not k.startswith(_CONSTRAINT_PREFIX)}
        history = list(system_attrs.get("retry_history", [])) + [trial.number]
        if self.max_retry is not None and len(history) > self.max_retry:
            return
        system_attrs["failed_trial"] = system_attrs.get("failed_trial", trial.number)
        system_attrs["retry_history"] = history
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={"retry_of": trial.number}, system_attrs=system_attrs))


def _retried(trials: list[FrozenTrial]) -> set[int]:
    out: set[int] = set()
    for t in trials:
        out.update(t.system_attrs.get("retry_history", []))
        if t.user_attrs.get("retry_of") is not None:
            out.add(t.user_attrs["retry_of"])
    return out


def recover_stale_trials(study: optuna.Study, *, no_other_workers: bool = False,
                         retry: Callable[[optuna.Study, FrozenTrial], None] | None = None,
                         no_worker_after: float = _STALE_NO_WORKER_S,
                         late_retry_after: float = LATE_RETRY_AFTER_S) -> list[FrozenTrial]:
    """Fail RUNNING trials whose worker is dead and retry them (``retry``, default :class:`RetryFailedTrial`); retry
    FAIL trials that were interrupted (Ctrl-C, a lost database, a worker found dead) and still have no retry
    ``late_retry_after`` seconds after they failed (the process that failed them died before it could enqueue it).

    A worker on this host is dead when its pid is gone (or reused). A RUNNING trial that never recorded its worker
    (killed right after it was created) is stale when ``no_other_workers`` (see :class:`WorkerRegistry`), else
    after ``no_worker_after`` seconds (default 10 minutes). Trials of workers on other hosts are left to the
    storage's heartbeat (database storages).
    Returns the trials failed now."""
    retry = retry or RetryFailedTrial()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    storage = storage_of(study)
    failed = []
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker")
        if w is None:
            started = t.datetime_start.timestamp() if t.datetime_start else now
            stale = no_other_workers or now - started > no_worker_after
        else:
            stale = w.get("host") == host and not worker_alive(w)
        if not stale:
            continue
        try:
            storage.set_trial_user_attr(trial_id_of(t), "failure", "worker died while the trial was running")
            if storage.set_trial_state_values(trial_id_of(t), state=TrialState.FAIL):
                failed.append(t)
                retry(study, storage.get_trial(trial_id_of(t)))
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            pass  # another worker got there first
    trials = study.get_trials(deepcopy=False)
    done = _retried(trials)
    late = datetime.datetime.now() - datetime.timedelta(seconds=late_retry_after)
    for t in trials:  # interrupted, but the process that failed it ended before it could enqueue the retry
        if t.state == TrialState.FAIL and t.number not in done and (
                t.user_attrs.get("interrupted") or t.user_attrs.get("failure")) and (
                t.datetime_complete is None or t.datetime_complete <= late):
            retry(study, t)
    return failed
