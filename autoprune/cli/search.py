"""``autoprune search | pareto | report | export | dashboard``: the pruning-ratio search from the command line.

``autoprune.cli`` registers these through :func:`add_subcommands` (run them as ``autoprune ...`` or
``python -m autoprune.cli ...``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import optuna

from ..config import load_config
from ..study import check_config, load_front, search
from ..study.report import make_report
from ..study.space import RatioSpace
from ..study.storage import check_storage, open_storage, storage_label
from .common import check_writable_dir, sigterm_as_keyboard_interrupt
from .distributed import cmd_search_ray

__all__ = ["add_subcommands"]

_SOURCE_HELP = ("search config (YAML); or give --storage (URL or journal file) and, if it holds several studies, "
                "--study")


def _add_source(p: argparse.ArgumentParser, *, positional: bool = True) -> None:
    if positional:
        p.add_argument("config", nargs="?", help=_SOURCE_HELP)
    p.add_argument("--storage", help="Optuna storage URL or journal file (default: the config's storage, else "
                                     "<run_dir>/optuna.journal)")
    p.add_argument("--study", help="study name (default: the config's study_name or name)")


def _front(args: argparse.Namespace):
    if not args.config and not args.storage:
        raise ValueError("give a search config, or --storage (and --study)")
    return load_front(args.config, storage=args.storage, study_name=args.study)


def _cmd_search(args: argparse.Namespace) -> int:
    """Run a pruning search described by a YAML file, or resume it: the same command continues an interrupted
    search (completed trials are kept; trials of killed workers are failed and tried again) until N trials are
    complete. Start the same command in several terminals to share the work on one machine (each process samples
    with its own seed); --backend ray runs the trials on a Ray cluster. Ctrl-C or SIGTERM stops it (exit status
    130): the running trial is failed and tried again by the next run."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar and the final table say it all
    if args.dry_run:
        return _dry_run(args)
    if args.backend == "ray":
        return cmd_search_ray(args)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr))
    try:
        with sigterm_as_keyboard_interrupt():  # kill, a pod's shutdown, a batch job's time limit: as Ctrl-C
            front = search(args.config, n_trials=args.trials, storage=args.storage, study_name=args.study,
                           progress=not args.quiet, log=log, patience=args.storage_patience)
    except KeyboardInterrupt as e:  # (the session failed the running trial and enqueued its retry; e says which)
        done = f"{e}; " if str(e) else ""
        print(f"\ninterrupted: {done}completed trials are saved; run the same command again to resume",
              file=sys.stderr)
        return 130
    print(front.table())
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    """Check the storage (its URL, and that a database answers), then the config against the model; run nothing."""
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr))
    cfg = load_config(args.config, n_trials=args.trials, storage=args.storage, study_name=args.study)  # once
    where = check_storage(cfg)
    cfg, problem = check_config(cfg, log=log)  # (this very object: a SearchConfig is not loaded again)
    space = RatioSpace(cfg, problem)
    print(f"config OK: {cfg.name} -- model {cfg.model.name}, {len(problem.group_names)} prunable groups, "
          f"{problem.base_macs:,} MACs, criteria {cfg.criteria}, mode {cfg.ratios.mode}, "
          f"{cfg.n_trials} trials, sampler {cfg.sampler.name}")
    print(f"storage OK: {where}")
    for n in problem.group_names:
        lo, hi = space.bounds[n]
        print(f"  {n:40s} [{lo:.2f}, {hi:.2f}]")
    return 0


