#!/usr/bin/env python3
"""Time of the engine's analysis and MAC counting on one CPU thread (issue 22's goal: MaxViT-pico within 10 s).

    python benchmarks/bench_analysis_time.py [--models maxvit_pico_rw_256,vit_small_patch16_224,...] [--threads 1]

For each timm model (``pretrained=False``, its default input size, batch 1): ``ChannelGraph(model, x)`` (trace +
channel analysis + groups), ``graph.macs()`` (fvcore's count of the traced model, compared once with the cost model)
and ``graph.macs(removal)`` of a 30% L1 removal (the cost model alone, or a pruned model counted when it cannot see
every MAC). Prints a markdown table with the machine, date and command. Not a test.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import autoprune as ap  # noqa: E402

DEFAULT = ["maxvit_pico_rw_256", "vit_small_patch16_224", "swin_tiny_patch4_window7_224", "deit_tiny_patch16_224"]


def bench(name: str) -> dict:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    x = torch.randn(1, *size)
    t0 = time.perf_counter()
    graph = ap.ChannelGraph(model, x)
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = graph.macs()
    t2 = time.perf_counter()
    removal = graph.removal_for(0.3, criterion="l1")
    t3 = time.perf_counter()
    after = graph.macs(removal)
    t4 = time.perf_counter()
    return {"model": name, "input": "x".join(map(str, size[1:])), "groups": f"{len(graph.prunable_groups)}/"
            f"{len(graph.groups)}", "analysis": t1 - t0, "count": t2 - t1, "cost": t4 - t3,
            "exact": graph.macs_exact, "macs": full, "after": after}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [bench(m.strip()) for m in args.models.split(",") if m.strip()]
    cmd = "python benchmarks/bench_analysis_time.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"- date: {datetime.date.today().isoformat()}; machine: {os.cpu_count()}-core CPU "
          f"({platform.machine()}), torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    print(f"- command: `{cmd.strip()}`\n")
    print("| model | input | prunable groups | ChannelGraph (s) | graph.macs() (s) | macs(30% removal) (s) | "
          "cost model exact | MACs | MACs after |")
    print("|---|---|---|---:|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['input']} | {r['groups']} | {r['analysis']:.2f} | {r['count']:.2f} | "
              f"{r['cost']:.3f} | {'yes' if r['exact'] else 'no'} | {r['macs'] / 1e6:.1f}M | {r['after'] / 1e6:.1f}M |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
