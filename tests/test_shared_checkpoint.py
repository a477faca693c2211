"""The shared ResNet-56 checkpoint loads into the package's model and reproduces its published accuracy."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import autoprune as ap
from autoprune.data import default_cache_dir, load_data
from autoprune.train import evaluate

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
CKPT = os.path.join(SHARED, "models", "resnet56-cifar10jpeg.pt")
EXTRACT = os.path.join(SHARED, "data", "cifar10_jpeg.py")

pytestmark = pytest.mark.skipif(not os.path.exists(CKPT), reason="../shared is not beside the checkout")


def _extracted() -> str:
    """The test split (and a token train split: load_data expects both folders), extracted once into the user cache and
    renamed into place when complete, so later runs neither extract nor decode again (load_data caches the tensors)."""
    root = default_cache_dir() / "tests" / "cifar10-jpeg-test"
    if not root.exists():
        tmp = root.with_name(root.name + f".partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([sys.executable, EXTRACT, "--out", str(tmp), "--split", "test"], check=True)
        subprocess.run([sys.executable, EXTRACT, "--out", str(tmp), "--split", "train", "--limit-per-class", "2"],
                       check=True)
        try:
            tmp.rename(root)
        except OSError:  # another run finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return str(root)


@pytest.mark.slow
def test_resnet56_cifar10_jpeg_accuracy():
    model = ap.get_model("resnet56")
    model.load_state_dict(torch.load(CKPT, weights_only=True))
    assert ap.count_macs(model, torch.zeros(1, 3, 32, 32)) == 125_485_696
    data = load_data("imagefolder", _extracted(), device="cpu")
    assert len(data.test) == 10_000
    acc = evaluate(model, data, split="test").accuracy
    assert round(acc * 100, 2) == 90.17, acc
