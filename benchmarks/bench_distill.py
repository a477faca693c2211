#!/usr/bin/env python3
"""Distillation from the unpruned model vs labels only, on the shared ResNet-56 / CIFAR-10-JPEG.

    python benchmarks/bench_distill.py [--data DIR] [--device cpu|cuda] [--macs 0.5] [--allocation uniform]
        [--criterion l1] [--finetune-epochs 1] [--finetune-batches N] [--alphas 0,0.5,0.9] [--temperature 4]
        [--lr 0.01] [--batch-size 128] [--val-size N] [--test-size N] [--threads N] [--out FILE.md]

One allocation at ``--macs`` (fraction of MACs kept; ``uniform`` needs no data, ``sensitivity`` computes or loads the
cached table of benchmarks/bench_sensitivity.py), one pruned model, one BatchNorm re-estimation; then, from copies of
that same model, the same fine-tuning budget (``--finetune-epochs`` x ``--finetune-batches``, same seed, same data
order and augmentation) with the label loss only (alpha 0) and with distillation from the unpruned model for each
other ``--alphas`` value. Reported: val and test accuracy (val = a seeded half of the test images, test = the other
half: the checkpoint was trained on all of train), fine-tuning seconds and images/s (the teacher's forward is the
cost of distillation). Not a test; prints and writes markdown (+ .json beside it).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from autoprune.allocation import allocate  # noqa: E402
from autoprune.data import load_data  # noqa: E402
from autoprune.models import resnet56  # noqa: E402
from autoprune.criteria.scoring import score_groups  # noqa: E402
from autoprune.allocation.sensitivity_analysis import cpu_graph, sensitivity  # noqa: E402
from autoprune.train import evaluate, finetune, recalibrate_bn  # noqa: E402

from bench_sensitivity import WEIGHTS, ensure_data, machine, subset  # noqa: E402


def load_shared(args: argparse.Namespace) -> tuple:
    """The shared CIFAR-10-JPEG (val and test: halves of the test images, optionally subsampled) and ResNet-56 on
    ``args.device``; also used by bench_repetitive.py. Returns (data, model, example input, device)."""
    root = Path(args.data).expanduser()
    ensure_data(root)
    dev = torch.device(args.device)
    data = load_data("imagefolder", root, device=dev, val_from="test", val_fraction=0.5)
    data = dataclasses.replace(data, val=subset(data.val, args.val_size), test=subset(data.test, args.test_size))
    model = resnet56()
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.to(dev).eval()
    print(f"{data}\nmachine: {machine()}", file=sys.stderr)
    return data, model, torch.zeros(1, 3, 32, 32, device=dev), dev


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/cifar10-jpeg"))
    ap.add_argument("--weights", default=str(WEIGHTS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--macs", type=float, default=0.5, help="fraction of MACs to keep")
    ap.add_argument("--allocation", default="uniform", choices=["uniform", "sensitivity", "srr"])
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune-batches", type=int, default=None, help="cap batches per epoch (reduced scale)")
    ap.add_argument("--alphas", default="0,0.5,0.9", help="distillation weights to compare (0 = labels only)")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--bn-batches", type=int, default=5)
    ap.add_argument("--val-size", type=int, default=None, help="val images (default: all 5,000)")
    ap.add_argument("--test-size", type=int, default=None, help="test images (default: all 5,000)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="write a markdown report here (and .json beside it)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    data, model, ex, dev = load_shared(args)

    graph = cpu_graph(model, ex)
    if args.allocation == "sensitivity":
        # the options of benchmarks/bench_sensitivity.py --bn-batches 5 --eval-batches 8: one cached table
        table = sensitivity(model, data, criterion=args.criterion, example_inputs=ex, graph=graph, bn_batches=5,
                            eval_batches=8, batch_size=256, progress=False)
        scores = {g: torch.tensor(v, dtype=torch.float64) for g, v in table.scores.items()}
        alloc = allocate(table, macs=args.macs, method="sensitivity", graph=graph, scores=scores)
    else:
        scores = score_groups(graph, args.criterion, data=data, seed=0)
        alloc = allocate(graph, macs=args.macs, method=args.allocation, graph=graph, scores=scores)
    pruned = graph.prune_channels(alloc.remove).to(dev)
    recalibrate_bn(pruned, data, batches=args.bn_batches, seed=0)
    base_val = evaluate(model, data).accuracy
    base_test = evaluate(model, data, split="test").accuracy
    before = evaluate(pruned, data).accuracy
    print(f"base val {base_val:.2%} test {base_test:.2%}; pruned to {alloc.macs / alloc.base_macs:.1%} MACs, "
          f"after BN re-estimation val {before:.2%}", file=sys.stderr)

    rows = []
    for alpha in [float(a) for a in args.alphas.split(",")]:
        student = copy.deepcopy(pruned)
        kw = dict(epochs=args.finetune_epochs, max_batches=args.finetune_batches, lr=args.lr,
                  batch_size=args.batch_size, seed=0, progress=False)
        if alpha > 0:
            kw.update(teacher=model, distill={"alpha": alpha, "temperature": args.temperature})
        res = finetune(student, data, **kw)
        row = {"alpha": alpha, "temperature": args.temperature if alpha > 0 else None,
               "val": evaluate(student, data).accuracy, "test": evaluate(student, data, split="test").accuracy,
               "finetune_s": res.seconds, "images": res.images, "images_per_s": res.images_per_s,
               "final_loss": res.final_loss}
        rows.append(row)
        print(f"alpha {alpha:4.2f}: val {row['val']:.2%} test {row['test']:.2%} "
              f"({res.images} images, {res.seconds:.0f} s, {res.images_per_s:.0f} img/s)", flush=True)

    cmd = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    info = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine(), "command": cmd, "macs_fraction": alloc.macs / alloc.base_macs,
            "allocation": args.allocation, "criterion": args.criterion, "base_val": base_val, "base_test": base_test,
            "pruned_bn_val": before, "val_images": len(data.val), "test_images": len(data.test), "rows": rows,
            "seconds": time.perf_counter() - t_start}
    lines = [f"Distillation vs labels only: ResNet-56 / CIFAR-10-JPEG at {info['macs_fraction']:.1%} MACs "
             f"({args.allocation} allocation, {args.criterion} criterion), one pruned model, same fine-tuning budget",
             "", f"- date: {info['date']}", f"- machine: {info['machine']}", f"- command: `{cmd}`",
             f"- unpruned: val {base_val:.2%}, test {base_test:.2%} ({len(data.val)} val / {len(data.test)} test "
             f"images); pruned + BN re-estimation: val {before:.2%}", "",
             "| loss | val | test | fine-tuning images | seconds | images/s |", "|---|---|---|---|---|---|"]
    for r in rows:
        name = "labels only" if r["alpha"] == 0 else f"distill alpha {r['alpha']:g}, T {r['temperature']:g}"
        lines.append(f"| {name} | {r['val']:.2%} | {r['test']:.2%} | {r['images']:,} | {r['finetune_s']:.0f} | "
                     f"{r['images_per_s']:.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
