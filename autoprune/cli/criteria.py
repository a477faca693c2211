"""``autoprune compare-criteria CONFIG``: which criterion suits this model (see :mod:`autoprune.allocation.compare`)."""
from __future__ import annotations

import argparse
from typing import Any

from ..allocation.compare import compare_criteria
from ..build import build, compare_options
from .common import add_config, logger, output_path, parse_floats, read_config

__all__ = ["add_subcommands"]


def cmd_compare(args: argparse.Namespace) -> int:
    """Liu et al.'s methodology: uniform ratios, every criterion, BN re-estimation only (no fine-tuning); prints a
    table and writes criteria.md, criteria.json and criteria.png. Criteria: --criteria, else the config's criteria
    when it lists several, else every registered criterion."""
    cfg = read_config(args)
    opts = compare_options(cfg)
    if args.criteria:
        opts["criteria"] = [c.strip() for c in args.criteria.split(",") if c.strip()]
    if args.split:
        opts["split"] = args.split
    with cfg.cpu_threads():
        built = build(cfg, log=logger(args.quiet), progress=not args.quiet)
        res = compare_criteria(built.model, built.data, ratios=parse_floats(args.ratios, "--ratios"),
                               recalibrate=not args.no_bn, bn_batches=args.bn_batches,
                               example_inputs=built.example_inputs, progress=not args.quiet, **opts)
    out = output_path(cfg, args.out, "criteria")
    out.mkdir(parents=True, exist_ok=True)
    print(res.table())
    (out / "criteria.md").write_text(res.table() + "\n")
    (out / "criteria.json").write_text(res.to_json())
    res.plot(str(out / "criteria.png"))
    print(f"wrote {out / 'criteria.md'}, criteria.json and criteria.png")
    return 0


def add_subcommands(subparsers: Any) -> None:
    """Register ``compare-criteria``."""
    p = subparsers.add_parser("compare-criteria", help="prune at fixed ratios with each criterion (no fine-tuning) "
                              "and compare accuracy", description=cmd_compare.__doc__)
    add_config(p)
    p.add_argument("--criteria", help="comma-separated names (default: the config's criteria when several, else all)")
    p.add_argument("--ratios", default="0.3,0.5,0.7", help="comma-separated uniform ratios (default %(default)s)")
    p.add_argument("--bn-batches", type=int, default=10, help="batches for BN re-estimation (default %(default)s)")
    p.add_argument("--no-bn", action="store_true", help="skip BN re-estimation")
    p.add_argument("--split", choices=["val", "test"], help="split to evaluate (default: data.eval_split)")
    p.add_argument("--out", metavar="DIR", help="output folder (default <run_dir>/criteria)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log")
    p.set_defaults(func=cmd_compare)
