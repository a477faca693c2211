#!/usr/bin/env python3
"""Measured latency of pruned models vs the unpruned one: do fewer MACs mean faster on this machine?

    python benchmarks/bench_latency.py [--models resnet56,resnet50] [--keep 0.7,0.5,0.3] [--round-to 1,8]
        [--runtimes torch,onnxruntime] [--batches 1,32] [--threads 1] [--device cpu] [--rounds 3]
        [--repeats 5] [--warmup 2] [--onnx-exporter torchscript] [--out docs/latency_cpu.json]
    python benchmarks/bench_latency.py --table A.json B.json     # one table from several runs
    python benchmarks/bench_latency.py --fronts A.yaml B.yaml [--batches 1] [--rounds 5] [--repeats 100]
        # the Pareto fronts of finished searches (e.g. a MACs objective vs a latency objective), every member and
        # the unpruned model timed in interleaved rounds under the same settings

For each model (ResNet-56 at 32 px with the shared CIFAR-10-JPEG weights when present; torchvision ResNet-50 at
224 px, random weights -- latency does not depend on the values), each kept MAC fraction and each ``round_to``:
uniform allocation (:func:`autoprune.allocate`, L1 channel order) -> physically pruned model. Then for each runtime
and batch size every model (the unpruned one included) is timed ``--rounds`` times, the models interleaved within a
round so that a busy period of a shared machine hits all of them; a round is ``--warmup`` untimed calls and
``--repeats`` timed ones. Reported per model: the median over all rounds of the round medians, the range of the
round medians and the median within-round IQR (the spread), and the speed-up over the unpruned model.

Not a test; prints a markdown table and writes JSON (``--out``) with the machine, date and command.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from autoprune import ChannelGraph, get_model  # noqa: E402
from autoprune.allocation import allocate  # noqa: E402
from autoprune.deploy.latency import LatencyRunner  # noqa: E402
from autoprune.criteria.scoring import score_groups  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
SIZES = {"resnet56": 32, "resnet20": 32, "resnet50": 224, "mobilenet_v3_small": 224}


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor, str]:
    size = SIZES.get(name, 224)
    kwargs = {"num_classes": 1000} if name.startswith(("resnet50", "mobilenet")) else {}
    model = get_model(name, **kwargs).eval()
    weights = SHARED / "models" / f"{name}-cifar10jpeg.pt"
    how = "random weights"
    if weights.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
        how = f"weights {weights.name}"
    return model, torch.zeros(1, 3, size, size), how


def machine() -> dict:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines()[:20]
    except (OSError, subprocess.SubprocessError):
        lscpu = []
    model_name = next((ln.split(":", 1)[1].strip() for ln in lscpu if ln.startswith("Model name")),
                      platform.processor())
    return {"cpu": model_name, "cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
            "lscpu": lscpu, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet56,resnet50")
    ap.add_argument("--keep", default="0.7,0.5,0.3", help="kept MAC fractions")
    ap.add_argument("--round-to", default="1,8")
    ap.add_argument("--runtimes", default="torch,onnxruntime")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--onnx-exporter", default="torchscript", choices=["auto", "dynamo", "torchscript"],
                    help="exporter for the ONNX Runtime models (default torchscript: several times faster to export "
                         "than dynamo for ResNet-50; ONNX Runtime optimises either graph)")
    ap.add_argument("--out", help="JSON results")
    ap.add_argument("--fronts", nargs="+", metavar="CONFIG", help="time the front members of these searches")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="print the markdown table of earlier runs' JSON files "
                    "(e.g. batch 1 and batch 32 run separately) and exit")
    args = ap.parse_args(argv)
    if args.table:
        runs = [json.loads(Path(f).read_text()) for f in args.table]
        print(table({"results": [r for run in runs for r in run["results"]]}))
        return 0
    if args.fronts:
        return fronts(args, argv)

    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.perf_counter()
    keeps = [float(k) for k in args.keep.split(",")]
    rounds_to = [int(k) for k in args.round_to.split(",")]
    runtimes = args.runtimes.split(",")
    batches = [int(b) for b in args.batches.split(",")]
    results: list[dict] = []
    for name in args.models.split(","):
        base, ex, how = build(name)
        graph = ChannelGraph(base, ex)
        scores = score_groups(graph, "l1")
        variants = [{"model": name, "keep": 1.0, "round_to": 1, "net": base, "macs": graph.macs(),
                     "params": graph.macs(params=True), "weights": how}]
        for keep in keeps:
            for k in rounds_to:
                a = allocate(graph, macs=keep, method="uniform", scores=scores, round_to=k)
                net = graph.prune_channels(a.remove).eval()
                widths = sorted({m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)})
                variants.append({"model": name, "keep": keep, "round_to": k, "net": net, "macs": a.macs,
                                 "params": a.params, "weights": how,
                                 "widths_multiple_of_8": all(w % 8 == 0 for w in widths)})
        print(f"{name}: {len(variants)} models built", file=sys.stderr)
        for rt in runtimes:
            for b in batches:
                runners = [LatencyRunner(v["net"], ex, batch_size=b, device=args.device, threads=args.threads,
                                         runtime=rt, onnx_exporter=args.onnx_exporter) for v in variants]
                per: list[list] = [[] for _ in variants]
                for r in range(args.rounds):
                    for i, run in enumerate(runners):
                        per[i].append(run.measure(warmup=args.warmup, repeats=args.repeats))
                    print(f"  {name} {rt} batch {b}: round {r + 1}/{args.rounds}", file=sys.stderr)
                base_ms = statistics.median(l.median_ms for l in per[0])
                for v, lats in zip(variants, per):
                    med = statistics.median(l.median_ms for l in lats)
                    results.append({
                        "model": name, "keep": v["keep"], "round_to": v["round_to"], "macs": v["macs"],
                        "params": v["params"], "macs_fraction": v["macs"] / variants[0]["macs"],
                        "widths_multiple_of_8": v.get("widths_multiple_of_8"), "weights": v["weights"],
                        "runtime": rt, "batch": b, "median_ms": med,
                        "round_medians_ms": [l.median_ms for l in lats],
                        "iqr_ms": statistics.median(l.iqr_ms for l in lats),
                        "speedup": base_ms / med, "threads": lats[0].threads,
                    })
                del runners

    out = {"date": started.isoformat(timespec="seconds"), "seconds": round(time.perf_counter() - t_start, 1),
           "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
           "machine": machine(), "settings": vars(args), "results": results}
    print(table(out))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def fronts(args: argparse.Namespace, argv: list[str] | None) -> int:
    """``--fronts``: every front member of each search (and its unpruned model), timed in interleaved rounds."""
    from autoprune.study import load_front

    started = datetime.datetime.now(datetime.timezone.utc)
    entries = []  # (search, trial or None, record, model, example input)
    for path in args.fronts:
        front = load_front(path)
        prob = front.problem()
        name = front.config.name
        entries.append((name, None, None, prob.base_model, prob.example_inputs))
        for r in front:
            entries.append((name, r.number, r, prob.graph.prune_channels(prob.removal(r.ratios, r.criterion)),
                            prob.example_inputs))
    results = []
    b = int(args.batches.split(",")[0])
    for rt in args.runtimes.split(","):
        runners = [LatencyRunner(m, ex, batch_size=b, device=args.device, threads=args.threads, runtime=rt,
                                 onnx_exporter=args.onnx_exporter) for _, _, _, m, ex in entries]
        per: list[list] = [[] for _ in entries]
        for _ in range(args.rounds):
            for i, run in enumerate(runners):
                per[i].append(run.measure(warmup=args.warmup, repeats=args.repeats))
        for (name, number, rec, _, _), lats in zip(entries, per):
            results.append({"search": name, "trial": number, "runtime": rt, "batch": b,
                            "accuracy": rec.accuracy if rec else None,
                            "macs_fraction": rec.macs_fraction if rec else 1.0,
                            "latency_search_ms": rec.latency_ms if rec else None,
                            "median_ms": statistics.median(l.median_ms for l in lats),
                            "round_medians_ms": [l.median_ms for l in lats],
                            "iqr_ms": statistics.median(l.iqr_ms for l in lats)})
    lines = ["| search | trial | accuracy | MACs | " + " | ".join(f"{rt} b{b} ms [rounds]"
                                                                  for rt in args.runtimes.split(",")) + " |",
             "|---|---|---|---|" + "---|" * len(args.runtimes.split(","))]
    for name, number, rec, _, _ in entries:
        cells = []
        for rt in args.runtimes.split(","):
            r = next(x for x in results if x["search"] == name and x["trial"] == number and x["runtime"] == rt)
            cells.append(f"{r['median_ms']:.3f} [{min(r['round_medians_ms']):.3f}-{max(r['round_medians_ms']):.3f}]")
        acc = f"{rec.accuracy:.1%}" if rec else "-"
        lines.append(f"| {name} | {number if number is not None else 'unpruned'} | {acc} | "
                     f"{(rec.macs_fraction if rec else 1.0):.1%} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.out:
        out = {"date": started.isoformat(timespec="seconds"),
               "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
               "machine": machine(), "settings": vars(args), "results": results}
        Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


def table(out: dict) -> str:
    """Markdown: one row per (model, keep, round_to); per runtime/batch the median ms, [range of round medians]
    (one round: [IQR of its calls]), and the speed-up over the unpruned model."""
    res = out["results"]
    cols = sorted({(r["runtime"], r["batch"]) for r in res}, key=lambda c: (c[0] != "torch", c[1]))
    rows: dict[tuple, dict] = {}
    for r in res:
        rows.setdefault((r["model"], r["keep"], r["round_to"]), {})[(r["runtime"], r["batch"])] = r
    head = ("| model | MACs kept | round_to | MACs | params | " + " | ".join(f"{rt} b{b} ms (x)" for rt, b in cols)
            + " |")
    lines = [head, "|" + "---|" * (5 + len(cols))]
    for (model, keep, k), d in sorted(rows.items(), key=lambda t: (t[0][0], -t[0][1], t[0][2])):
        any_r = next(iter(d.values()))
        cells = []
        for c in cols:
            r = d.get(c)
            if r is None:
                cells.append("")
                continue
            lo, hi = min(r["round_medians_ms"]), max(r["round_medians_ms"])
            spread = f"[{lo:.2f}-{hi:.2f}]" if len(r["round_medians_ms"]) > 1 else f"[IQR {r['iqr_ms']:.2f}]"
            cells.append(f"{r['median_ms']:.2f} {spread} ({r['speedup']:.2f}x)")
        label = "unpruned" if keep == 1.0 else f"{keep:.0%}"
        lines.append(f"| {model} | {label} | {k} | {any_r['macs'] / 1e6:.1f}M ({any_r['macs_fraction']:.1%}) | "
                     f"{any_r['params'] / 1e6:.3f}M | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