def _cmd_pareto(args: argparse.Namespace) -> int:
    """Print the feasible Pareto front of a search (or every complete trial with --all)."""
    front = _front(args)
    if args.json:
        print(json.dumps([r.to_dict() for r in (front.all if args.all else front)], indent=2))
        return 0
    print(front.table(front.all if args.all else None))
    n_inf = sum(not r.feasible for r in front.all)
    print(f"\n{len(front)} on the front of {len(front.all)} complete trials ({n_inf} infeasible)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """Write pareto.png (accuracy vs MACs), ratios.png (per-group ratios of chosen trials) and report.html, and print
    the speed table (MACs, params and measured latency of the front side by side; also written as speed.txt)."""
    front = _front(args)
    if args.latency and front.config is not None:
        front.config.check_code_allowed()  # (a study's stored config naming code: refused before any file is written)
    out = args.out
    if out is None:  # (a config from --storage alone has a run_dir under the working directory: load_stored_config)
        out = str(front.config.run_path / "report") if front.config is not None else "report"
    check_writable_dir(out, "--out")  # (a read-only run directory: name the option, before any plotting)
    trials = [int(t) for t in args.trials.split(",")] if args.trials else None
    paths = make_report(front, out, trials=trials)
    speed = front.speed_table(measure=args.latency)
    paths["speed"] = str(Path(out) / "speed.txt")
    Path(paths["speed"]).write_text(speed + "\n")
    for k, v in paths.items():
        print(f"{k}: {v}")
    print(speed)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    """Rebuild a trial's pruned, fine-tuned model deterministically (same scores, channels and fine-tuning seed) and
    save it (autoprune.load reads it back); OUT.json records the trial and both accuracies."""
    front = _front(args)
    if args.finetune_epochs < 0:
        raise ValueError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    res = front.export_trial(args.trial, args.out, finetune_epochs=args.finetune_epochs,
                             distill=not args.no_distill, lr=args.lr, progress=args.finetune_epochs > 0,
                             format=args.format)
    info = res.info
    print(f"trial {args.trial}: saved {args.out} -- accuracy {info['accuracy_export']:.2%} "
          f"(search: {info['accuracy_search']:.2%}), {info['macs']:,} MACs ({info['macs_fraction']:.1%})")
    if res.export is not None:
        print(res.export)  # format, exporter (dynamo or the TorchScript fallback) and the check
    p = info.get("polish")
    if p:
        how = (f"distillation alpha {p['distill']['alpha']:g}, T {p['distill']['temperature']:g}" if p["distill"]
               else "labels only")
        test = (f", test {p['test_before']:.2%} -> {p['test_accuracy']:.2%}" if p.get("test_accuracy") is not None
                else "")
        print(f"polished {p['epochs']} epoch(s) ({how}): val {p['val_before']:.2%} -> {p['val_accuracy']:.2%}{test}")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard on the study's storage (open http://HOST:PORT/ in a browser; on a remote machine
    forward the port first, e.g. ssh -L 8080:localhost:8080 HOST)."""
    try:
        import optuna_dashboard
    except ImportError:
        print("optuna-dashboard is not installed: pip install optuna-dashboard", file=sys.stderr)
        return 1
    cfg = load_config(args.config) if args.config else None
    if cfg is None and not args.storage:
        raise ValueError("give a search config, or --storage")
    storage = open_storage(cfg, args.storage)
    print(f"optuna-dashboard on {storage_label(cfg, args.storage)}: open http://{args.host}:{args.port}/ "
          "(Ctrl-C to stop)", file=sys.stderr)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0


def _add_search(subparsers: Any) -> None:
    """The ``search`` subcommand with all its options, the Ray backend's included."""
    s = subparsers.add_parser("search", help="run or resume a pruning-ratio search (Optuna)",
                              description=_cmd_search.__doc__)
    s.add_argument("config", help="search config (YAML), e.g. search_spaces/quickstart.yaml")
    s.add_argument("--trials", type=int, metavar="N", help="number of complete trials to reach (overrides n_trials)")
    _add_source(s, positional=False)
    s.add_argument("--dry-run", action="store_true",
                   help="check the storage (URL; a database must answer) and the config against the model "
                        "(patterns, budgets), print the space, run nothing")
    s.add_argument("--quiet", action="store_true", help="no progress bar or log")
    s.add_argument("--storage-patience", type=float, default=None, metavar="S",
                   help="seconds to keep retrying a database storage that stopped answering mid-run before giving "
                        "up (default: the config's storage_patience, else 300)")
    g = s.add_argument_group("distributed (--backend ray)")
    g.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: trials in this process (default); ray: trials as Ray Tune trials on a Ray cluster")
    g.add_argument("--address", default=None,
                   help="Ray cluster: auto (the cluster started with `ray start` on this machine), HOST:PORT of the "
                        "head node's GCS (ray start --head --port, default 6379), or ray://HOST:10001 (Ray Client); "
                        "default: $RAY_ADDRESS, else a new Ray instance on this machine")
    g.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="N", help="CPUs reserved per trial (default 1)")
    g.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="F",
                   help="GPUs per trial; a fraction shares a GPU, e.g. 0.25 runs 4 trials per GPU (default 0)")
    g.add_argument("--max-concurrent", type=int, default=None, metavar="K",
                   help="at most K trials at once (default: as many as the resources allow)")
    g.add_argument("--no-ship-code", action="store_true",
                   help="do not upload this autoprune package to the cluster (the nodes have it installed)")
    g.add_argument("--connect-timeout", type=float, default=30.0, metavar="S",
                   help="give up connecting to the Ray cluster or the database after S seconds (default 30)")
    g.add_argument("--max-failures", type=int, default=2, metavar="K",
                   help="Ray retries of a trial whose worker or node died (default 2)")
    s.set_defaults(func=_cmd_search)


