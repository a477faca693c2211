"""Distributed searches on real services started here, on 127.0.0.1 only:

* a Ray cluster (``ray start --head``) runs a small search through ``--backend ray``; its trials land in the search's
  own Optuna journal, a local search continues the same study, and a Ray trial's model is rebuilt bit for bit;
* a PostgreSQL server (initdb + pg_ctl in a temporary directory) with three ``autoprune worker`` processes on one
  study, one of them killed with SIGKILL mid-trial: the study still ends with every requested trial COMPLETE, the
  killed trial FAIL and retried (``retry_history``), nothing completed lost;
* unreachable database URLs and Ray addresses fail within seconds with a message naming them.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest_services import child_env, free_port, postgres_bindir, postgres_server, ray_cluster  # noqa: E402

# starts processes or services: runs in the one test process of group "processes" (see pyproject.toml)
pytestmark = pytest.mark.xdist_group("processes")

# The quickstart search (search_spaces/quickstart.yaml) shrunk: a ResNet-20 pretrained on 2 batches, 8x8 images,
# uniform guide (no sensitivity analysis), 2 fine-tuning batches per trial.
RAY_CONFIG = """
name: qray
seed: 0
n_trials: 3
threads: 1
run_dir: {run}
model:
  name: resnet20
  pretrain: {{epochs: 1, lr: 0.05, batch_size: 32, max_batches: 2}}
data:
  dataset: synthetic
  image_size: 8
  val_fraction: 0.25
  cache_dir: {cache}
  options: {{train_per_class: 8, test_per_class: 2}}
criteria: [l1, l2]
ratios:
  mode: guided
  guide: uniform
  offset: 0.15
  default: [0.0, 0.8]
  groups: {{conv1: [0.0, 0.5]}}
