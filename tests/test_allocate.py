"""Tests for autoprune.allocate: budgets met within 1%, tau monotonicity, uniform/SRR, infeasible budgets.

The sensitivity tables here are synthetic (made-up damage curves on ResNet-20's real groups and MAC accounting), so
the allocation logic is tested without evaluating models; tests/test_sensitivity.py covers the measurement.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from autoprune import ChannelGraph, count_macs
from autoprune.allocation import Allocation, allocate, layer_redundancy, sensitivity_ratios
from autoprune.models import resnet20
from autoprune.criteria.scoring import score_groups
from autoprune.allocation.sensitivity_table import DEFAULT_RATIOS, SensitivityRow, SensitivityTable

EX = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    return ChannelGraph(resnet20(), EX)


@pytest.fixture(scope="module")
def scores(graph):
    return score_groups(graph, "l1")


def fake_table(graph, scores, seed: int = 0, ratios=DEFAULT_RATIOS) -> SensitivityTable:
    """Damage curves: convex in the ratio, a random scale per group; MACs saved from the real graph."""
    rng = np.random.default_rng(seed)
    base_macs, base_params = graph.macs(), graph.macs(params=True)
    rows = []
    for g in graph.prunable_groups:
        scale = float(rng.uniform(0.2, 3.0))
        for r in ratios:
            rm = graph.plan({g.name: r}, scores)
            saved = base_macs - graph.macs(rm)
            d_acc = scale * r ** 2 * 0.1 + float(rng.normal(0, 0.002))
            rows.append(SensitivityRow(g.name, r, len(rm.get(g.name, ())), 0.9 - d_acc, 0.3 + d_acc, d_acc, d_acc,
                                       saved, base_params - graph.macs(rm, params=True),
                                       d_acc / saved if saved else 0.0))
    return SensitivityTable(0.9, 0.3, base_macs, base_params, rows, ratios=list(ratios),
                            group_channels={g.name: g.channels for g in graph.prunable_groups},
                            scores={k: v.tolist() for k, v in scores.items()})


@pytest.fixture(scope="module")
def table(graph, scores):
    return fake_table(graph, scores)


def within(achieved: int, target: int, tol: float = 0.01) -> bool:
    return target * (1 - tol) <= achieved <= target


@pytest.mark.parametrize("keep", [0.9, 0.75, 0.6, 0.5, 0.4, 0.3])
def test_sensitivity_meets_mac_budget_within_1pct(graph, table, keep):
    a = allocate(table, macs=keep, graph=graph)
    target = math.floor(keep * graph.macs())
    assert isinstance(a, Allocation) and a.method == "sensitivity"
    assert within(a.macs, target), (a.macs, target, a.info)
    assert a.target == {"macs": target, "params": None} and a.info["within_tol"]
    assert a.macs == graph.macs(a.remove) and a.params == graph.macs(a.remove, params=True)
    # ratios are exact counts: pruning by ratio with the table's scores removes the same channels
    tscores = {g: torch.tensor(v) for g, v in table.scores.items()}
    assert graph.plan(dict(a), tscores) == a.remove
    assert all(0 <= r <= 0.9 for r in a.values())


@pytest.mark.parametrize("keep", [0.8, 0.5, 0.35])
def test_sensitivity_meets_param_budget_within_1pct(graph, table, keep):
    a = allocate(table, params=keep, graph=graph)
    target = math.floor(keep * graph.macs(params=True))
    assert within(a.params, target), (a.params, target)


def test_both_budgets(graph, table):
    a = allocate(table, macs=0.6, params=0.4, graph=graph)
    tm, tp = math.floor(0.6 * graph.macs()), math.floor(0.4 * graph.macs(params=True))
    assert a.macs <= tm and a.params <= tp
    assert within(a.macs, tm) or within(a.params, tp)


def test_allocation_equals_measured_macs(graph, table):
    a = allocate(table, macs=0.5, graph=graph)
    pruned = graph.prune_channels(a.remove)
    assert count_macs(pruned, EX) == a.macs
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_tau_is_monotone(graph, table):
    taus = sorted({r.damage_per_mac for r in table.rows})
    taus = [taus[0] - 1.0] + taus[:: max(1, len(taus) // 25)] + [taus[-1]]
    tscores = {g: torch.tensor(v) for g, v in table.scores.items()}
    prev_ratios, prev_macs = None, None
    for tau in taus:
        ratios = sensitivity_ratios(table, tau)
        macs = graph.macs(graph.plan(ratios, tscores))
        if prev_ratios is not None:
            assert all(ratios[g] >= prev_ratios[g] for g in ratios)  # more tau -> more pruning
            assert macs <= prev_macs                                 # -> fewer MACs
        prev_ratios, prev_macs = ratios, macs
    assert all(r == 0.0 for r in sensitivity_ratios(table, taus[0]).values())
    assert all(r == 0.9 for r in sensitivity_ratios(table, taus[-1]).values())
    # and tighter budgets bisect to larger tau
    found = [allocate(table, macs=k, graph=graph, refine=False).info["tau"] for k in (0.8, 0.6, 0.4)]
    assert found == sorted(found)


@pytest.mark.parametrize("method", ["uniform", "global", "srr"])
@pytest.mark.parametrize("keep", [0.8, 0.5, 0.3])
def test_uniform_and_srr_meet_budget(graph, scores, method, keep):
    a = allocate(graph, macs=keep, method=method, scores=scores)
    target = math.floor(keep * graph.macs())
    assert within(a.macs, target), (method, a.macs, target, a.info.get("slack"))
    if method == "uniform":
        r = a.info["uniform_ratio"]
        # every group within one channel of the uniform ratio (or the step below it)
        for g in graph.prunable_groups:
            lo = math.floor(a.info["uniform_ratio_below"] * g.channels + 1e-9) if "uniform_ratio_below" in a.info \
                else math.floor(r * g.channels + 1e-9)
            assert lo <= a.counts[g.name] <= math.floor(r * g.channels + 1e-9)


def test_uniform_without_refinement_is_one_ratio(graph, scores):
    a = allocate(graph, macs=0.5, method="uniform", scores=scores, refine=False)
    r = a.info["uniform_ratio"]
    assert a.macs <= math.floor(0.5 * graph.macs())
    assert all(a.counts[g.name] == math.floor(r * g.channels + 1e-9) for g in graph.prunable_groups)


def test_global_threshold_removes_the_lowest_normalised_scores_of_the_model(graph, scores):
    """Without refinement, one threshold: every removed channel's score / its group's mean is at most every kept
    one's (groups at their cap aside), and the budget is met; with it, the tolerance band is reached too."""
    a = allocate(graph, macs=0.5, method="global", scores=scores, refine=False)
    assert a.macs <= math.floor(0.5 * graph.macs()) and a.method == "global"
    t = a.info["threshold"]
    for g in graph.prunable_groups:
        s = scores[g.name].numpy()
        norm = np.sort(s / s.mean())
        cap = min(math.floor(0.9 * g.channels + 1e-9), g.channels - 1)
        n = a.counts[g.name]
        assert n == min(int((norm <= t).sum()), cap), g.name
        assert set(a.remove.get(g.name, [])) == set(np.argsort(s, kind="stable")[:n].tolist())
    # the threshold is the smallest that meets the budget: the next lower one does not
    lower = max(float(v) for g in graph.prunable_groups for v in scores[g.name].numpy() / scores[g.name].numpy().mean()
                if v < t)
    below = {g.name: min(int((np.sort(scores[g.name].numpy() / scores[g.name].numpy().mean()) <= lower).sum()),
                         min(math.floor(0.9 * g.channels + 1e-9), g.channels - 1)) for g in graph.prunable_groups}
    assert graph.macs(graph.plan({k: v / graph.group(k).channels for k, v in below.items()}, scores)) > \
        math.floor(0.5 * graph.macs())
    refined = allocate(graph, macs=0.5, method="global", scores=scores)
    assert within(refined.macs, math.floor(0.5 * graph.macs()))


