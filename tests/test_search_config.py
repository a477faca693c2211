"""Search-space files: validation errors name the key and suggest fixes; shipped configs load."""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import pytest
import torch

from autoprune.study import ConfigError, check_against_graph, group_bounds, load_config

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "name": "t",
    "model": {"name": "resnet20"},
    "data": {"dataset": "synthetic", "image_size": 8, "options": {"train_per_class": 4, "test_per_class": 1}},
    "n_trials": 3,
}


def cfg(**changes):
    d = copy.deepcopy(BASE)
    for k, v in changes.items():
        d[k] = v
    return d


@pytest.fixture(scope="module")
def graph():
    from autoprune import ChannelGraph, get_model

    return ChannelGraph(get_model("resnet20"), torch.zeros(1, 3, 8, 8))


def test_minimal_config_defaults():
    c = load_config(cfg())
    assert c.criteria == ["l1"] and c.objectives == ["accuracy", "macs"]
    assert c.sampler.name == "nsga2" and c.population_size == 4 and c.ratios.mode == "per_group"
    assert c.study == "t" and str(c.run_path) == str(Path("runs") / "t")
    again = load_config(c.to_dict())
    assert again.fingerprint() == c.fingerprint() and again.to_dict() == c.to_dict()


@pytest.mark.parametrize("raw, match", [
    (cfg(n_trial=5), r"unknown key 'n_trial' in the top level; did you mean 'n_trials'\?"),
    (cfg(finetune={"lrr": 0.1}), r"unknown key 'lrr' in finetune; did you mean 'lr'\?"),
    (cfg(constraints={"max_mac": 0.5}), r"did you mean 'max_macs'\?"),
    (cfg(sampler={"name": "nsga3"}), r"sampler.name: 'nsga3' is not one of nsga2, tpe; did you mean 'nsga2'\?"),
    (cfg(criteria=["l1", "hrnak"]), r"criteria\[1\]: 'hrnak' is not one of .*did you mean 'hrank'\?"),
    (cfg(data={"dataset": "cifar11"}), r"data.dataset: 'cifar11' is not one of .*did you mean 'cifar10'\?"),
    (cfg(data={"dataset": "synthetic", "options": {"train_per_clas": 3}}), r"did you mean 'train_per_class'\?"),
    (cfg(data={"dataset": "synthetic", "val_from": "tset"}), r"data.val_from: 'tset' is not one of train, test; did you mean 'test'\?"),
])
def test_unknown_keys_and_names_suggest(raw, match):
    with pytest.raises(ConfigError, match=match):
        load_config(raw)


@pytest.mark.parametrize("raw, match", [
    (cfg(n_trials="ten"), r"n_trials: expected an integer, got 'ten' \(str\)"),
    (cfg(n_trials=0), r"n_trials: must be >= 1"),
    (cfg(finetune={"lr": "fast"}), r"finetune.lr: expected a number, got 'fast' \(str\)"),
    (cfg(finetune={"epochs": 1.5}), r"finetune.epochs: expected an integer"),
    (cfg(constraints={"finetune_infeasible": "yes"}), r"expected true or false"),
    (cfg(model=["resnet20"]), r"model: expected a mapping"),
    (cfg(ratios={"groups": ["layer1.*"]}), r"ratios.groups: expected a mapping"),
    (cfg(objectives=["macs"]), r"objectives: need accuracy"),
    (cfg(objectives={"accuracy": "min", "macs": "min"}), r"accuracy is always maximised"),
    (cfg(constraints={"max_macs": 1.5}), r"constraints.max_macs: must be in \(0.0, 1.0\]"),
])
def test_wrong_types_and_ranges(raw, match):
    with pytest.raises(ConfigError, match=match):
        load_config(raw)


@pytest.mark.parametrize("ratios, match", [
    ({"default": [0.2, 1.0]}, r"ratios.default: bounds must satisfy 0 <= low <= high < 1.*\[0.2, 1.0\]"),
    ({"default": [0.5, 0.2]}, r"ratios.default: bounds must satisfy"),
    ({"groups": {"layer1.*": [-0.1, 0.5]}}, r"ratios.groups\['layer1.\*'\]: bounds must satisfy"),
    ({"groups": {"layer1.*": 0.5}}, r"expected bounds \[low, high\]"),
    ({"mode": "guided", "level": [0.0, 0.5]}, r"ratios.level: must satisfy 0 < low <= high <= 1"),
    ({"mode": "per_group", "offset": 0.1}, r"ratios.offset only applies to mode: guided"),
    ({"mode": "guided", "guide": "sensitivity", "sensitivity": {"ratio": [0.5]}}, r"did you mean 'ratios'\?"),
])
def test_bad_bounds(ratios, match):
    with pytest.raises(ConfigError, match=match):
        load_config(cfg(ratios=ratios))


def test_pattern_matching_no_group(graph):
    c = load_config(cfg(ratios={"groups": {"layer4.*": [0.0, 0.5]}}))
    with pytest.raises(ConfigError, match=r"ratios.groups\['layer4.\*'\]: pattern matches no prunable group"):
        check_against_graph(c, graph)
    c = load_config(cfg(ratios={"groups": {"layer1.0.conv": [0.0, 0.5]}}))
    with pytest.raises(ConfigError, match=r"did you mean layer1.0.conv1"):
        check_against_graph(c, graph)


