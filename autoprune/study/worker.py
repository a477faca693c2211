"""Many worker processes, on any machines, pulling the trials of one study from PostgreSQL.

``autoprune worker CONFIG --storage postgresql://USER@HOST:5432/DB`` (or :func:`run_worker`) starts one worker;
start as many as you like, on as many machines as can reach the database. Each worker runs the local search's trial
function (:func:`autoprune.study.local.make_objective`) on trials it takes from the shared study:

* Storage: Optuna's ``RDBStorage`` with heartbeats (``heartbeat_interval``, ``grace_period``) and
  ``RetryHeartbeatStaleTrialCallback`` (formerly ``RetryFailedTrialCallback``): a worker that dies mid-trial
  (``kill -9``, a lost machine, a pre-empted pod) stops beating; after ``grace_period`` seconds any other worker
  marks its trial FAIL and enqueues a copy with the same parameters (system attributes ``failed_trial`` and
  ``retry_history``), which the next free worker runs. A worker stopped by Ctrl-C or SIGTERM fails its trial and
  enqueues the retry at once.
* Stop rule: a worker starts a trial only while ``COMPLETE + RUNNING < n_trials``; otherwise it waits (checking for
  stale trials) until the study has ``n_trials`` COMPLETE trials, then exits. So no worker leaves while a running
  trial may still need a retry, and the study ends with exactly ``n_trials`` COMPLETE trials (two workers that
  start the last trial at the same instant can add one more).
* Fail fast: an unreachable server or a wrong URL is reported within ``connect_timeout`` seconds, naming the URL
  (password hidden) and what to check; a missing driver names the package to install.

The helpers :func:`open_rdb_storage` and :func:`prepare_study` are shared with the Ray backend
(:mod:`autoprune.study.ray_backend`).
"""
from __future__ import annotations

import contextlib
import os
import random
import socket
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import SearchConfig

__all__ = ["run_worker", "WorkerResult", "open_rdb_storage", "open_search_storage", "is_rdb_url", "redact_url",
           "check_reachable", "StorageUnreachable", "prepare_study", "worker_seed", "retry_callback",
           "DEFAULT_HEARTBEAT", "DEFAULT_GRACE", "DEFAULT_MAX_RETRY"]

#: Seconds between a running trial's heartbeats (``RDBStorage(heartbeat_interval=...)``).
DEFAULT_HEARTBEAT = 20
#: Seconds without a heartbeat after which a RUNNING trial is failed and retried.
DEFAULT_GRACE = 60
#: Retries of one trial whose workers keep dying (then it stays FAIL).
DEFAULT_MAX_RETRY = 3

_RDB_SCHEMES = ("postgresql", "postgres", "mysql", "mariadb", "sqlite", "oracle", "mssql", "cockroachdb")
_DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "cockroachdb": 26257, "mysql": 3306, "mariadb": 3306,
                  "mssql": 1433, "oracle": 1521}
_DRIVERS = {"postgresql": 'psycopg (pip install "psycopg[binary]")', "mysql": "PyMySQL (pip install pymysql)",
            "mariadb": "PyMySQL (pip install pymysql)"}


class StorageUnreachable(ConnectionError):
    """The storage URL cannot be used: server unreachable, login or database refused, driver missing."""


# ------------------------------------------------------------------------------------------------------------
# storage


def is_rdb_url(url: str | None) -> bool:
    """True for SQLAlchemy database URLs (``postgresql://``, ``postgresql+psycopg://``, ``mysql://``,
    ``sqlite:///``...); False for journal files and ``journal://`` URLs."""
    if not url or "://" not in url:
        return False
    return url.split("://", 1)[0].split("+", 1)[0].lower() in _RDB_SCHEMES


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: hide anything between ':' and '@' of the netloc
        if "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]:
            scheme, rest = url.split("://", 1)
            cred, host = rest.split("@", 1)
            user = cred.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}" if ":" in cred else url
        return url


def _host_port(url: str) -> tuple[str, int] | None:
    """(host, port) of a network database URL, or None (sqlite, unix socket, unparsable)."""
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
    except Exception:
        return None
    backend = u.get_backend_name()
    if backend == "sqlite" or not u.host or u.host.startswith("/"):
        return None
    if "host" in u.query:  # libpq's ?host=/path/to/socket
        return None
    return u.host, int(u.port or _DEFAULT_PORTS.get(backend, 0) or 0)


