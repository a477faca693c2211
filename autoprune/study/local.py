"""The Optuna side of a search: storage, sampler, the trial objective, resume after a crash.

* Storage: by default an Optuna ``JournalStorage`` on a ``JournalFileBackend`` file ``<run_dir>/optuna.journal``
  (append-only, file-locked: several worker processes on one machine can share it). Any Optuna storage URL
  (``sqlite:///...``, ``postgresql://...``) works too; RDB storages get heartbeats so a dead worker's trial is
  failed by the others.
* Resume: ``create_study(load_if_exists=True)``; every trial records its worker (host, pid, process start time).
  On start, RUNNING trials whose worker process on this host is gone (``kill -9``, power loss) are marked FAIL;
  their parameters, and those of trials stopped by Ctrl-C, are enqueued again once; the search then runs until
  ``n_trials`` trials are COMPLETE, so nothing completed is lost and the count is made up.
* Sampler: pinned explicitly (``NSGAIISampler`` by default, ``TPESampler``), seeded. Optuna 5 deprecates the
  samplers' ``constraints_func``; budgets are set with ``trial.set_constraint`` inside the objective, which both
  samplers and ``study.best_trials`` read. :class:`~autoprune.study.ParetoFront` filters by feasibility again.
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import SearchConfig

__all__ = ["open_storage", "make_sampler", "open_study", "recover_stale_trials", "make_objective", "run_study",
           "STUDY_ATTR", "metric_names", "directions", "enqueue_anchors"]

#: Study user attribute holding the config, its fingerprint and the base model's metrics.
STUDY_ATTR = "autoprune"
_STALE_NO_WORKER_S = 600.0  # a RUNNING trial that never recorded its worker is stale after this long


def directions(cfg: SearchConfig) -> list[str]:
    return ["maximize" if o == "accuracy" else "minimize" for o in cfg.objectives]


def metric_names(cfg: SearchConfig) -> list[str]:
    return [{"accuracy": "accuracy", "macs": "macs_fraction", "params": "params_fraction"}[o] for o in cfg.objectives]


# ------------------------------------------------------------------------------------------------------------
# storage


def _journal_path(cfg: SearchConfig | None, storage: str | None) -> Path | None:
    if storage is None:
        return None if cfg is None else cfg.run_path / "optuna.journal"
    if "://" in storage:
        return Path(storage.split("://", 1)[1]) if storage.startswith("journal://") else None
    return Path(os.path.expanduser(storage))


class JournalLock:
    """The journal's write lock for worker processes on one machine: a ``flock`` (released by the kernel when its
    holder dies, even by ``kill -9``) guarding Optuna's usual ``<journal>.lock`` file.

    Under the flock, a ``.lock`` file written by this class can only be left over from a dead holder, so it is
    removed at once instead of after Optuna's 30-second grace period. Lock files of other Optuna writers (plain
    ``JournalFileSymlinkLock``/``JournalFileOpenLock`` users, e.g. a stand-alone optuna-dashboard) are still
    respected, with their grace period.
    """

    def __init__(self, journal: str, grace_period: float = 30.0) -> None:
        self._lock_file = journal + ".lock"
        self._flock_file = journal + ".flock"
        self._fd: int | None = None
        self.grace_period = grace_period

    def _ours(self) -> bool:
        try:
            if os.path.islink(self._lock_file):
                return False
            with open(self._lock_file) as f:
                return '"autoprune"' in f.read(200)
        except OSError:
            return False

    def acquire(self) -> bool:
        import fcntl
        import json as _json
        import uuid

        fd = os.open(self._flock_file, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            tmp = f"{self._lock_file}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "w") as f:
                f.write(_json.dumps({"autoprune": worker_info()}))
            try:
                mtime, since, sleep = None, time.monotonic(), 0.001
                while True:
                    try:
                        os.link(tmp, self._lock_file)  # atomic; the lock file is never seen empty
                        break
                    except FileExistsError:
                        pass
                    if self._ours():
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self._lock_file)  # left by a dead holder: we hold the flock
                        continue
                    try:
                        m = os.stat(self._lock_file).st_mtime
                    except OSError:
                        continue
                    if m != mtime:
                        mtime, since = m, time.monotonic()
                    elif time.monotonic() - since > self.grace_period:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self._lock_file)  # a foreign writer's lock, stale for the grace period
                        continue
                    time.sleep(sleep)
                    sleep = min(2 * sleep, 0.1)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        import fcntl

        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._lock_file)
        finally:
            if self._fd is not None:
                fd, self._fd = self._fd, None
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


def _repair_journal(path: Path) -> None:
    """Drop a partial last record (a worker killed in the middle of a write), under the journal's own lock.

    Optuna would otherwise append the next record to the broken line and fail to read the file from then on."""
    if not path.exists() or path.stat().st_size == 0:
        return
    lock = JournalLock(str(path))
    if not lock.acquire():
        return
    try:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            data = path.read_bytes()
            keep = data.rfind(b"\n") + 1
            f.truncate(keep)
            warnings.warn(f"{path}: dropped a partial last record ({len(data) - keep} bytes) left by a killed worker")
    finally:
        lock.release()


def open_storage(cfg: SearchConfig | None = None, storage: str | None = None) -> optuna.storages.BaseStorage:
    """The storage of a search: ``storage`` (URL or journal file path) or ``cfg.storage``, else the default journal
    file ``<run_dir>/optuna.journal``."""
    storage = storage if storage is not None else (cfg.storage if cfg is not None else None)
    path = _journal_path(cfg, storage)
    if path is not None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path.parent.mkdir(parents=True, exist_ok=True)
        _repair_journal(path)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalLock(str(path))))
    if storage is None:
        raise ValueError("no storage: pass a config or --storage URL")
    if storage.startswith(("sqlite", "postgresql", "mysql", "oracle", "mssql")):
        return optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=300)
    return optuna.storages.get_storage(storage)


def storage_label(cfg: SearchConfig | None, storage: str | None = None) -> str:
    """What the storage is, for messages and for optuna-dashboard's command line."""
    storage = storage if storage is not None else (cfg.storage if cfg is not None else None)
    p = _journal_path(cfg, storage)
    return str(p) if p is not None else str(storage)


