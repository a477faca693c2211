"""The engine on timm's CNN families (pretrained=False, 32 px inputs, the smallest variants): every model prunes,
keeps its output shapes, loses >= 15% of its MACs at ratio 0.3, is exact at ratio 0, cuts exactly the channels it
says it cuts, and the cost model equals fvcore's count before and after pruning (see engine_checks.check_model)."""
import warnings

import pytest
import torch

from engine_checks import check_model, randomise_norms

timm = pytest.importorskip("timm")

# family -> smallest variants; (name, input size)
TIMM = [
    ("resnet10t", 32), ("resnet18d", 32),                                          # ResNet-D / tiered stems
    ("resnext26ts", 32), ("legacy_seresnet18", 32), ("ecaresnet26t", 32),         # ResNeXt / SE / ECA
    ("regnetx_002", 32), ("regnety_002", 32),                                      # RegNet
    ("tf_efficientnet_lite0", 32), ("mobilenetv3_small_050", 32), ("mixnet_s", 32),  # EfficientNet family
    ("tinynet_e", 32), ("lcnet_050", 32), ("mnasnet_small", 32), ("mobilenetv4_conv_small_035", 32),
    ("ghostnet_050", 32), ("repghostnet_050", 32),                                 # GhostNet
    ("rexnet_100", 32), ("dpn48b", 32), ("densenet121", 32), ("dla46_c", 32),      # RexNet, DPN, DenseNet, DLA
    ("hrnet_w18_small", 32), ("cs3darknet_s", 32), ("darknet17", 32),             # HRNet, CSP, Darknet
    ("ese_vovnet19b_slim_dw", 32), ("repvgg_a0", 32), ("gernet_s", 32),           # VoVNet, RepVGG, GENet
    ("skresnet18", 32), ("resnest14d", 32),                                        # SKNet, ResNeSt
    ("convnext_atto", 32), ("edgenext_xx_small", 32),                              # ConvNeXt, EdgeNeXt
]

# Models whose MACs the conv/linear cost model cannot all see: ChannelGraph.macs() counts on the pruned model
# instead (and warns). EdgeNeXt's transposed attention multiplies feature maps (matmul), outside any layer.
COUNTED = {"edgenext_xx_small"}


@pytest.mark.parametrize("name,size", TIMM, ids=[n for n, _ in TIMM])
def test_timm_model(name, size):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    randomise_norms(model)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph, drop = check_model(model, x, min_drop=0.15, count_original=False)
    assert graph.macs_exact == (name not in COUNTED)
    locked = {g.reason for g in graph.groups if not g.prunable} - {"model output"}
    if locked:  # each remaining lock is a true channel-mixing op (printed with -s)
        print(f"{name}: {drop:.1%} of MACs removed; locks: " + "; ".join(sorted(locked)[:5]))


def test_timm_norm_act_layers_and_frozen_norms():
    """timm's norm+act layers are per-channel statistics then an element-wise tail (kept as leaves); frozen
    norms (timm.utils.freeze_batch_norm_2d) keep their statistics in buffers; GroupNormAct removes whole groups."""
    from timm.layers import BatchNormAct2d, GroupNormAct
    from timm.utils.model import freeze_batch_norm_2d

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), BatchNormAct2d(8, act_layer=torch.nn.SiLU), torch.nn.Conv2d(8, 8, 3),
        GroupNormAct(8, num_groups=4), torch.nn.Conv2d(8, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3)).eval()
    randomise_norms(model)
    with torch.no_grad():
        model[3].weight.uniform_(0.5, 1.5)
        model[3].bias.normal_()
    x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    graph, _ = check_model(model, x)
    assert graph.group("0").prunable and graph.group("2").channels == 4  # GroupNormAct: 4 groups of 2
    frozen = freeze_batch_norm_2d(model)
    assert "Frozen" in type(frozen[1]).__name__ and "Frozen" in type(frozen[5]).__name__
    graph, _ = check_model(frozen, x)
    assert graph.group("0").prunable and graph.group("4").prunable
    assert "Frozen" in type(graph.gm.get_submodule("1")).__name__  # kept as a leaf, cut as one


def test_timm_blur_pool_fixed_filter():
    """BlurPool2d: a fixed depthwise filter per channel (its buffer is sliced when it has one row per channel); the
    cost model counts its MACs as fvcore does."""
    from timm.layers import BlurPool2d

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), BlurPool2d(8, stride=2),
        torch.nn.Conv2d(8, 8, 3), torch.nn.BatchNorm2d(8), BlurPool2d(None, stride=1), torch.nn.Conv2d(8, 4, 1),
        torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 3, 3)).eval()
    randomise_norms(model)
    graph, _ = check_model(model, torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0)))
    assert graph.macs_exact and graph.group("0").prunable and graph.group("4").prunable
    p = graph.prune({"0": 0.5})
    assert p.get_submodule("3").filt.shape[0] == 4 and p.get_submodule("3").channels == 4


def test_convnext_with_the_approximate_channel_layernorm():
    """Opt-in: ConvNeXt's channel LayerNorms are pruned too (about 50% of MACs instead of 26%); every group whose
    channels pass through one says so, and the model still runs with its output shape."""
    from autoprune import ChannelGraph, count_macs

    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    exact, approx = ChannelGraph(model, x), ChannelGraph(model, x, approximate=True)
    assert not exact.group("stem.0").prunable and not exact.group("stem.0").approximate
    assert approx.group("stem.0").prunable and "LayerNorm2d" in approx.group("stem.0").approximate[0]
    assert any(g.prunable and not g.approximate for g in approx.groups)  # the MLP hidden widths stay exact
    pruned = approx.prune(0.3)
    assert pruned(x).shape == (1, 10)
    assert count_macs(pruned, x) < 0.6 * count_macs(model, x) < count_macs(exact.prune(0.3), x)
