"""The search session: storage URLs checked at once (and by --dry-run), one sampler seed per process, no
duplicated work (two concurrent searches propose different trials; a removal already measured is not retrained)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest_services import child_env, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _tiny(tmp: Path, **changes) -> dict:
    """A search on a randomly initialised ResNet-20 and 8x8 synthetic images: set-up in about a second."""
    d = {"name": "tiny", "seed": 0, "n_trials": 2, "threads": 1, "run_dir": str(tmp / "run"),
         "model": {"name": "resnet20"},
         "data": {"dataset": "synthetic", "image_size": 8, "val_fraction": 0.25, "cache_dir": str(tmp / "cache"),
                  "options": {"train_per_class": 4, "test_per_class": 2}},
         "criteria": ["l1", "l2"], "ratios": {"mode": "per_group", "default": [0.0, 0.5]},
         "finetune": {"epochs": 1, "batch_size": 16, "max_batches": 1}}
    d.update(changes)
    return d


def _write(tmp: Path, d: dict, name: str = "tiny.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(d))
    return p


# ------------------------------------------------------------------------------------------------------------
# storage URLs


def test_unknown_storage_scheme_is_rejected_before_anything_is_built(tmp_path):
    from autoprune.study import search
    from autoprune.study.storage import StorageURLError

    with pytest.raises(StorageURLError, match=r"storage redis://localhost:6379: unknown scheme 'redis'; give a "
                                              r"journal file path.*postgresql://"):
        search(_tiny(tmp_path), storage="redis://localhost:6379")
    with pytest.raises(StorageURLError, match="SQLAlchemy spells it postgresql://"):
        search(_tiny(tmp_path, storage="postgres://u:secret@db/studies"))
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_dry_run_checks_the_storage(tmp_path, capsys):
    from autoprune.cli import main

    cfg = _write(tmp_path, _tiny(tmp_path))
    assert main(["search", str(cfg), "--dry-run", "--storage", "mysqll://u:pw@h/db"]) == 2
    err = capsys.readouterr().err
    assert "unknown scheme 'mysqll'" in err and "Traceback" not in err and "pw" not in err

    closed = f"postgresql://u:s3cret@127.0.0.1:{free_port()}/studies"
    assert main(["search", str(cfg), "--dry-run", "--storage", closed]) == 2
    err = capsys.readouterr().err
    assert "connection refused" in err and "u:***@127.0.0.1" in err and "s3cret" not in err
    assert not (tmp_path / "run").exists()  # refused before the data and the model were built

    assert main(["search", str(cfg), "--dry-run", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"storage OK: journal file {tmp_path / 'run' / 'optuna.journal'}" in out and "config OK" in out
    assert not (tmp_path / "run" / "optuna.journal").exists()  # nothing written


# ------------------------------------------------------------------------------------------------------------
# seeds and reuse


def test_the_creator_samples_with_the_config_seed_others_with_their_own(tmp_path, monkeypatch):
    from autoprune.config import load_config
    from autoprune.study import optuna_study
    from autoprune.study.recovery import worker_info

    cfg = load_config(_tiny(tmp_path, seed=7))
    assert optuna_study.process_seed(cfg, True) == 7
    mine = optuna_study.process_seed(cfg, False)
    assert mine != 7 and optuna_study.process_seed(cfg, False) == mine  # stable within a process
    assert optuna_study.process_seed(cfg, False, salt=1) not in (7, mine)  # the Ray driver's later rounds
    me = worker_info()
    for other in ({**me, "pid": me["pid"] + 1}, {**me, "host": me["host"] + "-b"}, {**me, "start": "1"}):
        monkeypatch.setattr(optuna_study, "worker_info", lambda: other)
        assert optuna_study.process_seed(cfg, False) not in (7, mine), other


def test_a_removal_already_measured_is_not_retrained(tmp_path, monkeypatch):
    """Two trials that differ in their parameters (the criterion) but remove the same channels (none): the second
    copies the first's result (``reused_from``) instead of fine-tuning the same model again."""
    from autoprune.config import load_config
    from autoprune.study import search
    from autoprune.study.problem import Problem
    from autoprune.study.optuna_study import open_study

    d = _tiny(tmp_path, ratios={"mode": "per_group", "default": [0.0, 0.0]})  # only the criterion is searched
    cfg = load_config(d)
    study = open_study(cfg)
    study.enqueue_trial({"criterion": "l1"})
    study.enqueue_trial({"criterion": "l2"})
    builds = []
    real = Problem.build

    def counting(self, removal, **kwargs):
        builds.append(dict(removal))
        return real(self, removal, **kwargs)

    monkeypatch.setattr(Problem, "build", counting)
    front = search(d)
    t0, t1 = sorted(front.study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    assert (t0.params, t1.params) == ({"criterion": "l1"}, {"criterion": "l2"})
    assert t0.user_attrs["removal_sha"] == t1.user_attrs["removal_sha"]
    assert len(builds) == 1  # trained once
    assert "reused_from" not in t0.user_attrs and t1.user_attrs["reused_from"] == t0.number
    assert t1.values == t0.values and t1.user_attrs["accuracy"] == t0.user_attrs["accuracy"]
    assert t1.user_attrs["criterion"] == "l2" and t1.constraints == t0.constraints


def _quickstart_tiny(tmp: Path, n_trials: int) -> dict:
    """search_spaces/quickstart.yaml with tiny settings (8x8 images, a few batches, the uniform guide)."""
    d = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    d.update(n_trials=n_trials, run_dir=str(tmp / "run"))
    d["model"]["pretrain"] = {"epochs": 1, "lr": 0.05, "batch_size": 32, "max_batches": 2}
    d["data"].update(image_size=8, cache_dir=str(tmp / "cache"), options={"train_per_class": 8, "test_per_class": 2})
    d["ratios"]["guide"] = "uniform"
    d["ratios"].pop("sensitivity", None)
    d["sampler"]["population_size"] = 4
    d["finetune"] = {"epochs": 1, "batch_size": 16, "lr": 0.02, "max_batches": 1}
    return d


# The quickstart's ResNet-20, built only when both search processes have come this far: they open the study at the
# same moment, as two searches started together on an idle machine do (the interpreter start varies by seconds on a
# busy one).
BARRIER = """
import os, time
from pathlib import Path

from autoprune.models import get_model


def build(num_classes=10):
    ready = Path(__file__).resolve().parent / "ready"
    ready.mkdir(exist_ok=True)
    (ready / str(os.getpid())).touch()
    deadline = time.time() + 300
    while len(list(ready.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.05)
    return get_model("resnet20", num_classes=num_classes)
"""


@pytest.mark.slow
def test_two_concurrent_searches_propose_no_duplicate_trials(tmp_path):
    """Two `autoprune search` processes started together on one new study (the one-per-GPU set-up): each samples
    with its own seed (the study's creator with the config's), so they do not propose the same trials."""
    d = _quickstart_tiny(tmp_path, n_trials=10)
    (tmp_path / "barrier.py").write_text(BARRIER)
    d["model"]["name"] = "barrier:build"  # quickstart's ResNet-20, once both processes are up
    cfg = _write(tmp_path, d, "quickstart.yaml")
    env = child_env(AUTOPRUNE_CACHE=str(tmp_path / "cache"))
    cmd = [sys.executable, "-m", "autoprune.cli", "search", str(cfg), "--quiet"]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        outs = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    study = optuna.load_study(study_name="quickstart",
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "run" / "optuna.journal"))))
    trials = [t for t in study.get_trials() if t.params]
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 10
    # The sampled trials (NSGA-II's first generation: independent draws of each process's seeded sampler) are all
    # different; with one seed shared by both processes they came in identical pairs. Later generations may copy a
    # parent exactly (NSGA-II skips crossover with probability 0.1 and then often mutates nothing): such a copy
    # removes the same channels and reuses the parent's result instead of training again.
    def generation(t):
        return next((v for k, v in t.system_attrs.items() if k.endswith(":generation")), None)

    fresh = [t for t in trials if "retry_of" not in t.user_attrs]
    drawn = [tuple(sorted(t.params.items())) for t in fresh if generation(t) == 0]
    assert len(drawn) >= 4 and len(set(drawn)) == len(drawn), "duplicate parameter sets"
    first: dict = {}
    for t in sorted(fresh, key=lambda t: t.number):
        key = tuple(sorted(t.params.items()))
        if key in first and t.state == TrialState.COMPLETE:
            assert t.user_attrs.get("reused_from") is not None, (t.number, first[key])
        first.setdefault(key, t.number)
    seeds = {t.user_attrs["worker"]["pid"]: t.user_attrs["worker"]["seed"] for t in trials}
    assert {p.pid for p in procs} == set(seeds), "both processes ran trials"
    assert len(set(seeds.values())) == 2 and 0 in seeds.values()  # the creator kept the config's seed
