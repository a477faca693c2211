"""The open rule table and the bug classes of issue 11: registered rules for custom layers, layers with new rules
(ConvTranspose, PixelShuffle, Conv1d/3d, GroupNorm, layer scale, channel LayerNorm opt-in), modules called at several
call sites, custom autograd Functions and constant shapes."""
import io

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import autoprune as ap
from autoprune.graph.analysis import slab_layout
from autoprune.graph.rules import Dense, PerChannel, register_channel_rule

from engine_checks import check_model, randomise_norms


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _cbr(cin, cout, k=3, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class Pool(nn.Module):
    def __init__(self, c, n=3):
        super().__init__()
        self.fc = nn.Linear(c, n)

    def forward(self, x):
        return self.fc(x.flatten(2).mean(2))


# -- a rule registered for a custom layer ----------------------------------------------------------------------

class MyConv(nn.Module):
    """A conv written by hand (its own parameters, F.conv2d in forward): fx would inline it without a rule."""

    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.2)
        self.shift = nn.Parameter(torch.randn(cout) * 0.1)
        self.cin, self.cout = cin, cout

    def forward(self, x):
        return F.conv2d(x, self.weight, self.shift, padding=1)


class MyScale(nn.Module):
    """A per-channel scale with statistics kept in its own buffer."""

    def __init__(self, c):
        super().__init__()
        self.alpha = nn.Parameter(torch.rand(c) + 0.5)
        self.register_buffer("centre", torch.randn(c) * 0.1)
        self.channels = c

    def forward(self, x):
        return (x - self.centre[:, None, None]) * self.alpha[:, None, None]


def test_registered_rule_prunes_through_a_custom_layer():
    model = nn.Sequential(_cbr(3, 8), MyConv(8, 12), MyScale(12), nn.ReLU(), _cbr(12, 6), Pool(6)).eval()
    register_channel_rule(MyConv, Dense(bias="shift", in_count="cin", out_count="cout"))
    register_channel_rule(MyScale, PerChannel(params=("alpha", "centre"), counts=("channels",)))
    graph, _ = check_model(model, _x(2, 3, 8, 8))
    assert graph.group("1").prunable and graph.group("1").channels == 12
    p = graph.prune({"1": 0.5, "0.0": 0.5})
    assert p.get_submodule("1").weight.shape == (6, 4, 3, 3) and p.get_submodule("1").cout == 6
    assert p.get_submodule("2").alpha.shape == (6,) and p.get_submodule("2").channels == 6
    assert ap.ChannelGraph(model, _x(2, 3, 8, 8)).gm.graph.find_nodes(op="call_module", target="1")  # a leaf


def test_register_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown rule preset"):
        register_channel_rule(MyScale, "scale")
    with pytest.raises(TypeError, match="cannot register"):
        register_channel_rule(42, "elementwise")


def test_batchnorm_subclasses_use_the_norm_rule():
    class KeepsForward(nn.BatchNorm2d):
        pass

    class OwnForward(nn.BatchNorm2d):  # re-implements forward with F.batch_norm on its own attributes
        def forward(self, x):
            return F.relu(F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0,
                                       self.eps))

    model = nn.Sequential(nn.Conv2d(3, 8, 3), KeepsForward(8), nn.Conv2d(8, 8, 3), OwnForward(8), Pool(8)).eval()
    randomise_norms(model)
    graph, _ = check_model(model, _x(2, 3, 10, 10))
    assert graph.group("0").prunable and graph.group("2").prunable
    p = graph.prune({"2": 0.5})
    assert p.get_submodule("3").weight.shape == (4,) and p.get_submodule("3").running_var.shape == (4,)


# -- layers with built-in rules --------------------------------------------------------------------------------

