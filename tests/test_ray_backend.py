"""The Ray backend's pieces, without a Ray cluster (tests/test_distributed.py runs real ones):

* what the driver hands to Ray Tune pickles without the study, its sampler or storage: ``tune.Tuner`` pickles its
  callbacks, scheduler and searcher into ``tuner.pkl``, and a sampler holding a ``threading.Lock`` (optuna 5.1's
  NSGAIISampler) made ``--backend ray`` fail with ``cannot pickle '_thread.lock' object``;
* a worker uses the driver's base weights only: a file planted in its folder is replaced from the payload (checked
  by sha256), and a folder that is not private to this user is refused.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading

import optuna
import pytest
import torch

from autoprune.study.ray import driver as ray_driver
from autoprune.study.ray import trainable as ray_trainable
from autoprune.study.ray.driver import _drive, _payload
from autoprune.study.ray.trainable import _base_weights, _private_dir, _worker_state


def _config(tmp, **extra) -> dict:
    """The quickstart search shrunk (as tests/test_distributed.py's RAY_CONFIG), no pretraining."""
    return {"name": "qray", "seed": 0, "n_trials": 3, "threads": 1, "run_dir": str(tmp / "run"),
            "model": {"name": "resnet20"},
            "data": {"dataset": "synthetic", "image_size": 8, "val_fraction": 0.25, "cache_dir": str(tmp / "cache"),
                     "options": {"train_per_class": 4, "test_per_class": 2}},
            "criteria": ["l1"], "ratios": {"mode": "guided", "guide": "uniform", "offset": 0.15, "default": [0.0, 0.8]},
            "objectives": ["accuracy", "macs"], "sampler": {"name": "nsga2", "population_size": 4},
            "finetune": {"epochs": 1, "batch_size": 16, "max_batches": 1}, **extra}


class LockedSampler(optuna.samplers.RandomSampler):
    """A sampler holding a lock, as optuna 5.1's NSGAIISampler does: it cannot be pickled."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self._thread_lock = threading.Lock()


class _Stop(Exception):
    pass


def test_what_tune_pickles_holds_no_study_sampler_or_storage(tmp_path, monkeypatch):
    from ray import cloudpickle, tune

    from autoprune.study.session import open_session

    monkeypatch.setattr(ray_driver, "sampler_for_round", lambda session, rnd: LockedSampler())
    handed: dict = {}

    class RecordingTuner(tune.Tuner):  # the real Tuner (which pickles its state into tuner.pkl); no fit
        def __init__(self, trainable, **kwargs):
            handed.update(trainable=trainable, **kwargs)
            super().__init__(trainable, **kwargs)

        def fit(self):
            raise _Stop

    monkeypatch.setattr(tune, "Tuner", RecordingTuner)
    cfg = _config(tmp_path, early_stopping={"enabled": True, "rungs": [0], "reduction_factor": 2,
                                            "min_results": 2})  # the rung scheduler and the quota too
    with open_session(cfg) as session:
        session.study.sampler = LockedSampler()
        with pytest.raises(_Stop):
            _drive(session, cpus_per_trial=1, gpus_per_trial=0, max_concurrent=None, max_failures=0,
                   storage_path=str(tmp_path / "ray"), max_rounds=1)

    assert set(handed) == {"trainable", "tune_config", "run_config"}
    assert handed["tune_config"].scheduler is not None and handed["run_config"].callbacks
    for name, obj in handed.items():
        blob = cloudpickle.dumps(obj)  # as Tune pickles them
        for what in (b"LockedSampler", b"optuna.study.study", b"optuna.storages", b"RatioSpace", b"torch.nn"):
            assert what not in blob, (name, what)

    # The real Tuner wrote them into tuner.pkl; loaded back, the callback and the scheduler keep their plain state,
    # and their driver-side state is dropped, on purpose.
    assert len(list((tmp_path / "ray").rglob("tuner.pkl"))) == 1
    progress = cloudpickle.loads(cloudpickle.dumps(handed["run_config"].callbacks[0]))
    scheduler = cloudpickle.loads(cloudpickle.dumps(handed["tune_config"].scheduler))
    assert progress.names == ["accuracy", "macs_fraction"] and progress.n_trials == 3
    assert scheduler.names == ["accuracy", "macs_fraction"] and scheduler.batch_size == 16
    for piece in (progress, scheduler):
        with pytest.raises(AttributeError, match="session: driver-side state .* dropped when Ray Tune pickled"):
            piece.driver.session


# ------------------------------------------------------------------------------------------------------------
# the worker's base weights


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    """The driver's config, problem and the trainables' payload."""
    from autoprune.config import load_config
    from autoprune.study.problem import Problem

    cfg = load_config(_config(tmp_path_factory.mktemp("driver")))
    problem = Problem(cfg)
    return cfg, problem, _payload(cfg, problem, threads=1, seed=0)


@pytest.fixture
def tmpdir_of_node(tmp_path, monkeypatch):
    """The node's temporary folder (shared by its users): tempfile.gettempdir() for the test."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    monkeypatch.setattr(ray_trainable, "_WORKER_STATE", {})
    return d


def test_payload_is_plain_data_with_the_weights_digest(driver):
    _, _, payload = driver
    assert {type(v) for v in payload.values()} <= {str, bytes, int, list, type(None)}
    assert payload["weights_sha"] == hashlib.sha256(payload["weights"]).hexdigest()


def test_a_planted_base_file_is_replaced_by_the_drivers_weights(driver, tmpdir_of_node):
    _, problem, payload = driver
    folder = tmpdir_of_node / f"autoprune-ray-{os.getuid()}" / payload["key"]
    folder.parent.mkdir(mode=0o700)  # this user's own folder: used, but not the file planted in it
    folder.mkdir(mode=0o700)
    other = {k: v + 1 if v.is_floating_point() else v for k, v in problem.base_model.state_dict().items()}
    torch.save(other, folder / "base.pt")  # loads fine, and is not the driver's model

    _, wproblem, _, _ = _worker_state(payload)
    theirs, ours = wproblem.base_model.state_dict(), problem.base_model.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert hashlib.sha256((folder / "base.pt").read_bytes()).hexdigest() == payload["weights_sha"]


def test_base_weights_file_is_checked_rewritten_and_kept(tmp_path):
    data = b"the driver's weights"
    sha = hashlib.sha256(data).hexdigest()
    path = _base_weights(tmp_path, data, sha)  # absent: written
    assert path == tmp_path / "base.pt" and path.read_bytes() == data
    path.write_bytes(data[:5])  # cut short (a worker killed while writing it, before atomic writes)
    assert _base_weights(tmp_path, data, sha).read_bytes() == data
    inode = path.stat().st_ino
    assert _base_weights(tmp_path, data, sha).stat().st_ino == inode  # right digest: used as it is
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.pt"]  # no temporary file left
    with pytest.raises(RuntimeError, match="do not match the driver's sha256"):
        _base_weights(tmp_path, b"corrupted", sha)


@pytest.mark.parametrize("setup, why", [
    ("world-writable", r"is writable by other users \(mode 777\)"),
    ("other owner", r"is owned by uid \d+, not by this user"),
    ("symlink", r"is not a folder"),
])
def test_a_folder_not_private_to_this_user_is_refused(driver, tmpdir_of_node, monkeypatch, setup, why):
    _, _, payload = driver
    uid = os.getuid()
    if setup == "other owner":  # the folder of this user's name, made by someone else (uid + 1 plays this user)
        uid += 1
        monkeypatch.setattr(ray_trainable.os, "getuid", lambda: uid)
    root = tmpdir_of_node / f"autoprune-ray-{uid}"
    if setup == "symlink":
        target = tmpdir_of_node / "elsewhere"
        target.mkdir(mode=0o700)
        root.symlink_to(target)
    else:
        root.mkdir()
        root.chmod(0o777 if setup == "world-writable" else 0o700)
    (root / payload["key"]).mkdir()
    (root / payload["key"] / "base.pt").write_bytes(b"planted")
    with pytest.raises(PermissionError, match=f"autoprune-ray-{uid} {why}.*Remove it on this node"):
        _worker_state(payload)
    assert (root / payload["key"] / "base.pt").read_bytes() == b"planted"  # neither used nor touched
    assert not ray_trainable._WORKER_STATE


def test_a_new_folder_is_private(tmpdir_of_node):
    root = _private_dir()
    assert root == tmpdir_of_node / f"autoprune-ray-{os.getuid()}"
    st = os.lstat(root)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
    assert _private_dir() == root  # and it is used again
