"""``autoprune groups`` and ``autoprune macs``: what the engine sees in a model, without training or searching."""
from __future__ import annotations

import argparse
from typing import Any

from ..build import inspection_target
from ..graph.flops import count_macs, count_params
from ..graph import ChannelGraph

__all__ = ["add_subcommands"]


def _target(args: argparse.Namespace) -> Any:
    return inspection_target(args.model, weights=args.weights, size=args.size, input_shape=args.input_shape)


def cmd_groups(args: argparse.Namespace) -> int:
    """Print the channel groups the engine finds, and why locked ones are locked."""
    model, x = _target(args)
    graph = ChannelGraph(model, x)
    print(graph.summary())
    print(f"\n{len(graph.prunable_groups)} of {len(graph.groups)} groups prunable; "
          f"{graph.macs():,} MACs per image (conv + linear)")
    return 0


def cmd_macs(args: argparse.Namespace) -> int:
    """Print MACs (conv + linear by default, the papers' convention) and, with --params, parameters."""
    model, x = _target(args)
    print(count_macs(model, x, full=args.full))
    if args.params:
        print(count_params(model))
    return 0


def add_subcommands(subparsers: Any) -> None:
    """Register ``groups`` and ``macs``."""
    for name, fn, doc in (("groups", cmd_groups, "list a model's channel groups and why locked ones are locked"),
                          ("macs", cmd_macs, "count a model's MACs with fvcore")):
        p = subparsers.add_parser(name, help=doc, description=fn.__doc__)
        p.add_argument("model", metavar="MODEL", help="a config file (YAML: its model, weights and input shape), a "
                       "package model (resnet56, vgg16_bn_cifar...), a torchvision name or module:function")
        p.add_argument("--weights", help="state_dict or autoprune file to load (default: the config's model.weights)")
        p.add_argument("--size", type=int, default=32, help="input height and width for a MODEL name (default 32)")
        p.add_argument("--input-shape", type=int, nargs=3, metavar=("C", "H", "W"),
                       help="input shape for a MODEL name (default 3 SIZE SIZE)")
        if name == "macs":
            p.add_argument("--full", action="store_true", help="everything fvcore counts (BN, pooling...)")
            p.add_argument("--params", action="store_true", help="also print the parameter count")
        p.set_defaults(func=fn)
