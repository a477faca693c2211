"""A search with a measured-latency objective (issue 14): latency per trial with its spread, the max_latency_ms
constraint, ratios.round_to, the cache by removal digest, the speed table of the front, and export to ONNX.

The model is a three-conv net on 12 px synthetic images (tiny settings); the latency settings are small (1 warm-up,
3 timed calls, 1 thread). No timing is asserted, only what is measured and where it goes.
"""
from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch

from tiny_models import TINYNET


CONFIG = """
name: tinylat
seed: 0
n_trials: 4
threads: 1
run_dir: {run}
model: {{name: "tinynet:build", kwargs: {{width: 8}}, pretrain: {{epochs: 2, lr: 0.05, batch_size: 32}}}}
data:
  dataset: synthetic
  image_size: 12
  val_fraction: 0.25
  cache_dir: {cache}
  options: {{train_per_class: 12, test_per_class: 2}}
criteria: [l1]
ratios:
  mode: per_group
  default: [0.0, 0.75]
  round_to: 4
objectives: [accuracy, latency]
constraints: {{max_macs: 0.9, max_latency_ms: 10000}}
latency: {{batch_size: 2, threads: 1, warmup: 1, repeats: 3}}
sampler: {{name: nsga2, population_size: 4}}
finetune: {{epochs: 1, max_batches: 1, batch_size: 32, lr: 0.02}}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        d = tmp_path_factory.mktemp("latsearch")
        (d / "tinynet.py").write_text(textwrap.dedent(TINYNET))
        path = d / "tinylat.yaml"
        path.write_text(CONFIG.format(run=d / "run", cache=d / "cache"))
        from autoprune.study import load_config
        from autoprune.study.optuna_study import open_study

        cfg = load_config(path)
        study = open_study(cfg)
        study.enqueue_trial({f"r:{n}": 0.0 for n in ("0", "3", "6")})  # nothing pruned: over the MAC budget
        from autoprune.study import search

        front = search(path)
        yield cfg, path, front
    finally:
        torch.set_num_threads(threads)


def test_every_trial_has_its_measured_latency_as_objective(run):
    cfg, _, front = run
    trials = [t for t in front.study.trials if t.state.name == "COMPLETE"]
    assert len(trials) == 4 and front.study.metric_names == ["accuracy", "latency_ms"]
    for t in trials:
        a = t.user_attrs
        assert t.values[1] == a["latency_ms"] > 0
        assert a["latency_min_ms"] <= a["latency_ms"] <= a["latency_max_ms"] and a["latency_iqr_ms"] >= 0
        assert a["latency_setup"]["batch_size"] == 2 and a["latency_setup"]["repeats"] == 3
        assert set(t.constraints) == {"max_macs", "max_latency_ms"}
        assert t.constraints["max_latency_ms"] == pytest.approx(a["latency_ms"] - 10000)
    assert all(r.latency_ms is not None for r in front.all)
    assert front.base["latency_ms"] > 0  # the unpruned model, for the speed-up


def test_latency_is_cached_by_removal_digest(run):
    cfg, _, front = run
    cache = json.loads((cfg.run_path / "latency.json").read_text())["entries"]
    from autoprune.study.digest import removal_digest

    digests = {t.user_attrs["removal_sha"] for t in front.study.trials if "removal_sha" in t.user_attrs}
    keys = {k.split("|")[0] for k in cache}
    assert keys == digests | {removal_digest({})}  # one measurement per distinct cut, plus the unpruned model
    # measuring a removal again is a cache hit with the same numbers
    prob = front.problem()
    t = front.all[-1]
    removal = prob.removal(t.ratios, t.criterion)
    lat = prob.latency(removal)
    assert lat.cached and lat.median_ms == t.latency_ms


def test_round_to_keeps_multiples_in_the_search(run):
    cfg, _, front = run
    graph = front.problem().graph
    for r in front.all:
        for g, ratio in r.ratios.items():
            c = graph.group(g).channels
            kept = c - int(ratio * c + 1e-9)
            assert kept == c or (kept % 4 == 0 and kept >= 4), (g, ratio, kept)


def test_latency_constraint_and_front(run):
    cfg, _, front = run
    from autoprune.study import load_front

    assert all(r.feasible == (r.macs_fraction <= 0.9) for r in front.all)
    strict = load_front(cfg.replace(constraints=type(cfg.constraints)(max_latency_ms=1e-6)))
    assert len(strict) == 0 and not any(r.feasible for r in strict.all)  # nothing is that fast
    table = front.table()
    assert "latency ms" in table.splitlines()[0]
    speed = front.speed_table()
    lines = speed.splitlines()
    assert lines[1].split()[0] == "base" and "x" in lines[1] and len(lines) == len(front) + 3


def test_report_prints_speed_table_and_export_onnx(run, tmp_path, capsys):
    cfg, path, front = run
    from autoprune.cli import main

    assert main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out and (tmp_path / "rep" / "speed.txt").exists()
    n = front[0].number
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(path), str(onnx_path), "--trial", str(n), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "checked with ONNX Runtime" in out
    info = json.loads((tmp_path / "m.onnx.json").read_text())
    assert info["export"]["max_abs_diff"] <= 1e-4 and info["export"]["format"] == "onnx"
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 12, 12)
    model, _ = front.rebuild(n)
    with torch.no_grad():
        ref = model.cpu().eval()(x).numpy()
    assert np.abs(sess.run(None, {"input": x.numpy()})[0] - ref).max() <= 1e-4
    assert main(["export", str(path), str(tmp_path / "m.pt"), "--trial", str(n), "--format", "exported"]) == 2
    assert ".pt2" in capsys.readouterr().err


def test_latency_config_errors():
    from autoprune.config import ConfigError, load_config

    base = {"name": "x", "model": {"name": "resnet20"}, "data": {"dataset": "synthetic"}}
    with pytest.raises(ConfigError, match="latency.runtime"):
        load_config({**base, "latency": {"runtime": "tensorrt"}})
    with pytest.raises(ConfigError, match="max_latency_ms"):
        load_config({**base, "constraints": {"max_latency_ms": 0}})
    with pytest.raises(ConfigError, match="round_to"):
        load_config({**base, "ratios": {"round_to": 0}})
    cfg = load_config({**base, "objectives": ["accuracy", "macs", "latency"]})
    assert cfg.objectives == ["accuracy", "macs", "latency"] and cfg.latency.repeats == 20


def test_latency_objective_on_the_quickstart(tmp_path, monkeypatch):
    """The shipped quickstart config with `objectives: [accuracy, latency]` (fast settings, 2 trials): every trial's
    second objective is its measured median latency, recorded with its spread."""
    import yaml

    from tiny_configs import ROOT, tiny_copy

    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "cache"))
    path = tiny_copy(ROOT / "search_spaces" / "quickstart.yaml", tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw.update(objectives=["accuracy", "latency"], latency={"batch_size": 2, "threads": 1, "warmup": 1, "repeats": 3})
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    from autoprune import search

    front = search(path)
    done = [t for t in front.study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 2
    for t in done:
        assert t.values[1] == t.user_attrs["latency_ms"] > 0
        a = t.user_attrs
        assert a["latency_min_ms"] <= a["latency_ms"] <= a["latency_max_ms"] and a["latency_iqr_ms"] >= 0
        assert a["latency_setup"]["batch_size"] == 2
