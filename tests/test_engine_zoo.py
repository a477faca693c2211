"""The engine on the model zoo: every model prunes, keeps its output shape, loses MACs, is exact at ratio 0, and
cuts exactly the channels it says it cuts (channels whose outgoing weights were zeroed leave outputs unchanged)."""
import copy

import numpy as np
import pytest
import torch

from autoprune import ChannelGraph, count_macs
from autoprune.models import get_model

CIFAR = ["resnet20", "resnet56", "vgg16_bn_cifar"]
TORCHVISION = [
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small", "mnasnet1_0",
    "efficientnet_b0", "regnet_x_400mf", "regnet_y_400mf", "densenet121", "googlenet", "inception_v3",
    "shufflenet_v2_x1_0", "squeezenet1_1", "vgg11_bn", "convnext_tiny",
]


def _inputs(name: str) -> torch.Tensor:
    size = 32 if name in CIFAR else (75 if name == "inception_v3" else 64)
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def _randomise_bn(model: torch.nn.Module) -> None:
    # Fresh BN layers are identities; random statistics make the check sensitive to which channels are cut.
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    for name, p in model.named_parameters():
        if name.endswith("layer_scale"):  # ConvNeXt starts its branches at 1e-6: make them matter
            p.data.fill_(1.0)


@pytest.mark.parametrize("name", CIFAR + TORCHVISION)
def test_zoo(name):
    torch.manual_seed(0)
    model = get_model(name).eval()
    _randomise_bn(model)
    x = _inputs(name)
    with torch.no_grad():
        ref = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = ChannelGraph(model, x)
    assert graph.prunable_groups, f"{name}: no prunable group"

    # 30% of every prunable group: runs, same output shape, fewer MACs; the original is untouched.
    pruned = graph.prune(0.3, criterion="l1")
    with torch.no_grad():
        out = pruned(x)
    assert out.shape == ref.shape
    assert count_macs(pruned, x) < count_macs(model, x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    # ratio 0 reproduces the original outputs
    with torch.no_grad():
        assert torch.allclose(graph.prune(0.0)(x), ref, atol=1e-5, rtol=1e-5)

    # Zero the weights that read 30% of each group's channels (chosen at random), then cut those channels:
    # outputs must not move. Cutting any other channel would change them.
    rng = np.random.default_rng(0)
    remove = {}
    for g in graph.prunable_groups:
        k = int(0.3 * g.channels)
        if k:
            remove[g.name] = sorted(rng.choice(g.channels, size=k, replace=False).tolist())
    dead = copy.deepcopy(model)
    mods = dict(dead.named_modules())
    for module, dim, idx in graph.consumer_slices(remove):
        w = mods[module].weight.data
        w.index_fill_(dim, torch.tensor(idx), 0.0)
    dead_graph = ChannelGraph(dead, x)
    with torch.no_grad():
        want = dead(x)
        got = dead_graph.prune_channels(remove)(x)
    scale = want.abs().max().item() + 1e-6
    assert torch.allclose(got, want, atol=1e-4 * scale, rtol=1e-4), (got - want).abs().max()
    # and cutting channels that were NOT zeroed does change the outputs (the check has teeth)
    other = {n: [i for i in range(graph.group(n).channels) if i not in idx][: len(idx)] for n, idx in remove.items()}
    with torch.no_grad():
        moved = dead_graph.prune_channels(other)(x)
    assert not torch.allclose(moved, want, atol=1e-4 * scale, rtol=1e-4)