def test_pattern_bounds_later_patterns_win(graph):
    c = load_config(cfg(ratios={"default": [0.0, 0.8], "groups": {"layer1.*": [0.0, 0.7], "layer1.0.*": [0.1, 0.2]}}))
    check_against_graph(c, graph)
    b = group_bounds(c, [g.name for g in graph.prunable_groups])
    assert b["layer1.0.conv1"] == (0.1, 0.2) and b["layer1.1.conv1"] == (0.0, 0.7) and b["conv1"] == (0.0, 0.8)


def test_infeasible_budget(graph):
    c = load_config(cfg(ratios={"default": [0.0, 0.5]}, constraints={"max_macs": 0.05}))
    with pytest.raises(ConfigError, match=r"max_macs=0.05 cannot be met: .* still keeps \d+\.\d% of the MACs"):
        check_against_graph(c, graph)
    c = load_config(cfg(ratios={"default": [0.0, 0.5]}, constraints={"max_params": 0.01}))
    with pytest.raises(ConfigError, match=r"constraints.max_params=0.01 cannot be met"):
        check_against_graph(c, graph)
    check_against_graph(load_config(cfg(ratios={"default": [0.0, 0.5]}, constraints={"max_macs": 0.5})), graph)
    with pytest.raises(ConfigError, match=r"cannot be met by any guided allocation"):
        load_config(cfg(ratios={"mode": "guided", "level": [0.7, 0.9]}, constraints={"max_macs": 0.6}))


def test_guided_level_defaults_to_budget():
    c = load_config(cfg(ratios={"mode": "guided", "guide": "uniform"}, constraints={"max_macs": 0.6}))
    assert c.ratios.level == [0.2, 0.6] and c.ratios.offset == 0.1


@pytest.mark.parametrize("name", ["quickstart", "resnet56_cifar10", "resnet56_cifar10_jpeg", "resnet50_imagenet"])
def test_shipped_configs_load(name):
    c = load_config(ROOT / "search_spaces" / f"{name}.yaml")
    assert c.name == name and c.n_trials >= 5


def test_yaml_errors(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("model: {name: resnet20\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_cli_help_for_every_subcommand(capsys):
    from autoprune.cli.search import add_subcommands

    parser = argparse.ArgumentParser(prog="autoprune")
    add_subcommands(parser.add_subparsers(dest="command"))
    for sub in ("search", "pareto", "report", "export", "dashboard"):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([sub, "--help"])
        assert e.value.code == 0
        assert "usage: autoprune " + sub in capsys.readouterr().out
    args = parser.parse_args(["export", "cfg.yaml", "out.pt", "--trial", "3"])
    assert (args.config, args.out, args.trial) == ("cfg.yaml", "out.pt", 3)
    args = parser.parse_args(["export", "out.pt", "--trial", "3", "--storage", "x.journal"])
    assert (args.config, args.out) == (None, "out.pt")
    assert parser.parse_args(["dashboard", "cfg.yaml"]).port == 8080


def test_docs_reference_is_generated_from_the_dataclasses():
    """docs/search.md's key reference is reference_markdown() verbatim: every key, default and meaning comes from the
    dataclasses of autoprune/config/schema.py (their one home). To update the document, replace the text between the two
    config-reference markers by autoprune.config.reference_markdown()."""
    from autoprune.config import SCHEMA, reference_markdown

    doc = (ROOT / "docs" / "search.md").read_text()
    begin = doc.index("<!-- config-reference: generated")
    block = doc[doc.index("\n", begin) + 1:doc.index("<!-- config-reference: end -->")]
    assert block == reference_markdown(), (
        "docs/search.md's config reference is out of date; regenerate it with: python -c \"import re, pathlib; "
        "from autoprune.config import reference_markdown as r; p = pathlib.Path('docs/search.md'); "
        "p.write_text(re.sub(r'(<!-- config-reference: generated[^\\n]*\\n).*?(<!-- config-reference: end -->)', "
        "lambda m: m[1] + r() + m[2], p.read_text(), flags=re.S))\"")
    for section, keys in SCHEMA.items():  # and the reference names every key the loader accepts
        for key in keys:
            assert f"| `{key}` |" in block


def test_a_config_is_loaded_once():
    """A SearchConfig is already valid: load_config hands it back as it is (a command loads once and passes the
    object down); with overrides it is a new, validated config."""
    c = load_config(cfg())
    assert load_config(c) is c and load_config(c, n_trials=None) is c
    more = load_config(c, n_trials=7)
    assert more is not c and more.n_trials == 7 and c.n_trials == 3


def test_defaults_come_from_the_dataclasses():
    """A key left out gets the dataclass default: the loader holds no second copy of any default."""
    import dataclasses

    from autoprune.config import SECTIONS, SearchConfig

    c = load_config(cfg())
    for section, cls in SECTIONS.items():
        if section in ("", "model", "data", "model.pretrain", "finetune.distill"):
            continue
        obj = c
        for part in section.split("."):
            obj = getattr(obj, part)
        assert obj == cls(), section
    for f in dataclasses.fields(SearchConfig):
        if f.name in ("n_trials", "name", "source") or f.metadata.get("section"):
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert getattr(c, f.name) == default, f.name