objectives: [accuracy, macs]
constraints: {{max_macs: 0.6}}
sampler: {{name: nsga2, population_size: 4}}
finetune: {{epochs: 1, batch_size: 16, lr: 0.02, max_batches: 2}}
"""

# Trials of about 3 s each (24 short epochs): longer than a heartbeat grace period (2 s), so the killed trial is
# found stale and retried before the last trials are handed out.
WORKER_CONFIG = """
name: shared
seed: 0
n_trials: 6
threads: 1
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
finetune: {{epochs: 24, max_batches: 4, batch_size: 32}}
"""


def _first_running_trial(proc: subprocess.Popen, storage, study: str = "shared", timeout: float = 120):
    """Wait until the worker ``proc`` runs a trial of ``study`` (one that has recorded its worker); return it."""
    deadline = time.time() + timeout
    while True:
        try:
            ts = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
        except KeyError:
            ts = []
        running = [t for t in ts if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
        if running:
            return running[0]
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "no trial started"
        time.sleep(0.05)


def _write(tmp: Path, template: str, name: str) -> Path:
    p = tmp / name
    p.write_text(textwrap.dedent(template).format(run=tmp / "run", cache=tmp / "cache"))
    return p


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoprune.cli", *args]


def _journal_trials(journal: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    st = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.load_study(study_name=study, storage=st).get_trials(deepcopy=False)


# ------------------------------------------------------------------------------------------------------------
# Ray


@pytest.mark.slow
def test_ray_backend_search_lands_in_the_optuna_storage(tmp_path, capsys):
    cfg = _write(tmp_path, RAY_CONFIG, "qray.yaml")
    env = child_env(AUTOPRUNE_CACHE=str(tmp_path / "cache"))
    with ray_cluster(num_cpus=2) as cluster:
        t0 = time.time()
        driver = subprocess.Popen(_cli("search", str(cfg), "--backend", "ray", "--address", cluster.address,
                                            "--cpus-per-trial", "1"),
                                  cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = driver.communicate(timeout=400)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        took = time.time() - t0
        assert driver.returncode == 0, stdout[-3000:] + stderr[-5000:]
    assert "Configuration for experiment" not in stdout  # Tune's console output is off
    assert f"connected to {cluster.address}" in stderr
    print(f"ray search of 3 trials: {took:.1f} s")

    journal = tmp_path / "run" / "optuna.journal"
    trials = _journal_trials(journal, "qray")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and len(trials) == 3
    study = optuna.load_study(study_name="qray", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    assert study.metric_names == ["accuracy", "macs_fraction"]
    assert "autoprune" in study.user_attrs  # config, base metrics, groups: as a local search records them
    for t in done:  # what the local trial function records, carried back from the Ray worker
        for k in ("accuracy", "macs", "macs_fraction", "ratios", "criterion", "removal_sha", "worker", "level"):
            assert k in t.user_attrs, k
        assert t.values == [t.user_attrs["accuracy"], t.user_attrs["macs_fraction"]]
        assert set(t.constraints) == {"max_macs"}
        assert t.constraints["max_macs"] == pytest.approx(t.user_attrs["macs_fraction"] - 0.6)
        assert t.user_attrs["worker"]["pid"] != driver.pid  # ran in a Ray worker process, not in the driver

    # The pareto command reads the study as it reads a local one (in this process: no second interpreter start).
    from autoprune.cli import main

    assert main(["pareto", str(cfg), "--all"]) == 0
    assert "3 complete trials" in capsys.readouterr().out

    # Same trial function, same base model: rebuilding a Ray trial locally reproduces its loss exactly.
    from autoprune.study import load_front

    front = load_front(cfg)
    t = done[0]
    _, outcome = front.rebuild(t.number)
    assert outcome.loss == t.user_attrs["loss"] and outcome.accuracy == t.user_attrs["accuracy"]

    # A local search continues the study the Ray run filled.
    from autoprune.study import search

    search(cfg, n_trials=4)
    after = _journal_trials(journal, "qray")
    assert sum(t.state == TrialState.COMPLETE for t in after) == 4
    assert {t.number: t.values for t in after if t.number in {d.number for d in done}} == \
        {d.number: d.values for d in done}


@pytest.mark.slow
def test_ray_backend_on_a_new_local_instance(tmp_path):
    """No --address: a Ray instance is started for the search (from the main thread: its processes die with the
    thread that starts them) and shut down after it. With early stopping: the trainables send their rung results
    to the driver, which records them in the study and stops (PRUNED) what cannot reach the front."""
    cfg = _write(tmp_path, RAY_CONFIG + "early_stopping: {{enabled: true, rungs: [0], reduction_factor: 2, "
                 "min_results: 2}}\n", "qray.yaml")
    env = child_env(AUTOPRUNE_CACHE=str(tmp_path / "cache"))
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run(_cli("search", str(cfg), "--backend", "ray", "--trials", "2", "--max-concurrent", "1"),
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert "connected to a new local instance" in res.stderr
    from autoprune.study.early_stopping import RUNG_ATTR, STOP_ATTR

    trials = _journal_trials(tmp_path / "run" / "optuna.journal", "qray")
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for t in trials:  # every trial's rung result recorded by the driver; stopped ones PRUNED with their record
        assert list(t.user_attrs[RUNG_ATTR]) == ["0"] and len(t.user_attrs[RUNG_ATTR]["0"]) == 2
        assert (STOP_ATTR in t.user_attrs) == (t.state == TrialState.PRUNED)
    assert trials[0].state == TrialState.COMPLETE  # alone on its rung (min_results 2): promoted


# ------------------------------------------------------------------------------------------------------------
# PostgreSQL workers

needs_postgres = pytest.mark.skipif(postgres_bindir() is None,
                                    reason="PostgreSQL server binaries (initdb, pg_ctl) not found: install "
                                           "postgresql (Debian: apt-get install postgresql) or set PG_BIN")


@pytest.fixture(scope="module")
def pg():
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    with postgres_server() as server:
        yield server


@needs_postgres
@pytest.mark.slow
def test_three_workers_one_killed_mid_trial(tmp_path, pg):
    url = pg.createdb("killtest")
    cfg = _write(tmp_path, WORKER_CONFIG, "shared.yaml")
    env = child_env(AUTOPRUNE_CACHE=str(tmp_path / "cache"))
    cmd = _cli("worker", str(cfg), "--storage", url, "--heartbeat", "1", "--grace", "2")
    logs = [open(tmp_path / f"worker{i}.log", "w+") for i in range(3)]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT) for f in logs]
    storage = optuna.storages.RDBStorage(url)

    def trials() -> list[optuna.trial.FrozenTrial]:
        try:
            return optuna.load_study(study_name="shared", storage=storage).get_trials(deepcopy=False)
        except KeyError:
            return []

    def tail(i: int) -> str:
        logs[i].flush()
        logs[i].seek(0)
        return logs[i].read()[-2500:]

    try:
        victim, killed = None, None
        deadline = time.time() + 180
        while victim is None:  # a worker running one of the first trials (none complete yet): kill it
            if time.time() > deadline:
                pytest.fail("no trial started within 180 s:\n" + "\n".join(tail(i) for i in range(3)))
            for i, p in enumerate(procs):
                if p.poll() is not None:
                    pytest.fail(f"worker {i} exited early ({p.returncode}):\n{tail(i)}")
            ts = trials()
            n_done = sum(t.state == TrialState.COMPLETE for t in ts)
            for t in ts:
                w = t.user_attrs.get("worker") or {}
                if n_done:
                    pytest.fail("a trial completed before any worker could be seen running one")
                if t.state == TrialState.RUNNING and w.get("pid") in [p.pid for p in procs]:
                    victim = next(p for p in procs if p.pid == w["pid"])
                    os.kill(victim.pid, signal.SIGKILL)
                    killed = t
                    break
            time.sleep(0.05)
        victim.wait(timeout=30)
        done_at_kill = {t.number: t.values for t in trials() if t.state == TrialState.COMPLETE}
        for i, p in enumerate(procs):
            if p is not victim:
                p.wait(timeout=300)
                assert p.returncode == 0, tail(i)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    assert victim.returncode == -signal.SIGKILL

    final = {t.number: t for t in trials()}
    print({n: (t.state.name, round(t.user_attrs.get("seconds", 0), 1), t.system_attrs.get("retry_history"))
           for n, t in final.items()})
    complete = [t for t in final.values() if t.state == TrialState.COMPLETE]
    assert len(complete) >= 6  # every requested trial (two workers starting the last one at once may add one)
    assert not [t for t in final.values() if t.state == TrialState.RUNNING]
    for n, values in done_at_kill.items():  # no completed trial lost or changed
        assert final[n].state == TrialState.COMPLETE and final[n].values == values
    # The killed trial was failed (heartbeat stopped) and retried by another worker with the same parameters.
    assert final[killed.number].state == TrialState.FAIL
    retries = [t for t in final.values() if killed.number in t.system_attrs.get("retry_history", [])]
    assert len(retries) == 1, {n: (t.state.name, t.system_attrs) for n, t in final.items()}
    retry = retries[0]
    assert retry.state == TrialState.COMPLETE and retry.system_attrs["failed_trial"] == killed.number
    assert final[killed.number].params.items() <= retry.params.items()
    assert retry.user_attrs["worker"]["pid"] != victim.pid
    # Each worker ran some of the trials.
    pids = {t.user_attrs["worker"]["pid"] for t in complete}
    assert len(pids - {victim.pid}) == 2


@needs_postgres
@pytest.mark.slow
def test_sigterm_fails_the_trial_and_enqueues_its_retry(tmp_path, pg):
    """A pod being shut down: SIGTERM ends the worker (exit 130) and its trial is retried without waiting for the
    heartbeat to go stale."""
    url = pg.createdb("sigterm")
    cfg = _write(tmp_path, WORKER_CONFIG, "shared.yaml")
    proc = subprocess.Popen(_cli("worker", str(cfg), "--storage", url, "--heartbeat", "30", "--grace", "120"),
                            cwd=tmp_path, env=child_env(AUTOPRUNE_CACHE=str(tmp_path / "cache")),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    storage = optuna.storages.RDBStorage(url)

    try:
        victim = _first_running_trial(proc, storage)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    ts = {t.number: t for t in optuna.load_study(study_name="shared", storage=storage).get_trials()}
    assert ts[victim.number].state == TrialState.FAIL and ts[victim.number].user_attrs["interrupted"] is True
    retry = [t for t in ts.values() if t.system_attrs.get("retry_history") == [victim.number]]
    assert len(retry) == 1 and retry[0].state == TrialState.WAITING
    assert retry[0].user_attrs["retry_of"] == victim.number and not retry[0].user_attrs.get("interrupted")


@needs_postgres
@pytest.mark.slow
def test_database_outage_worker_gives_up_cleanly_and_its_trial_is_retried(tmp_path, pg):
    """The database stops mid-trial: the worker retries for --storage-patience seconds, then exits with status 2 and
    one paragraph (no traceback); its trial, left RUNNING without heartbeat, is failed and retried by the next
    worker once the database is back."""
    url = pg.createdb("outage")
    cfg = _write(tmp_path, WORKER_CONFIG.replace("n_trials: 6", "n_trials: 2"), "shared.yaml")
    proc = subprocess.Popen(_cli("worker", str(cfg), "--storage", url, "--heartbeat", "1", "--grace", "2",
                                 "--storage-patience", "3"),
                            cwd=tmp_path, env=child_env(AUTOPRUNE_CACHE=str(tmp_path / "cache")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    storage = optuna.storages.RDBStorage(url)

    halted = False
    try:
        victim = _first_running_trial(proc, storage)
        storage.remove_session()
        storage.engine.dispose()
        pg.halt()
        halted = True
        t0 = time.time()
        out, err = proc.communicate(timeout=120)
        gave_up = time.time() - t0
        pg.resume()
        halted = False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if halted:
            pg.resume()
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err and "autoprune worker: error: storage postgresql://" in err, err[-3000:]
    assert "did not answer for 3 s" in err and "retried by another worker or at the next start" in err
    assert gave_up > 2  # it waited for the database before giving up
    storage = optuna.storages.RDBStorage(url)
    left = optuna.load_study(study_name="shared", storage=storage).get_trials()
    assert next(t for t in left if t.number == victim.number).state == TrialState.RUNNING

    # The next worker (here in this process) fails the abandoned trial (heartbeat stale) and runs its retry.
    from autoprune.study.worker import run_worker

    time.sleep(2)
    res = run_worker(cfg, storage=url, heartbeat_interval=1, grace_period=2)
    final = {t.number: t for t in optuna.load_study(study_name="shared", storage=storage).get_trials()}
    assert final[victim.number].state == TrialState.FAIL
    retry = [t for t in final.values() if t.system_attrs.get("retry_history") == [victim.number]]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].number in res.ran
    assert final[victim.number].params.items() <= retry[0].params.items()
    assert sum(t.state == TrialState.COMPLETE for t in final.values()) == 2


# ------------------------------------------------------------------------------------------------------------
# failing fast


def _silent_listener() -> socket.socket:
    """A TCP port that accepts connections and never says anything (a hung or wrong server)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def _main_in_process(capsys, *argv: str) -> tuple[int, str]:
    """``autoprune ARGV`` in this process (no second interpreter start): (exit status, stderr). The commands turn
    SIGTERM into KeyboardInterrupt; the test process's own handler is put back."""
    from autoprune.cli import main

    before = signal.getsignal(signal.SIGTERM)
    try:
        capsys.readouterr()
        code = main(list(argv))
    finally:
        signal.signal(signal.SIGTERM, before)
    return code, capsys.readouterr().err


