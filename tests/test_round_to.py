"""Channel rounding (``round_to=k``): every pruned group keeps a multiple of k channels (never zero), the budget met.

The sensitivity table is the synthetic one of tests/test_allocate.py (made-up damage curves on ResNet-20's real
groups and MAC accounting).
"""
from __future__ import annotations

import math

import pytest
import torch

from autoprune.allocation import allocate, round_count, round_ratios

from test_allocate import fake_table, graph, scores  # noqa: F401 -- graph, scores: the same module fixtures

EX = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def table(graph, scores):
    return fake_table(graph, scores)


def kept_counts(graph, a):
    return {g: graph.group(g).channels - a.counts[g] for g in a}


@pytest.mark.parametrize("method", ["sensitivity", "uniform", "srr"])
@pytest.mark.parametrize("keep", [0.7, 0.5, 0.3])
def test_round_to_keeps_multiples_and_meets_budget(graph, scores, table, method, keep):
    src = table if method == "sensitivity" else graph
    a = allocate(src, graph=graph, macs=keep, method=method, round_to=8, scores=scores)
    target = math.floor(keep * graph.macs())
    assert a.macs <= target and a.macs == graph.macs(a.remove)
    for g, kept in kept_counts(graph, a).items():
        assert kept >= 8 and (kept % 8 == 0 or a.counts[g] == 0), (g, kept)
    assert a.info["round_to"] == 8
    # the pruned model has the accounted channel counts (its conv widths are multiples of 8)
    pruned = graph.prune_channels(a.remove)
    widths = {m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)}
    assert all(w % 8 == 0 for w in widths), widths


def test_round_to_changes_an_unrounded_allocation(graph, scores):
    a1 = allocate(graph, macs=0.5, method="uniform", scores=scores)
    a8 = allocate(graph, macs=0.5, method="uniform", scores=scores, round_to=8)
    assert any((graph.group(g).channels - n) % 8 for g, n in a1.counts.items())  # the plain one is not on the lattice
    assert all((graph.group(g).channels - n) % 8 == 0 for g, n in a8.counts.items())


def test_round_to_infeasible_budget_names_the_rounding(graph, scores):
    # ResNet-20 groups have 16/32/64 channels: at round_to=16 the smallest group cannot be pruned at all
    with pytest.raises(ValueError, match="multiples of 16"):
        allocate(graph, macs=0.12, method="uniform", scores=scores, round_to=16)


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "8"])
def test_round_to_bad_values(graph, scores, bad):
    with pytest.raises(ValueError, match="round_to"):
        allocate(graph, macs=0.5, method="uniform", scores=scores, round_to=bad)


def test_round_count_rules():
    assert round_count(64, 0, 8) == 0            # a group left whole stays whole
    assert round_count(64, 63, 8) == 56          # never rounded to zero: keeps 8
    assert round_count(64, 29, 8) == 32          # keeps 35 -> 32 (nearest)
    assert round_count(64, 27, 8) == 24          # keeps 37 -> 40
    assert round_count(64, 28, 8) == 24          # keeps 36: a tie keeps more (40)
    assert round_count(8, 5, 8) == 0             # a group of at most k channels is left whole
    assert round_count(24, 5, 1) == 5


def test_round_ratios_match_plan(graph, scores):
    channels = {g.name: g.channels for g in graph.prunable_groups}
    ratios = {g: 0.37 for g in channels}
    r8 = round_ratios(ratios, channels, 8)
    removal = graph.plan(r8, scores)  # ratios are exact counts, so plan removes the rounded numbers
    for g, c in channels.items():
        kept = c - len(removal.get(g, []))
        assert kept % 8 == 0 and kept >= 8


def _tiny_cnn() -> torch.nn.Module:
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)).eval()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from autoprune.data import load_data

    return load_data("synthetic", cache_dir=tmp_path_factory.mktemp("data"), device="cpu", image_size=16,
                     train_per_class=4, test_per_class=2, val_fraction=0.25)


def _widths(model):
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_prune_to_budget_round_to(bundle):
    from autoprune.allocation.budget import prune_to_budget

    model = _tiny_cnn()
    res = prune_to_budget(model, bundle, macs=0.5, criterion="l1", allocation="uniform", finetune_epochs=0,
                          bn_batches=1, progress=False, round_to=8)
    assert all(w % 8 == 0 for w in _widths(res.model)), _widths(res.model)
    assert res.macs <= math.floor(0.5 * res.base_macs) and res.ratios.info["round_to"] == 8
    # an explicit allocation is rounded too: 16 -> keeps 9.6 -> 8; 24 -> keeps 14.4 -> 16
    res = prune_to_budget(model, bundle, criterion="l1", allocation={"0": 0.4, "4": 0.4}, finetune_epochs=0,
                          bn_batches=1, progress=False, round_to=8)
    assert _widths(res.model) == [8, 16]
    with pytest.raises(ValueError, match="round_to"):
        prune_to_budget(model, bundle, allocation="uniform", finetune_epochs=0, progress=False, round_to=0)