# ------------------------------------------------------------------------------------------------------------
# sampler


def make_sampler(cfg: SearchConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler named by ``cfg.sampler``, explicitly (Optuna's default sampler is not relied on)."""
    seed = cfg.sampler_seed if seed is None else seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if cfg.sampler.name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                              n_startup_trials=cfg.sampler.n_startup_trials)
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=cfg.population_size)


# ------------------------------------------------------------------------------------------------------------
# workers and stale trials


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of a process, from /proc; None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return rest[0], rest[19]
    except (OSError, IndexError):
        return None


def worker_info() -> dict[str, Any]:
    pid = os.getpid()
    st = _proc_stat(pid)
    return {"host": socket.gethostname(), "pid": pid, "start": st[1] if st else None}


def _worker_alive(w: dict[str, Any]) -> bool:
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
        import fcntl

        if str(self.me) in self._held:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.me, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._held[str(self.me)] = fd

    def others_alive(self) -> bool:
        import fcntl

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


def recover_on_start(cfg: SearchConfig, study: optuna.Study, log: Callable[[str], None]) -> None:
    """Register this process as a worker of the search's journal (if it has one) and fail/retry the trials of dead
    workers: what every driver (local search, Ray) does before it asks for trials."""
    journal = _journal_path(cfg, cfg.storage)
    alone = False
    if journal is not None:
        registry = WorkerRegistry(journal)
        registry.register()
        alone = not registry.others_alive()
    failed = recover_stale_trials(study, no_other_workers=alone)
    if failed:
        log(f"marked {len(failed)} trial(s) of dead workers as FAIL: {[t.number for t in failed]} "
            "(their parameters are tried again)")


