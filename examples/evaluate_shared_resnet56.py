"""Load the shared ResNet-56 checkpoint into the package's model and evaluate it on CIFAR-10-JPEG.

    python examples/evaluate_shared_resnet56.py [--root DIR] [--device cpu|cuda]

Extracts ../shared/data/cifar10-jpeg.npz as an ImageFolder tree if DIR does not exist yet (3 s), counts MACs
(expect 125,485,696) and prints the test-split accuracy (expect 90.17%).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch

import autoprune as ap
from autoprune.data import load_data
from autoprune.train import evaluate

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=os.path.expanduser("~/.cache/autoprune/cifar10-jpeg"))
    p.add_argument("--shared", default=SHARED, help="the shared folder (data/ and models/)")
    p.add_argument("--device", default=None)
    a = p.parse_args()
    if not os.path.isdir(os.path.join(a.root, "test")):
        subprocess.run([sys.executable, os.path.join(a.shared, "data", "cifar10_jpeg.py"), "--out", a.root], check=True)
    model = ap.get_model("resnet56")
    model.load_state_dict(torch.load(os.path.join(a.shared, "models", "resnet56-cifar10jpeg.pt"), weights_only=True))
    print("MACs (conv + linear):", ap.count_macs(model, torch.zeros(1, 3, 32, 32)))
    data = load_data("imagefolder", a.root, device=a.device)
    print(f"test accuracy: {evaluate(model, data, split='test').accuracy:.2%}")


if __name__ == "__main__":
    main()
