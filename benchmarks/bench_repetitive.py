#!/usr/bin/env python3
"""Repetitive pruning (k prune -> fine-tune steps) vs one-shot, at the same allocation and total fine-tuning.

    python benchmarks/bench_repetitive.py [--data DIR] [--device cpu|cuda] [--macs 0.5] [--allocation uniform]
        [--criterion l1] [--steps 1,2,4] [--finetune-epochs 1] [--finetune-batches N] [--distill]
        [--lr 0.01] [--batch-size 128] [--val-size N] [--test-size N] [--threads N] [--out FILE.md]

Each ``--steps`` value runs :func:`autoprune.prune_to_budget` on the shared ResNet-56 / CIFAR-10-JPEG (val = a seeded
half of the test images, test = the other half) with the same allocation method at ``--macs`` (so the same channel
counts per group), the same criterion and the same total fine-tuning budget (``--finetune-epochs`` x
``--finetune-batches``; k steps get ``1/k`` of it each); ``steps=1`` is one-shot pruning. Reported: MACs, val and
test accuracy, fine-tuning images, seconds. Not a test; prints and writes markdown (+ .json beside it).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from autoprune.allocation.budget import prune_to_budget  # noqa: E402

from bench_distill import WEIGHTS, load_shared, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/cifar10-jpeg"))
    ap.add_argument("--weights", default=str(WEIGHTS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--macs", type=float, default=0.5)
    ap.add_argument("--allocation", default="uniform", choices=["uniform", "sensitivity", "srr"])
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--steps", default="1,2,4", help="comma-separated step counts (1 = one-shot)")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune-batches", type=int, default=None)
    ap.add_argument("--distill", action="store_true", help="fine-tune with distillation from the unpruned model")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--bn-batches", type=int, default=5)
    ap.add_argument("--val-size", type=int, default=None)
    ap.add_argument("--test-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    data, model, ex, dev = load_shared(args)

    rows = []
    for k in [int(s) for s in args.steps.split(",")]:
        t = time.perf_counter()
        res = prune_to_budget(model, data, macs=args.macs, criterion=args.criterion, allocation=args.allocation,
                              finetune_epochs=args.finetune_epochs, example_inputs=ex, seed=0, steps=k,
                              finetune_kwargs={"lr": args.lr, "batch_size": args.batch_size,
                                               "max_batches": args.finetune_batches},
                              bn_batches=args.bn_batches, evaluate_test=True, progress=False,
                              distill=True if args.distill else None,
                              sensitivity_kwargs={"bn_batches": 5, "eval_batches": 8, "batch_size": 256})
        images = sum(s.images for s in res.prune_steps) if res.prune_steps else res.finetune.images
        row = {"steps": k, "macs_fraction": res.macs / res.base_macs, "val": res.accuracy, "test": res.test_accuracy,
               "images": images, "seconds": time.perf_counter() - t,
               "per_step": [s.to_dict() for s in res.prune_steps]}
        rows.append(row)
        print(f"steps {k}: MACs {row['macs_fraction']:.2%} val {row['val']:.2%} test {row['test']:.2%} "
              f"({images} images, {row['seconds']:.0f} s)", flush=True)

    cmd = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Repetitive vs one-shot pruning: ResNet-56 / CIFAR-10-JPEG, {args.allocation} allocation at "
             f"{args.macs:.0%} MACs, {args.criterion}, same total fine-tuning"
             + (" (distillation)" if args.distill else ""), "", f"- date: {date}", f"- machine: {machine()}",
             f"- command: `{cmd}`", f"- {len(data.val)} val / {len(data.test)} test images", "",
             "| steps | MACs | val | test | fine-tuning images | seconds |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['steps']}{' (one-shot)' if r['steps'] == 1 else ''} | {r['macs_fraction']:.2%} | "
                     f"{r['val']:.2%} | {r['test']:.2%} | {r['images']:,} | {r['seconds']:.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(
            {"date": date, "machine": machine(), "command": cmd, "rows": rows,
             "seconds": time.perf_counter() - t_start}, indent=2) + "\n")


if __name__ == "__main__":
    main()
