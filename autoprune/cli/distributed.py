"""Command line of the distributed search: ``autoprune worker`` and ``autoprune search --backend ray``.

``add_subcommands(subparsers)`` registers ``worker``; when a ``search`` subcommand is already registered on the same
subparsers (``autoprune.cli.search`` runs first in ``autoprune.cli._EXTENSIONS``), it also gives that subcommand the
backend flags (``--backend ray --address --cpus-per-trial --gpus-per-trial ...``): ``--backend local`` (the default)
runs the search command unchanged, ``--backend ray`` runs :func:`autoprune.study.ray_backend.search_ray`.

``autoprune.cli`` lists this module after ``autoprune.cli.search`` in ``_EXTENSIONS``.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from typing import Any, Callable, Sequence

__all__ = ["add_subcommands", "add_backend_arguments", "cmd_search_ray", "cmd_worker", "main"]


def _log(quiet: bool, prefix: str = "") -> Callable[[str], None]:
    if quiet:
        return lambda s: None
    return lambda s: print(f"{prefix}{s}", file=sys.stderr, flush=True)


def _sigterm_to_keyboard_interrupt() -> None:
    """SIGTERM (``kill``, Kubernetes pod shutdown) behaves like Ctrl-C: the running trial is failed and re-enqueued."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        pass


def cmd_worker(args: argparse.Namespace) -> int:
    """Run trials of a search from a study shared in a database until it has N COMPLETE trials. Start any number of
    workers, on any machines that reach the database; a worker that dies mid-trial has its trial failed (after
    --grace seconds without heartbeat) and run again by another worker."""
    import optuna

    from ..study.worker import StorageUnreachable, run_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _sigterm_to_keyboard_interrupt()
    log = _log(args.quiet, f"[worker {socket.gethostname()}:{os.getpid()}] ")
    try:
        res = run_worker(args.config, storage=args.storage, n_trials=args.trials, study_name=args.study,
                         heartbeat_interval=args.heartbeat, grace_period=args.grace,
                         max_retry=None if args.max_retry < 0 else args.max_retry,
                         connect_timeout=args.connect_timeout, max_failures=args.max_failures, log=log)
    except StorageUnreachable as e:
        print(f"autoprune worker: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the running trial was failed and enqueued again; completed trials are saved",
              file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"autoprune worker: error: {e}", file=sys.stderr)
        return 1
    print(f"study {res.study}: {res.complete}/{res.n_trials} COMPLETE; this worker finished trials {res.ran}"
          f"{f', failed {res.failed}' if res.failed else ''} in {res.seconds:.0f} s")
    return 0


def cmd_search_ray(args: argparse.Namespace) -> int:
    """``autoprune search CONFIG --backend ray``: the search's trials as Ray Tune trials, results in the search's
    Optuna storage."""
    import optuna

    from ..study.ray_backend import RayUnreachable, search_ray
    from ..study.worker import StorageUnreachable

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _sigterm_to_keyboard_interrupt()
    log = _log(getattr(args, "quiet", False))
    try:
        front = search_ray(args.config, n_trials=args.trials, storage=args.storage, study_name=args.study,
                           address=args.address, cpus_per_trial=args.cpus_per_trial,
                           gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
                           ship_code=not args.no_ship_code, connect_timeout=args.connect_timeout,
                           max_failures=args.max_failures, log=log)
    except (RayUnreachable, StorageUnreachable) as e:
        print(f"autoprune search: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: completed trials are saved; run the same command again to resume", file=sys.stderr)
        return 130
    print(front.table())
    return 0


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """Give an ``autoprune search`` parser the backend flags, and route ``--backend ray`` to :func:`cmd_search_ray`
    (``--backend local`` keeps the parser's own command; ``--dry-run`` always does)."""
    if any("--backend" in a.option_strings for a in parser._actions):
        return
    g = parser.add_argument_group("distributed (--backend ray)")
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
    local = parser.get_default("func")

    def dispatch(args: argparse.Namespace) -> int:
        if getattr(args, "backend", "local") == "ray" and not getattr(args, "dry_run", False):
            return cmd_search_ray(args)
        if local is None:
            raise ValueError("the local search command is not available")
        return local(args)

    parser.set_defaults(func=dispatch)


def add_subcommands(subparsers: Any) -> None:
    """Register ``worker``; add the backend flags to an already registered ``search`` subcommand."""
    from ..study.worker import DEFAULT_GRACE, DEFAULT_HEARTBEAT, DEFAULT_MAX_RETRY

    w = subparsers.add_parser("worker", help="run trials of a search shared in PostgreSQL (any number of workers)",
                              description=cmd_worker.__doc__)
    w.add_argument("config", help="search config (YAML), the same file for every worker")
    w.add_argument("--storage", help="database URL, e.g. postgresql://USER:PASSWORD@HOST:5432/DB (default: the "
                                     "config's storage)")
    w.add_argument("--study", help="study name (default: the config's study_name or name)")
    w.add_argument("--trials", type=int, metavar="N", help="COMPLETE trials to reach (overrides n_trials)")
    w.add_argument("--heartbeat", type=int, default=DEFAULT_HEARTBEAT, metavar="S",
                   help=f"seconds between heartbeats of a running trial (default {DEFAULT_HEARTBEAT})")
    w.add_argument("--grace", type=int, default=DEFAULT_GRACE, metavar="S",
                   help=f"a trial without heartbeat for S seconds is failed and retried (default {DEFAULT_GRACE})")
    w.add_argument("--max-retry", type=int, default=DEFAULT_MAX_RETRY, metavar="K",
                   help=f"retries of a trial whose workers keep dying; -1: unlimited (default {DEFAULT_MAX_RETRY})")
    w.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="give up connecting to the database after S seconds (default 10)")
    w.add_argument("--max-failures", type=int, default=3, metavar="K",
                   help="stop after K trials of this worker failed in a row (default 3)")
    w.add_argument("--quiet", action="store_true", help="no log lines")
    w.set_defaults(func=cmd_worker)

    search = getattr(subparsers, "choices", {}).get("search")
    if search is not None:
        add_backend_arguments(search)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m autoprune.cli.distributed ...``: the same as the ``autoprune`` command."""
    from .main import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
