"""The engine on the model zoo: every model prunes, keeps its output shape, loses MACs (>= 15% at ratio 0.3), is
exact at ratio 0, cuts exactly the channels it says it cuts (channels whose outgoing weights were zeroed leave outputs
unchanged), and the cost model equals fvcore's count before and after pruning (see engine_checks.check_model)."""
import pytest
import torch

from autoprune.models import get_model

from engine_checks import check_model, randomise_norms

CIFAR = ["resnet20", "resnet56", "vgg16_bn_cifar"]
TORCHVISION = [
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small", "mnasnet1_0",
    "efficientnet_b0", "regnet_x_400mf", "regnet_y_400mf", "densenet121", "googlenet", "inception_v3",
    "shufflenet_v2_x1_0", "squeezenet1_1", "vgg11_bn", "convnext_tiny",
]


def _inputs(name: str) -> torch.Tensor:
    size = 32 if name in CIFAR else (75 if name == "inception_v3" else 64)
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", CIFAR + TORCHVISION)
def test_zoo(name):
    torch.manual_seed(0)
    model = get_model(name).eval()
    randomise_norms(model)
    graph, drop = check_model(model, _inputs(name), min_drop=0.15)
    assert graph.macs_exact
