"""The driver of the Ray backend: :func:`search_ray` connects, opens the search session and runs Ray Tune rounds
(the define-by-run space, the rung scheduler of early stopping, the progress callback) until ``n_trials`` trials are
COMPLETE in the search's Optuna storage (see :mod:`autoprune.study.ray`).

Tune pickles what it is handed (``tuner.pkl``): the callback and the scheduler reach the driver-side objects (the
session -- its study, sampler and storage --, the round's searcher, the early stopper) only through a
:class:`_Driver`, which pickles empty; the trainable receives plain data only (:func:`_payload`).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from optuna.trial import TrialState

from ... import _version  # the package's root module: its folder is the package shipped to the cluster
from ...config import load_config
from ..digest import removal_digest
from ..objective import RESULT_ATTRS, find_evaluated
from ..optuna_study import directions, metric_names
from ..session import open_session, sampler_for_round
from ..storage import check_storage
from .cluster import RayUnreachable, connect
from .searcher import searcher_class
from .trainable import LEVEL_KEY, REUSE_KEY, RUNG_INDEX, RUNG_STEP, TRIAL_KEY, run_trial

__all__ = ["search_ray"]

#: With early stopping, a round may hand out this many times the missing COMPLETE trials (stopped ones come on top);
#: the searcher ends the round as soon as enough trials are COMPLETE.
_STOPPED_TRIALS_FACTOR = 50


def _code_env(ship_code: bool, runtime_env: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The job's runtime environment: ``runtime_env``, plus this autoprune package uploaded as a ``py_module`` so the
    workers run exactly the driver's trial function (no install on the nodes needed)."""
    env = dict(runtime_env or {})
    if ship_code:
        pkg = str(Path(_version.__file__).resolve().parent)
        mods = list(env.get("py_modules", []))
        if pkg not in mods:
            mods.append(pkg)
        env["py_modules"] = mods
        env.setdefault("excludes", ["__pycache__", "*.pyc"])
    return env or None


class _Space:
    """The define-by-run search space: the local search's parameter suggestions (``RatioSpace.suggest``) on the
    driver's Optuna trial. Records the driver as the trial's worker (so a dead driver's trials are recognised and
    retried) and passes the trial number, the guided allocation and, when a COMPLETE trial of the study removed
    exactly the same channels, that trial's results on to the trainable (which then does not train again)."""

    def __init__(self, space: Any, problem: Any, driver: Mapping[str, Any]) -> None:
        self.space, self.problem, self.driver = space, problem, dict(driver)

    def __call__(self, trial: Any) -> dict[str, Any]:
        trial.set_user_attr("worker", self.driver)
        crit, ratios, extra = self.space.suggest(trial)
        out: dict[str, Any] = {TRIAL_KEY: trial.number}
        if "level" in extra:
            key = round(float(extra["level"]), 6)
            alloc = self.space.allocation(key)
            out[LEVEL_KEY] = {"level": key, "ratios": {k: float(v) for k, v in alloc.items()}}
        found = find_evaluated(trial.study, removal_digest(self.problem.removal(ratios, crit)))
        if found is not None:
            out[REUSE_KEY] = {"number": found[0], "results": {k: found[1].get(k) for k in RESULT_ATTRS}}
        return out


@contextlib.contextmanager
def _tune_env():
    """Ray Tune's console output off (``verbose=0`` alone still prints the experiment's banner to stdout; the legacy
    reporter honours it; the driver logs trials itself), and Tune's own SIGINT handler off: Ctrl-C raises
    KeyboardInterrupt here, the handed-out trials are failed as interrupted (the next run retries them), instead of
    Tune ending the round quietly."""
    want = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_SIGINT_HANDLER": "1"}
    old = {k: os.environ.get(k) for k in want}
    os.environ.update(want)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _weights_payload(cfg: Any, problem: Any) -> bytes:
    """The base model for the workers: the weights file as given, else the driver's (pretrained) state_dict."""
    if cfg.model.weights:
        return Path(cfg.model.weights).read_bytes()
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in problem.base_model.state_dict().items()}, buf)
    return buf.getvalue()


