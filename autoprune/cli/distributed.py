"""Command line of the distributed search: ``autoprune worker``, and what ``autoprune search --backend ray`` runs.

``add_subcommands(subparsers)`` registers ``worker``. The ``search`` subcommand, with its ``--backend``/``--address``
options, is built in :mod:`autoprune.cli.search`, which calls :func:`cmd_search_ray` for ``--backend ray``.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any, Callable

import optuna

from ..study.ray import RayUnreachable, search_ray
from ..study.storage import (DEFAULT_GRACE, DEFAULT_HEARTBEAT, DEFAULT_MAX_RETRY, DEFAULT_PATIENCE, StorageLost,
                             StorageUnreachable)
from ..study.worker import run_worker
from .common import sigterm_to_keyboard_interrupt

__all__ = ["add_subcommands", "cmd_search_ray", "cmd_worker"]


def _log(quiet: bool, prefix: str = "") -> Callable[[str], None]:
    if quiet:
        return lambda s: None
    return lambda s: print(f"{prefix}{s}", file=sys.stderr, flush=True)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run trials of a search from a study shared in a database until it has N COMPLETE trials. Start any number of
    workers, on any machines that reach the database; a worker that dies mid-trial has its trial failed (after
    --grace seconds without heartbeat) and run again by another worker."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sigterm_to_keyboard_interrupt()
    log = _log(args.quiet, f"[worker {socket.gethostname()}:{os.getpid()}] ")
    try:
        res = run_worker(args.config, storage=args.storage, n_trials=args.trials, study_name=args.study,
                         heartbeat_interval=args.heartbeat, grace_period=args.grace,
                         max_retry=None if args.max_retry < 0 else args.max_retry,
                         connect_timeout=args.connect_timeout, patience=args.storage_patience,
                         max_failures=args.max_failures, log=log)
    except (StorageUnreachable, StorageLost) as e:
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
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sigterm_to_keyboard_interrupt()
    log = _log(getattr(args, "quiet", False))
    try:
        front = search_ray(args.config, n_trials=args.trials, storage=args.storage, study_name=args.study,
                           address=args.address, cpus_per_trial=args.cpus_per_trial,
                           gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
                           ship_code=not args.no_ship_code, connect_timeout=args.connect_timeout,
                           max_failures=args.max_failures, log=log, patience=args.storage_patience)
    except (RayUnreachable, StorageUnreachable, StorageLost) as e:
        print(f"autoprune search: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: completed trials are saved; run the same command again to resume", file=sys.stderr)
        return 130
    print(front.table())
    return 0


def add_subcommands(subparsers: Any) -> None:
    """Register ``worker``."""
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
    w.add_argument("--storage-patience", type=float, default=None, metavar="S",
                   help="seconds to keep retrying the database when it stops answering mid-run, then exit with "
                        f"status 2 (default: the config's storage_patience, else {DEFAULT_PATIENCE:g})")
    w.add_argument("--max-failures", type=int, default=3, metavar="K",
                   help="stop after K trials of this worker failed in a row (default 3)")
    w.add_argument("--quiet", action="store_true", help="no log lines")
    w.set_defaults(func=cmd_worker)
