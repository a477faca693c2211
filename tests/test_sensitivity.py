"""Tests for autoprune.sensitivity: per-group sensitivity table, MAC accounting, disk cache, (de)serialization."""
from __future__ import annotations

import math

import pytest
import torch

import autoprune.allocation.sensitivity_analysis as sensitivity_mod
from autoprune import ChannelGraph, count_macs
from autoprune.allocation.sensitivity_analysis import sensitivity, sensitivity_cache_dir
from autoprune.allocation.sensitivity_table import SensitivityTable
from autoprune.data import load_data
from autoprune.criteria.scoring import score_groups
from autoprune.train import evaluate, recalibrate_bn

RATIOS = (0.25, 0.5, 0.75)
from tiny_models import tiny_cnn

EX = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_data("synthetic", cache_dir=tmp_path_factory.mktemp("data"), device="cpu",
                     train_per_class=12, test_per_class=2, val_fraction=0.25)


@pytest.fixture(scope="module")
def model():
    return tiny_cnn()


@pytest.fixture(scope="module")
def table(model, bundle, tmp_path_factory):
    return sensitivity(model, bundle, ratios=RATIOS, bn_batches=1, bn_batch_size=32, progress=False,
                       cache_dir=tmp_path_factory.mktemp("sens"))


def test_rows_cover_every_group_and_ratio(table, model):
    graph = ChannelGraph(model, EX)
    names = [g.name for g in graph.prunable_groups]
    assert table.groups == names and len(table.rows) == len(names) * len(RATIOS)
    assert table.ratios == list(RATIOS) and not table.from_cache
    assert table.base_macs == count_macs(model, EX) == graph.macs()
    for r in table.rows:
        ch = table.group_channels[r.group]
        assert r.channels_removed == math.floor(r.ratio * ch)
        ref_acc, ref_loss = table.reference_accuracy, table.reference_loss
        assert math.isclose(r.d_acc, ref_acc - r.acc) and math.isclose(r.d_loss, r.loss - ref_loss)
        assert r.macs_saved > 0 and r.params_saved > 0
        assert math.isclose(r.damage_per_mac, r.d_acc / r.macs_saved)
    # scores are stored for consistent allocations: one per channel
    assert {g: len(v) for g, v in table.scores.items()} == table.group_channels


def test_row_matches_a_physically_pruned_model(table, model, bundle):
    """Re-do one row by hand: l1 scores, prune the group alone, BN re-estimation, evaluate, count MACs."""
    graph = ChannelGraph(model, EX)
    scores = score_groups(graph, "l1")
    row = table.curve(table.groups[1])[1]
    removal = graph.plan({row.group: row.ratio}, scores)
    pruned = graph.prune_channels(removal)
    assert table.base_macs - count_macs(pruned, EX) == row.macs_saved
    recalibrate_bn(pruned, bundle, batches=1, batch_size=32)
    ev = evaluate(pruned, bundle.val, batch_size=256)
    assert (ev.accuracy, ev.loss) == pytest.approx((row.acc, row.loss))
    # the drops are measured against the unpruned model with the same BN re-estimation, not its stored statistics
    import copy

    ref = evaluate(recalibrate_bn(copy.deepcopy(model), bundle, batches=1, batch_size=32), bundle.val, batch_size=256)
    assert (ref.accuracy, ref.loss) == pytest.approx((table.reference_accuracy, table.reference_loss))
    assert ref.loss != pytest.approx(table.base_loss)  # re-estimation does move the loss: the reference matters
    assert row.d_loss == pytest.approx(row.loss - ref.loss)