def _payload(cfg: Any, problem: Any, *, threads: int, seed: int | None) -> dict[str, Any]:
    """What every trainable receives (through Ray's object store, :func:`ray.tune.with_parameters`): plain data
    only -- the config as JSON, the base weights and their sha256 (the workers check the file they load against it,
    :mod:`.trainable`), the metric names, the torch thread count and the driver's sampler seed. ``key`` names the
    config and weights (a reused actor keeps its state for the same key)."""
    cfg_json = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
    weights = _weights_payload(cfg, problem)
    sha = hashlib.sha256(weights).hexdigest()
    key = hashlib.sha256(cfg_json.encode() + bytes.fromhex(sha)).hexdigest()[:16]
    return {"key": key, "config": cfg_json, "source": cfg.source, "weights": weights, "weights_sha": sha,
            "metrics": metric_names(cfg), "threads": max(1, int(threads)), "seed": seed}


class _Driver:
    """The driver-side objects (the session -- its study, storage and log --, the round's searcher and the early
    stopper) that the pieces handed to Ray Tune which run on the driver (the progress callback, the rung scheduler,
    the searcher's quota) work with.

    Tune pickles those pieces: ``Tuner(...)`` writes its config, callbacks, scheduler and searcher included, to
    ``tuner.pkl`` (ray/tune/impl/tuner_internal.py), read back only by ``Tuner.restore``, which autoprune never calls
    (the Optuna storage is the record; running the command again resumes). What this refers to does not pickle and
    must not have to: samplers hold locks (optuna 5.1's NSGAIISampler a ``threading.Lock``), storages connections, the
    problem a model. So a ``_Driver`` deliberately pickles empty, and one that came back from a pickle says so when
    used."""

    def __init__(self, session: Any, searcher: Any = None, stopper: Any = None) -> None:
        self.session, self.searcher, self.stopper = session, searcher, stopper

    def __getstate__(self) -> dict:
        return {}  # driver-only state: see the class docstring

    def __setstate__(self, state: dict) -> None:
        pass

    def __getattr__(self, name: str) -> Any:  # only reached for attributes dropped by pickling
        raise AttributeError(f"{name}: driver-side state of the Ray search, dropped when Ray Tune pickled its "
                             "experiment state; the search resumes from its Optuna storage, not with Tuner.restore")

    def quota(self) -> str:
        """:func:`_quota` of the round (early stopping): COMPLETE trials of the study, unfinished ones handed out."""
        return _quota(self.session.n_complete(), len(self.searcher.unfinished()), self.session.cfg.n_trials)


