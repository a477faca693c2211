#!/usr/bin/env python3
"""Sensitivity analysis cost and allocation comparison on the shared ResNet-56 / CIFAR-10-JPEG.

    python benchmarks/bench_sensitivity.py [--data DIR] [--device cpu|cuda] [--val-size N] [--test-size N]
        [--criterion l1] [--bn-batches 5] [--macs 0.5] [--finetune-epochs 1] [--finetune-batches N]
        [--methods sensitivity,uniform,srr,hrank,hrank-scaled] [--out FILE.md]

(a) times the full sensitivity analysis (every prunable group x the 9 ratios 0.1..0.9, BN re-estimated on
    ``--bn-batches`` training batches, evaluated on ``--val-size`` val images), computed fresh (cache refreshed),
    then times the cached re-run;
(b) compares allocations at ``--macs`` (fraction of MACs kept) with the same criterion and the same short
    fine-tune (SGD nesterov, lr ``--lr``, cosine, ``--finetune-epochs`` x ``--finetune-batches``):
    - sensitivity (methods.md §3, the table of (a));
    - uniform (one ratio everywhere, plus at most one channel per group to land on the budget);
    - srr (structural redundancy, methods.md §4, unverified constants);
    - hrank: HRank's hand-set 55-entry ResNet-56 rates mapped onto our groups (see ``hrank_ratios``), as is;
    - hrank-scaled: the same rates multiplied by one factor, bisected so the MACs hit ``--macs``.
    Reported: MACs/params of the physically pruned model (fvcore), val accuracy after pruning + BN re-estimation
    (no fine-tuning), val and test accuracy after fine-tuning.

Data: ``--data`` must hold the ImageFolder tree of CIFAR-10-JPEG (train/ and test/); it is extracted from
../shared/data when missing (``--limit-per-class`` extracts a slice). Not a test; prints and writes markdown.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from autoprune import ChannelGraph  # noqa: E402
from autoprune.allocation.budget import prune_to_budget  # noqa: E402
from autoprune.data import load_data  # noqa: E402
from autoprune.models import resnet56  # noqa: E402
from autoprune.allocation.sensitivity_analysis import cpu_graph, sensitivity  # noqa: E402
from autoprune.allocation.sensitivity_table import DEFAULT_RATIOS  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "models" / "resnet56-cifar10jpeg.pt"
EXTRACT = SHARED / "data" / "cifar10_jpeg.py"

#: HRank's hand-set per-conv rates for ResNet-56 (methods.md §1), in the order of the 55 convs:
#: conv1, then layer{1,2,3}.{0..8}.conv1 / .conv2.
HRANK_RESNET56 = ([0.1] + [0.60] * 35 + [0.0] * 2 + [0.6] * 6 + [0.4] * 3 + [0.1] + [0.4] + [0.1] + [0.4] + [0.1]
                  + [0.4] + [0.1] + [0.4])
assert len(HRANK_RESNET56) == 55


def hrank_conv_rates() -> dict[str, float]:
    """{conv module name: HRank rate}."""
    names = ["conv1"] + [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in range(9) for c in (1, 2)]
    return dict(zip(names, HRANK_RESNET56))


def hrank_ratios(graph: ChannelGraph, scale: float = 1.0) -> dict[str, float]:
    """HRank's rates mapped onto our channel groups.

    - a block's internal group (``layerS.B.conv1``: conv1's outputs, read only by conv2) gets the rate HRank gave
      that conv1;
    - a residual-stream group (``conv1``, ``layer2.0.conv2``, ``layer3.0.conv2``: channels shared by the stem /
      every conv2 of the stages they pass through, coupled across stages by the option-A zero padding) gets the
      **mean** of the rates HRank gave the convs that produce it (its member convs). HRank itself pruned each conv2's
      outputs with masks and never removed a channel from the residual stream, so no exact equivalent exists.
    ``scale`` multiplies every rate (capped at 0.95).
    """
    rates = hrank_conv_rates()
    out = {}
    for g in graph.prunable_groups:
        convs = [m.module for m in g.members if m.module in rates]
        if not convs:
            continue
        r = sum(rates[c] for c in convs) / len(convs)
        out[g.name] = min(0.95, r * scale)
    return out


def hrank_scaled(graph: ChannelGraph, scores: dict, target_macs: int) -> tuple[dict[str, float], float]:
    """Bisect one factor on HRank's mapped rates so that the MACs are just <= target."""
    macs_at = lambda k: graph.macs(graph.plan(hrank_ratios(graph, k), scores))  # noqa: E731
    lo, hi = 0.0, 0.95 / min(v for v in hrank_ratios(graph).values() if v > 0)  # hi: every group at 0.95
    if macs_at(hi) > target_macs:
        raise ValueError("HRank's rate pattern cannot reach the MAC target even scaled up to 0.95")
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if macs_at(mid) <= target_macs:
            hi = mid
        else:
            lo = mid
    return hrank_ratios(graph, hi), hi


