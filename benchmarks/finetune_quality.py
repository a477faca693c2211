#!/usr/bin/env python3
"""Quality check of the fine-tuning loop: one epoch of ``autoprune.finetune`` on the shared ResNet-56 (CIFAR-10-JPEG
train split, crop+flip, SGD nesterov, cosine) must keep test accuracy at or above 89.5% (unpruned: 90.17%).

    python benchmarks/finetune_quality.py [--data DIR] [--device cpu|cuda] [--lr 0.002] [--out FILE.md]

Not a test (an epoch takes minutes on a CPU). Prints a markdown line with the machine and date.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import autoprune as ap  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.path.expanduser("~/.cache/cifar10-jpeg"))
    p.add_argument("--device", default=None)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if not os.path.isdir(os.path.join(a.data, "test")):
        subprocess.run([sys.executable, str(SHARED / "data" / "cifar10_jpeg.py"), "--out", a.data], check=True)
    model = ap.get_model("resnet56")
    model.load_state_dict(torch.load(SHARED / "models" / "resnet56-cifar10jpeg.pt", weights_only=True))
    data = ap.load_data("imagefolder", a.data, val_fraction=0.0, device=a.device)
    before = ap.evaluate(model, data, split="test").accuracy
    t = time.time()
    res = ap.finetune(model, data, epochs=a.epochs, lr=a.lr, seed=0, progress=False)
    after = ap.evaluate(model, data, split="test").accuracy
    line = (f"| {datetime.date.today()} | {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'} | {a.epochs} epoch, "
            f"lr {a.lr}, {len(data.train)} images | {before:.2%} | {after:.2%} | {res.images_per_s:.0f} img/s, "
            f"{time.time() - t:.0f} s |")
    print("| date | machine | fine-tune | test acc before | test acc after | speed |")
    print("|---|---|---|---|---|---|")
    print(line)
    if a.out:
        with open(a.out, "a") as f:
            f.write(line + "\n")
    print("PASS" if after >= 0.895 else "FAIL: below 89.5%")


if __name__ == "__main__":
    main()
