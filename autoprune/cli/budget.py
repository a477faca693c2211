"""``autoprune sensitivity`` and ``autoprune prune``: the budget workflow from the command line.

Both take a small YAML config::

    model: {name: resnet56, weights: ../shared/models/resnet56-cifar10jpeg.pt}   # or builder: "pkg.module:function"
    data: {name: imagefolder, root: ~/.cache/cifar10-jpeg, val_fraction: 0.1, seed: 0}
    criterion: ezcrop                  # optional (default l1 for sensitivity, ezcrop for prune)
    ratios: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]   # optional sensitivity grid
    sensitivity: {bn_batches: 5, eval_batches: null}       # optional, passed to autoprune.sensitivity_analysis.sensitivity
    finetune: {epochs: 2, lr: 0.01}                          # optional, passed to autoprune.train.finetune

Command-line options override the config. The lead wires :func:`add_subcommands` into ``autoprune/cli.py``;
``python -m autoprune.cli.budget ...`` runs the two commands standalone.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["add_subcommands", "load_config", "load_model_and_data", "parse_budget", "main"]


# ------------------------------------------------------------------------------------------------------ config


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config (a mapping) from ``path``."""
    import yaml

    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: the config must be a YAML mapping, got {type(cfg).__name__}")
    return cfg


def _resolve_path(p: str | os.PathLike, base_dir: str | os.PathLike | None) -> str:
    """``~`` and ``$VARS`` expanded; a relative path that does not exist from the working directory is tried
    relative to ``base_dir`` (the config file's folder)."""
    s = os.path.expanduser(os.path.expandvars(str(p)))
    if not os.path.isabs(s) and not os.path.exists(s) and base_dir is not None:
        alt = os.path.join(str(base_dir), s)
        if os.path.exists(alt):
            return alt
    return s


def _import_builder(spec: str) -> Callable[..., Any]:
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise ValueError(f"model builder must look like 'package.module:function', got {spec!r}")
    obj: Any = importlib.import_module(mod)
    for part in fn.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


