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


# ------------------------------------------------------------------------------------------- parsing and errors


def test_export_takes_the_readme_argument_order():
    parser = build_parser()
    args = parser.parse_args(["export", "cfg.yaml", "--trial", "3", "out.pt"])  # as the README writes it
    assert (args.config, args.out, args.trial) == ("cfg.yaml", "out.pt", 3)
    args = parser.parse_args(["export", "cfg.yaml", "out.pt", "--trial", "3"])
    assert (args.config, args.out, args.trial) == ("cfg.yaml", "out.pt", 3)
    args = parser.parse_args(["export", "out.pt", "--trial", "3", "--storage", "x.journal"])
    assert (args.config, args.out, args.storage) == (None, "out.pt", "x.journal")


def _config(tmp_path, **model):
    import yaml

    raw = {"name": "t", "run_dir": str(tmp_path / "run"), "device": "cpu",
           "model": {"name": "resnet20", **model},
           "data": {"dataset": "synthetic", "image_size": 16, "options": {"train_per_class": 2, "test_per_class": 1}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _fails(argv, capsys, *needles):
    """The command exits with status 2 and one paragraph on stderr containing every needle, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.mark.parametrize("cmd", [["groups"], ["search", "--dry-run", "--quiet"]])
def test_input_shape_that_does_not_match_the_data(tmp_path, monkeypatch, capsys, cmd):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    # Same channels, other size: the MAC counts would silently be those of 32x32 inputs.
    cfg = _config(tmp_path, input_shape=[3, 32, 32])
    _fails([cmd[0], str(cfg), *cmd[1:]], capsys, str(cfg), "model.input_shape", "[3, 32, 32]", "[3, 16, 16]",
           "data.image_size")


def test_model_that_cannot_run_on_the_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "grey.py").write_text("import torch.nn as nn\n\ndef build(num_classes=10):\n"
                                      "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), "
                                      "nn.Flatten(), nn.Linear(4, num_classes))\n")
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text().replace("name: resnet20", "name: grey:build"))
    _fails(["search", str(cfg), "--dry-run", "--quiet"], capsys, "'grey:build'", str(cfg), "[3, 16, 16]",
           "does not run on inputs")


def test_truncated_checkpoint_names_the_file(tmp_path, monkeypatch, capsys):
    import torch

    import autoprune as ap

    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "w.pt"
    torch.save(ap.get_model("resnet20").state_dict(), weights)
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    cfg = _config(tmp_path, weights=str(weights))
    _fails(["groups", str(cfg)], capsys, "model.weights", str(weights), "truncated or corrupt")
    _fails(["macs", "resnet20", "--weights", str(weights)], capsys, "--weights", str(weights))
    with pytest.raises(ValueError, match="w.pt .*truncated or corrupt"):
        ap.load(weights)
    # --debug: the traceback instead of the paragraph (before or after the subcommand)
    with pytest.raises(ValueError, match="truncated"):
        main(["groups", str(cfg), "--debug"])
    with pytest.raises(ValueError, match="truncated"):
        main(["--debug", "groups", str(cfg)])


def test_config_errors_name_the_file_and_key(tmp_path, capsys):
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text() + "n_trial: 5\n")
    for cmd in ("sensitivity", "prune", "compare-criteria", "search", "export"):
        argv = [cmd, str(cfg)] + (["out.pt", "--trial", "0"] if cmd == "export" else [])
        _fails(argv, capsys, f"{cfg}: unknown key 'n_trial'", "did you mean 'n_trials'?")
    _fails(["sensitivity", str(tmp_path / "missing.yaml")], capsys, "missing.yaml", "not found")


def test_prune_without_a_budget(tmp_path, capsys):
    cfg = _config(tmp_path)
    _fails(["prune", str(cfg)], capsys, str(cfg), "--macs", "constraints.max_macs")


def test_missing_weights_say_where_they_were_looked_up(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    cfg = _config(tmp_path, weights="../nowhere/w.pt")
    _fails(["groups", str(cfg)], capsys, "model.weights", "w.pt not found", f"next to {cfg}", "working directory",
           "absolute path")


def test_prune_options_are_one_typed_object():
    """`autoprune prune` reads a PruneSpec from the config and replaces fields (no nested dicts edited)."""
    from autoprune.build import prune_options, prune_spec
    from autoprune.config import load_config

    c = load_config({"model": "resnet20", "data": {"dataset": "synthetic"}, "constraints": {"max_macs": 0.5},
                     "finetune": {"lr": 0.02, "distill": {"alpha": 0.3}}, "ratios": {"round_to": 8}})
    spec = prune_spec(c)
    assert (spec.macs, spec.params, spec.lr, spec.distill_alpha, spec.round_to) == (0.5, None, 0.02, 0.3, 8)
    assert spec.replace(lr=None, criterion=None) == spec  # an option not given keeps the config's
    other = spec.replace(lr=0.1, max_batches=3, sensitivity_cache_dir="/tmp/c").with_budget(macs=None, params=0.4)
    kw = other.budget_kwargs()
    assert (kw["macs"], kw["params"]) == (None, 0.4)
    assert kw["finetune_kwargs"]["lr"] == 0.1 and kw["finetune_kwargs"]["max_batches"] == 3
    assert kw["sensitivity_kwargs"]["cache_dir"] == "/tmp/c" and "cache_dir" not in spec.budget_kwargs()[
        "sensitivity_kwargs"]
    assert kw["distill"] == {"alpha": 0.3, "temperature": 4.0} and prune_options(c) == spec.budget_kwargs()
