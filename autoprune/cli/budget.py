"""``autoprune sensitivity CONFIG`` and ``autoprune prune CONFIG``: the sensitivity table and a model under a budget.

Both read the config of ``autoprune search`` (docs/search.md) and build its model and data with
:func:`autoprune.build.build`; command-line options override the config.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..allocation.budget import prune_to_budget
from ..allocation.sensitivity_analysis import sensitivity
from ..build import build, prune_spec, sensitivity_spec
from .common import add_config, logger, output_path, parse_budget, parse_floats, read_config

__all__ = ["add_subcommands"]


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """FLOP-normalized sensitivity analysis: every prunable group is pruned alone at each ratio of the grid (BN
    re-estimated, no fine-tuning); the accuracy (or loss) drop on the val split and the MACs saved are tabulated.
    The options come from the config's ratios.sensitivity (the table a guided search uses, so this command fills
    its cache), the criterion from the first of its criteria."""
    cfg = read_config(args)
    spec = sensitivity_spec(cfg).replace(  # the config's options; those given below replace them
        criterion=args.criterion, ratios=parse_floats(args.ratios, "--ratios"), bn_batches=args.bn_batches,
        eval_batches=args.eval_batches, metric=args.metric,
        cache_dir=False if args.no_cache else (args.cache_dir or None), refresh=True if args.refresh else None,
        progress=not args.quiet)
    with cfg.cpu_threads():
        built = build(cfg, log=logger(args.quiet), progress=not args.quiet)
        table = sensitivity(built.model, built.data, example_inputs=built.example_inputs, **spec.kwargs())
    out = output_path(cfg, args.out, "sensitivity")
    out.mkdir(parents=True, exist_ok=True)
    table.save(out / "sensitivity.json")
    (out / "sensitivity.txt").write_text(str(table) + "\n\n" + table.format_rows() + "\n")
    table.plot(out / "sensitivity.png")
    print(table)
    print(f"\n{'loaded from cache' if table.from_cache else f'computed in {table.seconds:.1f} s'}; "
          f"wrote {out / 'sensitivity.json'}, sensitivity.txt, sensitivity.png")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Allocate per-group ratios that keep the given share of MACs (and/or parameters), prune, fine-tune (the
    config's finetune section) and save the model (autoprune.load reads it) plus a JSON summary beside it.
    Budgets: --macs/--params, else the config's constraints.max_macs/max_params; 0.5 or 50% = keep half,
    62M = keep that many."""
    cfg = read_config(args)
    spec = prune_spec(cfg)  # what the config says (typed); the options given below replace its fields
    macs, params = parse_budget(args.macs), parse_budget(args.params)
    if macs is not None or params is not None:  # a budget on the command line replaces the config's whole budget
        spec = spec.with_budget(macs=macs, params=params)
    if spec.macs is None and spec.params is None:
        raise ValueError(f"{args.config}: no budget: give --macs 0.5 (or --params), or set constraints.max_macs in "
                         "the config")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1 (prune -> fine-tune repetitions), got {args.steps}")
    spec = spec.replace(criterion=args.criterion, allocation=args.allocation, seed=args.seed,
                        finetune_epochs=args.finetune_epochs, steps=args.steps, lr=args.lr,
                        max_batches=args.max_batches, sensitivity_cache_dir=args.cache_dir or None)
    with cfg.cpu_threads():
        built = build(cfg, log=logger(args.quiet), progress=not args.quiet)
        result = prune_to_budget(built.model, built.data, example_inputs=built.example_inputs,
                                 evaluate_test=args.test, progress=not args.quiet, **spec.budget_kwargs())
    print(result.ratios.summary())
    print(result.summary())
    out = output_path(cfg, args.out, "pruned.pt")
    summary_path = out.with_suffix(".json") if out.suffix != ".json" else out.with_name(out.stem + ".summary.json")
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(result.to_dict(), indent=1))
    result.save(out)
    print(f"wrote {out} and {summary_path}")
    return 0


def add_subcommands(subparsers: Any) -> None:
    """Register ``sensitivity`` and ``prune``; each sets ``func`` (``args.func(args)`` returns an exit code)."""
    p = subparsers.add_parser("sensitivity", help="prune each channel group alone at each ratio and measure the "
                              "damage per MAC saved", description=cmd_sensitivity.__doc__)
    add_config(p)
    p.add_argument("--out", metavar="DIR", help="folder for sensitivity.json/.txt/.png (default <run_dir>/sensitivity)")
    p.add_argument("--criterion", help="channel criterion ordering removals (default: the first of the config's "
                                       "criteria, or ratios.sensitivity.criterion)")
    p.add_argument("--ratios", help="comma-separated ratio grid (default: ratios.sensitivity.ratios, else 0.1,...,0.9)")
    p.add_argument("--bn-batches", dest="bn_batches", type=int, help="batches for BN re-estimation (default 5)")
    p.add_argument("--eval-batches", dest="eval_batches", type=int,
                   help="evaluate on this many val batches (default: the whole val split)")
    p.add_argument("--metric", choices=["accuracy", "loss"], help="damage metric (default accuracy)")
    p.add_argument("--cache-dir", help="sensitivity cache folder (default $AUTOPRUNE_CACHE/sensitivity or "
                                       "~/.cache/autoprune/sensitivity)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--refresh", action="store_true", help="recompute and overwrite the cached table")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log")
    p.set_defaults(func=cmd_sensitivity)

    q = subparsers.add_parser("prune", help="prune to a MAC/parameter budget, fine-tune, and save the pruned model",
                              description=cmd_prune.__doc__)
    add_config(q)
    q.add_argument("--macs", help="MACs to keep: fraction (0.5, 50%%) or count (62M) (default: constraints.max_macs)")
    q.add_argument("--params", help="parameters to keep: fraction or count (default: constraints.max_params)")
    q.add_argument("--criterion", help="channel criterion (default: the first of the config's criteria)")
    q.add_argument("--allocation", choices=["sensitivity", "uniform", "global", "srr"],
                   help="how ratios are chosen (default: ratios.guide of a guided config, else sensitivity)")
    q.add_argument("--finetune-epochs", dest="finetune_epochs", type=int,
                   help="fine-tuning epochs (default: finetune.epochs; 0 = BN re-estimation only)")
    q.add_argument("--lr", type=float, help="fine-tuning learning rate (default: finetune.lr)")
    q.add_argument("--max-batches", dest="max_batches", type=int,
                   help="cap on batches per fine-tuning epoch (default: finetune.max_batches)")
    q.add_argument("--out", metavar="PATH", help="pruned model file (default <run_dir>/pruned.pt)")
    q.add_argument("--test", action="store_true", help="also report accuracy on the test split")
    q.add_argument("--steps", type=int, default=None, metavar="K",
                   help="repetitive pruning: reach the budget in K prune -> fine-tune steps, the fine-tuning split "
                        "between them (default: finetune.prune_steps, 1)")
    q.add_argument("--seed", type=int, help="seed for scores and fine-tuning (default: the config's seed)")
    q.add_argument("--cache-dir", help="sensitivity cache folder")
    q.add_argument("--quiet", action="store_true", help="no progress bars or log")
    q.set_defaults(func=cmd_prune)
