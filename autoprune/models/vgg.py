"""The CIFAR VGG-16-BN used by HRank and EZCrop (13 conv layers, a 512-512-classes head with BatchNorm1d)."""
from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn
from torch import Tensor

__all__ = ["CifarVGG", "vgg16_bn"]

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class CifarVGG(nn.Module):
    def __init__(self, cfg: list = VGG16_CFG, num_classes: int = 10, hidden: int = 512) -> None:
        super().__init__()
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        in_ch, i = 3, 0
        for v in cfg:
            if v == "M":
                layers[f"pool{i}"] = nn.MaxPool2d(2, 2)
                continue
            layers[f"conv{i}"] = nn.Conv2d(in_ch, v, 3, padding=1)
            layers[f"norm{i}"] = nn.BatchNorm2d(v)
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            in_ch, i = v, i + 1
        self.features = nn.Sequential(layers)
        self.pool = nn.AvgPool2d(2)
        self.classifier = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(in_ch, hidden)),
            ("norm1", nn.BatchNorm1d(hidden)),
            ("relu1", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, num_classes)),
        ]))

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x))
        return self.classifier(x.view(x.size(0), -1))


def vgg16_bn(num_classes: int = 10) -> CifarVGG:
    return CifarVGG(VGG16_CFG, num_classes)