def search_ray(config: Any, *, n_trials: int | None = None, storage: str | None = None,
               study_name: str | None = None, address: str | None = None, cpus_per_trial: float = 1.0,
               gpus_per_trial: float = 0.0, max_concurrent: int | None = None, ship_code: bool = True,
               runtime_env: Mapping[str, Any] | None = None, connect_timeout: float = 30.0, max_failures: int = 2,
               storage_path: str | None = None, max_rounds: int = 5, log: Callable[[str], None] | None = None,
               **rdb: Any) -> Any:
    """Run (or resume) the search of ``config`` with its trials on a Ray cluster; return its
    :class:`~autoprune.study.ParetoFront` (see the module docstring).

    ``cpus_per_trial``/``gpus_per_trial``: resources reserved per trial (``gpus_per_trial=0.25``: four trials share
    a GPU). ``max_concurrent``: cap on simultaneous trials. ``ship_code``: upload this autoprune package to the
    cluster (``runtime_env`` ``py_modules``); ``runtime_env`` adds to the job's runtime environment (e.g. ``pip`` or
    ``working_dir`` for a ``module:function`` model). ``max_failures``: Tune's retries of a trial whose actor or node
    died. ``storage_path``: Ray Tune's result directory (default ``<run_dir>/ray``). ``rdb``: options of
    :func:`autoprune.study.session.open_session` for a database storage (``heartbeat_interval``,
    ``grace_period``, ``max_retry``, ``connect_timeout``, ``patience``).

    Raises :class:`RayUnreachable` when the cluster cannot be reached (within ``connect_timeout`` s), and
    :class:`~autoprune.study.storage.StorageUnreachable` for an unusable database URL, both before any data or model
    is built.
    """
    log = log or (lambda s: None)
    if not cpus_per_trial > 0:
        raise ValueError(f"cpus_per_trial must be > 0, got {cpus_per_trial}")
    if gpus_per_trial < 0 or (gpus_per_trial > 1 and gpus_per_trial != int(gpus_per_trial)):
        raise ValueError(f"gpus_per_trial must be a fraction in [0, 1] or a whole number, got {gpus_per_trial}")

    def absolute_run_dir(c: Any) -> None:
        if c.run_dir is None or not os.path.isabs(c.run_dir):
            c.run_dir = str(c.run_path.resolve())  # the Ray trainables may run elsewhere

    cfg = load_config(config, n_trials=n_trials, storage=storage, study_name=study_name)
    absolute_run_dir(cfg)
    rdb.setdefault("connect_timeout", min(connect_timeout, 10.0))
    check_storage(cfg, connect_timeout=rdb["connect_timeout"])  # a wrong database URL fails here, in seconds
    owns_ray = connect(address, timeout=connect_timeout, runtime_env=_code_env(ship_code, runtime_env), log=log)
    try:
        import ray

        res = ray.cluster_resources()
        if gpus_per_trial > 0 and res.get("GPU", 0) < gpus_per_trial:
            raise RayUnreachable(f"gpus_per_trial={gpus_per_trial:g}, but the Ray cluster has {res.get('GPU', 0):g} "
                                 "GPUs; start the nodes with GPUs (ray start --num-gpus) or use gpus_per_trial=0")
        if res.get("CPU", 0) < cpus_per_trial:
            raise RayUnreachable(f"cpus_per_trial={cpus_per_trial:g}, but the Ray cluster has {res.get('CPU', 0):g} "
                                 "CPUs")
        with open_session(config, n_trials=n_trials, storage=storage, study_name=study_name, log=log,
                          adjust=absolute_run_dir, **rdb) as session:
            return _drive(session, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                          max_concurrent=max_concurrent, max_failures=max_failures, storage_path=storage_path,
                          max_rounds=max_rounds)
    finally:
        if owns_ray:
            import ray

            ray.shutdown()


def _quota(complete: int, running: int, n_trials: int) -> str:
    """Whether the early-stopping searcher hands out another trial: ``done`` when ``n_trials`` are COMPLETE,
    ``wait`` while the running ones could complete the count (one of them may still be stopped), else ``go``."""
    if complete >= n_trials:
        return "done"
    return "wait" if complete + running >= n_trials else "go"