def ensure_data(root: Path, limit: int | None = None) -> None:
    if (root / "train").is_dir() and (root / "test").is_dir():
        return
    cmd = [sys.executable, str(EXTRACT), "--out", str(root)]
    if limit:
        cmd += ["--limit-per-class", str(limit)]
    print(f"extracting CIFAR-10-JPEG into {root} ...", file=sys.stderr)
    subprocess.run(cmd, check=True)


def subset(split, n: int | None):
    if n is None or n >= len(split):
        return split
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return split.subset(idx)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} {torch.get_num_threads()} threads, {gpu}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.expanduser("~/.cache/cifar10-jpeg"))
    ap.add_argument("--limit-per-class", type=int, default=None, help="extract only this many images per class")
    ap.add_argument("--weights", default=str(WEIGHTS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--val-from", choices=["test", "train"], default="test",
                    help="where the val images come from: 'test' (default) = a seeded half of the test split, held "
                         "out from the images reported as test (the shared checkpoint was fine-tuned on the whole "
                         "train split, so a val split carved from train was seen in training); 'train' = the usual "
                         "val_fraction=0.1 carve of the train split")
    ap.add_argument("--val-size", type=int, default=None, help="val images (default: 5,000)")
    ap.add_argument("--test-size", type=int, default=None, help="test images (default: the other 5,000)")
    ap.add_argument("--eval-batches", type=int, default=None,
                    help="sensitivity: evaluate each pruned model on a fixed subset of this many val batches")
    ap.add_argument("--eval-batch-size", type=int, default=256, help="sensitivity: evaluation batch size")
    ap.add_argument("--criterion", default="l1")
    ap.add_argument("--ratios", default=",".join(f"{r:g}" for r in DEFAULT_RATIOS))
    ap.add_argument("--bn-batches", type=int, default=5)
    ap.add_argument("--bn-batch-size", type=int, default=128)
    ap.add_argument("--macs", type=float, default=0.5, help="fraction of MACs to keep")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune-batches", type=int, default=None, help="cap batches per fine-tune epoch")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--methods", default="sensitivity,uniform,srr,hrank,hrank-scaled")
    ap.add_argument("--cache-dir", default=None, help="sensitivity cache (default: ~/.cache/autoprune/sensitivity)")
    ap.add_argument("--skip-timing", action="store_true", help="reuse a cached table instead of timing (a) fresh")
    ap.add_argument("--out", default=None, help="write the markdown report here (plus .json and .png beside it)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    root = Path(args.data).expanduser()
    ensure_data(root, args.limit_per_class)
    dev = torch.device(args.device)
    # with val from the test split, all 50,000 training images are used for BN statistics and fine-tuning
    if args.val_from == "test":
        # the same split as `data: {val_from: test, val_fraction: 0.5}` in a search config, so a search reuses
        # this benchmark's cached sensitivity table
        data = load_data("imagefolder", root, device=dev, val_from="test", val_fraction=0.5)
    else:
        data = load_data("imagefolder", root, device=dev, val_fraction=0.1)
    data = dataclasses.replace(data, val=subset(data.val, args.val_size), test=subset(data.test, args.test_size))
    model = resnet56()
    model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.to(dev).eval()
    ex = torch.zeros(1, 3, 32, 32, device=dev)
    ratios = [float(r) for r in args.ratios.split(",")]
    skw = dict(ratios=ratios, bn_batches=args.bn_batches, bn_batch_size=args.bn_batch_size,
               cache_dir=args.cache_dir, eval_batches=args.eval_batches, batch_size=args.eval_batch_size)
    print(f"{data}\nmachine: {machine()}", file=sys.stderr)

    # ---------------------------------------------------------------------------------------- (a) timing
    graph = cpu_graph(model, ex)
    n_groups = len(graph.prunable_groups)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    table = sensitivity(model, data, criterion=args.criterion, example_inputs=ex, graph=graph,
                        refresh=not args.skip_timing, **skw)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_fresh = time.perf_counter() - t
    t = time.perf_counter()
    again = sensitivity(model, data, criterion=args.criterion, example_inputs=ex, graph=graph, progress=False, **skw)
    t_cached = time.perf_counter() - t
    assert again.from_cache
    print(table)

    # ---------------------------------------------------------------------------------------- (b) comparison
    ft = dict(lr=args.lr, batch_size=args.batch_size, max_batches=args.finetune_batches)
    results = []
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    scores = {g: torch.tensor(v, dtype=torch.float64) for g, v in table.scores.items()}
    target = int(math.floor(args.macs * table.base_macs))
    base_test = None
    for method in methods:
        t = time.perf_counter()
        info = ""
        if method in ("sensitivity", "uniform", "srr"):
            alloc: object = method
        elif method == "hrank":
            alloc = hrank_ratios(graph)
        elif method == "hrank-scaled":
            alloc, k = hrank_scaled(graph, scores, target)
            info = f"scale {k:.3f}"
        else:
            raise SystemExit(f"unknown method {method}")
        res = prune_to_budget(model, data, macs=args.macs, criterion=args.criterion, allocation=alloc,
                              finetune_epochs=args.finetune_epochs, example_inputs=ex, sensitivity_kwargs=skw,
                              finetune_kwargs=ft, evaluate_test=True, bn_batches=args.bn_batches, progress=False)
        if base_test is None:
            from autoprune.train import evaluate

            base_test = evaluate(model, data, split="test").accuracy
        if res.ratios.info.get("tau") is not None:
            info = f"tau {res.ratios.info['tau']:.3g}/MAC"
        elif res.ratios.info.get("uniform_ratio") is not None:
            info = f"ratio {res.ratios.info['uniform_ratio']:.3f}"
        elif res.ratios.info.get("gamma") is not None:
            info = f"gamma {res.ratios.info['gamma']:.3f}"
        row = dict(method=method, macs=res.macs, macs_pct=100 * res.macs / res.base_macs, params=res.params,
                   params_pct=100 * res.params / res.base_params, acc_prune_bn=res.accuracy_before_finetune,
                   val=res.accuracy, test=res.test_accuracy, seconds=time.perf_counter() - t, info=info,
                   ratios={k: round(v, 4) for k, v in dict(res.ratios).items()})
        results.append(row)
        print(f"{method:14s} MACs {row['macs_pct']:5.1f}%  params {row['params_pct']:5.1f}%  "
              f"prune+BN {100 * (row['acc_prune_bn'] or float('nan')):5.2f}%  val {100 * row['val']:5.2f}%  "
              f"test {100 * row['test']:5.2f}%  ({row['seconds']:.0f} s) {info}", flush=True)

    # ---------------------------------------------------------------------------------------- report
    lines = [
        f"machine: {machine()}; date {datetime.date.today().isoformat()}",
        f"data: CIFAR-10-JPEG ImageFolder {root} (train {len(data.train)}, val {len(data.val)} from the "
        f"{args.val_from} split, test {len(data.test)}, disjoint)",
        f"command: {' '.join(sys.argv)}",
        "",
        f"(a) sensitivity, criterion {args.criterion}: {n_groups} groups x {len(ratios)} ratios = "
        f"{n_groups * len(ratios)} pruned models, BN re-estimated on {args.bn_batches} x {args.bn_batch_size} train "
        f"images, evaluated on {table.eval_n} val images: "
        + (f"loaded from cache (--skip-timing; {table.seconds:.1f} s when computed), " if table.from_cache
           else f"**{t_fresh:.1f} s** fresh, ")
        + f"{t_cached:.2f} s from cache. "
        f"Base val accuracy {100 * table.base_accuracy:.2f}% (after the BN re-estimation every pruned model gets: "
        f"{100 * (table.reference_accuracy or table.base_accuracy):.2f}%, the reference of the drops), {table.base_macs:,} MACs.",
        "",
        f"(b) allocations at {100 * args.macs:.0f}% MACs kept, criterion {args.criterion}, fine-tune "
        f"{args.finetune_epochs} epoch(s) x {args.finetune_batches or 'all'} batches of {args.batch_size}, "
        f"lr {args.lr}. "
        f"Unpruned: val {100 * table.base_accuracy:.2f}%, test {100 * (base_test or 0):.2f}%.",
        "",
        "| allocation | MACs (M) | MACs kept | params kept | val acc pruned+BN | val acc fine-tuned "
        "| test acc fine-tuned | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['method']} | {r['macs'] / 1e6:.2f} | {r['macs_pct']:.1f}% | {r['params_pct']:.1f}% | "
                     f"{100 * (r['acc_prune_bn'] or float('nan')):.2f}% | {100 * r['val']:.2f}% | "
                     f"{100 * r['test']:.2f}% | "
                     f"{r['info']} |")
    lines.append(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s")
    report = "\n".join(lines)
    print("\n" + report)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report + "\n")
        out.with_suffix(".json").write_text(json.dumps({"results": results, "sensitivity_seconds": t_fresh,
                                                        "table": table.to_dict()}, indent=1))
        table.plot(out.with_suffix(".png"))


if __name__ == "__main__":
    main()
