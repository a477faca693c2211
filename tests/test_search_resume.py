"""Resume: a search killed with SIGKILL mid-trial continues with the same command, losing no completed trial."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

# starts processes or services: runs in the one test process of group "processes" (see pyproject.toml)
pytestmark = pytest.mark.xdist_group("processes")

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
name: killme
seed: 0
n_trials: 6
run_dir: {run}
model: {{name: resnet20}}
data:
  dataset: synthetic
  image_size: 8
  val_fraction: 0.25
  cache_dir: {cache}
  options: {{train_per_class: 16, test_per_class: 2}}
criteria: l1
ratios: {{mode: guided, guide: uniform, level: [0.3, 0.8], offset: 0.1}}
sampler: {{name: nsga2, population_size: 4}}
finetune: {{epochs: 1, max_batches: 3, batch_size: 32}}
"""


def _env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # tiny ops; and the test machine is shared
    env["AUTOPRUNE_CACHE"] = str(tmp / "cache")
    return env


def _cli(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "autoprune.cli", "search", str(cfg), "--quiet"]


def _trials(journal: Path) -> list[optuna.trial.FrozenTrial]:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(journal)))
    try:
        return optuna.load_study(study_name="killme", storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return []


def test_sigkill_then_resume(tmp_path):
    cfg = tmp_path / "killme.yaml"
    cfg.write_text(CONFIG.format(run=tmp_path / "run", cache=tmp_path / "cache"))
    journal = tmp_path / "run" / "optuna.journal"
    env = _env(tmp_path)

    proc = subprocess.Popen(_cli(cfg), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"search exited before it could be killed:\n{proc.stdout.read().decode()[-3000:]}")
            if time.time() > deadline:
                pytest.fail("no trial completed within 90 s")
            trials = _trials(journal) if journal.exists() else []
            if sum(t.state == TrialState.COMPLETE for t in trials) >= 1 and any(
                    t.state == TrialState.RUNNING for t in trials):
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    before = _trials(journal)
    done_before = {t.number: t.values for t in before if t.state == TrialState.COMPLETE}
    running_at_kill = [t.number for t in before if t.state == TrialState.RUNNING]
    assert done_before  # (and almost always a trial was running when the kill landed: running_at_kill)

    res = subprocess.run(_cli(cfg), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr

    after = {t.number: t for t in _trials(journal)}
    for n, values in done_before.items():  # nothing completed was lost or changed
        assert after[n].state == TrialState.COMPLETE and after[n].values == values
    assert sum(t.state == TrialState.COMPLETE for t in after.values()) == 6  # the count was made up
    assert not [t for t in after.values() if t.state == TrialState.RUNNING]
    for n in running_at_kill:  # the killed trial is failed, and its parameters were tried again
        assert after[n].state == TrialState.FAIL and "worker died" in after[n].user_attrs["failure"]
        retries = [t for t in after.values() if t.user_attrs.get("retry_of") == n]
        # (the killed trial may have drawn only some parameters; those are fixed in the retry)
        assert len(retries) == 1 and after[n].params.items() <= retries[0].params.items()
        assert retries[0].state == TrialState.COMPLETE


def test_stale_trial_of_dead_worker_is_failed_once(tmp_path):
    """A RUNNING trial whose worker process is gone is failed and retried once; a live worker's trial is kept."""
    from autoprune.study.recovery import recover_stale_trials, worker_info

    study = optuna.create_study(directions=["maximize", "minimize"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t1 = study.ask()
    t1.suggest_float("x", 0, 1)
    t1.set_user_attr("worker", {**worker_info(), "pid": dead.pid, "start": "0"})
    t2 = study.ask()
    t2.set_user_attr("worker", worker_info())  # this very process: alive
    failed = recover_stale_trials(study)
    assert [t.number for t in failed] == [t1.number]
    states = {t.number: t.state for t in study.get_trials()}
    assert states[t1.number] == TrialState.FAIL and states[t2.number] == TrialState.RUNNING
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == t1.number
    recover_stale_trials(study)  # a second recovery does not enqueue it again
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    # A trial killed before it recorded its worker: stale only when no other worker of this journal is alive.
    t3 = study.ask()
    t3.suggest_float("x", 0, 1)
    assert recover_stale_trials(study) == []
    assert [t.number for t in recover_stale_trials(study, no_other_workers=True)] == [t3.number]
    assert study.get_trials()[t2.number].state == TrialState.RUNNING


def test_interrupted_trial_without_retry_is_retried_late_and_once():
    """A FAIL trial left without its retry (its failer died before enqueuing it) is retried -- but only once it is
    old enough that the process which failed it cannot still be enqueuing (two workers retrying it: two retries)."""
    from autoprune.study.recovery import recover_stale_trials

    study = optuna.create_study(directions=["maximize", "minimize"])
    t = study.ask()
    t.suggest_float("x", 0, 1)
    t.set_user_attr("interrupted", True)
    study.tell(t, state=TrialState.FAIL)
    recover_stale_trials(study)  # just failed: its failer may be enqueuing the retry right now
    assert study.get_trials(states=(TrialState.WAITING,)) == []
    recover_stale_trials(study, late_retry_after=0.0)
    recover_stale_trials(study, late_retry_after=0.0)  # and once only
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == t.number


def test_worker_registry(tmp_path):
    from autoprune.study.recovery import WorkerRegistry

    journal = tmp_path / "x.journal"
    reg = WorkerRegistry(journal)
    reg.register()
    assert not reg.others_alive()
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from autoprune.study.recovery import WorkerRegistry; "
            f"WorkerRegistry({str(journal)!r}).register(); print('up', flush=True); time.sleep(60)")
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "up"
        assert reg.others_alive()
        other.kill()
        other.wait()
        assert not reg.others_alive()  # the kernel released its flock
    finally:
        if other.poll() is None:
            other.kill()


def test_partial_journal_record_is_dropped(tmp_path):
    """A worker killed in the middle of a journal write leaves half a line; opening the storage drops it."""
    from autoprune.study.storage import open_storage

    journal = tmp_path / "j.journal"
    st = open_storage(storage=str(journal))
    optuna.create_study(storage=st, study_name="s", directions=["maximize", "minimize"])
    good = journal.read_bytes()
    journal.write_bytes(good + b'{"op_code": 4, "worker_id": "x", "tri')
    with pytest.warns(UserWarning, match="partial last record"):
        st2 = open_storage(storage=str(journal))
    assert journal.read_bytes() == good
    study = optuna.load_study(study_name="s", storage=st2)
    study.add_trial(optuna.trial.create_trial(values=[1.0, 2.0], params={}, distributions={}))
    assert len(optuna.load_study(study_name="s", storage=open_storage(storage=str(journal))).trials) == 1
