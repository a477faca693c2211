"""Faults a search meets on real machines, each ending in one clear message with nothing computed lost:

* a full disk: a real small tmpfs filled up while a search runs (where this machine lets us mount one: root, as on
  CI), and an injected ENOSPC at Optuna's journal write (inside a trial, and when the trial is told) and inside
  ``torch.save``: exit status 2, one paragraph naming the file and the fix, no partial journal record; the same
  command run again, with space, resumes and loses no COMPLETE trial;
* SIGTERM and Ctrl-C on a local ``autoprune search``: exit status 130, one message, no traceback; the running
  trial FAIL and its retry enqueued; the next run completes the study;
* a run directory on a read-only mount: ``pareto``, ``report --out`` and ``export`` read it; ``report`` without
  --out and ``search`` refuse in one paragraph naming the directory and the option or the fix;
* ``autoprune pareto | head``: a closed stdout ends quietly (status 141);
* a retried trial sets its own constraints (no "constraint value is ignored" warning, no stale values).
"""
from __future__ import annotations

import errno
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

# starts processes, mounts file systems and sends signals: runs in the one test process of group "processes"
pytestmark = pytest.mark.xdist_group("processes")

ROOT = Path(__file__).resolve().parents[1]
STUDY = "faults"

CONFIG = """
name: faults
seed: 0
n_trials: {n}
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
finetune: {{epochs: {epochs}, max_batches: 4, batch_size: 32}}
"""


def _config(tmp: Path, *, run: Path | None = None, n: int = 3, epochs: int = 1, name: str = "faults.yaml") -> Path:
    cfg = tmp / name
    cfg.write_text(CONFIG.format(n=n, run=run or tmp / "run", cache=tmp / "cache", epochs=epochs))
    return cfg


def _env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # tiny ops; and the test machine is shared
    env["AUTOPRUNE_CACHE"] = str(tmp / "cache")
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoprune.cli", *args]


def _trials(journal: Path) -> list[optuna.trial.FrozenTrial]:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if not journal.exists():
        return []
    try:
        return optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(journal)))).trials
    except KeyError:
        return []


def _complete(journal: Path) -> dict[int, list[float]]:
    return {t.number: t.values for t in _trials(journal) if t.state == TrialState.COMPLETE}


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    """``autoprune ARGV`` in this process: (exit status, stdout, stderr); the SIGTERM handler that ``search``
    installs is put back."""
    from autoprune.cli import main

    before = signal.getsignal(signal.SIGTERM)
    try:
        capsys.readouterr()
        code = main(list(argv))
    finally:
        signal.signal(signal.SIGTERM, before)
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_paragraph(err: str, start: str) -> str:
    lines = [s for s in err.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith(start), err[-3000:]
    assert "Traceback" not in err
    return lines[0]


def _whole_records(journal: Path) -> None:
    data = journal.read_bytes()
    assert data.endswith(b"\n")
    for line in data.splitlines():
        json.loads(line)


def _resumed_without_loss(journal: Path, before: dict[int, list[float]], n: int) -> list[optuna.trial.FrozenTrial]:
    after = {t.number: t for t in _trials(journal)}
    for number, values in before.items():
        assert after[number].state == TrialState.COMPLETE and after[number].values == values
    assert sum(t.state == TrialState.COMPLETE for t in after.values()) == n
    assert not [t for t in after.values() if t.state == TrialState.RUNNING]
    return list(after.values())


# ------------------------------------------------------------------------------------------------------------
# mounts (root with CAP_SYS_ADMIN, as on CI)


@functools.lru_cache(maxsize=1)
def _mount_unavailable() -> str | None:
    probe = tempfile.mkdtemp(prefix="autoprune-mount-probe-")
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe], capture_output=True,
                           text=True)
        if r.returncode:
            return f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip()}); needs root with CAP_SYS_ADMIN"
        subprocess.run(["umount", probe], check=True)
        return None
    except FileNotFoundError as e:
        return f"no mount command ({e})"
    finally:
        os.rmdir(probe)


