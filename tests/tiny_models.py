"""Source of the tiny model the search tests write beside their configs (``model.name: "tinynet:build"``): three
conv-BN-ReLU blocks, cheap enough to pretrain in a second."""

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
