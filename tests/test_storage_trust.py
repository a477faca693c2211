"""A study's storage is data, never code or paths (issue 21): whoever can write to a shared study must not run code
on the machine of whoever exports from it, nor choose where files are written there.

Each test plants a journal as an attacker would (an Optuna JournalStorage file whose study attribute ``autoprune``
holds a config naming ``module:function`` and a run_dir outside the working directory, and one COMPLETE trial), then
runs the real command line (``autoprune.cli.main.main``) from a fresh working directory.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from autoprune.cli.main import main
from autoprune.config import ConfigError, UntrustedConfigError, load_config, load_stored_config

from tiny_models import TINYNET

#: A model builder of "someone's" code: it leaves a marker file when imported and when called.
PLANTED = TINYNET + '''

from pathlib import Path as _Path

_Path(__file__).with_name("imported.marker").write_text("imported")


def planted(marker, num_classes=10, width=4):
    _Path(marker).write_text("called")
    return build(num_classes=num_classes, width=width)
'''

STUDY = "planted"


def _config(module: str, marker: Path, run_dir: Path) -> dict:
    return {"name": STUDY, "seed": 0, "n_trials": 1, "threads": 1, "device": "cpu", "run_dir": str(run_dir),
            "model": {"name": f"{module}:planted", "kwargs": {"marker": str(marker)}},
            "data": {"dataset": "synthetic", "image_size": 8, "val_fraction": 0.25,
                     "options": {"train_per_class": 2, "test_per_class": 1, "num_classes": 10}},
            "finetune": {"epochs": 0}, "scoring": {"num_batches": 1, "batch_size": 8}}


def _plant(journal: Path, stored: dict) -> None:
    """A study as `autoprune search` leaves it, but with ``stored`` as its config: one COMPLETE trial (number 0)."""
    from optuna.distributions import CategoricalDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=JournalStorage(JournalFileBackend(str(journal))), study_name=STUDY,
                                directions=["maximize", "minimize"])
    study.set_user_attr("autoprune", {"config": stored, "source": str(journal.parent / "cfg.yaml"),
                                      "base": {"accuracy": 0.1, "macs": 1000, "params": 100}})
    study.add_trial(optuna.trial.create_trial(
        params={"criterion": "l1"}, distributions={"criterion": CategoricalDistribution(["l1"])}, values=[0.1, 0.5],
        user_attrs={"accuracy": 0.1, "macs": 500, "params": 50, "macs_fraction": 0.5, "params_fraction": 0.5,
                    "criterion": "l1", "ratios": {"0": 0.5, "3": 0.5, "6": 0.5}, "finetuned": False}))


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A working directory (with the planted module importable from it, as a user's own code would be), the planted
    journal elsewhere, and the stored run_dir outside both."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cwd, store, outside = tmp_path / "work", tmp_path / "store", tmp_path / "outside"
    cwd.mkdir()
    module = f"planted_{abs(hash(str(tmp_path))) % 10**8}"  # (a fresh module name: never cached in sys.modules)
    (cwd / f"{module}.py").write_text(textwrap.dedent(PLANTED))
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(cwd / "cache"))
    marker = tmp_path / "called.marker"
    return {"cwd": cwd, "journal": store / "optuna.journal", "outside": outside, "marker": marker,
            "imported": cwd / "imported.marker", "config": _config(module, marker, outside / "run")}


def _files_outside(tmp_path: Path, *skip: Path) -> set[Path]:
    """Files under ``tmp_path`` but not under ``skip`` (the working directory, the storage's folder: its lock)."""
    return {p for p in tmp_path.rglob("*") if p.is_file() and not any(p.is_relative_to(s) for s in skip)}


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out + err


@pytest.mark.parametrize("how", ["module_function", "subprocess"])
def test_export_from_storage_refuses_a_stored_config_that_names_code(site, tmp_path, capsys, how):
    stored = load_config(site["config"]).to_dict()  # what `autoprune search` stores
    if how == "subprocess":  # the probe of the issue: a shell command as the "model"
        stored["model"] = {"name": "subprocess:check_call",
                           "kwargs": {"args": ["sh", "-c", f"echo pwned > {site['marker']}"]}}
    _plant(site["journal"], stored)
    before = _files_outside(tmp_path, site["cwd"], site["journal"].parent)
    code, text = _cli(capsys, "export", "--storage", str(site["journal"]), "--trial", "0", "out.pt")
    assert code == 2
    assert "names code to import and run (model.name" in text and "never trusted" in text
    assert "autoprune export CONFIG --trial N OUT" in text and "Traceback" not in text
    assert not site["marker"].exists() and not site["imported"].exists()  # nothing of it ran, nothing was imported
    assert not (site["cwd"] / "out.pt").exists()
    assert not site["outside"].exists() and _files_outside(tmp_path, site["cwd"], site["journal"].parent) == before


def test_report_from_storage_writes_under_the_working_directory(site, tmp_path, capsys):
    _plant(site["journal"], load_config(site["config"]).to_dict())
    before = _files_outside(tmp_path, site["cwd"], site["journal"].parent)
    # --latency rebuilds the models: refused before any file is written
    code, text = _cli(capsys, "report", "--latency", "--storage", str(site["journal"]))
    assert code == 2 and "names code to import and run" in text and "autoprune report CONFIG --latency" in text
    assert not site["marker"].exists() and not site["imported"].exists()
    assert not (site["cwd"] / "runs").exists()
    # without --latency the report is written, to runs/<name>/report here, not to the stored run_dir
    code, text = _cli(capsys, "report", "--storage", str(site["journal"]))
    assert code == 0, text
    assert f"html: runs/{STUDY}/report/report.html" in text
    assert (site["cwd"] / "runs" / STUDY / "report" / "report.html").exists()
    assert not site["outside"].exists() and _files_outside(tmp_path, site["cwd"], site["journal"].parent) == before
    assert not site["marker"].exists()


def test_stored_paths_are_kept_only_inside_the_working_directory(site):
    outside = {**site["config"], "data": {**site["config"]["data"], "cache_dir": str(site["outside"] / "cache")}}
    cfg = load_stored_config(load_config(outside).to_dict(), origin="the config stored in study 'planted'")
    assert cfg.run_path == Path("runs") / STUDY and cfg.data.cache_dir is None
    inside = {**site["config"], "run_dir": str(site["cwd"] / "mine"),
              "data": {**site["config"]["data"], "cache_dir": "cache"}}
    cfg = load_stored_config(load_config(inside).to_dict(), origin="the config stored in study 'planted'")
    assert cfg.run_path == site["cwd"] / "mine" and cfg.data.cache_dir == "cache" and cfg.trusted is False
    assert load_config(cfg).trusted is False  # re-read, it stays untrusted
    with pytest.raises(UntrustedConfigError, match="the config stored in study 'planted' names code"):
        cfg.check_code_allowed()


def test_stored_name_with_a_path_is_refused(site, tmp_path, capsys):
    stored = load_config(site["config"]).to_dict()
    stored["name"] = "../../escaped"
    _plant(site["journal"], stored)
    before = _files_outside(tmp_path, site["cwd"], site["journal"].parent)
    with pytest.warns(UserWarning, match="cannot read its stored config"):
        code, text = _cli(capsys, "export", "--storage", str(site["journal"]), "--trial", "0", "out.pt")
    assert code == 2 and "not a plain name" in text and "pass your own config file" in text
    assert not site["marker"].exists() and not site["imported"].exists()
    assert not site["outside"].exists() and _files_outside(tmp_path, site["cwd"], site["journal"].parent) == before


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "a\\b", "..", "c:x"])
def test_config_name_must_be_a_plain_word(site, capsys, name):
    with pytest.raises(ConfigError, match=r"name: .* is not a plain name .*run_dir"):
        load_config({**site["config"], "name": name})
    path = site["cwd"] / "cfg.yaml"
    path.write_text(yaml.safe_dump({**site["config"], "name": name, "run_dir": None}))
    code, text = _cli(capsys, "search", str(path), "--dry-run", "--quiet")
    assert code == 2 and "is not a plain name" in text and "Traceback" not in text
    assert not site["marker"].exists()
    plain = load_config({**site["config"], "name": "resnet56-search_v2.1", "run_dir": None})
    assert plain.run_path == Path("runs") / "resnet56-search_v2.1"


@pytest.mark.filterwarnings("ignore:trial 0. reproduced accuracy")  # (the planted trial's numbers are made up)
def test_the_users_own_config_file_may_name_code(site, capsys):
    _plant(site["journal"], load_config(site["config"]).to_dict())
    path = site["cwd"] / "cfg.yaml"
    path.write_text(yaml.safe_dump({**site["config"], "run_dir": str(site["cwd"] / "run")}))
    code, text = _cli(capsys, "export", str(path), "--storage", str(site["journal"]), "--trial", "0", "out.pt")
    assert code == 0, text
    assert site["marker"].read_text() == "called"  # the user's own code ran
    assert (site["cwd"] / "out.pt").exists() and "trial 0: saved out.pt" in text
