"""The sensitivity table measured from shared prefixes (autoprune.allocation.shared_prefix) equals the table measured
with every pruned model run whole: same accuracies, same losses, on a residual CNN, a ViT (heads and head widths: the
pruned graph gains nodes) and models it must measure the plain way."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import autoprune as ap
from autoprune.allocation.sensitivity_analysis import sensitivity
from autoprune.allocation.shared_prefix import SharedPrefix, first_change
from autoprune.data import load_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_data("synthetic", cache_dir=tmp_path_factory.mktemp("data"), device="cpu", image_size=16,
                     train_per_class=8, test_per_class=4, val_fraction=0.5)


@pytest.fixture(scope="module")
def data32(tmp_path_factory):
    return load_data("synthetic", cache_dir=tmp_path_factory.mktemp("data32"), device="cpu", image_size=32,
                     train_per_class=4, test_per_class=4, val_fraction=0.5)


def both(model, data, **kw):
    """The table with and without shared prefixes, and how many variants the shared path measured whole."""
    kw = {"ratios": (0.3, 0.6), "bn_batches": 2, "bn_batch_size": 16, "batch_size": 16, "eval_batches": 2,
          "progress": False, "cache_dir": False, **kw}
    plain = sensitivity(model, data, reuse_prefix=False, **kw)
    counts = []
    real = SharedPrefix.measure

    def counting(self, variant, measure):
        before = self.plain
        out = real(self, variant, measure)
        counts.append(self.plain - before)
        return out

    SharedPrefix.measure = counting
    try:
        shared = sensitivity(model, data, reuse_prefix=True, **kw)
    finally:
        SharedPrefix.measure = real
    return plain, shared, counts


def rows(table):
    return [(r.group, r.ratio, r.channels_removed, r.acc, r.loss) for r in table.rows]


def trained(model, data):
    """A few steps of training, so that pruning moves accuracy (a table of constant rows would prove nothing)."""
    ap.finetune(model, data, epochs=1, max_batches=4, batch_size=16, lr=0.05, progress=False, seed=0)
    return model.eval()


GROUPS = ["conv1", "layer1.0.conv1", "layer2.0.conv1", "layer2.2.conv1", "layer3.2.conv1"]


@pytest.fixture(scope="module")
def resnet(data):
    torch.manual_seed(0)
    return trained(ap.get_model("resnet20"), data)


def test_resnet_table_equals_the_whole_model_table(resnet, data):
    plain, shared, counts = both(resnet, data, groups=GROUPS)
    assert rows(shared) == rows(plain)
    assert (shared.reference_accuracy, shared.reference_loss) == (plain.reference_accuracy, plain.reference_loss)
    assert len({r.loss for r in plain.rows}) > 5  # the rows differ from each other: the comparison has teeth
    # every variant from its prefix, but those of the stem's group: they differ from the first layer on
    assert counts[:2] == [1, 1] and len(counts) == 2 * len(GROUPS) and sum(counts[2:]) == 0


def test_vit_heads_table_equals_the_whole_model_table(data32):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, patch_size=8,
                              depth=2, embed_dim=48, num_heads=3).eval()
    plain, shared, counts = both(model, data32, bn_batches=0)
    assert rows(shared) == rows(plain)
    assert sum(1 for c in counts if c == 0) > len(counts) // 2  # most variants from their prefix


class SharedNorm(nn.Module):
    """One BatchNorm layer called before and after the prunable convs: its statistics mix both calls, so a variant
    cannot take them from the reference; it must be measured whole."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(12)
        self.b = nn.Conv2d(12, 8, 3, padding=1, bias=False)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.norm(self.stem(x)))
        x = self.b(torch.relu(self.bn_a(self.a(x))))
        x = torch.relu(self.norm(x))
        return self.head(x.mean((2, 3)))


def test_a_variant_it_cannot_split_is_measured_whole_with_the_same_result(data):
    torch.manual_seed(0)
    model = trained(SharedNorm(), data)
    plain, shared, counts = both(model, data)
    assert rows(shared) == rows(plain)
    assert sum(counts) >= 1  # the group of `a` starts after the first call of `norm`, before the second


def test_over_the_memory_cap_every_variant_is_measured_whole(resnet, data, monkeypatch):
    import autoprune.allocation.shared_prefix as sp

    model = resnet
    monkeypatch.setattr(sp, "DEFAULT_MAX_BYTES", 0)
    plain, shared, counts = both(model, data, groups=GROUPS[1:3])
    assert rows(shared) == rows(plain) and len(counts) == 4 and all(c == 1 for c in counts)


def test_first_change_is_where_the_pruned_group_starts():
    torch.manual_seed(0)
    model = ap.get_model("resnet20").eval()
    graph = ap.ChannelGraph(model, torch.zeros(1, 3, 16, 16))
    ref = graph.analysis.gm
    n = len(list(ref.graph.nodes))
    starts = {name: first_change(ref, graph.prune_channels({name: [0]}))
              for name in ("conv1", "layer1.0.conv1", "layer3.2.conv1")}
    # the stem's group (the stage-1 residual stream) starts at the stem; a block's inner width at its block
    assert 0 < starts["conv1"] < starts["layer1.0.conv1"] < starts["layer3.2.conv1"] < n
    # nothing removed: the variant is the reference all the way
    assert first_change(ref, graph.prune_channels({})) == n


def test_frontier_over_the_cap_is_dropped_and_the_variant_measured_whole(resnet, data):
    """Inputs within the cap, every frontier over it: the variant is measured whole (same result), and after two such
    frontiers the shared path stops trying."""
    from autoprune.allocation.shared_prefix import _nbytes
    from autoprune.train import evaluate, recalibrate_bn
    from autoprune.train.evaluation import bn_inputs

    graph = ap.ChannelGraph(resnet, torch.zeros(1, 3, 16, 16))
    bn = {"batches": 2, "batch_size": 16}
    ref = recalibrate_bn(copy.deepcopy(graph.analysis.gm), data, **bn)
    xs, batches = list(bn_inputs(data, **bn)), list(data.val.batches(16))
    cap = sum(_nbytes(x) for x in xs) + sum(_nbytes(b) for b in batches)
    shared = SharedPrefix(ref, xs, batches, device="cpu", amp=False, max_bytes=cap)

    def whole(m):
        return evaluate(recalibrate_bn(m, data, **bn), data.val, batch_size=16)

    for name in ("layer2.2.conv1", "layer3.2.conv1"):
        variant = graph.prune_channels({name: [0, 1, 2]})
        got = shared.measure(variant, whole)
        assert got == whole(graph.prune_channels({name: [0, 1, 2]}))
    assert shared.plain == 2 and shared.failures == 2 and shared.pos == 0
