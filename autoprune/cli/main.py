"""The ``autoprune`` command line. ``autoprune SUBCOMMAND --help`` documents each subcommand."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .._version import __version__

__all__ = ["main", "build_parser"]


def _load_for_inspection(args: argparse.Namespace):
    import torch

    import autoprune as ap

    model = ap.get_model(args.model)
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    x = torch.zeros(1, 3, args.size, args.size)
    return ap, model.eval(), x


def _cmd_groups(args: argparse.Namespace) -> int:
    """Print the channel groups the engine finds, and why locked ones are locked."""
    ap, model, x = _load_for_inspection(args)
    graph = ap.ChannelGraph(model, x)
    print(graph.summary())
    print(f"\n{len(graph.prunable_groups)} of {len(graph.groups)} groups prunable; "
          f"{graph.macs():,} MACs per image (conv + linear)")
    return 0


def _cmd_macs(args: argparse.Namespace) -> int:
    """Print MACs (conv + linear by default, the papers' convention) and parameters."""
    ap, model, x = _load_for_inspection(args)
    print(ap.count_macs(model, x, full=args.full))
    if args.params:
        print(ap.count_params(model))
    return 0


# Subcommand modules that add their own parsers: each has add_subcommands(subparsers).
_EXTENSIONS = ("autoprune.cli.search", "autoprune.cli.budget", "autoprune.cli.criteria", "autoprune.cli.distributed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoprune", description="Find how many channels each layer of a "
                                     "trained CNN can lose: channel analysis, pruning, sensitivity and search.")
    parser.add_argument("--version", action="version", version=f"autoprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    for name, fn, doc in (("groups", _cmd_groups, "list a model's channel groups"),
                          ("macs", _cmd_macs, "count a model's MACs with fvcore")):
        p = sub.add_parser(name, help=doc, description=fn.__doc__)
        p.add_argument("model", help="package model (resnet56, vgg16_bn_cifar...) or torchvision name")
        p.add_argument("--weights", help="state_dict file to load (torch.load weights_only)")
        p.add_argument("--size", type=int, default=32, help="input height/width (default 32)")
        if name == "macs":
            p.add_argument("--full", action="store_true", help="everything fvcore counts (BN, pooling...)")
            p.add_argument("--params", action="store_true", help="also print the parameter count")
        p.set_defaults(func=fn)

    for mod in _EXTENSIONS:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                raise
            continue
        module.add_subcommands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, ImportError) as exc:
        print(f"autoprune {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
