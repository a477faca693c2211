"""The search on a Ray cluster: every trial a Ray Tune trial, every result in the search's own Optuna storage.

This module (with its adapter to ``OptunaSearch``'s internals, :mod:`.tune_searcher`) is the only place that
imports Ray. :func:`search_ray` (``autoprune search CONFIG --backend ray``):

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

Tested with ray 2.60 and optuna 5.1. Ray Tune's own experiment checkpoint of the searcher is disabled: the Optuna
storage is the record, and running the same command again resumes (trials of a killed driver are failed and their
parameters enqueued again, as in the local search).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import socket
import stat
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
from optuna.trial import TrialState

from .tune_searcher import RECORD_KEY, searcher_class

__all__ = ["search_ray", "connect", "RayUnreachable", "TESTED_VERSIONS"]

#: Versions this adapter was written and tested against (pin them together).
TESTED_VERSIONS = {"ray": "2.60.0", "optuna": "5.1.0"}

_TRIAL_KEY = "__autoprune_trial__"  # Optuna trial number, put into the Tune config by the define-by-run space
_LEVEL_KEY = "__autoprune_alloc__"  # the guided allocation of the trial's level, computed on the driver
_REUSE_KEY = "__autoprune_reuse__"  # an earlier trial with the same removal, found by the driver: (number, results)
_RUNG_STEP = "autoprune_rung_steps"  # in a rung's result (early stopping): fine-tuning steps done
_RUNG_INDEX = "autoprune_rung"  # ... and the rung's index
#: With early stopping, a round may hand out this many times the missing COMPLETE trials (stopped ones come on top);
#: the searcher ends the round as soon as enough trials are COMPLETE.
_STOPPED_TRIALS_FACTOR = 50


class RayUnreachable(ConnectionError):
    """No Ray cluster answers at the given address (or it lacks the requested resources)."""


# ------------------------------------------------------------------------------------------------------------
# connecting


def _split_address(address: str) -> tuple[str, int] | None:
    a = address
    for prefix in ("ray://", "http://", "https://"):
        if a.startswith(prefix):
            a = a[len(prefix):]
    a = a.rstrip("/")
    if a.startswith("["):  # [v6]:port
        host, _, port = a[1:].partition("]:")
    else:
        host, _, port = a.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host, int(port)


def connect(address: str | None = None, *, timeout: float = 30.0, runtime_env: Mapping[str, Any] | None = None,
            log: Callable[[str], None] | None = None) -> bool:
    """Connect to a Ray cluster, or start a local instance; return True when this call initialised Ray (and so the
    caller should ``ray.shutdown()`` it), False when Ray was already initialised in this process.

    ``address``: ``None`` (``$RAY_ADDRESS`` if set, else a new local instance), ``"auto"`` (the cluster started with
    ``ray start`` on this machine), ``"HOST:PORT"`` (the head node's GCS port, ``ray start --head --port``, default
    6379) or ``"ray://HOST:10001"`` (Ray Client). A ``HOST:PORT`` is first checked with a TCP connection (5 s);
    ``ray.init`` itself is abandoned after ``timeout`` seconds. Either failure raises :class:`RayUnreachable` naming
    the address and what to check.
    """
    import ray

    log = log or (lambda s: None)
    if ray.is_initialized():
        return False
    target = address if address is not None else os.environ.get("RAY_ADDRESS") or None
    if target not in (None, "auto", "local"):
        hp = _split_address(target)
        if hp is None:
            raise ValueError(f"Ray address {target!r}: expected auto, HOST:PORT or ray://HOST:PORT")
        from .storage import StorageUnreachable, check_reachable

        try:
            check_reachable(hp[0], hp[1], timeout=min(5.0, timeout), what="Ray head node")
        except StorageUnreachable as e:
            raise RayUnreachable(f"Ray address {target}: {e}. Start the cluster with `ray start --head "
                                 f"--port={hp[1]}` on {hp[0]}, or check the address (`ray status` on the head node "
                                 "prints it) and the firewall.") from None
        why = _grpc_probe(hp[0], hp[1], timeout=min(5.0, timeout))
        if why:
            raise RayUnreachable(f"Ray address {target}: {why}. That port is open but no Ray head node answers "
                                 "there: the address is the --port of `ray start --head` (default 6379), or "
                                 "ray://HOST:10001 for Ray Client; `ray status` on the head node prints it.")
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False, "configure_logging": True}
    if runtime_env:
        kwargs["runtime_env"] = dict(runtime_env)
    if target in (None, "local"):
        kwargs["include_dashboard"] = False
    else:
        kwargs["address"] = target
    box: dict[str, Any] = {}

    def init() -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ray.init(**kwargs)
            box["ok"] = True
        except BaseException as e:  # handed to the caller
            box["err"] = e

    t0 = time.monotonic()
    if target in (None, "local"):
        # A new local instance: its processes die with the thread that started them (PR_SET_PDEATHSIG), so start it
        # from this thread. Nothing remote to wait for.
        init()
        t = None
    else:  # connecting: abandon ray.init after `timeout` seconds
        logging.getLogger("ray._private.worker").addFilter(_NoThreadSigtermWarning())
        t = threading.Thread(target=init, name="autoprune-ray-init", daemon=True)
        t.start()
        t.join(timeout)
    if t is not None and t.is_alive():
        raise RayUnreachable(f"Ray address {target}: no Ray cluster answered within {timeout:g} s (something "
                             "listens on that port, but not a Ray head node's GCS?). Check the address: it is the "
                             "--port of `ray start --head` (default 6379); `ray status` on the head prints it.")
    err = box.get("err")
    if err is not None:
        what = target or "a new local Ray instance"
        hint = ("start one with `ray start --head` on this machine, or give --address HOST:PORT"
                if target == "auto" else "check the address and that the head node runs (`ray status`)")
        if target not in (None, "local") and os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
            hint += ("; if the cluster uses token authentication (`ray start` turns it on when ~/.ray/auth_token "
                     "exists), set RAY_AUTH_MODE=token and give the cluster's token in ~/.ray/auth_token, "
                     "$RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH")
        raise RayUnreachable(f"Ray address {what}: {type(err).__name__}: {err}; {hint}") from err
    log(f"ray: connected to {target or 'a new local instance'} in {time.monotonic() - t0:.1f} s "
        f"({_describe(ray.cluster_resources())})")
    return True


def _grpc_probe(host: str, port: int, timeout: float = 5.0) -> str | None:
    """None when an HTTP/2 (gRPC) server answers at host:port -- Ray's GCS and Ray Client servers do --, else why
    not. Sends the HTTP/2 client preface and an empty SETTINGS frame, and expects a SETTINGS frame back."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            data = b""
            while len(data) < 9:
                chunk = s.recv(9 - len(data))
                if not chunk:
                    return "the server closed the connection without an HTTP/2 answer"
                data += chunk
    except socket.timeout:
        return f"no gRPC answer within {timeout:g} s"
    except OSError as e:
        return f"connection failed ({e.strerror or e})"
    return None if data[3] == 0x04 else "the server does not speak gRPC (HTTP/2)"