def test_conv_transpose_including_grouped():
    model = nn.Sequential(_cbr(3, 8), nn.ConvTranspose2d(8, 8, 2, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.ConvTranspose2d(8, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 4, 1), Pool(4)).eval()
    randomise_norms(model)
    graph, drop = check_model(model, _x(2, 3, 6, 6), min_drop=0.15)
    assert graph.group("1").prunable and graph.group("1").channels == 4  # grouped transposed conv: whole groups


def test_conv_transpose_1d_and_3d():
    m1 = nn.Sequential(nn.Conv1d(3, 8, 3), nn.BatchNorm1d(8), nn.ReLU(), nn.ConvTranspose1d(8, 6, 3),
                       nn.BatchNorm1d(6), Pool(6)).eval()
    m3 = nn.Sequential(nn.Conv3d(3, 8, 3), nn.BatchNorm3d(8), nn.ReLU(), nn.ConvTranspose3d(8, 6, 2),
                       nn.BatchNorm3d(6), Pool(6)).eval()
    for m, x in ((m1, _x(2, 3, 12)), (m3, _x(2, 3, 5, 5, 5))):
        randomise_norms(m)
        check_model(m, x, min_drop=0.15)


def test_pixel_shuffle_and_unshuffle_move_channel_blocks():
    model = nn.Sequential(_cbr(3, 16), nn.Conv2d(16, 32, 1), nn.PixelShuffle(2), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.PixelUnshuffle(2), nn.Conv2d(32, 6, 1), Pool(6)).eval()
    randomise_norms(model)
    graph, _ = check_model(model, _x(2, 3, 4, 4), min_drop=0.15)
    assert graph.group("1").channels == 8  # blocks of r² = 4 conv outputs


def test_groupnorm_prunes_whole_groups_and_single_group_locks():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.GroupNorm(1, 8),
                          Pool(8)).eval()
    with torch.no_grad():
        for gn in (model[1], model[4]):
            gn.weight.uniform_(0.5, 1.5)
            gn.bias.normal_()
    graph, _ = check_model(model, _x(2, 3, 10, 10))
    assert graph.group("0").channels == 4  # four groups of two channels
    assert not graph.group("3").prunable and "single group" in graph.group("3").reason
    p = graph.prune({"0": 0.5})
    assert p.get_submodule("1").num_groups == 2 and p.get_submodule("1").weight.shape == (4,)


def test_layer_scale_parameter_is_cut_with_its_channels():
    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = _cbr(c, c)
            self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
            self.beta = nn.Parameter(torch.rand(c) + 0.5)

        def forward(self, x):
            return x + self.gamma * self.conv(x) * self.beta.reshape(1, -1, 1, 1)

    model = nn.Sequential(_cbr(3, 8), Block(8), Block(8), Pool(8)).eval()
    randomise_norms(model)
    graph, _ = check_model(model, _x(2, 3, 8, 8))
    stream = graph.group("0.0")
    assert stream.prunable
    p = graph.prune({"0.0": 0.5})
    assert p.get_submodule("1").gamma.shape == (4, 1, 1) and p.get_submodule("2").beta.shape == (4,)


def test_channel_layernorm_is_locked_unless_asked_for_and_then_noted():
    class LN2d(nn.LayerNorm):  # ConvNeXt-style channels-first LayerNorm
        def forward(self, x):
            return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                                self.eps).permute(0, 3, 1, 2)

    model = nn.Sequential(nn.Conv2d(3, 8, 3), LN2d(8), nn.Conv2d(8, 8, 1), nn.GELU(), nn.Conv2d(8, 4, 1),
                          Pool(4)).eval()
    g = ap.ChannelGraph(model, _x(2, 3, 6, 6))
    assert not g.group("0").prunable and "approximate=True" in g.group("0").reason
    assert not g.group("0").approximate
    ga = ap.ChannelGraph(model, _x(2, 3, 6, 6), approximate=True)
    assert ga.group("0").prunable and "renormalises" in ga.group("0").approximate[0]
    assert not ga.group("2").approximate  # groups that do not touch the LayerNorm are exact
    p = ga.prune({"0": 0.5})
    assert p.get_submodule("1").weight.shape == (4,)
    assert p(_x(2, 3, 6, 6)).shape == (2, 3)