def test_cache_hit_skips_evaluation(model, bundle, tmp_path, monkeypatch):
    kw = dict(ratios=(0.5,), bn_batches=1, bn_batch_size=32, progress=False, cache_dir=tmp_path, groups=["8"])
    first = sensitivity(model, bundle, **kw)
    assert not first.from_cache and first.key
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == [f"{first.key}.json"]  # atomic write: no temp file left behind

    def boom(*a, **k):
        raise AssertionError("a cache hit must not evaluate anything")

    monkeypatch.setattr(sensitivity_mod, "evaluate", boom)
    second = sensitivity(model, bundle, **kw)
    assert second.from_cache and second.to_dict() == first.to_dict()
    # the other metric reads the same measurement: every row holds both damages
    by_loss = sensitivity(model, bundle, metric="loss", **kw)
    assert by_loss.from_cache and by_loss.metric == "loss" and len(list(tmp_path.iterdir())) == 1
    assert [(r.acc, r.loss) for r in by_loss.rows] == [(r.acc, r.loss) for r in first.rows]
    assert [r.damage_per_mac for r in by_loss.rows] == [r.d_loss / r.macs_saved for r in first.rows]
    assert by_loss.with_metric("accuracy").to_dict() == first.to_dict()
    monkeypatch.undo()

    # any input that changes the result misses the cache
    assert not sensitivity(model, bundle, **{**kw, "ratios": (0.25,)}).from_cache
    assert not sensitivity(model, bundle, **{**kw, "bn_batches": 2}).from_cache
    assert not sensitivity(model, bundle, criterion="l2", **kw).from_cache
    other = tiny_cnn()
    with torch.no_grad():
        other[0].weight[0, 0, 0, 0] += 1.0
    assert not sensitivity(other, bundle, **kw).from_cache
    assert sensitivity(model, bundle, refresh=True, **kw).from_cache is False


def test_default_cache_dir_follows_env(model, bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOPRUNE_CACHE", str(tmp_path / "env"))
    assert sensitivity_cache_dir() == tmp_path / "env" / "sensitivity"
    kw = dict(ratios=(0.5,), bn_batches=0, progress=False, groups=["8"])
    t = sensitivity(model, bundle, **kw)
    assert (tmp_path / "env" / "sensitivity" / f"{t.key}.json").exists()
    assert sensitivity(model, bundle, **kw).from_cache
    assert not sensitivity(model, bundle, cache_dir=False, **kw).from_cache


def test_save_load_plot_and_text(table, tmp_path):
    p = table.save(tmp_path / "t.json")
    back = SensitivityTable.load(p)
    assert back.to_dict() == table.to_dict() and back.rows == table.rows
    assert SensitivityTable.from_dict(table.to_dict()).rows == table.rows
    png = table.plot(tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = str(table)
    assert all(g in text for g in table.groups) and "base acc" in text
    assert len(table.format_rows().splitlines()) == len(table.rows) + 1


def test_loss_metric_eval_subset_and_group_filter(model, bundle):
    t = sensitivity(model, bundle, ratios=(0.5,), metric="loss", eval_batches=1, batch_size=16, bn_batches=0,
                    progress=False, cache_dir=False, groups=["4"])
    assert t.eval_n == 16 and t.groups == ["4"]
    (r,) = t.rows
    assert math.isclose(r.damage_per_mac, r.d_loss / r.macs_saved)
    with pytest.raises(ValueError, match="not prunable groups"):
        sensitivity(model, bundle, groups=["nope"], progress=False, cache_dir=False)
    with pytest.raises(ValueError, match="ratios"):
        sensitivity(model, bundle, ratios=(0.0, 1.0), progress=False, cache_dir=False)
    with pytest.raises(ValueError, match="metric"):
        sensitivity(model, bundle, metric="f1", progress=False, cache_dir=False)


def test_bn_augment_reestimates_on_augmented_batches(model, bundle, tmp_path):
    import copy

    first = ChannelGraph(model, EX).prunable_groups[0].name
    kw = dict(ratios=(0.5,), bn_batches=1, bn_batch_size=32, progress=False, groups=[first])
    plain = sensitivity(model, bundle, cache_dir=tmp_path, **kw)
    aug = sensitivity(model, bundle, cache_dir=tmp_path, bn_augment=True, **kw)
    assert not aug.from_cache and aug.key != plain.key  # its own cache entry
    ref = evaluate(recalibrate_bn(copy.deepcopy(model), bundle, batches=1, batch_size=32, augment=True), bundle.val,
                   batch_size=256)
    assert (aug.reference_accuracy, aug.reference_loss) == pytest.approx((ref.accuracy, ref.loss))
    assert aug.reference_loss != pytest.approx(plain.reference_loss)
    assert sensitivity(model, bundle, cache_dir=tmp_path, bn_augment=True, **kw).from_cache