def test_params_budget_uniform(graph, scores):
    a = allocate(graph, params=0.5, method="uniform", scores=scores)
    assert within(a.params, math.floor(0.5 * graph.macs(params=True)))


def test_absolute_budget_equals_fraction(graph, table):
    a = allocate(table, macs=0.5, graph=graph)
    b = allocate(table, macs=math.floor(0.5 * graph.macs()), graph=graph)
    assert dict(a) == dict(b) and a.macs == b.macs


def test_model_argument_and_default_l1_order(table):
    torch.manual_seed(0)
    a = allocate(resnet20(), macs=0.6, method="uniform", example_inputs=EX)
    assert within(a.macs, math.floor(0.6 * a.base_macs))
    with pytest.raises(ValueError, match="example_inputs"):
        allocate(resnet20(), macs=0.6, method="uniform")
    with pytest.raises(ValueError, match="graph="):
        allocate(table, macs=0.5)


@pytest.mark.parametrize("method", ["sensitivity", "uniform", "global", "srr"])
def test_infeasible_budget_says_how_much_can_be_removed(graph, table, method):
    first = table if method == "sensitivity" else graph
    with pytest.raises(ValueError, match=r"infeasible.*at most [\d,]+ macs \(\d+\.\d+%\) can be removed") as e:
        allocate(first, macs=0.005, graph=graph, method=method, scores=None if method == "sensitivity" else
                 score_groups(graph, "l1"))
    # the figure quoted is the real minimum: every group at its cap
    msg = str(e.value)
    kept = int(msg.split("keeps ")[1].split(" ")[0].replace(",", ""))
    caps = {g.name: min(math.floor(0.9 * g.channels + 1e-9), g.channels - 1) for g in graph.prunable_groups}
    sc = score_groups(graph, "l1")
    assert kept == graph.macs(graph.plan({g: c / graph.group(g).channels for g, c in caps.items()}, sc))