def test_unreachable_database_fails_fast(tmp_path, capsys):
    from autoprune.study.storage import StorageUnreachable, open_storage

    closed = f"postgresql://autoprune:s3cret@127.0.0.1:{free_port()}/studies"
    t0 = time.time()
    with pytest.raises(StorageUnreachable) as e:
        open_storage(storage=closed)
    assert time.time() - t0 < 5
    msg = str(e.value)
    assert "127.0.0.1" in msg and "connection refused" in msg and "s3cret" not in msg and "***" in msg

    with _silent_listener() as s:  # the port answers TCP but not PostgreSQL: libpq's connect_timeout ends it
        url = f"postgresql://autoprune@127.0.0.1:{s.getsockname()[1]}/studies"
        t0 = time.time()
        with pytest.raises(StorageUnreachable, match="did not answer|timeout"):
            open_storage(storage=url, connect_timeout=2)
        assert time.time() - t0 < 10

    # The worker command: exit status 2, the URL and the cause on stderr, before anything is built.
    cfg = _write(tmp_path, WORKER_CONFIG, "shared.yaml")
    code, err = _main_in_process(capsys, "worker", str(cfg), "--storage", closed)
    assert code == 2, err
    assert "autoprune worker: error: storage postgresql://autoprune:***@127.0.0.1" in err
    assert "connection refused" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()

    # A journal file is not a shared database.
    from autoprune.study.worker import run_worker

    with pytest.raises(ValueError, match="database storage"):
        run_worker(cfg, storage=str(tmp_path / "j.journal"))