class _NoThreadSigtermWarning(logging.Filter):
    """ray.init runs in a helper thread (so that it can be abandoned after a time-out); Ray then warns that it did
    not install its SIGTERM handler (the CLI turns SIGTERM into KeyboardInterrupt itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _describe(res: Mapping[str, float]) -> str:
    cpu, gpu = res.get("CPU", 0), res.get("GPU", 0)
    nodes = sum(1 for k in res if k.startswith("node:") and not k.startswith("node:__"))
    return f"{nodes} node(s), {cpu:g} CPUs, {gpu:g} GPUs"


def _code_env(ship_code: bool, runtime_env: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The job's runtime environment: ``runtime_env``, plus this autoprune package uploaded as a ``py_module`` so the
    workers run exactly the driver's trial function (no install on the nodes needed)."""
    env = dict(runtime_env or {})
    if ship_code:
        import autoprune

        pkg = str(Path(autoprune.__file__).resolve().parent)
        mods = list(env.get("py_modules", []))
        if pkg not in mods:
            mods.append(pkg)
        env["py_modules"] = mods
        env.setdefault("excludes", ["__pycache__", "*.pyc"])
    return env or None


# ------------------------------------------------------------------------------------------------------------
# the worker side


_WORKER_STATE: dict[str, Any] = {}  # payload key -> (cfg, problem, space, objective), kept by reused actors


def _private_dir() -> Path:
    """This user's folder for the Ray workers' files on this node: ``<tempdir>/autoprune-ray-<uid>``, created with
    mode 0700. The temporary folder is shared by every user of the node, and anyone can create that name first (to
    plant base weights there), so an existing folder is used only when it is a real folder (no symlink) owned by this
    user and writable by nobody else; otherwise :class:`PermissionError` names it and the fix."""
    uid = os.getuid()
    root = Path(tempfile.gettempdir()) / f"autoprune-ray-{uid}"
    try:
        root.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        why = "is not a folder (a symlink or a file)"
    elif st.st_uid != uid:
        why = f"is owned by uid {st.st_uid}, not by this user (uid {uid})"
    elif st.st_mode & 0o022:
        why = f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    else:
        return root
    raise PermissionError(f"{root} {why}: the Ray workers keep the search's base weights in that folder and use "
                          f"it only when it is private to this user. Remove it on this node (rm -r {root}), "
                          "or start the Ray workers with TMPDIR set to a private folder.")


