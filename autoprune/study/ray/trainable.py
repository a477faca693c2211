"""The worker side of the Ray backend: the Ray Tune trainable that runs one search trial, and the base weights it
loads, checked against the driver's sha256 in this user's private folder.

:func:`run_trial` is handed to Ray Tune by the driver (:mod:`.driver`) and pickled by reference (this module's path):
the workers import this module (the package is shipped with the job unless ``ship_code=False``) and receive, through
Ray's object store, only the plain payload the driver built -- never its study, sampler or storage.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
import torch

from ...config import load_config
from ..objective import TrialObjective
from ..problem import Problem
from ..recovery import worker_info
from ..space import RatioSpace
from .searcher import RECORD_KEY

__all__ = ["run_trial", "TRIAL_KEY", "LEVEL_KEY", "REUSE_KEY", "RUNG_STEP", "RUNG_INDEX"]

TRIAL_KEY = "__autoprune_trial__"  # Optuna trial number, put into the Tune config by the define-by-run space
LEVEL_KEY = "__autoprune_alloc__"  # the guided allocation of the trial's level, computed on the driver
REUSE_KEY = "__autoprune_reuse__"  # an earlier trial with the same removal, found by the driver: (number, results)
RUNG_STEP = "autoprune_rung_steps"  # in a rung's result (early stopping): fine-tuning steps done
RUNG_INDEX = "autoprune_rung"  # ... and the rung's index


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
    """The trial function's state on a Ray worker for ``payload`` (built on the driver, :mod:`.driver`): the
    config, with the driver's base weights in this user's private folder (:func:`_private_dir`) as verified by
    their sha256 (:func:`_base_weights`), the problem, the space and the trial function."""
    key = payload["key"]
    if key in _WORKER_STATE:
        return _WORKER_STATE[key]
    _WORKER_STATE.clear()
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


def run_trial(config: dict, payload: dict) -> None:
    """A Ray Tune function trainable: one search trial with the parameters Optuna proposed."""
    from ray import tune
    from ray.tune.utils import flatten_dict

    cfg, problem, space, objective = _worker_state(payload)
    if getattr(cfg, "threads", None) is None and payload.get("threads"):
        torch.set_num_threads(payload["threads"])  # the CPUs reserved for the trial
    config = dict(config)
    number = int(config.pop(TRIAL_KEY, 0))
    alloc = config.pop(LEVEL_KEY, None)
    reuse = config.pop(REUSE_KEY, None)
    objective.lookup = (lambda sha: (reuse["number"], reuse["results"])) if reuse else (lambda sha: None)
    if alloc is not None and hasattr(space, "_alloc_cache"):
        # the guided allocation of this level, as the driver computed it: no sensitivity analysis on the workers
        space._alloc_cache[round(float(alloc["level"]), 6)] = {k: float(v) for k, v in alloc["ratios"].items()}
    names = payload["metrics"]

    def metrics(values: Any) -> dict[str, float]:
        return {n: float(v) for n, v in zip(names, values)}

    if objective.stopper is not None:  # early stopping: the rung values go to the driver, which decides
        def send(steps: int, rung: int, values: list[float]) -> None:
            tune.report({**metrics(values), RUNG_STEP: int(steps), RUNG_INDEX: int(rung)})

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