# -- modules called at several call sites -----------------------------------------------------------------------

def test_shared_head_over_two_feature_maps_gets_one_selection():
    class FPNHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.p3, self.p4 = _cbr(3, 8), _cbr(3, 8, k=1)
            self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 1))

        def forward(self, x):
            a = self.p3(x)
            b = self.p4(F.max_pool2d(x, 2))
            return self.head(a).flatten(2), self.head(b).flatten(2)  # the same convs on two levels

    model = FPNHead().eval()
    randomise_norms(model)
    graph, _ = check_model(model, _x(2, 3, 8, 8))
    # the head's input channels tie the two levels together; its hidden channels form one group
    assert "p4.0" in graph.group("p3.0").modules or graph.group("p3.0").name == graph.group("p4.0").name
    assert graph.group("head.0").channels == 8


def test_block_with_split_sizes_called_at_two_sites():
    """A block that splits its conv's output by fixed sizes, applied to two feature maps: the split sizes are rewritten
    for the one selection both call sites share, so both calls keep computing what the original did."""
    class SplitBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 12, 1, bias=False)
            self.bn = nn.BatchNorm2d(12)

        def forward(self, x):
            a, b = torch.split(self.bn(self.conv(x)), [4, 8], dim=1)
            return torch.cat([a.relu(), b.sigmoid()], dim=1)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.s1, self.s2 = _cbr(3, 8), _cbr(3, 8, k=1)
            self.block = SplitBlock()
            self.head = nn.Conv2d(12, 5, 1)

        def forward(self, x):
            return self.head(self.block(self.s1(x)) + self.block(self.s2(x)))

    model = Twice().eval()
    randomise_norms(model)
    graph, removed = check_model(model, _x(2, 3, 8, 8))
    assert removed > 0.15
    pruned = graph.prune(0.5, criterion="l1")
    splits = [n for n in pruned.graph.nodes if n.target in (torch.split, "split")]
    assert len(splits) == 2  # one split per call site, each rewritten
    sizes = [tuple(n.args[1]) if len(n.args) > 1 else tuple(n.kwargs["split_size_or_sections"]) for n in splits]
    assert sizes[0] == sizes[1] and sum(sizes[0]) == pruned.block.conv.out_channels < 12


def test_batchnorm_applied_to_two_branches():
    class TwoBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 1)
            self.bn = nn.BatchNorm2d(8)
            self.fc = Pool(16)

        def forward(self, x):
            return self.fc(torch.cat([F.relu(self.bn(self.a(x))), F.relu(self.bn(self.b(x)))], 1))

    model = TwoBranch().eval()
    randomise_norms(model)
    graph, _ = check_model(model, _x(2, 3, 6, 6))
    assert "b" in [m.module for m in graph.group("a").members]  # one selection serves both call sites


# -- custom autograd Functions ---------------------------------------------------------------------------------

class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx, grad):
        return grad * 3.0  # a custom backward the traced forward (round) would not give