@needs_postgres
def test_missing_database_names_it(pg):
    from autoprune.study.storage import StorageUnreachable, open_storage

    with pytest.raises(StorageUnreachable, match='database "nosuchdb" does not exist.*createdb'):
        open_storage(storage=pg.url("nosuchdb"))


def test_unreachable_ray_address_fails_fast(tmp_path, capsys):
    from autoprune.study.ray import RayUnreachable, connect, search_ray

    import ray

    addr = f"127.0.0.1:{free_port()}"
    t0 = time.time()
    with pytest.raises(RayUnreachable, match=f"Ray address {addr}.*connection refused.*ray start --head"):
        connect(addr)
    assert time.time() - t0 < 5 and not ray.is_initialized()

    with _silent_listener() as s:  # open port, no Ray there: the gRPC probe gives up after 5 s at most
        addr2 = f"127.0.0.1:{s.getsockname()[1]}"
        t0 = time.time()
        with pytest.raises(RayUnreachable, match=f"Ray address {addr2}.*no Ray head node answers"):
            connect(addr2, timeout=2)
        assert time.time() - t0 < 5 and not ray.is_initialized()

    with pytest.raises(ValueError, match="expected auto, HOST:PORT"):
        connect("no-port-here")

    # Through the search command: exit status 2 and the address, before any data or model is built.
    cfg = _write(tmp_path, RAY_CONFIG, "qray.yaml")
    code, err = _main_in_process(capsys, "search", str(cfg), "--backend", "ray", "--address", addr)
    assert code == 2 and f"Ray address {addr}" in err and "Traceback" not in err, err
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").glob("base-*.pt"))

    # A bad database URL is reported before Ray is even contacted.
    with pytest.raises(ConnectionError, match="storage postgresql://"):
        search_ray(cfg, storage=f"postgresql://u@127.0.0.1:{free_port()}/db", address=addr)
    assert not ray.is_initialized()