def _sha256_file(path: Path) -> str | None:
    """The sha256 of the file at ``path``, or None when there is none (or it cannot be read)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _base_weights(folder: Path, data: bytes, sha: str) -> Path:
    """``folder/base.pt`` holding exactly the driver's base weights ``data`` (sha256 ``sha``): used as it is when its
    digest is ``sha``, else (absent, cut short, or another content) written from ``data`` first, atomically (a
    temporary file in ``folder``, then ``os.replace``), and checked again."""
    if hashlib.sha256(data).hexdigest() != sha:
        raise RuntimeError("the base weights received from the Ray driver do not match the driver's sha256 "
                           f"{sha}: the payload was corrupted on its way; run the search again")
    path = folder / "base.pt"
    if _sha256_file(path) == sha:
        return path
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="base.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    got = _sha256_file(path)
    if got != sha:
        raise RuntimeError(f"{path}: the base weights written there have sha256 {got}, not the driver's {sha}: "
                           f"something else writes into {folder}; stop it, or start the Ray workers with TMPDIR "
                           "set to a private folder")
    return path


def _worker_state(payload: Mapping[str, Any]) -> tuple[Any, Any, Any, Callable]:
    """The trial function's state on a Ray worker for ``payload`` (built by :func:`_payload` on the driver): the
    config, with the driver's base weights in this user's private folder (:func:`_private_dir`) as verified by
    their sha256 (:func:`_base_weights`), the problem, the space and the trial function."""
    key = payload["key"]
    if key in _WORKER_STATE:
        return _WORKER_STATE[key]
    _WORKER_STATE.clear()
    from ..config import load_config
    from .problem import Problem
    from .objective import TrialObjective
    from .recovery import worker_info
    from .space import RatioSpace

    d = json.loads(payload["config"])
    wdir = _private_dir() / key
    wdir.mkdir(mode=0o700, exist_ok=True)
    d["model"]["weights"] = str(_base_weights(wdir, payload["weights"], payload["weights_sha"]))
    d["model"].pop("pretrain", None)
    d["run_dir"] = str(wdir / "run")
    cfg = load_config(d)
    cfg.source = payload.get("source")  # module:function models are imported from next to the config file
    problem = Problem(cfg)
    space = RatioSpace(cfg, problem)
    worker = {**worker_info(), "seed": payload.get("seed")}
    state = (cfg, problem, space, TrialObjective(cfg, problem, space, worker=worker))
    _WORKER_STATE[key] = state
    return state


def _trainable(config: dict, payload: dict) -> None:
    """A Ray Tune function trainable: one search trial with the parameters Optuna proposed."""
    import torch
    from ray import tune
    from ray.tune.utils import flatten_dict

    cfg, problem, space, objective = _worker_state(payload)
    if getattr(cfg, "threads", None) is None and payload.get("threads"):
        torch.set_num_threads(payload["threads"])  # the CPUs reserved for the trial
    config = dict(config)
    number = int(config.pop(_TRIAL_KEY, 0))
    alloc = config.pop(_LEVEL_KEY, None)
    reuse = config.pop(_REUSE_KEY, None)
    objective.lookup = (lambda sha: (reuse["number"], reuse["results"])) if reuse else (lambda sha: None)
    if alloc is not None and hasattr(space, "_alloc_cache"):
        # the guided allocation of this level, as the driver computed it: no sensitivity analysis on the workers
        space._alloc_cache[round(float(alloc["level"]), 6)] = {k: float(v) for k, v in alloc["ratios"].items()}
    names = payload["metrics"]

    def metrics(values: Any) -> dict[str, float]:
        return {n: float(v) for n, v in zip(names, values)}

    if objective.stopper is not None:  # early stopping: the rung values go to the driver, which decides
        def send(steps: int, rung: int, values: list[float]) -> None:
            tune.report({**metrics(values), _RUNG_STEP: int(steps), _RUNG_INDEX: int(rung)})

        objective.rung_sink = send
    params = flatten_dict(config, delimiter="/")
    trial = optuna.trial.FixedTrial(params, number=number)
    threads = cfg.cpu_threads() if hasattr(cfg, "cpu_threads") else contextlib.nullcontext()
    with threads:  # the config's thread count, as the local search and export use it
        values = objective(trial)
    record = {"user_attrs": trial.user_attrs, "constraints": trial.constraints}
    tune.report({**metrics(values), RECORD_KEY: json.dumps(record, default=_json_default)})


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


# ------------------------------------------------------------------------------------------------------------
# the driver side


class _Space:
    """The define-by-run search space: the local search's parameter suggestions (``RatioSpace.suggest``) on the
    driver's Optuna trial. Records the driver as the trial's worker (so a dead driver's trials are recognised and
    retried) and passes the trial number, the guided allocation and, when a COMPLETE trial of the study removed
    exactly the same channels, that trial's results on to the trainable (which then does not train again)."""

    def __init__(self, space: Any, problem: Any, driver: Mapping[str, Any]) -> None:
        self.space, self.problem, self.driver = space, problem, dict(driver)

    def __call__(self, trial: Any) -> dict[str, Any]:
        from .objective import RESULT_ATTRS, find_evaluated
        from .problem import removal_digest

        trial.set_user_attr("worker", self.driver)
        crit, ratios, extra = self.space.suggest(trial)
        out: dict[str, Any] = {_TRIAL_KEY: trial.number}
        if "level" in extra:
            key = round(float(extra["level"]), 6)
            alloc = self.space.allocation(key)
            out[_LEVEL_KEY] = {"level": key, "ratios": {k: float(v) for k, v in alloc.items()}}
        found = find_evaluated(trial.study, removal_digest(self.problem.removal(ratios, crit)))
        if found is not None:
            out[_REUSE_KEY] = {"number": found[0], "results": {k: found[1].get(k) for k in RESULT_ATTRS}}
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
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in problem.base_model.state_dict().items()}, buf)
    return buf.getvalue()