class Quantised(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = _cbr(3, 8), _cbr(8, 6)
        self.fc = Pool(6)

    def forward(self, x):
        return self.fc(self.b(RoundSTE.apply(self.a(x))))


def _input_grad(model, x):
    x = x.clone().requires_grad_(True)
    model(x).sum().backward()
    return x.grad


def test_custom_autograd_function_keeps_its_backward():
    model = Quantised().eval()
    x = _x(2, 3, 8, 8)
    g = ap.ChannelGraph(model, x)
    assert "RoundSTE" in g.group("a.0").reason and not g.group("a.0").prunable  # no rule: locked, named
    p0 = g.prune(0.0)
    assert torch.allclose(_input_grad(p0, x), _input_grad(model, x))
    assert _input_grad(p0, x).abs().sum() > 0  # round's own gradient would be zero
    # with a rule (it is element-wise), it prunes through, and the pruned model still calls the Function
    register_channel_rule(RoundSTE, "elementwise")
    g = ap.ChannelGraph(model, x)
    assert g.group("a.0").prunable
    p = g.prune({"a.0": 0.5})
    assert any(getattr(n.target, "_autoprune_function", None) is RoundSTE for n in p.graph.nodes)
    assert _input_grad(p, x).abs().sum() > 0
    # the pruned model pickles: the call is importable by name
    buf = io.BytesIO()
    torch.save(p, buf)
    buf.seek(0)
    q = torch.load(buf, weights_only=False)
    assert torch.allclose(_input_grad(q, x), _input_grad(p, x))


# -- constant shapes --------------------------------------------------------------------------------------------

def test_constant_reshape_is_rewritten_to_the_kept_sizes():
    class Hard(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = _cbr(3, 64), _cbr(3, 8)
            self.fc, self.c = nn.Linear(64, 2), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            n = x.shape[0]
            y = self.a(x).reshape(n, 16, 4, -1).amax(3).flatten(1)  # 16 and 4 written as constants
            z = self.b(x)
            z = z.view(z.size(0), 2, -1, z.size(2), z.size(3)).transpose(1, 2).flatten(1, 2)  # a shuffle
            return torch.cat([self.fc(y), self.c(z).mean((2, 3))], 1)

    x = _x(2, 3, 6, 6)
    g, _ = check_model(Hard().eval(), x)  # exact, and the cost model agrees with fvcore
    # the split 64 -> (16, 4) forces units of 16 channels (one column of the 4); removing one writes 3 into the call
    a = g.group("a.0")
    assert a.prunable and a.channels == 4
    p = g.prune_channels({"a.0": [1]})
    assert ".reshape(getitem, 16, 3, -1)" in p.code
    assert p.fc.in_features == 48
    assert g.group("b.0").prunable  # the shuffle's constant 2 (groups) is unchanged by pruning


def test_sizes_computed_with_the_batch_follow_pruning_at_any_batch():
    """MobileViT's unfold/fold: the channels merged with the batch and the patch rows (``B * C * nh``), sizes read off
    the tensor and multiplied in the code. They prune exactly, and the pruned model runs at batch sizes other than
    the example's (the sizes are never written as constants); a computed size that would not follow by itself (here
    ``B * 8``, the channel count written in the code) is scaled at run time."""
    class Unfold(nn.Module):
        def __init__(self, c=8, d=12):
            super().__init__()
            self.kxk, self.c1 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, d, 1)
            self.fc1, self.fc2 = nn.Linear(d, 16), nn.Linear(16, d)
            self.proj, self.fuse = nn.Conv2d(d, c, 1), nn.Conv2d(2 * c, c, 3, padding=1)

        def forward(self, x):
            shortcut, x = x, self.c1(self.kxk(x))
            B, C, H, W = x.shape
            nh, nw = H // 2, W // 2
            x = x.reshape(B * C * nh, 2, nw, 2).transpose(1, 2)
            x = x.reshape(B, C, nh * nw, 4).transpose(1, 3).reshape(B * 4, nh * nw, -1)
            x = x + self.fc2(torch.relu(self.fc1(x)))
            x = x.contiguous().view(B, 4, nh * nw, -1).transpose(1, 3).reshape(B * C * nh, nw, 2, 2)
            x = self.proj(x.transpose(1, 2).reshape(B, C, nh * 2, nw * 2))
            return self.fuse(torch.cat((shortcut, x), 1))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.block, self.head = nn.Conv2d(3, 8, 3, padding=1), Unfold(), nn.Linear(8, 10)

        def forward(self, x):
            y = self.block(self.stem(x))
            B, _, H, W = y.shape
            y = y.reshape(B * 8, 1, H, W).relu()  # 8 written in the code: B * 8 does not follow by itself
            return self.head(y.reshape(B, 8, H, W).mean((2, 3)))

    torch.manual_seed(0)
    for batch in (1, 2):
        g, _ = check_model(Net().eval(), _x(batch, 3, 8, 8))
    assert {"block.kxk", "block.c1", "block.fc1", "block.proj"} <= {q.name for q in g.prunable_groups}
    pruned = g.prune_channels({"block.c1": [0, 3, 5], "block.proj": [1], "block.fuse": [2, 4]})
    with torch.no_grad():
        assert pruned(_x(5, 3, 8, 8)).shape == (5, 10)
    assert pruned.block.c1.out_channels == 9 and pruned.head.in_features == 6


def test_slab_layouts_are_what_a_constant_shape_can_follow():
    # every channel set whole slices along one axis: any removal leaves a rectangle
    assert slab_layout(np.array([[0, 1, 2], [0, 1, 2]]))
    assert slab_layout(np.array([[0, 0, 0], [1, 1, 1]]))
    assert slab_layout(np.array([5, 5, 6]))
    # a diagonal, or a set covering an L shape, would leave ragged rows
    assert not slab_layout(np.array([[0, 1], [1, 0]]))
    assert not slab_layout(np.array([[0, 0], [0, 1]]))


def test_embedding_into_a_conv1d_stem():
    class TextCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.conv = nn.Sequential(nn.Conv1d(8, 12, 3), nn.BatchNorm1d(12), nn.ReLU())
            self.fc = nn.Linear(12, 2)

        def forward(self, tokens):
            return self.fc(self.conv(self.emb(tokens).transpose(1, 2)).amax(2))

    model = TextCNN().eval()
    randomise_norms(model)
    tokens = torch.randint(0, 20, (2, 10), generator=torch.Generator().manual_seed(0))
    graph, _ = check_model(model, tokens, min_drop=0.15)
    assert graph.group("emb").prunable and graph.group("emb").channels == 8
    p = graph.prune({"emb": 0.5})
    assert p.get_submodule("emb").weight.shape == (20, 4) and p.get_submodule("conv.0").in_channels == 4


@pytest.mark.parametrize("kind", ["retinanet", "fcos"])
def test_torchvision_detection_heads_shared_across_levels(kind):
    """The issue's real case: torchvision's RetinaNet/FCOS heads apply the same convs (and GroupNorms) to every
    FPN level. Pruned, they must compute exactly what the original computes on the kept channels."""
    from torchvision.models.detection.fcos import FCOSHead
    from torchvision.models.detection.retinanet import RetinaNetHead

    c = 16 if kind == "retinanet" else 64
    head = RetinaNetHead(c, 3, 5) if kind == "retinanet" else FCOSHead(c, 3, 5, num_convs=2)

    class TwoLevels(nn.Module):
        def __init__(self):
            super().__init__()
            self.p3 = nn.Conv2d(3, c, 3, padding=1)
            self.p4 = nn.Conv2d(3, c, 3, stride=2, padding=1)
            self.head = head

        def forward(self, x):
            return self.head([self.p3(x), self.p4(x)])

    model = TwoLevels().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    graph, _ = check_model(model, _x(2, 3, 16, 16), min_drop=0.15)
    assert "p4" in [m.module for m in graph.group("p3").members]  # both levels feed the shared head: one selection


def test_pruned_model_shares_no_tensor_with_the_graph():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = _cbr(3, 8), nn.Sequential(_cbr(8, 6), _cbr(6, 8))
            self.gamma = nn.Parameter(torch.ones(8, 1, 1))
            self.fc = Pool(8)

        def forward(self, x):
            y = self.a(x)
            return self.fc(y + self.gamma * self.b(y))

    g = ap.ChannelGraph(Scaled().eval(), _x(2, 3, 6, 6))
    p = g.prune({"b.0.0": 0.5})  # the stream (and gamma) is not cut
    ours = {id(t) for t in list(g.gm.parameters()) + list(g.gm.buffers())}
    assert not any(id(t) in ours for t in list(p.parameters()) + list(p.buffers()))


def test_reshape_as_ties_the_tensor_it_takes_its_shape_from():
    """LeViT's LinearNorm: ``bn(linear(x).flatten(0, 1)).reshape_as(linear(x))``: prunable, exact; a reshape_as whose
    shape tensor holds other channels ties them to the output's (the size then follows: both lose the same ones)."""
    class LinearNorm(nn.Module):
        def __init__(self, a, b):
            super().__init__()
            self.linear, self.bn = nn.Linear(a, b), nn.BatchNorm1d(b)

        def forward(self, x):
            y = self.linear(x)
            return self.bn(y.flatten(0, 1)).reshape_as(y)

    class Tokens(nn.Module):
        def __init__(self, mismatch=False):
            super().__init__()
            self.embed, self.mismatch = nn.Conv2d(3, 8, 2, 2), mismatch
            self.a, self.b, self.head = LinearNorm(8, 16), LinearNorm(16, 8), nn.Linear(8, 2)
            self.c = nn.Linear(8, 16)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            h = torch.relu(self.a(t))
            if self.mismatch:
                h = h.reshape_as(self.c(t))
            return self.head((t + self.b(h)).mean(1))

    x = _x(2, 3, 6, 6)
    model = Tokens().eval()
    randomise_norms(model)
    graph, _ = check_model(model, x)
    assert graph.group("a.linear").prunable
    other = Tokens(mismatch=True).eval()
    randomise_norms(other)
    graph, _ = check_model(other, x)
    assert "c" in graph.group("a.linear").modules


def test_a_registered_traced_forward_opens_a_block_fx_cannot_follow():
    """A block whose forward branches on its input's size cannot be traced; registered with a traced forward it is
    traced through it (its widths prune, exactly) where that forward reproduces the block on the example input,
    and stays whole (locked, with the reason) where it does not."""
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(8, 12, 1), nn.Conv2d(12, 8, 1)

        def forward(self, x):
            if x.shape[-1] % 2:  # fx cannot follow a branch on a size
                x = F.pad(x, (0, 1))
            return self.b(torch.relu(self.a(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.block, self.head = nn.Conv2d(3, 8, 3, padding=1), Branchy(), nn.Linear(8, 4)

        def forward(self, x):
            return self.head(self.block(self.stem(x)).mean((2, 3)))

    with pytest.raises(ap.TraceError):
        ap.ChannelGraph(Net().eval(), _x(1, 3, 6, 6))
    with pytest.raises(TypeError, match="nn.Module subclass"):
        ap.register_traced_forward("Branchy", lambda m, x: x)
    ap.register_traced_forward(Branchy, lambda m, x: m.b(torch.relu(m.a(x))))  # for even widths
    g, _ = check_model(Net().eval(), _x(2, 3, 6, 6))
    assert g.group("block.a").prunable
    g = ap.ChannelGraph(Net().eval(), _x(1, 3, 5, 5))  # odd: the forward does not reproduce it, so it stays whole
    assert [q.name for q in g.groups] == ["stem", "head"]  # the block's own layers are inside the leaf
    assert not g.group("stem").prunable and "type Branchy has no channel rule" in g.group("stem").reason


def test_a_traced_forward_must_hold_at_every_call_of_its_block():
    """One traced forward stands in for every call of a module: a block called twice, whose forward reproduces it at
    the first call's size only, stays whole."""
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(8, 8, 1)

        def forward(self, x):
            if x.shape[-1] % 2:
                x = F.pad(x, (0, 1, 0, 1))
            return self.a(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.block, self.head = nn.Conv2d(3, 8, 3, padding=1), Twice(), nn.Linear(8, 4)

        def forward(self, x):
            y = self.block(self.stem(x))                      # 6x6: the forward holds
            return self.head(self.block(y[..., :5, :5]).mean((2, 3)))  # 5x5: it does not

    ap.register_traced_forward(Twice, lambda m, x: m.a(x))
    g = ap.ChannelGraph(Net().eval(), _x(1, 3, 6, 6))
    assert [q.name for q in g.groups] == ["stem", "head"]
    assert "type Twice has no channel rule" in g.group("stem").reason