def check_reachable(host: str, port: int, *, timeout: float = 5.0, what: str = "server") -> None:
    """Open and close a TCP connection to ``host:port`` within ``timeout`` seconds, or raise
    :class:`StorageUnreachable` saying why (refused, timed out, unknown host)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.gaierror as e:
        why = f"unknown host {host!r} ({e.strerror or e})"
    except socket.timeout:
        why = f"no answer within {timeout:g} s (host down, wrong address, or a firewall dropping packets)"
    except ConnectionRefusedError:
        why = "connection refused (nothing listens on that port)"
    except OSError as e:
        why = e.strerror or str(e)
    raise StorageUnreachable(f"cannot reach the {what} at {host}:{port}: {why}")


def _hint(backend: str, msg: str) -> str:
    m = msg.lower()
    if "unknown host" in m or "could not translate host name" in m:
        return "check the host name in the URL"
    if backend in ("postgresql", "postgres"):
        if "does not exist" in m and "database" in m:
            return "create the database first (createdb NAME, or CREATE DATABASE NAME; as the server's superuser)"
        if "password" in m or "authentication" in m or "no pg_hba.conf entry" in m or "role" in m:
            return "check the user name and password, and that pg_hba.conf lets this host log in"
        if "timeout" in m or "timed out" in m:
            return ("the server accepted the TCP connection but did not answer: is it a PostgreSQL server, "
                    "and is it overloaded?")
        return ("check that the server runs (pg_isready -h HOST -p PORT), that postgresql.conf has "
                "listen_addresses covering this network, and that pg_hba.conf admits this host")
    return "check that the database server runs and that the URL's host, port, user and database are right"


def open_rdb_storage(url: str, *, heartbeat_interval: int | None = DEFAULT_HEARTBEAT,
                     grace_period: int | None = DEFAULT_GRACE, max_retry: int | None = DEFAULT_MAX_RETRY,
                     connect_timeout: float = 10.0, engine_kwargs: Mapping[str, Any] | None = None,
                     ) -> optuna.storages.RDBStorage:
    """An Optuna ``RDBStorage`` for many workers, opened fast or not at all.

    Heartbeats every ``heartbeat_interval`` seconds; a RUNNING trial without one for ``grace_period`` seconds is
    failed by the next worker that looks, and re-enqueued up to ``max_retry`` times (``None``: no limit) by
    ``RetryHeartbeatStaleTrialCallback``. ``heartbeat_interval=None`` disables both.

    A network URL is first checked with a plain TCP connection, then the driver connects with
    ``connect_timeout`` (libpq's ``connect_timeout`` for PostgreSQL); any failure raises
    :class:`StorageUnreachable` naming the URL (password hidden) and what to check.
    """
    if not is_rdb_url(url):
        raise ValueError(f"{url!r} is not a database URL (postgresql://USER:PASSWORD@HOST:PORT/DB, mysql://..., "
                         "sqlite:///FILE)")
    shown = redact_url(url)
    backend = url.split("://", 1)[0].split("+", 1)[0].lower()
    hp = _host_port(url)
    if hp is not None and hp[1]:
        try:
            check_reachable(hp[0], hp[1], timeout=min(connect_timeout, 10.0), what="database server")
        except StorageUnreachable as e:
            raise StorageUnreachable(f"storage {shown}: {e}; {_hint(backend, str(e))}") from None
    kw: dict[str, Any] = {"pool_pre_ping": True}
    if backend in ("postgresql", "postgres", "cockroachdb"):
        kw["connect_args"] = {"connect_timeout": max(1, int(round(connect_timeout)))}
    elif backend in ("mysql", "mariadb"):
        kw["connect_args"] = {"connect_timeout": max(1, int(round(connect_timeout)))}
    if engine_kwargs:
        kw.update(engine_kwargs)
    cb_kw: dict[str, Any] = {}
    if heartbeat_interval is not None:
        cb_kw = {"heartbeat_interval": int(heartbeat_interval),
                 "grace_period": int(grace_period) if grace_period is not None else None}
        cb = retry_callback(max_retry)
        params = __import__("inspect").signature(optuna.storages.RDBStorage.__init__).parameters
        cb_kw["heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params
              else "failed_trial_callback"] = cb

    import sqlalchemy.exc

    last: Exception | None = None
    for attempt in range(4):  # several workers creating the tables of an empty database at once may collide
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=kw, **cb_kw)
        except ImportError as e:
            scheme = url.split("://", 1)[0]
            drv = (f"the driver {scheme.split('+', 1)[1]!r} named in the URL, or use {backend}:// with "
                   f"{_DRIVERS.get(backend, 'its default driver')}") if "+" in scheme else \
                _DRIVERS.get(backend, "the database driver named in the URL")
            raise StorageUnreachable(f"storage {shown}: the database driver is not installed ({e.__cause__ or e}); "
                                     f"install {drv}") from None
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            last = e  # "relation already exists" / duplicate type: another worker is creating the tables
            time.sleep(0.2 + random.random() * 0.5)
        except sqlalchemy.exc.OperationalError as e:
            msg = str(getattr(e, "orig", None) or e).strip().splitlines()[0] if str(e).strip() else repr(e)
            raise StorageUnreachable(f"storage {shown}: cannot connect: {msg}; {_hint(backend, msg)}") from None
        except sqlalchemy.exc.ArgumentError as e:
            raise ValueError(f"storage {shown}: not a valid database URL ({e})") from None
    raise StorageUnreachable(f"storage {shown}: could not create Optuna's tables: {last}")


def retry_callback(max_retry: int | None = DEFAULT_MAX_RETRY) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna's retry-on-stale-heartbeat callback (``RetryHeartbeatStaleTrialCallback``; ``RetryFailedTrialCallback``
    in Optuna < 4.9)."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or \
        optuna.storages.RetryFailedTrialCallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(max_retry=max_retry)


def open_search_storage(cfg: SearchConfig, storage: str | None = None, **rdb: Any) -> optuna.storages.BaseStorage:
    """The search's storage: database URLs through :func:`open_rdb_storage` (heartbeats, retries, fail-fast), other
    storages (journal files) as ``autoprune.study.local.open_storage`` opens them."""
    url = storage if storage is not None else cfg.storage
    if is_rdb_url(url):
        return open_rdb_storage(url, **rdb)
    from .local import open_storage

    return open_storage(cfg, storage)


# ------------------------------------------------------------------------------------------------------------
# study


def worker_seed(cfg: SearchConfig, existing: int = 0) -> int:
    """A sampler seed for one of many concurrent workers: the config's seed mixed with this host, this process and
    the trials already in the study, so workers started together do not propose the same trials."""
    h = zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    return (cfg.sampler_seed * 1_000_003 + existing * 7919 + h) % 2**31


def _retrying(fn: Callable[[], Any], tries: int = 4) -> Any:
    """Run a small storage write, retried when a concurrent worker wrote the same row first."""
    import sqlalchemy.exc

    for i in range(tries):
        try:
            return fn()
        except sqlalchemy.exc.IntegrityError:
            if i == tries - 1:
                raise
            time.sleep(0.05 + random.random() * 0.2)


def _weights_digest(problem: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    for k, v in sorted(problem.base_model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def prepare_study(cfg: SearchConfig, problem: Any, storage: optuna.storages.BaseStorage, *, seed: int,
                  space: Any, log: Callable[[str], None] | None = None) -> optuna.Study:
    """Create or load the study of ``cfg`` with the config's sampler (seeded with ``seed``) and record what the local
    search records: metric names, and the ``autoprune`` study attribute (config, fingerprint, base metrics, groups),
    warning when the study was made from another config; a new study gets ``space``'s anchor trials. Also records the base weights' digest and warns when this
    process's base model differs (e.g. pretrained on other hardware): use ``model.weights`` for multi-machine runs.
    """
    from .local import STUDY_ATTR, enqueue_anchors, make_sampler, metric_names, open_study

    log = log or (lambda s: None)
    study = _retrying(lambda: open_study(cfg, storage, sampler=make_sampler(cfg, seed)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if study.metric_names != metric_names(cfg):
            _retrying(lambda: study.set_metric_names(metric_names(cfg)))
    attrs = study.user_attrs.get(STUDY_ATTR)
    fp = cfg.fingerprint()
    if attrs is None:
        value = {"config": cfg.to_dict(), "source": cfg.source, "fingerprint": fp, "base": problem.base_metrics(),
                 "groups": list(problem.group_names), "created": time.time()}
        _retrying(lambda: study.set_user_attr(STUDY_ATTR, value))
        _retrying(lambda: enqueue_anchors(study, space, log))
    elif attrs.get("fingerprint") != fp:
        warnings.warn(f"study {cfg.study!r} was created from a different config (model, data, ratio space, "
                      "criteria or fine-tuning changed); its earlier trials measured something else. Use a new "
                      "study_name to start afresh.")
    digest = _weights_digest(problem)
    known = study.user_attrs.get("autoprune_base_sha")
    if known is None:
        _retrying(lambda: study.set_user_attr("autoprune_base_sha", digest))
    elif known != digest:
        warnings.warn(f"this worker's base model (weights digest {digest}) differs from the one the study started "
                      f"with ({known}): its trials prune another model. Give model.weights (a file every machine "
                      "reads) instead of model.pretrain when workers run on different machines.")
    return study


def _count(study: optuna.Study) -> tuple[int, int, int]:
    """(COMPLETE, RUNNING, WAITING) trials."""
    c = r = w = 0
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            c += 1
        elif t.state == TrialState.RUNNING:
            r += 1
        elif t.state == TrialState.WAITING:
            w += 1
    return c, r, w


def _fail_stale(study: optuna.Study, no_beat_after: float) -> list[int]:
    """Fail trials whose heartbeat stopped (Optuna's ``fail_stale_trials``: runs the retry callback), and RUNNING
    trials that never started their trial function (no ``worker`` attribute) after ``no_beat_after`` seconds -- a
    worker killed between taking a trial and its first heartbeat. Returns the numbers failed by the second rule."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    storage = study._storage
    out = []
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "worker" in t.user_attrs or t.datetime_start is None or now - t.datetime_start.timestamp() < no_beat_after:
            continue
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                out.append(t.number)
                _retry_now(study, t._trial_id)
    return out


def _retry_now(study: optuna.Study, trial_id: int) -> None:
    """Enqueue the retry of a FAIL trial the way the heartbeat callback would (system attributes ``failed_trial``,
    ``retry_history``), and mark the retry with the user attribute ``retry_of`` too, so that a local
    ``autoprune search`` on the same study (which retries interrupted trials itself) does not retry it again."""
    storage = study._storage  # (an RDBStorage is wrapped in Optuna's cache: ask it through the heartbeat API)
    get = getattr(storage, "get_heartbeat_stale_trial_callback", None) or \
        getattr(storage, "get_failed_trial_callback", None)
    cb = get() if get is not None else None
    if cb is None:
        return
    failed = storage.get_trial(trial_id)
    cb(study, failed)
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if (t.system_attrs.get("retry_history") or [None])[-1] == failed.number:
            with contextlib.suppress(Exception):
                storage.set_trial_user_attr(t._trial_id, "retry_of", failed.number)
                if t.user_attrs.get("interrupted"):  # copied from the failed trial by the callback
                    storage.set_trial_user_attr(t._trial_id, "interrupted", False)


# ------------------------------------------------------------------------------------------------------------
# the worker


@dataclass
class WorkerResult:
    """What one worker did."""

    study: str
    storage: str
    n_trials: int
    complete: int  # COMPLETE trials of the study when the worker stopped
    ran: list[int] = field(default_factory=list)  # trial numbers this worker finished (COMPLETE)
    failed: list[int] = field(default_factory=list)  # trial numbers this worker ran that failed
    seconds: float = 0.0
    waited_seconds: float = 0.0


def run_worker(config: Any, *, storage: str | None = None, n_trials: int | None = None,
               study_name: str | None = None, heartbeat_interval: int = DEFAULT_HEARTBEAT,
               grace_period: int | None = DEFAULT_GRACE, max_retry: int | None = DEFAULT_MAX_RETRY,
               connect_timeout: float = 10.0, poll_interval: float | None = None, max_failures: int = 3,
               log: Callable[[str], None] | None = None) -> WorkerResult:
    """Run trials of the study of ``config`` (a YAML path, dict or :class:`SearchConfig`) from a shared database
    until it has ``n_trials`` COMPLETE trials; see the module docstring. Any number of workers may run this at once
    on any machines. ``storage`` (default: the config's ``storage``) must be a database URL, e.g.
    ``postgresql://USER:PASSWORD@HOST:5432/DB``.

    Raises :class:`StorageUnreachable` (within about ``connect_timeout`` seconds) when the database cannot be used,
    and ``RuntimeError`` after ``max_failures`` trials of this worker failed in a row (a broken config or model).
    ``KeyboardInterrupt`` (Ctrl-C; the CLI maps SIGTERM to it) fails the running trial, enqueues its retry, and is
    re-raised.
    """
    from ..config import load_config

    log = log or (lambda s: None)
    t_start = time.perf_counter()
    cfg = load_config(config, n_trials=n_trials, storage=storage, study_name=study_name)
    if not is_rdb_url(cfg.storage):
        raise ValueError(f"autoprune worker needs a database storage shared by the workers, e.g. --storage "
                         f"postgresql://USER:PASSWORD@HOST:5432/DB; got {cfg.storage!r} (for several workers on one "
                         "machine, `autoprune search` shares a journal file)")
    # Connect first: a wrong URL fails in seconds, before the data and the model are built.
    st = open_rdb_storage(cfg.storage, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                          max_retry=max_retry, connect_timeout=connect_timeout)
    shown = redact_url(cfg.storage)
    log(f"worker {socket.gethostname()}:{os.getpid()}: storage {shown}, study {cfg.study!r}, {cfg.n_trials} trials")
    with (cfg.cpu_threads() if hasattr(cfg, "cpu_threads") else contextlib.nullcontext()):
        return _work(cfg, st, shown, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                     poll_interval=poll_interval, max_failures=max_failures, log=log, t_start=t_start)


def setup_problem(cfg: SearchConfig, st: optuna.storages.BaseStorage, log: Callable[[str], None]) -> tuple:
    """Checked config, problem, ratio space (guided allocations precomputed) and the study's trial count so far:
    the set-up shared by PostgreSQL workers and the Ray driver."""
    from . import check_config
    from .space import RatioSpace

    cfg, problem = check_config(cfg, log=log)
    space = RatioSpace(cfg, problem)
    if cfg.ratios.mode == "guided":
        for level in cfg.ratios.level:
            space.allocation(level)
    try:
        existing = len(st.get_all_trials(st.get_study_id_from_name(cfg.study), deepcopy=False))
    except KeyError:
        existing = 0
    return cfg, problem, space, existing


def _work(cfg: SearchConfig, st: optuna.storages.RDBStorage, shown: str, *, heartbeat_interval: int,
          grace_period: int | None, poll_interval: float | None, max_failures: int, log: Callable[[str], None],
          t_start: float) -> WorkerResult:
    from .local import make_objective

    cfg, problem, space, existing = setup_problem(cfg, st, log)
    study = prepare_study(cfg, problem, st, seed=worker_seed(cfg, existing), log=log, space=space)
    objective = make_objective(cfg, problem, space)
    grace = grace_period if grace_period is not None else 2 * heartbeat_interval
    poll = poll_interval if poll_interval is not None else max(0.5, min(5.0, heartbeat_interval / 2))
    res = WorkerResult(study=cfg.study, storage=shown, n_trials=cfg.n_trials, complete=0)
    current: dict[str, Any] = {}
    last_error: list[BaseException] = []

    def guarded(trial: optuna.Trial) -> list[float]:
        current["id"], current["number"] = trial._trial_id, trial.number
        try:
            return objective(trial)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # recorded, then Optuna marks the trial FAIL (catch=...)
            last_error[:] = [e]
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
            raise

    finished: list[FrozenTrial] = []
    in_a_row = 0
    while True:
        _fail_stale(study, no_beat_after=2 * grace + 60)
        complete, running, waiting = _count(study)
        res.complete = complete
        if complete >= cfg.n_trials:
            break
        if complete + running >= cfg.n_trials:
            t0 = time.perf_counter()
            time.sleep(poll)  # enough trials are running; wait in case one of them dies and needs a retry
            res.waited_seconds += time.perf_counter() - t0
            continue
        finished.clear()
        current.clear()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.optimize(guarded, n_trials=1, catch=(Exception,), gc_after_trial=False,
                               callbacks=[lambda s, t: finished.append(t)])
        except KeyboardInterrupt:
            if "id" in current:
                with contextlib.suppress(Exception):
                    if st.get_trial(current["id"]).state == TrialState.FAIL:
                        _retry_now(study, current["id"])
                        log(f"interrupted: trial {current['number']} failed and enqueued again")
            raise
        for t in finished:
            if t.state == TrialState.COMPLETE:
                res.ran.append(t.number)
                in_a_row = 0
                a = t.user_attrs
                c, _, _ = _count(study)
                retry = t.system_attrs.get("retry_history")
                log(f"trial {t.number} COMPLETE in {a.get('seconds', 0.0):.1f} s: accuracy "
                    f"{a.get('accuracy', float('nan')):.2%}, {a.get('macs_fraction', float('nan')):.1%} MACs"
                    f"{f' (retry of {retry})' if retry else ''} -- {c}/{cfg.n_trials} complete")
            else:
                res.failed.append(t.number)
                in_a_row += 1
                err = last_error[0] if last_error else None
                log(f"trial {t.number} {t.state.name}: {type(err).__name__ + ': ' + str(err) if err else ''}")
                if in_a_row >= max_failures:
                    raise RuntimeError(f"{in_a_row} trials of this worker failed in a row (last: trial {t.number}: "
                                       f"{type(err).__name__ if err else ''}: {err}); stopping") from err
    res.seconds = time.perf_counter() - t_start
    log(f"study {cfg.study!r} has {res.complete} COMPLETE trials (this worker finished {len(res.ran)}); stopping")
    return res