def load_model_and_data(cfg: dict[str, Any], base_dir: str | os.PathLike | None = None,
                        device: str | None = None) -> tuple[Any, Any]:
    """Build ``(model, data)`` from a config dict.

    ``cfg["model"]``: a model name, or a mapping with ``name`` (for :func:`autoprune.models.get_model`, e.g.
    ``resnet56`` or ``torchvision:resnet18``) or ``builder`` (``"package.module:function"``, also accepted as a
    ``name`` with a colon), optional ``kwargs`` and ``weights`` (a state_dict file loaded with
    ``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` wrapper is unwrapped). ``cfg["data"]``: keyword
    arguments of :func:`autoprune.data.load_data` (``name``, ``root``, ``val_fraction``, ``seed``, ...).
    Relative paths are tried from the working directory, then from ``base_dir``. ``device`` overrides
    ``data.device``; the model is moved to the data's device.
    """
    import torch

    from ..data import load_data
    from ..models import get_model

    mcfg = cfg.get("model")
    if mcfg is None:
        raise ValueError("config has no 'model' section")
    if isinstance(mcfg, str):
        mcfg = {"name": mcfg}
    if not isinstance(mcfg, dict):
        raise ValueError(f"config 'model' must be a name or a mapping, got {mcfg!r}")
    unknown = set(mcfg) - {"name", "builder", "kwargs", "weights", "strict"}
    if unknown:
        raise ValueError(f"unknown key(s) in config 'model': {sorted(unknown)}")
    kwargs = dict(mcfg.get("kwargs") or {})
    builder = mcfg.get("builder")
    name = mcfg.get("name")
    if builder is None and isinstance(name, str) and ":" in name and not name.startswith("torchvision:"):
        builder = name
    if builder is not None:
        model = _import_builder(str(builder))(**kwargs)
    elif name:
        model = get_model(str(name), **kwargs)
    else:
        raise ValueError("config 'model' needs a 'name' or a 'builder'")
    weights = mcfg.get("weights")
    if weights:
        sd = torch.load(_resolve_path(weights, base_dir), map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        model.load_state_dict(sd, strict=bool(mcfg.get("strict", True)))

    dcfg = dict(cfg.get("data") or {})
    if "name" not in dcfg:
        raise ValueError("config 'data' needs a 'name' (imagefolder, synthetic, cifar10, cifar100)")
    dname = dcfg.pop("name")
    root = dcfg.pop("root", None)
    if root is not None:
        root = _resolve_path(root, base_dir)
    if device is not None:
        dcfg["device"] = device
    data = load_data(dname, root, **dcfg)
    model.to(data.device)
    model.eval()
    return model, data


def parse_budget(text: str | None) -> float | int | None:
    """``"0.5"`` / ``"50%"`` -> 0.5 (fraction to keep); ``"62000000"`` / ``"62M"`` / ``"1.5G"`` -> absolute count."""
    if text is None:
        return None
    s = str(text).strip()
    mult = {"k": 10**3, "m": 10**6, "g": 10**9}
    if s.endswith("%"):
        return float(s[:-1]) / 100.0
    if s and s[-1].lower() in mult:
        return int(round(float(s[:-1]) * mult[s[-1].lower()]))
    try:
        return int(s)
    except ValueError:
        return float(s)


def _ratios(text: str | None) -> list[float] | None:
    if text is None:
        return None
    return [float(v) for v in text.replace(" ", "").split(",") if v]


# ---------------------------------------------------------------------------------------------------- commands


def cmd_sensitivity(args: argparse.Namespace) -> int:
    """Run the sensitivity analysis; write table.json, table.txt and table.png into ``--out``."""
    from ..sensitivity_analysis import DEFAULT_RATIOS, sensitivity

    cfg = load_config(args.config)
    model, data = load_model_and_data(cfg, base_dir=Path(args.config).resolve().parent, device=args.device)
    skw = dict(cfg.get("sensitivity") or {})
    criterion = args.criterion or cfg.get("criterion") or "l1"
    ratios = _ratios(args.ratios) or cfg.get("ratios") or list(DEFAULT_RATIOS)
    for key in ("bn_batches", "eval_batches", "metric"):
        v = getattr(args, key)
        if v is not None:
            skw[key] = v
    if args.no_cache:
        skw["cache_dir"] = False
    elif args.cache_dir:
        skw["cache_dir"] = args.cache_dir
    if args.refresh:
        skw["refresh"] = True
    table = sensitivity(model, data, criterion=criterion, ratios=ratios, progress=not args.quiet, **skw)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.save(out / "sensitivity.json")
    (out / "sensitivity.txt").write_text(str(table) + "\n\n" + table.format_rows() + "\n")
    table.plot(out / "sensitivity.png")
    print(table)
    print(f"\n{'loaded from cache' if table.from_cache else f'computed in {table.seconds:.1f} s'}; "
          f"wrote {out / 'sensitivity.json'}, sensitivity.txt, sensitivity.png")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune to a budget, fine-tune, evaluate, save the model and a JSON summary."""
    from ..budget import prune_to_budget

    cfg = load_config(args.config)
    model, data = load_model_and_data(cfg, base_dir=Path(args.config).resolve().parent, device=args.device)
    macs = parse_budget(args.macs)
    params = parse_budget(args.params)
    if macs is None and params is None:
        print("error: give --macs and/or --params", file=sys.stderr)
        return 2
    ft = dict(cfg.get("finetune") or {})
    epochs = args.finetune_epochs if args.finetune_epochs is not None else int(ft.pop("epochs", 2))
    ft.pop("epochs", None)
    if args.lr is not None:
        ft["lr"] = args.lr
    if args.max_batches is not None:
        ft["max_batches"] = args.max_batches
    skw = dict(cfg.get("sensitivity") or {})
    if cfg.get("ratios"):
        skw.setdefault("ratios", cfg["ratios"])
    if args.cache_dir:
        skw["cache_dir"] = args.cache_dir
    ft.setdefault("progress", not args.quiet)
    criterion = args.criterion or cfg.get("criterion") or "ezcrop"
    result = prune_to_budget(
        model, data, macs=macs, params=params, criterion=criterion, allocation=args.allocation,
        finetune_epochs=epochs, sensitivity_kwargs=skw, finetune_kwargs=ft, seed=args.seed,
        evaluate_test=args.test, progress=not args.quiet,
    )
    print(result.ratios.summary())
    print(result.summary())
    out = Path(args.out)
    summary_path = out.with_suffix(".json") if out.suffix != ".json" else out.with_name(out.stem + ".summary.json")
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(result.to_dict(), indent=1))
    try:
        result.save(out)
    except ImportError as e:  # autoprune.io not available in this checkout
        print(f"error: cannot save the model ({e}); summary written to {summary_path}", file=sys.stderr)
        return 1
    print(f"wrote {out} and {summary_path}")
    return 0


def add_subcommands(subparsers: Any) -> None:
    """Register ``sensitivity`` and ``prune`` on an ``argparse`` subparsers object (``parser.add_subparsers()``);
    each sets ``func`` (call ``args.func(args)``, which returns an exit code)."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "sensitivity", formatter_class=fmt,
        help="prune each channel group alone at each ratio and measure the damage per MAC saved",
        description="FLOP-normalized sensitivity analysis (methods.md §3): every prunable group is pruned alone at "
                    "each ratio of the grid (BN re-estimated, no fine-tuning); the accuracy/loss drop on the val "
                    "split and the MACs saved are tabulated. Results are cached (see --cache-dir).\n\n"
                    "CONFIG: YAML with model: {name, weights} and data: {name, root, val_fraction, seed}; "
                    "optional criterion, ratios, sensitivity: {...}.",
    )
    p.add_argument("config", metavar="CONFIG", help="YAML config (model, data, optional criterion/ratios)")
    p.add_argument("--out", default="sensitivity-out", metavar="DIR",
                   help="output folder for sensitivity.json/.txt/.png (default: %(default)s)")
    p.add_argument("--criterion", help="channel criterion ordering removals (default: config or l1)")
    p.add_argument("--ratios", help="comma-separated ratio grid (default: config or 0.1,...,0.9)")
    p.add_argument("--bn-batches", dest="bn_batches", type=int, help="batches for BN re-estimation (default 5)")
    p.add_argument("--eval-batches", dest="eval_batches", type=int,
                   help="evaluate on this many val batches of 256 (default: the whole val split)")
    p.add_argument("--metric", choices=["accuracy", "loss"], help="damage metric (default accuracy)")
    p.add_argument("--device", help="device for data and model (default: cuda if available)")
    p.add_argument("--cache-dir", help="sensitivity cache folder (default $AUTOPRUNE_CACHE/sensitivity or "
                                       "~/.cache/autoprune/sensitivity)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--refresh", action="store_true", help="recompute and overwrite the cached table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sensitivity)

    q = subparsers.add_parser(
        "prune", formatter_class=fmt,
        help="prune to a MAC/parameter budget, fine-tune, and save the pruned model",
        description="Allocate per-group ratios that keep the given share of MACs (and/or parameters), prune, "
                    "fine-tune and save (autoprune.io format) plus a JSON summary next to --out.\n\n"
                    "Budgets: 0.5 or 50% = keep half; 62M / 62000000 = keep that many (absolute).",
    )
    q.add_argument("config", metavar="CONFIG", help="YAML config (model, data, optional criterion/finetune)")
    q.add_argument("--macs", help="MACs to keep: fraction (0.5, 50%%) or absolute (62M)")
    q.add_argument("--params", help="parameters to keep: fraction or absolute")
    q.add_argument("--criterion", help="channel criterion (default: config or ezcrop)")
    q.add_argument("--allocation", default="sensitivity", choices=["sensitivity", "uniform", "srr"],
                   help="how ratios are chosen (default: %(default)s)")
    q.add_argument("--finetune-epochs", dest="finetune_epochs", type=int,
                   help="fine-tuning epochs (default: config finetune.epochs or 2; 0 = BN re-estimation only)")
    q.add_argument("--lr", type=float, help="fine-tuning learning rate (default: config or 0.01)")
    q.add_argument("--max-batches", dest="max_batches", type=int, help="cap batches per fine-tuning epoch")
    q.add_argument("--out", default="pruned.pt", metavar="PATH", help="pruned model file (default: %(default)s)")
    q.add_argument("--test", action="store_true", help="also report accuracy on the test split")
    q.add_argument("--seed", type=int, default=0, help="seed for scores, fine-tuning (default 0)")
    q.add_argument("--device", help="device for data and model (default: cuda if available)")
    q.add_argument("--cache-dir", help="sensitivity cache folder")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_prune)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m autoprune.cli.budget ...``: the same as the ``autoprune`` command."""
    from .main import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