def add_subcommands(subparsers: Any) -> None:
    """Register search, pareto, report, export and dashboard on an argparse subparsers object."""
    _add_search(subparsers)

    p = subparsers.add_parser("pareto", help="print the Pareto front of a search", description=_cmd_pareto.__doc__)
    _add_source(p)
    p.add_argument("--all", action="store_true", help="every complete trial, not only the front")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(func=_cmd_pareto)

    r = subparsers.add_parser("report", help="Pareto plot, ratio chart and HTML report of a search",
                              description=_cmd_report.__doc__)
    _add_source(r)
    r.add_argument("--out", help="output directory (default <run_dir>/report; from --storage alone: a stored run_dir "
                                 "only when it lies in the working directory, else runs/<name>/report)")
    r.add_argument("--trials", help="comma-separated trial numbers for the ratio chart (default: up to 4 front "
                                    "trials)")
    r.add_argument("--latency", action="store_true",
                   help="measure the latency of the unpruned model and of every front member missing one, on this "
                        "machine, with the config's latency section (cached in <run_dir>/latency.json)")
    r.set_defaults(func=_cmd_report)

    e = subparsers.add_parser("export", help="rebuild and save the pruned model of one trial",
                              description=_cmd_export.__doc__)
    e.add_argument("config", nargs="?", help=_SOURCE_HELP)
    e.add_argument("out", help="output model file (.pt, .onnx, .pt2); OUT.json gets the trial's record")
    e.add_argument("--trial", type=int, required=True, metavar="N", help="trial number (see `autoprune pareto`)")
    e.add_argument("--finetune-epochs", type=int, default=0, metavar="E",
                   help="polish: fine-tune the rebuilt model E more epochs before saving, with distillation from the "
                        "unpruned model; reports val and test accuracy (default 0: the trial's model as it was)")
    e.add_argument("--no-distill", action="store_true", help="polish with the labels only")
    e.add_argument("--lr", type=float, default=None, help="polish learning rate (default: finetune.lr)")
    e.add_argument("--format", choices=["autoprune", "onnx", "torchscript", "exported"], default="autoprune",
                   help="autoprune (autoprune.load reads it), onnx (dynamo exporter, TorchScript exporter as "
                        "fallback; needs pip install \"autoprune[deploy]\"), torchscript, or exported (torch.export, "
                        "OUT must end in .pt2); every file is run back and compared with the model")
    _add_source(e, positional=False)
    e.set_defaults(func=_cmd_export)

    d = subparsers.add_parser("dashboard", help="serve optuna-dashboard on a search's storage (port 8080)",
                              description=_cmd_dashboard.__doc__)
    _add_source(d)
    d.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    d.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    d.set_defaults(func=_cmd_dashboard)