def test_bad_arguments(graph, table):
    with pytest.raises(ValueError, match="KEEP"):
        allocate(table, macs=1.5, graph=graph)
    with pytest.raises(ValueError, match="positive"):
        allocate(table, macs=0, graph=graph)
    with pytest.raises(ValueError, match="give a budget"):
        allocate(table, graph=graph)
    with pytest.raises(ValueError, match="unknown allocation method"):
        allocate(table, macs=0.5, graph=graph, method="magic")
    with pytest.raises(ValueError, match="needs a SensitivityTable"):
        allocate(graph, macs=0.5)
    a = allocate(table, macs=1.0, graph=graph)  # nothing to remove
    assert a.macs == graph.macs() and all(r == 0 for r in a.values())


def test_table_from_another_model_is_rejected(table):
    torch.manual_seed(0)
    from autoprune.models import resnet32

    g32 = ChannelGraph(resnet32(), EX)
    bad = SensitivityTable.from_dict({**table.to_dict(), "rows": [
        {**r, "group": "nonexistent"} for r in table.to_dict()["rows"]]})
    with pytest.raises(ValueError, match="another model"):
        allocate(bad, macs=0.5, graph=g32)


def test_layer_redundancy_extremes():
    n = 8
    same = np.zeros((n, n))                      # identical filters: one component, one ball
    assert layer_redundancy(same, gamma=0.1) == pytest.approx(n)
    far = np.full((n, n), 1.4)
    np.fill_diagonal(far, 0)                     # all far apart: N components, N balls
    assert layer_redundancy(far, gamma=0.1) == pytest.approx(1.0)
    # two clusters of 4: k = 2 components, 2 balls
    two = np.full((n, n), 1.4)
    two[:4, :4] = 0.05
    two[4:, 4:] = 0.05
    np.fill_diagonal(two, 0)
    assert layer_redundancy(two, gamma=0.1) == pytest.approx(n / 2)
    assert layer_redundancy(two, gamma=0.1, w_components=1.0, w_cover=0.0) == pytest.approx(4.0)


def test_srr_prefers_redundant_groups(graph, scores):
    a = allocate(graph, macs=0.7, method="srr", scores=scores, srr_options={"gamma_quantile": 0.2})
    R0 = a.info["initial_redundancy"]
    most = max(R0, key=R0.get)
    assert a.counts[most] > 0
    with pytest.raises(TypeError, match="unknown srr option"):
        allocate(graph, macs=0.7, method="srr", scores=scores, srr_options={"gama": 1})


def test_a_flat_sensitivity_table_warns_that_it_cannot_rank_the_removal(graph, scores, table):
    """An undertrained model (or too few validation images) measures no drop anywhere: allocating half the MACs
    from such a table picks among zero-damage entries, and the user is told; a table with real drops is silent."""
    import warnings

    from autoprune.allocation.by_sensitivity import FlatSensitivityWarning

    flat = SensitivityTable.from_dict({**table.to_dict(), "rows": [
        {**r, "damage_per_mac": -abs(r["damage_per_mac"]) * 0.01} for r in table.to_dict()["rows"]]})
    with pytest.warns(FlatSensitivityWarning, match="no accuracy drop"):
        a = allocate(flat, macs=0.5, graph=graph)
    assert a.info.get("flat_table") is True
    one_image = SensitivityTable.from_dict({**table.to_dict(), "eval_n": 400, "rows": [  # each entry: one image
        {**r, "damage_per_mac": 1 / 400 / r["macs_saved"] if r["macs_saved"] else 0.0}
        for r in table.to_dict()["rows"]]})
    with pytest.warns(FlatSensitivityWarning, match="one validation image or less"):
        allocate(one_image, macs=0.5, graph=graph)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlatSensitivityWarning)
        assert "flat_table" not in allocate(table, macs=0.5, graph=graph).info
