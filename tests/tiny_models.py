"""Tiny models of the tests: ``TINYNET``, the source the search tests write beside their configs (``model.name:
"tinynet:build"``), and :func:`tiny_cnn`, a seeded three-block CNN for 32x32 inputs."""
import torch
import torch.nn as nn

TINYNET = '''
import torch.nn as nn


def build(num_classes=10, width=8):
    w = width
    return nn.Sequential(
        nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, num_classes))
'''


def tiny_cnn(num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Three conv-BN-ReLU blocks (8, 16, 16 channels) and a linear head, in eval mode, weights seeded by ``seed``
    (also a config builder: ``model.name: "tiny_models:tiny_cnn"``)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    ).eval()
