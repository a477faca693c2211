"""The shared ResNet-56 checkpoint loads into the package's model and reproduces its published accuracy."""
import os
import subprocess
import sys

import pytest
import torch

import autoprune as ap
from autoprune.data import load_data
from autoprune.train import evaluate

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
CKPT = os.path.join(SHARED, "models", "resnet56-cifar10jpeg.pt")
EXTRACT = os.path.join(SHARED, "data", "cifar10_jpeg.py")

pytestmark = pytest.mark.skipif(not os.path.exists(CKPT), reason="../shared is not beside the checkout")


@pytest.mark.slow
def test_resnet56_cifar10_jpeg_accuracy(tmp_path):
    # the whole test split, and a token train split (load_data expects both folders)
    subprocess.run([sys.executable, EXTRACT, "--out", str(tmp_path), "--split", "test"], check=True)
    subprocess.run([sys.executable, EXTRACT, "--out", str(tmp_path), "--split", "train", "--limit-per-class", "2"],
                   check=True)
    model = ap.get_model("resnet56")
    model.load_state_dict(torch.load(CKPT, weights_only=True))
    assert ap.count_macs(model, torch.zeros(1, 3, 32, 32)) == 125_485_696
    data = load_data("imagefolder", tmp_path, cache_dir=tmp_path / "cache", device="cpu")
    assert len(data.test) == 10_000
    acc = evaluate(model, data, split="test").accuracy
    assert round(acc * 100, 2) == 90.17, acc