# ------------------------------------------------------------------------------------------------------------
# command line


def test_cli_flags():
    """``search`` is built in one place with its backend options (autoprune.cli.search); ``worker`` is registered by
    autoprune.cli.distributed; neither touches the other's parser."""
    import argparse

    from autoprune.cli import distributed as cli_distributed
    from autoprune.cli import search as cli_search

    sub = argparse.ArgumentParser().add_subparsers()
    cli_search.add_subcommands(sub)
    p = sub.choices["search"]
    a = p.parse_args(["c.yaml", "--backend", "ray", "--address", "auto", "--gpus-per-trial", "0.25",
                      "--cpus-per-trial", "2", "--storage-patience", "30"])
    assert (a.backend, a.address, a.gpus_per_trial, a.cpus_per_trial) == ("ray", "auto", 0.25, 2.0)
    assert a.storage_patience == 30.0
    assert p.parse_args(["c.yaml"]).backend == "local"
    assert "worker" not in sub.choices
    cli_distributed.add_subcommands(sub)
    w = sub.choices["worker"].parse_args(["c.yaml", "--storage", "postgresql://u@h/db", "--heartbeat", "5",
                                          "--storage-patience", "12"])
    assert w.heartbeat == 5 and w.storage == "postgresql://u@h/db" and w.storage_patience == 12.0


def test_autoprune_cli_has_the_distributed_commands():
    """``autoprune worker`` and ``autoprune search --backend ray`` on the main command (cli._EXTENSIONS lists
    autoprune.cli.distributed after autoprune.cli.search)."""
    from autoprune.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert "worker" in sub.choices
    assert sub.choices["search"].parse_args(["c.yaml", "--backend", "ray"]).backend == "ray"
