"""The ``autoprune`` command: every subcommand has --help; the inspection commands print the right numbers."""
import subprocess
import sys

import pytest

from autoprune.cli import build_parser, main


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


def test_every_subcommand_has_help(capsys):
    subs = _subcommands()
    assert {"groups", "macs", "search", "pareto", "report", "export", "dashboard", "sensitivity", "prune",
            "compare-criteria"} <= set(subs)
    for sub in subs:
        with pytest.raises(SystemExit) as e:
            main([sub, "--help"])
        assert e.value.code == 0
        assert f"usage: autoprune {sub}" in capsys.readouterr().out


def test_macs_and_groups(capsys):
    assert main(["macs", "resnet56", "--params"]) == 0
    assert capsys.readouterr().out.split() == ["125485696", "853018"]
    assert main(["groups", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "locked: model output" in out and "12 of 13 groups prunable" in out


def test_console_script_and_clear_errors():
    r = subprocess.run([sys.executable, "-m", "autoprune.cli", "macs", "resnet57"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown model 'resnet57'" in r.stderr and "resnet56" in r.stderr