@pytest.fixture
def mount():
    """``mount(*args, target)``: mount, unmounted after the test; skips where this machine cannot mount (the
    injected-fault tests below cover the same code paths there)."""
    done: list[Path] = []

    def _mount(*args: str, target: Path) -> None:
        why = _mount_unavailable()
        if why is not None:
            pytest.skip(why)
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
        done.append(target)

    yield _mount
    for t in reversed(done):
        subprocess.run(["umount", "-l", str(t)], capture_output=True)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-trial study: (directory, config, journal)."""
    from autoprune.study import search

    tmp = tmp_path_factory.mktemp("finished")
    cfg = _config(tmp, n=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOPRUNE_CACHE", str(tmp / "cache"))
        search(cfg)
    return tmp, cfg, tmp / "run" / "optuna.journal"


# ------------------------------------------------------------------------------------------------------------
# a full disk


def _fill(disk: Path) -> Path:
    """Fill the file system of ``disk`` (as another program writing there would)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_full_disk_mid_search_stops_in_one_paragraph_and_resumes(tmp_path, mount):
    """The run directory's disk fills up while trials run (a real tmpfs): exit 2 and one paragraph naming the
    journal, the disk and the fix; no partial journal record; with space again, the same command completes the
    study and keeps every COMPLETE trial."""
    disk = tmp_path / "disk"
    mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", target=disk)
    cfg = _config(tmp_path, run=disk / "run", n=6, epochs=8)
    journal = disk / "run" / "optuna.journal"
    env = _env(tmp_path)
    proc = subprocess.Popen(_cli("search", str(cfg), "--quiet"), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not _complete(journal):
            if proc.poll() is not None:
                pytest.fail(f"search exited before a trial completed:\n{proc.stderr.read()[-3000:]}")
            if time.time() > deadline:
                pytest.fail("no trial completed within 120 s")
            time.sleep(0.05)
        filler = _fill(disk)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err[-3000:]
    line = _one_paragraph(err, "autoprune search: error: no space left on the device writing ")
    assert str(journal) in line and f"(disk {disk}" in line
    assert "free space there" in line and "run the same command again" in line
    _whole_records(journal)
    before = _complete(journal)
    assert before and len(before) < 6

    filler.unlink()  # space again
    res = subprocess.run(_cli("search", str(cfg), "--quiet"), cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    _resumed_without_loss(journal, before, 6)


@pytest.mark.parametrize("where", ["in the trial", "when the trial is told"])
def test_full_disk_at_a_journal_write(tmp_path, monkeypatch, capsys, where):
    """ENOSPC at a journal write, half the record written (as a real full disk does): inside the trial function
    (a user attribute) or at Optuna's tell (which then raises its own ``AssertionError: Should not reach.``). Exit 2,
    one paragraph, the partial record dropped; once space is back, the same call in the same process fails and
    retries the trial it left RUNNING and completes the study."""
    from optuna.storages.journal import JournalFileBackend

    from autoprune.study.objective import TrialObjective

    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    cfg = _config(tmp_path, n=3)
    journal = tmp_path / "run" / "optuna.journal"
    disk = {"full": False, "calls": 0, "failed": 0}
    append, call = JournalFileBackend.append_logs, TrialObjective.__call__

    def append_on_a_full_disk(self, logs):
        if not disk["full"]:
            return append(self, logs)
        disk["failed"] += 1
        data = ("\n".join(json.dumps(x) for x in logs) + "\n").encode()
        with open(journal, "ab") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def objective(self, trial):
        disk["calls"] += 1
        if where == "in the trial" and disk["calls"] == 2:
            disk["full"] = True  # the second trial's first write
        values = call(self, trial)
        if where == "when the trial is told" and disk["calls"] == 2:
            disk["full"] = True
        return values

    monkeypatch.setattr(JournalFileBackend, "append_logs", append_on_a_full_disk)
    monkeypatch.setattr(TrialObjective, "__call__", objective)
    code, out, err = _main(capsys, "search", str(cfg), "--quiet")
    assert code == 2 and disk["failed"] >= 1, err
    line = _one_paragraph(err, f"autoprune search: error: no space left on the device writing {journal} ")
    assert "run the same command again" in line
    _whole_records(journal)
    before = _complete(journal)
    assert len(before) == 1
    left = [t.number for t in _trials(journal) if t.state == TrialState.RUNNING]
    assert len(left) == 1

    disk["full"] = False  # space again
    code, out, err = _main(capsys, "search", str(cfg), "--quiet")
    assert code == 0, err
    after = _resumed_without_loss(journal, before, 3)
    assert after[left[0]].state == TrialState.FAIL
    assert [t.state for t in after if t.user_attrs.get("retry_of") == left[0]] == [TrialState.COMPLETE]


def test_torch_save_on_a_full_disk_raises_disk_full(tmp_path):
    """torch.save turns the file's ENOSPC into ``RuntimeError: [enforce fail at inline_container.cc...]``; our save
    helper raises :class:`DiskFull` naming the file instead, and leaves no temporary file."""
    import torch

    from autoprune._files import DiskFull, atomic_write

    class OneKiBDisk:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            if self.n + len(b) > 1024:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.n += len(b)
            return self.f.write(b)

        def flush(self):
            self.f.flush()

    target = tmp_path / "cache" / "arrays.pt"
    with pytest.raises(DiskFull) as info:
        atomic_write(target, lambda f: torch.save({"x": torch.zeros(10_000)}, OneKiBDisk(f)))
    assert isinstance(info.value.__cause__, RuntimeError)  # what torch.save raised
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert str(target) in str(info.value) and "run the same command again" in str(info.value)
    assert list(target.parent.iterdir()) == []


# ------------------------------------------------------------------------------------------------------------
# SIGTERM and Ctrl-C


@pytest.mark.parametrize("sig, quiet", [(signal.SIGTERM, True), (signal.SIGINT, False)], ids=["SIGTERM", "SIGINT"])
def test_signal_fails_the_running_trial_and_the_next_run_completes(tmp_path, sig, quiet):
    """SIGTERM (kill, a pod's shutdown) and SIGINT (Ctrl-C) on a local search, once a trial runs: exit 130, our one
    message (no traceback, no Optuna log of the KeyboardInterrupt), the trial FAIL and its retry WAITING; the same
    command then completes the study."""
    cfg = _config(tmp_path, n=2, epochs=200)  # (a trial of several seconds: the signal lands inside it)
    journal = tmp_path / "run" / "optuna.journal"
    env = _env(tmp_path)
    args = _cli("search", str(cfg), *(["--quiet"] if quiet else []))
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # (a child inherits an ignored SIGINT)
    try:
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    finally:
        signal.signal(signal.SIGINT, handler)
    try:
        deadline = time.time() + 120
        while True:  # a trial of this process inside the trial function (it has recorded its worker)
            running = [t for t in _trials(journal) if t.state == TrialState.RUNNING
                       and t.user_attrs.get("worker", {}).get("pid") == proc.pid]
            if running:
                break
            if proc.poll() is not None:
                pytest.fail(f"search exited before a trial ran:\n{proc.stderr.read()[-3000:]}")
            if time.time() > deadline:
                pytest.fail("no trial started within 120 s")
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    victim = running[0].number
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    message = (f"interrupted: trial {victim} was failed and enqueued again; completed trials are saved; run the same "
               "command again to resume")
    assert err.count("interrupted") == 1 and message in err, err[-3000:]
    if quiet:
        _one_paragraph(err, "interrupted: ")
    ts = {t.number: t for t in _trials(journal)}
    assert ts[victim].state == TrialState.FAIL and ts[victim].user_attrs["interrupted"] is True
    retry = [t for t in ts.values() if t.user_attrs.get("retry_of") == victim]
    assert [t.state for t in retry] == [TrialState.WAITING]

    cfg.write_text(cfg.read_text().replace("epochs: 200", "epochs: 1"))  # (same study; the rerun need not be slow)
    res = subprocess.run(_cli("search", str(cfg), "--quiet"), cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    after = _resumed_without_loss(journal, {}, 2)
    assert after[retry[0].number].state == TrialState.COMPLETE


# ------------------------------------------------------------------------------------------------------------
# a read-only run directory


@pytest.mark.filterwarnings("ignore:the config stored in study:UserWarning")  # (pareto --storage: paths not used)
def test_reading_commands_work_on_a_read_only_run_directory(finished, tmp_path, mount, capsys):
    """The run directory on a read-only mount (root writes through chmod, not through a read-only mount):
    ``pareto`` and ``export`` read it as it is, ``report`` writes where --out says; ``report`` without --out and
    ``search`` refuse in one paragraph naming the directory and what to do. Nothing is written there."""
    src, _, journal = finished
    ro = tmp_path / "ro"
    mount("--bind", "-o", "ro", str(src / "run"), target=ro)
    cfg = _config(src, run=ro, n=2, name=f"ro-{tmp_path.name}.yaml")
    listing = sorted((p.name, p.stat().st_size) for p in ro.iterdir())
    best = max(_complete(journal))

    code, out, err = _main(capsys, "pareto", str(cfg))
    assert code == 0 and "on the front of 2 complete trials" in out, err
    code, out, err = _main(capsys, "pareto", "--storage", str(ro / "optuna.journal"), "--json")
    assert code == 0 and {r["number"] for r in json.loads(out)} <= set(_complete(journal)), err
    code, out, err = _main(capsys, "report", str(cfg))
    line = _one_paragraph(err, "autoprune report: error: cannot write to ")
    assert code == 2 and f"{ro}/report" in line and "--out" in line
    code, out, err = _main(capsys, "report", str(cfg), "--out", str(tmp_path / "report"))
    assert code == 0 and (tmp_path / "report" / "report.html").exists(), err
    code, out, err = _main(capsys, "export", str(cfg), str(tmp_path / "m.pt"), "--trial", str(best))
    assert code == 0 and (tmp_path / "m.pt").exists(), err
    code, out, err = _main(capsys, "search", str(cfg))
    line = _one_paragraph(err, f"autoprune search: error: storage {ro / 'optuna.journal'}: cannot write it, ")
    assert code == 2 and "read-only file system" in line and "point run_dir or --storage at the copy" in line
    assert sorted((p.name, p.stat().st_size) for p in ro.iterdir()) == listing


def test_read_only_journal_reads_and_refuses_writes(finished, tmp_path):
    """``open_storage(read_only=True)``: the study reads as it is, no lock file is made, a write raises
    ``StorageReadOnly`` (also where this machine cannot mount a read-only file system)."""
    from autoprune.study.storage import StorageReadOnly, open_storage

    _, _, journal = finished
    copy = tmp_path / "optuna.journal"
    copy.write_bytes(journal.read_bytes())
    study = optuna.load_study(study_name=STUDY, storage=open_storage(storage=str(copy), read_only=True))
    assert {t.number: t.values for t in study.trials if t.state == TrialState.COMPLETE} == _complete(journal)
    with pytest.raises(StorageReadOnly, match="opened read-only"):
        study.set_user_attr("x", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["optuna.journal"]
    with pytest.raises(FileNotFoundError, match="no search journal there"):
        open_storage(storage=str(tmp_path / "missing.journal"), read_only=True)


# ------------------------------------------------------------------------------------------------------------
# a closed stdout


def test_closed_stdout_ends_quietly(finished, tmp_path):
    """``autoprune pareto ... | head``, the reader gone before the table is written: no "Broken pipe" error, no
    traceback, exit status 141 (as a shell reports a process killed by SIGPIPE)."""
    _, cfg, _ = finished
    r, w = os.pipe()
    os.close(r)  # the reader is gone
    try:
        proc = subprocess.run(_cli("pareto", str(cfg)), stdout=w, stderr=subprocess.PIPE, env=_env(tmp_path),
                              cwd=tmp_path, text=True, timeout=120)
    finally:
        os.close(w)
    assert proc.returncode == 141, proc.stderr[-3000:]
    for noise in ("error", "Broken pipe", "Traceback", "Exception ignored"):
        assert noise not in proc.stderr, proc.stderr[-3000:]


# ------------------------------------------------------------------------------------------------------------
# retried trials and their constraints


def test_retried_trial_sets_its_own_constraints():
    """A retry does not inherit the failed trial's constraint values: setting its own warns nothing and counts."""
    from optuna.study._constrained_optimization import _CONSTRAINTS_KEY

    from autoprune.study.recovery import _CONSTRAINT_PREFIX, RetryFailedTrial

    assert _CONSTRAINT_PREFIX == f"{_CONSTRAINTS_KEY}:"  # how Optuna names them (private; checked here)
    study = optuna.create_study(directions=["maximize", "minimize"])
    t = study.ask()
    t.suggest_float("x", 0, 1)
    t.set_constraint("max_macs", 0.5)
    study.tell(t, state=TrialState.FAIL)
    RetryFailedTrial()(study, study.trials[0])
    retry = study.ask()
    assert retry.number == 1 and retry.params == t.params
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retry.set_constraint("max_macs", -0.25)
    study.tell(retry, [0.5, 0.5])
    assert study.trials[1].constraints == {"max_macs": -0.25}
    assert study.trials[1].system_attrs["retry_history"] == [0]
