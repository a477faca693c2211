"""The ``autoprune`` command line. ``autoprune SUBCOMMAND --help`` documents each subcommand."""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Sequence

__all__ = ["main", "build_parser"]


def _cmd_quickstart(args: argparse.Namespace) -> int:
    """Train a small CIFAR ResNet on synthetic data, prune it, fine-tune it, save it: the engine end to end."""
    import torch

    import autoprune as ap
    from autoprune.data import load_data
    from autoprune.io import save
    from autoprune.train import evaluate, finetune

    torch.manual_seed(args.seed)
    data = load_data("synthetic", seed=args.seed, num_train=args.num_train, device="cpu" if args.cpu else None)
    model = ap.get_model(args.model, num_classes=data.num_classes)
    x = torch.zeros(1, *data.input_shape)
    t0 = time.time()
    print(f"[1/4] training {args.model} from scratch on synthetic data ({len(data.train)} images, "
          f"{args.epochs} epochs)")
    finetune(model, data, epochs=args.epochs, lr=0.05, seed=args.seed, progress=not args.quiet)
    base = evaluate(model, data)
    graph = ap.ChannelGraph(model, x)
    print(f"[2/4] {len(graph.groups)} channel groups, {len(graph.prunable_groups)} prunable:")
    print(graph.summary())
    pruned = graph.prune(args.ratio, criterion=args.criterion)
    before, after = ap.count_macs(model, x), ap.count_macs(pruned, x)
    print(f"[3/4] pruned {args.ratio:.0%} of every prunable group with {args.criterion}: "
          f"MACs {before:,} -> {after:,} ({1 - after / before:.1%} fewer)")
    cut = evaluate(pruned, data)
    finetune(pruned, data, epochs=args.finetune_epochs, lr=0.02, seed=args.seed, progress=not args.quiet)
    tuned = evaluate(pruned, data)
    print(f"[4/4] validation accuracy: original {base.accuracy:.2%}, pruned {cut.accuracy:.2%}, "
          f"after {args.finetune_epochs} fine-tune epoch(s) {tuned.accuracy:.2%}")
    save(pruned, args.out)
    print(f"saved the pruned model to {args.out} (reload with autoprune.load); {time.time() - t0:.0f} s in all")
    return 0


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
_EXTENSIONS = ("autoprune.cli_budget", "autoprune.cli_search", "autoprune.cli_criteria")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoprune", description="Find how many channels each layer of a "
                                     "trained CNN can lose: channel analysis, pruning, sensitivity and search.")
    parser.add_argument("--version", action="version", version="autoprune 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    q = sub.add_parser("quickstart", help="prune a small model end to end on synthetic data (CPU, ~1 min)",
                       description=_cmd_quickstart.__doc__)
    q.add_argument("--model", default="resnet20", help="package model name (default resnet20)")
    q.add_argument("--ratio", type=float, default=0.4, help="fraction of every prunable group to remove")
    q.add_argument("--criterion", default="l1", help="channel criterion (default l1)")
    q.add_argument("--epochs", type=int, default=3, help="training epochs from scratch")
    q.add_argument("--finetune-epochs", type=int, default=1)
    q.add_argument("--num-train", type=int, default=2000, help="training images used")
    q.add_argument("--out", default="runs/quickstart/pruned.pt", help="where to save the pruned model")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--cpu", action="store_true", help="keep data and model on the CPU even with a GPU")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=_cmd_quickstart)

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
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"autoprune {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
