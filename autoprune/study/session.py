"""One search session: what every driver (local search, PostgreSQL worker, Ray) works on, built in one place.

:func:`open_session` loads the config, opens the storage (:func:`~autoprune.study.storage.open_storage`: one URL
classifier, one heartbeat policy, one retry scheme), builds the problem (data, base model, scores) and the ratio
space, creates or loads the study with this process's own sampler seed, records the study's attributes, fails and
retries the trials of dead workers, and makes the trial function (:class:`~autoprune.study.objective.TrialObjective`).
:meth:`SearchSession.run` is the trial loop of the local search and of the PostgreSQL workers; the Ray driver
hands the session's study, space and objective to Ray Tune.

Sampler seeds: the process that creates the study (``create_study`` is atomic in every Optuna storage: one process
wins) samples with the config's seed, so a search run by one process is reproducible; every other process -- a
second worker started at the same moment, a resumed run -- mixes in its own host, pid and process start time, so no
two processes propose the same trials. Every trial records its process's seed in its ``worker`` attribute.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from .._files import disk_full_in
from ..config import SearchConfig, load_config
from .bounds import check_against_graph
from .front import ParetoFront
from .objective import TrialObjective
from .optuna_study import check_directions, create_or_load, make_sampler, process_seed, record_study
from .patient_storage import storage_of, trial_id_of
from .problem import Problem
from .recovery import DEFAULT_MAX_RETRY, RetryFailedTrial, WorkerRegistry, recover_stale_trials, worker_info
from .space import RatioSpace
from .storage import (DEFAULT_CONNECT_TIMEOUT, DEFAULT_GRACE, DEFAULT_HEARTBEAT, StorageLost, journal_path,
                      open_storage, storage_kind, storage_label)

__all__ = ["SearchSession", "open_session", "sampler_for_round", "RunResult"]

class _Abandoned(BaseException):
    """The storage was lost (or the disk is full) inside the trial function. A BaseException, so that Optuna neither
    logs the trial as failed (with a traceback) nor tries to tell the storage that cannot take it: the trial stays
    RUNNING, its heartbeat stops, and it is failed and retried by another process (or at the next start)."""


#: Trials this process gave up on and left RUNNING (lost storage, full disk), as (storage label, study, number): the
#: next session of the same study in this process (a notebook calling ``search`` again once space is freed) fails
#: and retries them -- their worker, this very process, is alive, so the dead-worker recovery would not.
_ABANDONED: set[tuple[str, str, int]] = set()


class _Interrupted(BaseException):
    """Ctrl-C or SIGTERM inside the trial function, carried past Optuna (which would log the ``KeyboardInterrupt``
    with its traceback as a failed trial): :meth:`SearchSession.run` fails the trial, enqueues its retry and raises
    ``KeyboardInterrupt``."""


def _found_in(exc: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The ``kind`` exception that ``exc`` is or arose from, if any."""
    for _ in range(8):
        if exc is None:
            return None
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _lost_in(exc: BaseException | None) -> StorageLost | None:
    """The :class:`StorageLost` that ``exc`` is or arose from, if any."""
    return _found_in(exc, StorageLost)  # type: ignore[return-value]


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back (delivered at the end) while the interrupted trial is failed and retried, so that
    a second Ctrl-C does not cut that short. A no-op outside the main thread and where the platform has no
    ``pthread_sigmask``."""
    sigs = {signal.SIGINT, getattr(signal, "SIGTERM", signal.SIGINT)}
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@dataclass
class RunResult:
    """What :meth:`SearchSession.run` did in this process."""

    complete: int = 0  # COMPLETE trials of the study when the loop ended
    ran: list[int] | None = None  # trials this process finished (COMPLETE), by number
    failed: list[int] | None = None  # trials this process ran that failed
    pruned: list[int] | None = None  # trials this process ran that were stopped early (PRUNED)
    reused: list[int] | None = None  # trials that reused an earlier trial's result
    waited_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.ran, self.failed = self.ran or [], self.failed or []
        self.pruned, self.reused = self.pruned or [], self.reused or []


@dataclass
class SearchSession:
    """A search as one process sees it; made by :func:`open_session`."""

    cfg: SearchConfig
    storage: optuna.storages.BaseStorage
    problem: Any
    space: Any
    study: optuna.Study
    objective: TrialObjective
    seed: int
    created: bool
    retry: RetryFailedTrial
    log: Callable[[str], None]
    poll_interval: float = 1.0
    no_worker_after: float = 600.0  # a RUNNING trial that never recorded its worker is stale after this long

    @property
    def label(self) -> str:
        return storage_label(self.cfg)

    def counts(self) -> tuple[int, int, int]:
        """(COMPLETE, RUNNING, WAITING) trials of the study."""
        c = r = w = 0
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.COMPLETE:
                c += 1
            elif t.state == TrialState.RUNNING:
                r += 1
            elif t.state == TrialState.WAITING:
                w += 1
        return c, r, w

    def n_complete(self) -> int:
        return self.counts()[0]

    def recover(self) -> list[FrozenTrial]:
        """Fail (and retry) the trials of dead workers: stopped heartbeats, dead processes of this host."""
        journal = journal_path(self.cfg)
        alone = False
        if journal is not None:
            registry = WorkerRegistry(journal)
            registry.register()
            alone = not registry.others_alive()
        failed = recover_stale_trials(self.study, no_other_workers=alone, retry=self.retry,
                                      no_worker_after=self.no_worker_after)
        return failed + self._fail_abandoned()

    def _fail_abandoned(self) -> list[FrozenTrial]:
        """Fail and retry the trials of this study that this process left RUNNING (see ``_ABANDONED``)."""
        mine = sorted(n for label, study, n in _ABANDONED if (label, study) == (self.label, self.cfg.study))
        failed = []
        trials = self.study.get_trials(deepcopy=False) if mine else []
        for n in mine:
            t = trials[n] if n < len(trials) and trials[n].number == n else None
            if t is not None and t.state == TrialState.RUNNING:
                storage_of(self.study).set_trial_user_attr(
                    trial_id_of(t), "failure", "abandoned by its process (the storage was lost or the disk was full)")
                self.study.tell(n, state=TrialState.FAIL)
                failed.append(t)
                self.retry_trial(n)
            _ABANDONED.discard((self.label, self.cfg.study, n))
        return failed

    def retry_trial(self, number: int) -> bool:
        """Enqueue the retry of FAIL trial ``number`` now (a trial interrupted in this process); False when it is not
        FAIL (it completed, or another process took it over)."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.number == number:
                self.retry(self.study, t)
                return True
        return False

    def front(self) -> ParetoFront:
        return ParetoFront(self.study, self.cfg, problem=self.problem)

    # -- the trial loop --------------------------------------------------------------------------------------
    def run(self, *, max_failures: int = 1, on_trial: Callable[["SearchSession", FrozenTrial], None] | None = None,
            ) -> RunResult:
        """Run trials in this process until the study has ``n_trials`` COMPLETE ones.

        A trial is started only while ``COMPLETE + RUNNING < n_trials``; otherwise the loop waits (failing and
        retrying the trials of dead workers) until the running trials end. So the study ends with ``n_trials``
        COMPLETE trials (two processes taking the last slot at the same instant can add one).

        A trial that raises is FAIL with its error in the user attribute ``error``; after ``max_failures`` such trials
        in a row the error is raised (``max_failures=1``: the first error, as is; else a ``RuntimeError`` from the
        last). ``KeyboardInterrupt`` (Ctrl-C; the CLI turns SIGTERM into it) fails the running trial, enqueues its
        retry and is raised again, saying so (Optuna logs nothing). A lost database raises
        :class:`~autoprune.study.storage.StorageLost`; a full disk :class:`~autoprune._files.DiskFull` (the running
        trial stays RUNNING -- nothing more can be written -- and is failed and retried at the next start).
        """
        res = RunResult()
        current: dict[str, Any] = {}
        errors: list[BaseException] = []
        objective = self.objective

        def guarded(trial: optuna.Trial) -> list[float]:
            current["number"] = trial.number
            try:
                return objective(trial)
            except KeyboardInterrupt:
                raise _Interrupted() from None
            except StorageLost as e:
                raise _Abandoned(e) from None
            except optuna.TrialPruned:
                raise
            except Exception as e:
                full = disk_full_in(e)
                if full is not None:
                    raise _Abandoned(full) from None
                errors[:] = [e]
                with contextlib.suppress(Exception):
                    trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
                raise

        finished: list[FrozenTrial] = []
        in_a_row = 0
        while True:
            self.recover()
            complete, running, _ = self.counts()
            res.complete = complete
            if complete >= self.cfg.n_trials:
                break
            if complete + running >= self.cfg.n_trials:
                t0 = time.perf_counter()
                time.sleep(self.poll_interval)  # enough trials are running: wait in case one dies and needs a retry
                res.waited_seconds += time.perf_counter() - t0
                continue
            finished.clear()
            current.clear()
            errors.clear()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    self.study.optimize(guarded, n_trials=1, catch=(Exception,), gc_after_trial=False,
                                        callbacks=[lambda s, t: finished.append(t)])
            except (KeyboardInterrupt, _Interrupted):
                raise self._interrupted(current.get("number")) from None
            except _Abandoned as e:
                self._abandoned(current.get("number"))
                raise e.args[0] from None
            except optuna.exceptions.UpdateFinishedTrialError:
                self.log(f"trial {current.get('number')} was failed by another worker meanwhile (its heartbeat "
                         "stopped while the database was away); going on")
                continue
            except Exception as e:  # Optuna's clean-up after a failed tell can mask the lost storage, the full disk
                lost = _lost_in(e)
                if lost is not None:
                    self._abandoned(current.get("number"))
                    raise lost from None
                full = disk_full_in(e)
                if full is not None:
                    self._abandoned(current.get("number"))
                    raise full from e  # (--debug shows where: Optuna's tell, say)
                if _found_in(e, KeyboardInterrupt) is not None:  # Ctrl-C inside Optuna's tell
                    raise self._interrupted(current.get("number")) from None
                raise
            for t in finished:
                if t.state == TrialState.COMPLETE:
                    res.ran.append(t.number)
                    if "reused_from" in t.user_attrs:
                        res.reused.append(t.number)
                    in_a_row = 0
                elif t.state == TrialState.PRUNED:
                    res.pruned.append(t.number)
                    in_a_row = 0
                else:
                    res.failed.append(t.number)
                    in_a_row += 1
                if on_trial is not None:
                    on_trial(self, t)
                err = errors[0] if errors else None
                if t.state == TrialState.FAIL and in_a_row >= max_failures:
                    if err is None:
                        raise RuntimeError(f"trial {t.number} failed")
                    if max_failures <= 1:
                        raise err
                    raise RuntimeError(f"{in_a_row} trials of this process failed in a row (last: trial {t.number}: "
                                       f"{type(err).__name__}: {err}); stopping") from err
        return res

    def _abandoned(self, number: int | None) -> None:
        if number is not None:
            _ABANDONED.add((self.label, self.cfg.study, number))

    def _interrupted(self, number: int | None) -> KeyboardInterrupt:
        """Fail the interrupted trial ``number`` (if it is still RUNNING) and enqueue its retry; the
        ``KeyboardInterrupt`` to raise, saying what was done."""
        if number is None:
            return KeyboardInterrupt()
        state = None
        with _signals_deferred(), contextlib.suppress(Exception):
            trials = self.study.get_trials(deepcopy=False)
            t = trials[number] if number < len(trials) and trials[number].number == number else None
            state = t.state if t is not None else None
            if state == TrialState.RUNNING:
                self.study.tell(number, state=TrialState.FAIL)
                state = TrialState.FAIL
            if state == TrialState.FAIL and self.retry_trial(number):
                return KeyboardInterrupt(f"trial {number} was failed and enqueued again")
        if state == TrialState.FAIL:
            return KeyboardInterrupt(f"trial {number} was failed")
        return KeyboardInterrupt()  # (it had completed; or the storage could not say)