def _rung_scheduler(driver: _Driver, names: list[str], batch_size: int) -> Any:
    """A Tune scheduler (public ``FIFOScheduler`` API) that runs early stopping on the driver: a trainable's rung
    result (:data:`RUNG_STEP`) is recorded in its Optuna trial and compared with the other trials' results at that
    rung (:meth:`EarlyStopper.judge`, the same step as the local search's); a trial that cannot reach the front gets
    its stop record (:data:`~autoprune.study.early_stopping.STOP_ATTR`) and is stopped there (``STOP``), and the
    searcher tells it PRUNED. The stopper, searcher and study come from ``driver`` (Tune pickles the scheduler:
    it holds nothing else than plain state, see :class:`_Driver`)."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class RungScheduler(FIFOScheduler):
        def __init__(self, driver: _Driver, names: list[str], batch_size: int) -> None:
            super().__init__()
            self.driver, self.names, self.batch_size = driver, list(names), int(batch_size)

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
            d = self.driver
            ot_trial = d.searcher.optuna_trial(trial.trial_id) if RUNG_STEP in result else None
            if ot_trial is None:
                return TrialScheduler.CONTINUE
            step, rung = int(result[RUNG_STEP]), int(result[RUNG_INDEX])
            values = [float(result[n]) for n in self.names]
            _, stopped = d.stopper.judge(ot_trial, step, values, rung=rung, batch_size=self.batch_size,
                                         study=d.session.study)
            if stopped is None:
                return TrialScheduler.CONTINUE
            d.searcher.mark_stopped(trial.trial_id)
            return TrialScheduler.STOP

    return RungScheduler(driver, names, batch_size)


def _progress(driver: _Driver, names: list[str], n_trials: int) -> Any:
    """The Tune callback that logs each trial's end through the session's log (Tune pickles it: it holds nothing
    else than plain state, see :class:`_Driver`)."""
    from ray import tune

    class Progress(tune.Callback):
        def __init__(self, driver: _Driver, names: list[str], n_trials: int) -> None:
            self.driver, self.names, self.n_trials = driver, list(names), int(n_trials)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            r, names, log = trial.last_result or {}, self.names, self.driver.session.log
            if RUNG_STEP in r:  # its last result was a rung's: early stopping stopped it there
                log(f"trial {trial.config.get(TRIAL_KEY, '?')} stopped at rung {r[RUNG_INDEX]} on Ray "
                    f"({r[RUNG_STEP]} fine-tuning steps)")
            elif names[0] in r:
                log(f"trial {trial.config.get(TRIAL_KEY, '?')} COMPLETE on Ray: "
                    + ", ".join(f"{n} {r[n]:.4g}" for n in names)
                    + f" -- {self.driver.session.n_complete()}/{self.n_trials}")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.driver.session.log(f"trial {trial.config.get(TRIAL_KEY, '?')} FAILED on Ray: "
                                    f"{trial.error_file or ''}")

    return Progress(driver, names, n_trials)


def _drive(session: Any, *, cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int | None,
           max_failures: int, storage_path: str | None, max_rounds: int) -> Any:
    """The Ray rounds over an open session: Tune trials until ``n_trials`` are COMPLETE."""
    from ray import tune

    cfg, problem, space, study, log = session.cfg, session.problem, session.space, session.study, session.log

    names = metric_names(cfg)
    modes = ["max" if d == "maximize" else "min" for d in directions(cfg)]
    payload = _payload(cfg, problem, threads=cpus_per_trial, seed=session.seed)
    resources = {"cpu": float(cpus_per_trial), "gpu": float(gpus_per_trial)}
    trainable = tune.with_resources(tune.with_parameters(run_trial, payload=payload), resources)
    storage_path = storage_path or str(cfg.run_path.resolve() / "ray")
    Searcher = searcher_class()
    define = _Space(space, problem, session.objective.worker)
    stopper = session.objective.stopper

    errors: list[str] = []
    for rnd in range(max_rounds):
        done = session.n_complete()
        remaining = cfg.n_trials - done
        if remaining <= 0:
            break
        if rnd:
            log(f"round {rnd + 1}: {remaining} more trial(s) to complete")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sampler = sampler_for_round(session, rnd)
            searcher = Searcher(define, metric=names, mode=modes, sampler=sampler, study_name=cfg.study,
                                storage=session.storage)
        # Everything handed to Tune below is pickled by it (tuner.pkl): the driver-side objects reach the
        # callback, the scheduler and the quota only through `driver`, which pickles empty (see _Driver).
        driver = _Driver(session, searcher, stopper)
        scheduler, samples = None, remaining
        if stopper is not None:
            scheduler = _rung_scheduler(driver, names, cfg.finetune.batch_size)
            searcher.set_quota(driver.quota)
            samples = remaining * _STOPPED_TRIALS_FACTOR
        with _tune_env():
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=samples,
                                            max_concurrent_trials=max_concurrent, reuse_actors=True),
                run_config=tune.RunConfig(name=f"{cfg.study}-{int(time.time())}", storage_path=storage_path,
                                          verbose=0, failure_config=tune.FailureConfig(max_failures=max_failures),
                                          callbacks=[_progress(driver, names, cfg.n_trials)]),
            )
        try:
            with _tune_env():
                grid = tuner.fit()
        finally:
            for t in searcher.unfinished():  # interrupted: fail them and enqueue their retries
                try:
                    t.set_user_attr("interrupted", True)
                    study.tell(t, state=TrialState.FAIL)
                    session.retry_trial(t.number)
                except Exception:
                    pass
        errors += [f"{type(r.error).__name__}: {r.error}" for r in grid if r.error is not None]
        if session.n_complete() == done:
            raise RuntimeError(f"no trial completed on Ray in round {rnd + 1}; errors: "
                               + ("; ".join(errors[-3:]) or "none reported"))
    if session.n_complete() < cfg.n_trials:
        raise RuntimeError(f"{session.n_complete()}/{cfg.n_trials} trials COMPLETE after {max_rounds} rounds; "
                           f"errors: {'; '.join(errors[-3:])}")
    return session.front()
