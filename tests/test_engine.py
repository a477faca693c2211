"""Engine behaviour on small hand-written models: coupling rules, locks with reasons, clear errors."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import autoprune as ap
from autoprune.deploy.files import load, save
from autoprune.models import ShortcutA


class ConvBN(nn.Sequential):
    def __init__(self, cin, cout, groups=1):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Head(nn.Module):
    def __init__(self, body, c, n=5):
        super().__init__()
        self.body, self.fc = body, nn.Linear(c, n)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


def _x(c=3, s=8):
    return torch.randn(2, c, s, s, generator=torch.Generator().manual_seed(0))


def test_chain_groups_and_exact_cut():
    model = Head(nn.Sequential(ConvBN(3, 8), ConvBN(8, 6)), 6).eval()
    g = ap.ChannelGraph(model, _x())
    names = {gr.name: gr for gr in g.groups}
    assert names["body.0.0"].channels == 8 and names["body.0.0"].prunable
    assert not names["fc"].prunable and names["fc"].reason == "model output"
    assert set(names["body.0.0"].modules) == {"body.0.0", "body.0.1", "body.1.0"}
    pruned = g.prune({"body.0.0": 0.5})
    assert pruned.get_submodule("body.0.0").out_channels == 4 and pruned.get_submodule("body.1.0").in_channels == 4
    assert pruned.get_submodule("body.0.1").num_features == 4
    assert model.body[0][0].out_channels == 8  # original untouched


def test_residual_add_couples_producers():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = ConvBN(3, 8), ConvBN(8, 8), ConvBN(8, 8)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            y = self.a(x)
            y = y + self.b(y)
            y = y + self.c(y)
            return self.fc(y.mean((2, 3)))

    g = ap.ChannelGraph(Res().eval(), _x())
    stream = g.group("a.0")
    assert stream.channels == 8 and {"a.0", "b.0", "c.0"} <= set(stream.modules)
    assert sorted(m.module for m in stream.members) == ["a.0", "b.0", "c.0"]
    p = g.prune(0.5)
    assert all(p.get_submodule(f"{k}.0").out_channels == 4 for k in "abc")


def test_option_a_shortcut_groups():
    g = ap.ChannelGraph(ap.get_model("resnet20").eval(), _x(s=32))
    prunable = g.prunable_groups
    # 9 block-internal groups + 3 residual streams: stage 1 (16), the zero channels stage 2 adds (16), stage 3's (32)
    assert len(prunable) == 12
    streams = {gr.name: gr for gr in prunable if gr.name.endswith("conv2") or gr.name == "conv1"}
    assert {k: v.channels for k, v in streams.items()} == {"conv1": 16, "layer2.0.conv2": 16, "layer3.0.conv2": 32}
    assert "layer2.0.shortcut:pad" in [m.module or f"{m.node}" for m in streams["layer2.0.conv2"].members] or any(
        m.kind == "pad" for m in streams["layer2.0.conv2"].members)
    p = g.prune(0.5)
    pads = [n for n in p.graph.nodes if n.target is F.pad]
    assert len(pads) == 2 and all(sum(n.args[1]) > 0 for n in pads)
    assert p(_x(s=32)).shape == (2, 10)


def test_grouped_conv_prunes_whole_groups():
    model = Head(nn.Sequential(ConvBN(3, 8), ConvBN(8, 8, groups=4), ConvBN(8, 6)), 6).eval()
    g = ap.ChannelGraph(model, _x())
    grp = g.group("body.0.0")
    assert grp.channels == 4  # four groups of two channels each
    p = g.prune({"body.0.0": 0.5})
    dw = p.get_submodule("body.1.0")
    assert dw.groups == 2 and dw.in_channels == 4 and p.get_submodule("body.0.0").out_channels == 4


def test_unknown_op_locks_with_reason():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = ConvBN(3, 8), ConvBN(8, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = torch.fft.fft2(self.a(x)).real  # no channel rule for this op
            return self.fc(self.b(y).mean((2, 3)))

    g = ap.ChannelGraph(Odd().eval(), _x())
    a = g.group("a.0")
    assert not a.prunable and "fft2" in a.reason
    assert g.group("b.0").prunable
    with pytest.raises(ValueError, match="locked"):
        g.prune({"a.0": 0.5})


def test_channel_mixing_reduction_and_layernorm_lock():
    class Mix(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = ConvBN(3, 8), ConvBN(3, 8)
            self.ln = nn.LayerNorm(8)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            attn = self.a(x).mean(1, keepdim=True)  # mean over channels: every channel matters
            y = self.b(x) * attn
            return self.fc(self.ln(y.mean((2, 3))))

    g = ap.ChannelGraph(Mix().eval(), _x())
    assert "reduction over the channel dim" in g.group("a.0").reason
    assert "LayerNorm" in g.group("b.0").reason


def test_bad_ratios_and_names():
    g = ap.ChannelGraph(Head(ConvBN(3, 8), 8).eval(), _x())
    for bad in (1.0, -0.1, float("nan"), "0.3"):
        with pytest.raises((ValueError, TypeError)):
            g.prune(bad)
    with pytest.raises(KeyError, match="did you mean"):
        g.prune({"body.00": 0.3})
    with pytest.raises(ValueError, match="out of range"):
        g.prune_channels({"body.0": [99]})


def test_untraceable_model_names_the_line():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = ConvBN(3, 4)

        def forward(self, x):
            if x.sum() > 0:  # control flow on a tensor value
                return self.a(x)
            return x

    with pytest.raises(ap.TraceError, match="test_engine.py:[0-9]+"):
        ap.ChannelGraph(Branchy(), _x())


def test_constant_shape_is_rewritten_not_silently_wrong():
    class Hard(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = ConvBN(3, 8)
            self.fc = nn.Linear(8 * 4 * 4, 2)

        def forward(self, x):
            return self.fc(F.adaptive_avg_pool2d(self.a(x), 4).view(-1, 128))  # 128 written as a constant

    model = Hard().eval()
    g = ap.ChannelGraph(model, _x())
    a = g.group("a.0")
    assert a.prunable
    p = g.prune({"a.0": 0.5})
    assert p.fc.in_features == 64 and "view(-1, 64)" in p.code
    dead = Hard().eval()
    dead.load_state_dict(model.state_dict())
    for module, dim, idx in g.consumer_slices(g.removal_for({"a.0": 0.5})):
        dead.get_submodule(module).weight.data.index_fill_(dim, torch.tensor(idx), 0.0)
    with torch.no_grad():
        assert torch.allclose(p(_x()), dead(_x()), atol=1e-5)
        assert p(torch.randn(3, 3, 8, 8)).shape == (3, 2)  # the batch dim (-1) still follows the input


def test_shared_module_is_cut_consistently():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = ConvBN(3, 8), ConvBN(8, 8)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            y = self.a(x)
            return self.fc(self.b(self.b(y)).mean((2, 3)))

    g = ap.ChannelGraph(Twice().eval(), _x())
    p = g.prune(0.5)
    assert p(_x()).shape == (2, 2)


def test_macs_cost_model_matches_fvcore():
    model = ap.get_model("resnet20").eval()
    g = ap.ChannelGraph(model, _x(s=32))
    assert g.macs() == ap.count_macs(model, _x(s=32)) == 40_551_040
    remove = g.removal_for(0.3)
    assert g.macs(remove) == ap.count_macs(g.prune_channels(remove), _x(s=32))
    assert g.macs(remove, params=True) < g.macs(params=True)


def test_save_load_roundtrip_without_pickled_code(tmp_path):
    model = ap.get_model("resnet20").eval()
    x = _x(s=32)
    p = ap.ChannelGraph(ap.ChannelGraph(model, x).prune(0.4), x).prune(0.2)  # two pruning steps
    save(p, tmp_path / "m.pt")
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    assert raw["arch"]["name"] == "resnet20" and len(raw["steps"]) == 2
    q = load(tmp_path / "m.pt")
    assert torch.allclose(q(x), p(x), atol=1e-6)
    with pytest.raises(ValueError, match="pass model="):
        custom = ap.ChannelGraph(Head(ConvBN(3, 8), 8).eval(), _x()).prune(0.5)
        save(custom, tmp_path / "c.pt")
        load(tmp_path / "c.pt")


def test_shared_resnet56_macs():
    model = ap.get_model("resnet56")
    assert ap.count_macs(model, torch.zeros(1, 3, 32, 32)) == 125_485_696
    assert ap.count_macs(model, torch.zeros(1, 3, 32, 32), full=True) > 125_485_696


def test_channel_slices_and_splits_are_rewritten():
    class Slicer(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = ConvBN(3, 12)
            self.b, self.c, self.d = ConvBN(4, 6), ConvBN(5, 6), ConvBN(3, 6)
            self.fc = nn.Linear(18, 2)

        def forward(self, x):
            y = self.a(x)
            p, q = torch.split(y[:, :9], [4, 5], dim=1)  # slice, then split with explicit sizes
            r = y[:, 9:]
            z = torch.cat([self.b(p), self.c(q), self.d(r)], 1)
            return self.fc(z.mean((2, 3)))

    model = Slicer().eval()
    g = ap.ChannelGraph(model, _x())
    remove = {"a.0": [0, 5, 10]}  # one channel from each part
    dead = Slicer().eval()
    dead.load_state_dict(model.state_dict())
    mods = dict(dead.named_modules())
    for module, dim, idx in g.consumer_slices(remove):
        mods[module].weight.data.index_fill_(dim, torch.tensor(idx), 0.0)
    p = ap.ChannelGraph(dead, _x()).prune_channels(remove)
    assert [p.get_submodule(k).in_channels for k in ("b.0", "c.0", "d.0")] == [3, 4, 2]
    with torch.no_grad():
        assert torch.allclose(p(_x()), dead(_x()), atol=1e-5)
