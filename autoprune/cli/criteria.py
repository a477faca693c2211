"""``autoprune compare-criteria CONFIG``: which criterion suits this model (see :mod:`autoprune.compare`)."""
from __future__ import annotations

import argparse
import os
from typing import Any


def _cmd_compare(args: argparse.Namespace) -> int:
    from .budget import load_config, load_model_and_data
    from ..compare import compare_criteria

    cfg = load_config(args.config)
    model, data = load_model_and_data(cfg, base_dir=os.path.dirname(os.path.abspath(args.config)), device=args.device)
    criteria = args.criteria.split(",") if args.criteria else cfg.get("criteria")
    ratios = [float(x) for x in args.ratios.split(",")]
    res = compare_criteria(model, data, criteria, ratios, recalibrate=not args.no_bn, bn_batches=args.bn_batches,
                           seed=args.seed, split=args.split)
    os.makedirs(args.out, exist_ok=True)
    print(res.table())
    with open(os.path.join(args.out, "criteria.md"), "w") as f:
        f.write(res.table() + "\n")
    with open(os.path.join(args.out, "criteria.json"), "w") as f:
        f.write(res.to_json())
    res.plot(os.path.join(args.out, "criteria.png"))
    print(f"wrote {args.out}/criteria.md, criteria.json and criteria.png")
    return 0


def add_subcommands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare-criteria", help="prune at fixed ratios with each criterion (no fine-tuning) and compare accuracy",
        description="Liu et al.'s methodology: uniform ratios, every criterion, BN re-estimation only; prints a "
                    "table and writes a PNG plot. CONFIG is a YAML file with 'model' and 'data' sections.")
    p.add_argument("config", help="YAML config (model: {name, weights}, data: {name, root, ...})")
    p.add_argument("--criteria", help="comma-separated names (default: the config's 'criteria' or all)")
    p.add_argument("--ratios", default="0.3,0.5,0.7", help="comma-separated uniform ratios")
    p.add_argument("--bn-batches", type=int, default=10, help="batches for BN re-estimation")
    p.add_argument("--no-bn", action="store_true", help="skip BN re-estimation")
    p.add_argument("--out", default="runs/criteria", help="output folder")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="val", help="split to evaluate: val (default) or test")
    p.set_defaults(func=_cmd_compare)