def _payload(cfg: Any, problem: Any, *, threads: int, seed: int | None) -> dict[str, Any]:
    """What every trainable receives (through Ray's object store, :func:`ray.tune.with_parameters`): plain data
    only -- the config as JSON, the base weights and their sha256 (the workers check the file they load against it,
    :func:`_base_weights`), the metric names, the torch thread count and the driver's sampler seed. ``key`` names the
    config and weights (a reused actor keeps its state for the same key)."""
    from .session import metric_names

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
    from ..config import load_config
    from .session import open_session
    from .storage import check_storage

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
    result (:data:`_RUNG_STEP`) is recorded in its Optuna trial and compared with the other trials' results at that
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
            ot_trial = d.searcher.optuna_trial(trial.trial_id) if _RUNG_STEP in result else None
            if ot_trial is None:
                return TrialScheduler.CONTINUE
            step, rung = int(result[_RUNG_STEP]), int(result[_RUNG_INDEX])
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
            if _RUNG_STEP in r:  # its last result was a rung's: early stopping stopped it there
                log(f"trial {trial.config.get(_TRIAL_KEY, '?')} stopped at rung {r[_RUNG_INDEX]} on Ray "
                    f"({r[_RUNG_STEP]} fine-tuning steps)")
            elif names[0] in r:
                log(f"trial {trial.config.get(_TRIAL_KEY, '?')} COMPLETE on Ray: "
                    + ", ".join(f"{n} {r[n]:.4g}" for n in names)
                    + f" -- {self.driver.session.n_complete()}/{self.n_trials}")

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.driver.session.log(f"trial {trial.config.get(_TRIAL_KEY, '?')} FAILED on Ray: "
                                    f"{trial.error_file or ''}")

    return Progress(driver, names, n_trials)


def _drive(session: Any, *, cpus_per_trial: float, gpus_per_trial: float, max_concurrent: int | None,
           max_failures: int, storage_path: str | None, max_rounds: int) -> Any:
    """The Ray rounds over an open session: Tune trials until ``n_trials`` are COMPLETE."""
    from ray import tune

    from .session import directions, metric_names, sampler_for_round

    cfg, problem, space, study, log = session.cfg, session.problem, session.space, session.study, session.log

    names = metric_names(cfg)
    modes = ["max" if d == "maximize" else "min" for d in directions(cfg)]
    payload = _payload(cfg, problem, threads=cpus_per_trial, seed=session.seed)
    resources = {"cpu": float(cpus_per_trial), "gpu": float(gpus_per_trial)}
    trainable = tune.with_resources(tune.with_parameters(_trainable, payload=payload), resources)
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