@contextlib.contextmanager
def open_session(config: Any, *, n_trials: int | None = None, storage: str | None = None,
                 study_name: str | None = None, log: Callable[[str], None] | None = None,
                 heartbeat_interval: int | None = DEFAULT_HEARTBEAT, grace_period: int | None = DEFAULT_GRACE,
                 max_retry: int | None = DEFAULT_MAX_RETRY, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
                 patience: float | None = None, require_database: bool = False, progress: bool = False,
                 adjust: Callable[[SearchConfig], None] | None = None) -> Iterator[SearchSession]:
    """The session of the search ``config`` (a YAML path, dict or :class:`SearchConfig`), under the config's torch
    thread count; see the module docstring. ``n_trials``/``storage``/``study_name`` override the config;
    ``heartbeat_interval``, ``grace_period``, ``max_retry``, ``connect_timeout`` and ``patience`` are the database
    storage's (see :func:`~autoprune.study.storage.open_storage`). ``require_database``: refuse journal files (the
    PostgreSQL worker). ``adjust`` may change the loaded config before anything is built (the Ray driver makes
    ``run_dir`` absolute).

    The storage is opened first: a bad or unreachable URL fails in seconds, before data and model are built."""
    log = log or (lambda s: None)
    cfg = load_config(config, n_trials=n_trials, storage=storage, study_name=study_name)
    if adjust is not None:
        adjust(cfg)
    kind = storage_kind(cfg.storage)
    if require_database and kind != "database":
        raise ValueError(f"autoprune worker needs a database storage shared by the workers, e.g. --storage "
                         f"postgresql://USER:PASSWORD@HOST:5432/DB; got {cfg.storage!r} (for several workers on one "
                         "machine, `autoprune search` shares a journal file)")
    retry = RetryFailedTrial(max_retry)
    st = open_storage(cfg, heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry,
                      connect_timeout=connect_timeout, patience=patience, log=log, read_only=False)
    with cfg.cpu_threads():
        problem = Problem(cfg, log=log, progress=progress)
        check_against_graph(cfg, problem.graph)
        space = RatioSpace(cfg, problem)
        if cfg.ratios.mode == "guided":
            for level in cfg.ratios.level:  # fail early (and build the sensitivity table once) before any trial
                space.allocation(level)
        study, created = create_or_load(cfg, st)
        check_directions(cfg, study)
        seed = process_seed(cfg, created)
        study.sampler = make_sampler(cfg, seed)
        record_study(cfg, study, problem, space, log)
        objective = TrialObjective(cfg, problem, space, worker={**worker_info(), "seed": seed})
        poll = 1.0 if kind == "journal" or heartbeat_interval is None else max(0.5, min(5.0, heartbeat_interval / 2))
        session = SearchSession(cfg=cfg, storage=st, problem=problem, space=space, study=study, objective=objective,
                                seed=seed, created=created, retry=retry, log=log, poll_interval=poll)
        if kind == "database" and heartbeat_interval is not None:  # a worker killed before its first heartbeat
            session.no_worker_after = 2 * (grace_period or 2 * heartbeat_interval) + 60
        failed = session.recover()
        if failed:
            log(f"marked {len(failed)} trial(s) of dead workers as FAIL: {[t.number for t in failed]} "
                "(their parameters are tried again)")
        yield session


def sampler_for_round(session: SearchSession, rnd: int) -> optuna.samplers.BaseSampler:
    """A fresh sampler for round ``rnd`` of a driver that re-creates its sampler (Ray): the session's seed in round
    0, a seed of its own in every later round (a replayed seed would propose the same trials again)."""
    return make_sampler(session.cfg, session.seed if rnd == 0 else process_seed(session.cfg, False, salt=rnd))

