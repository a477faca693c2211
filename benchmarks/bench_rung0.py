#!/usr/bin/env python3
"""Rung 0 of early stopping: does a pruned model's accuracy with NO fine-tuning rank a search's trials as their
fine-tuned accuracy does? (issue 20's lever: EagleEye's "adaptive BN" candidate scoring.)

    python benchmarks/bench_rung0.py --search docs/search_resnet56_cpu.json \\
        --config benchmarks/configs/resnet56_cifar10_jpeg_cpu.yaml --out docs/rung0_resnet56_cpu.md

For every front member recorded in ``--search`` (a bench_search.py JSON: ratios, criterion and the val accuracy
after the search's fine-tuning), the model is rebuilt (``graph.prune(ratios, criterion)``, deterministic for weight
criteria) and scored on the same val split with no fine-tuning: (a) with the stored BatchNorm statistics, (b) after
re-estimating them (``ap.recalibrate_bn`` on the search's batches, size and seed: the search's own step before
fine-tuning), (c) after re-estimating them on augmented batches (closer to the statistics of a model trained with
that augmentation; bench_vs_tools' recipe). Reported: Kendall's tau-b of each score against the fine-tuned accuracy, over all members and over the
pairs whose MACs differ by at most ``--pair-macs`` (a front's members differ in size, and size alone orders much of
it; early stopping must rank trials of similar size).

Kendall's tau is written here (a dozen lines) rather than taking scipy, which autoprune does not depend on.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import autoprune as ap  # noqa: E402
from autoprune.config import load_config  # noqa: E402


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties in either variable handled); NaN with fewer than two comparable pairs."""
    conc = disc = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif (dx > 0) == (dy > 0):
            conc += 1
        else:
            disc += 1
    denom = ((conc + disc + tx) * (conc + disc + ty)) ** 0.5
    return (conc - disc) / denom if denom else float("nan")


def pair_tau(members: list[dict], key: str, max_dmacs: float) -> tuple[float, int]:
    """Concordance of ``key`` with the fine-tuned accuracy over pairs of similar MACs: (tau-a over those pairs, n)."""
    conc = disc = 0
    for a, b in itertools.combinations(members, 2):
        if abs(a["macs_fraction"] - b["macs_fraction"]) > max_dmacs:
            continue
        dx, dy = a[key] - b[key], a["accuracy"] - b["accuracy"]
        if dx == 0 or dy == 0:
            continue
        conc, disc = (conc + 1, disc) if (dx > 0) == (dy > 0) else (conc, disc + 1)
    n = conc + disc
    return ((conc - disc) / n if n else float("nan")), n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--search", default=str(ROOT / "docs" / "search_resnet56_cpu.json"))
    p.add_argument("--config", default=str(ROOT / "benchmarks" / "configs" / "resnet56_cifar10_jpeg_cpu.yaml"))
    p.add_argument("--pair-macs", type=float, default=0.05, help="largest MACs-fraction gap of a compared pair")
    p.add_argument("--limit", type=int, default=None, help="first N members only (a smoke run)")
    p.add_argument("--out", default=None, help="markdown (the JSON goes beside it); default: print only")
    args = p.parse_args(argv)

    rec = json.loads(Path(args.search).read_text())
    cfg = load_config(args.config)
    from autoprune.build import base_model, build_data

    t0 = time.perf_counter()
    data = build_data(cfg)
    model = base_model(cfg, data)  # the search's own loader: seeded build + model.weights
    base_val = ap.evaluate(model, data).accuracy
    if abs(base_val - rec["base"]["accuracy"]) > 0.005:
        raise SystemExit(f"the unpruned model scores {base_val:.2%} here, the search recorded {rec['base']['accuracy']:.2%}")
    x = torch.zeros(1, *data.input_shape)
    graph = ap.ChannelGraph(model, x)
    ft = cfg.finetune
    members = [dict(m) for m in rec["front"]][: args.limit]
    for m in members:
        pruned = graph.prune(dict(m["ratios"]), criterion=m["criterion"])
        if ap.count_macs(pruned, x) != m["macs"]:
            raise SystemExit(f"trial {m['number']}: the rebuilt model has {ap.count_macs(pruned, x):,} MACs, the search "
                             f"recorded {m['macs']:,}: not the model it fine-tuned")
        m["rung0_stored_bn"] = ap.evaluate(pruned, data).accuracy
        bn = {"batches": ft.recalibrate_bn or 5, "batch_size": ft.batch_size, "seed": cfg.seed}
        ap.recalibrate_bn(pruned, data, **bn)
        m["rung0_bn"] = ap.evaluate(pruned, data).accuracy
        ap.recalibrate_bn(pruned, data, augment=True, **bn)
        m["rung0_bn_aug"] = ap.evaluate(pruned, data).accuracy
        m.pop("ratios")
        print(f"trial {m['number']:3d}: MACs {m['macs_fraction']:.1%}, no fine-tuning {m['rung0_stored_bn']:.2%} "
              f"(stored BN) {m['rung0_bn']:.2%} (BN re-estimated) {m['rung0_bn_aug']:.2%} (on augmented batches), "
              f"fine-tuned {m['accuracy']:.2%}", flush=True)
    fine = [m["accuracy"] for m in members]
    res = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "search": args.search,
           "config": args.config, "machine": f"{platform.platform()}, {platform.processor() or '?'}",
           "seconds": time.perf_counter() - t0, "members": members, "tau": {}}
    for key in ("rung0_stored_bn", "rung0_bn", "rung0_bn_aug", "macs_fraction"):
        tau = kendall_tau_b([m[key] for m in members], fine)
        ptau, n = pair_tau(members, key, args.pair_macs)
        res["tau"][key] = {"all": tau, "similar_macs": ptau, "similar_pairs": n}
    lines = [f"# Rung 0 vs fine-tuned accuracy ({len(members)} front members of `{args.search}`)", "",
             f"- date {res['date']}, {res['machine']}, {res['seconds']:.0f} s; command `python benchmarks/bench_rung0.py"
             + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv)) + "`",
             "- every rebuilt model has the MACs the search recorded for its trial",
             f"- fine-tuned accuracy: the search's ({ft.max_batches} batches of {ft.batch_size}, val split); rung 0: "
             "the rebuilt model with no fine-tuning", "",
             "| score | Kendall tau-b, all members | tau over pairs within "
             f"{args.pair_macs:.0%} of MACs | pairs |", "|---|---:|---:|---:|"]
    names = {"rung0_stored_bn": "no fine-tuning, stored BN statistics",
             "rung0_bn": "no fine-tuning, BN re-estimated (the search's batches: not augmented)",
             "rung0_bn_aug": "no fine-tuning, BN re-estimated on augmented batches",
             "macs_fraction": "MACs kept alone"}
    for key, t in res["tau"].items():
        lines.append(f"| {names[key]} | {t['all']:.3f} | {t['similar_macs']:.3f} | {t['similar_pairs']} |")
    md = "\n".join(lines) + "\n"
    print(md)
    if args.out:
        Path(args.out).write_text(md)
        Path(args.out).with_suffix(".json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