def recover_stale_trials(study: optuna.Study, *, no_other_workers: bool = False) -> list[FrozenTrial]:
    """Fail RUNNING trials whose worker is dead, and enqueue the parameters of interrupted trials again (once).

    A worker on this host is dead when its pid is gone (or reused). A RUNNING trial that never recorded its worker
    (killed right after it was created) is stale when ``no_other_workers`` (see :class:`WorkerRegistry`), else
    after 10 minutes. Trials of workers on other hosts are left to the storage's heartbeat (RDB storages).
    Returns the trials failed now."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    storage = study._storage
    failed = []
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w = t.user_attrs.get("worker")
        if w is None:
            started = t.datetime_start.timestamp() if t.datetime_start else now
            stale = no_other_workers or now - started > _STALE_NO_WORKER_S
        else:
            stale = w.get("host") == host and not _worker_alive(w)
        if not stale:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "failure", "worker died while the trial was running")
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                failed.append(t)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            pass  # another worker got there first
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        # (a trial killed before it drew any parameter is retried too, as a fresh draw, so the retry is explicit)
        if t.state != TrialState.FAIL or t.number in retried:
            continue
        if t.user_attrs.get("interrupted") or t.user_attrs.get("failure"):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return failed


# ------------------------------------------------------------------------------------------------------------
# study


def open_study(cfg: SearchConfig, storage: optuna.storages.BaseStorage | None = None, *,
               sampler: optuna.samplers.BaseSampler | None = None, create: bool = True) -> optuna.Study:
    """Create or load the study of ``cfg`` (``load_if_exists``); checks that the objectives match."""
    storage = storage if storage is not None else open_storage(cfg)
    sampler = sampler or make_sampler(cfg)
    if create:
        study = optuna.create_study(storage=storage, study_name=cfg.study, directions=directions(cfg),
                                    sampler=sampler, load_if_exists=True)
    else:
        study = optuna.load_study(study_name=cfg.study, storage=storage, sampler=sampler)
    want = [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
            for d in directions(cfg)]
    if list(study.directions) != want:
        raise ValueError(f"study {cfg.study!r} exists with {len(study.directions)} objectives "
                         f"{[d.name.lower() for d in study.directions]}, but the config asks for {cfg.objectives}; "
                         "use another study_name")
    return study


def make_objective(cfg: SearchConfig, problem: Any, space: Any) -> Callable[[optuna.Trial], list[float]]:
    """One trial: suggest ratios (and criterion) -> score -> prune -> budget constraints -> fine-tune -> evaluate."""
    from .problem import removal_digest

    c = cfg.constraints
    budget_keys = [k for k in ("max_macs", "max_params") if getattr(c, k) is not None]
    worker = worker_info()

    def objective(trial: optuna.Trial) -> list[float]:
        trial.set_user_attr("worker", worker)
        t0 = time.perf_counter()
        try:
            crit, ratios, extra = space.suggest(trial)
            removal = problem.removal(ratios, crit)
            m = problem.measure(removal)
            violation = {"max_macs": m["macs_fraction"] - (c.max_macs or 0.0),
                         "max_params": m["params_fraction"] - (c.max_params or 0.0)}
            for k in budget_keys:
                trial.set_constraint(k, violation[k])
            within = all(violation[k] <= 1e-12 for k in budget_keys)
            trial.set_user_attr("criterion", crit)
            trial.set_user_attr("ratios", {n: round(r, 6) for n, r in ratios.items()})
            trial.set_user_attr("removal_sha", removal_digest(removal))
            for k, v in extra.items():
                trial.set_user_attr(k, v)
            _, out = problem.build(removal, train=within or c.finetune_infeasible)
            if c.min_accuracy is not None:
                trial.set_constraint("min_accuracy", c.min_accuracy - out.accuracy)
            for k in ("accuracy", "macs", "params", "macs_fraction", "params_fraction", "finetuned",
                      "finetune_seconds"):
                trial.set_user_attr(k, getattr(out, k))
            trial.set_user_attr("loss", out.loss if out.loss != float("inf") else None)
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            vals = {"accuracy": out.accuracy, "macs": out.macs_fraction, "params": out.params_fraction}
            return [vals[o] for o in cfg.objectives]
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise

    return objective


def enqueue_anchors(study: optuna.Study, space: Any, log: Callable[[str], None]) -> None:
    """Enqueue the ``ratios.anchors`` trials of a newly created study (see ``RatioSpace.anchor_params``)."""
    params = space.anchor_params()
    for p in params:
        study.enqueue_trial(p, skip_if_exists=True)
    if params:
        levels = ", ".join(f"{p['level']:.2f}" for p in params if "level" in p)
        log(f"enqueued {len(params)} anchor trial(s) at the guide's allocation" + (f" (levels {levels})" if levels else ""))


def n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def run_study(cfg: SearchConfig, problem: Any, space: Any, *, storage: optuna.storages.BaseStorage | None = None,
              progress: bool = False, log: Callable[[str], None] | None = None,
              on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> optuna.Study:
    """Run (or resume) the study until ``cfg.n_trials`` trials are COMPLETE."""
    log = log or (lambda s: None)
    storage = storage if storage is not None else open_storage(cfg)
    # Probe the study first, so a resumed run does not replay the seed's first proposals (they would duplicate
    # the trials already run): the sampler seed of a resumed/extra worker mixes in the trial count and the pid.
    try:
        existing = len(storage.get_all_trials(storage.get_study_id_from_name(cfg.study), deepcopy=False))
    except KeyError:
        existing = 0
    seed = cfg.sampler_seed if existing == 0 else (cfg.sampler_seed * 1_000_003 + existing * 7919 + os.getpid()) % 2**31
    study = open_study(cfg, storage, sampler=make_sampler(cfg, seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names(metric_names(cfg))
    attrs = study.user_attrs.get(STUDY_ATTR)
    fp = cfg.fingerprint()
    if attrs is None:
        study.set_user_attr(STUDY_ATTR, {"config": cfg.to_dict(), "source": cfg.source, "fingerprint": fp,
                                         "base": problem.base_metrics(), "groups": list(problem.group_names),
                                         "created": time.time()})
        enqueue_anchors(study, space, log)
    elif attrs.get("fingerprint") != fp:
        warnings.warn(f"study {cfg.study!r} was created from a different config (model, data, ratio space, "
                      "criteria or fine-tuning changed); its earlier trials measured something else. Use a new "
                      "study_name to start afresh.")
    recover_on_start(cfg, study, log)
    done = n_complete(study)
    if done:
        log(f"resuming study {cfg.study!r}: {done} of {cfg.n_trials} trials complete")
    if done >= cfg.n_trials:
        return study

    objective = make_objective(cfg, problem, space)
    callbacks: list[Callable] = [optuna.study.MaxTrialsCallback(cfg.n_trials, states=(TrialState.COMPLETE,))]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.n_trials, initial=done, desc=f"{cfg.study}", unit="trial", dynamic_ncols=True)
        _progress_postfix(bar, cfg, study)

        def update(st: optuna.Study, tr: FrozenTrial) -> None:
            bar.n = n_complete(st)
            _progress_postfix(bar, cfg, st)

        callbacks.append(update)
    if on_trial is not None:
        callbacks.append(on_trial)
    opt_logger = logging.getLogger("optuna")
    level = opt_logger.level
    if progress:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        while True:
            remaining = cfg.n_trials - n_complete(study)
            if remaining <= 0:
                break
            before = len(study.get_trials(deepcopy=False))
            study.optimize(objective, n_trials=remaining, callbacks=callbacks, gc_after_trial=False)
            if len(study.get_trials(deepcopy=False)) == before:
                break  # another worker reached n_trials
    finally:
        opt_logger.setLevel(level)
        if bar is not None:
            bar.close()
    return study


def _progress_postfix(bar: Any, cfg: SearchConfig, study: optuna.Study) -> None:
    from .pareto import front_records

    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    front = front_records(study, cfg)
    if front:
        best = max(front, key=lambda r: r.accuracy)
        bar.set_postfix_str(f"trial {min(bar.n + 1, cfg.n_trials)}/{cfg.n_trials} running={running} front={len(front)} "
                            f"best={best.accuracy:.2%}@{best.macs_fraction:.0%} MACs", refresh=True)
    else:
        bar.set_postfix_str(f"trial {min(bar.n + 1, cfg.n_trials)}/{cfg.n_trials} front=0", refresh=True)
